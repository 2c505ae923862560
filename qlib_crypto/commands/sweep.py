"""``qlib-crypto sweep``: re-run one backtest over a grid of fee multipliers and slippage values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..errors import ConfigError
from .backtest import input_options

#: the files a sweep --out directory holds (written and replaced as one unit)
SWEEP_FILES = ("sweep.csv", "sweep.json", "sweep.png", "sweep.html")


def parse_grid(text: str, name: str) -> list[float]:
    """``"0,0.5,1,2"`` -> ``[0.0, 0.5, 1.0, 2.0]`` (each value finite and >= 0, no duplicates)."""
    values: list[float] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise ConfigError(
                f"{name} value {part!r} is not a number", hint="give comma-separated numbers, e.g. 0,1,2"
            ) from None
        if not (value >= 0 and value != float("inf")):
            raise ConfigError(f"{name} value {part!r} must be a finite number >= 0", hint="e.g. 0,0.5,1,2")
        if value not in values:
            values.append(value)
    if not values:
        raise ConfigError(f"the {name} grid {text!r} is empty", hint="give comma-separated numbers, e.g. 0,1,2")
    return values


def sweep_figure_html(table: Any, out_dir: Path) -> tuple[Path, Path]:
    """Plot net total return against slippage, one line per fee multiplier; write PNG and HTML."""
    import base64

    from .._atomic import atomic_write_bytes, atomic_write_text
    from .._html import figure_to_data_uri, img_html, new_figure, page

    fig, ax = new_figure(8.0, 4.0)
    for mult, group in table.groupby("fee_multiplier", sort=True):
        group = group.sort_values("slippage_bps")
        ax.plot(group["slippage_bps"], 100 * group["total_return"], marker="o", label=f"fees x{mult:g}")
    ax.set_xlabel("slippage (bps)")
    ax.set_ylabel("net total return (%)")
    ax.set_title("Net performance against trading cost")
    ax.grid(alpha=0.3)
    ax.legend()
    uri = figure_to_data_uri(fig)
    png = out_dir / "sweep.png"
    atomic_write_bytes(png, base64.b64decode(uri.split(",", 1)[1]))
    rows = "".join(
        "<tr>" + "".join(f"<td>{v:.6g}</td>" if isinstance(v, float) else f"<td>{v}</td>" for v in rec) + "</tr>"
        for rec in table.itertuples(index=False)
    )
    head = "".join(f"<th>{c}</th>" for c in table.columns)
    html_path = out_dir / "sweep.html"
    atomic_write_text(
        html_path,
        page(
            "qlib-crypto cost sweep",
            [
                ("Net total return against cost", img_html(uri, "cost sweep")),
                ("Table", f"<table><tr>{head}</tr>{rows}</table>"),
            ],
        ),
    )
    return png, html_path


@click.command("sweep")
@input_options
@click.option(
    "--fee-multipliers",
    default="0,0.5,1,2",
    show_default=True,
    help="Comma-separated multipliers applied to every fee rate.",
)
@click.option(
    "--slippage-bps",
    "slippage_grid",
    default="0,2,5,10",
    show_default=True,
    help="Comma-separated slippage values in basis points.",
)
@click.option(
    "--out",
    "out_dir",
    default="reports/sweep",
    show_default=True,
    type=click.Path(),
    metavar="DIR",
    help="Output directory: sweep.csv, sweep.json, sweep.png, sweep.html.",
)
@click.option(
    "--dask",
    "dask_address",
    default=None,
    metavar="ADDRESS",
    help="Run each cell as a task on a Dask cluster (the dask extra): a scheduler address "
    "(tcp://HOST:8786) or 'local' (a LocalCluster with this machine's cores). Same table as without.",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Without --dask: run the cells in N processes forked from this one (default: one per CPU; 1 = serial). "
    "Same table whatever N.",
)
@click.option(
    "--model-run",
    default=None,
    metavar="RUN_ID",
    help="MLflow run id of the model behind the signals, recorded in sweep.json (the demo sets it).",
)
def command(
    fee_multipliers: str,
    slippage_grid: str,
    out_dir: str,
    dask_address: str | None = None,
    jobs: int | None = None,
    model_run: str | None = None,
    **opts: Any,
) -> int:
    """Re-run a backtest for every (fee multiplier, slippage) pair and tabulate net performance.

    Trust: --signals files are data (Parquet or CSV; pickles are refused). A --pred pred.pkl is a pickle,
    which runs code when loaded: give only one from a trusted source (your own qrun run).

    \b
    Example:
      qlib-crypto sweep --signals reports/signals.parquet --provider-dir data/qlib/synthetic/60min \\
          --fee-multipliers 0,0.5,1,2 --slippage-bps 0,2,5,10 --out reports/sweep
      qlib-crypto sweep ... --dask local                  # the cells on a LocalCluster (docs/scale-out.md)
    """
    from .backtest import build_inputs, check_input_files, check_output_dir

    check_input_files(opts)
    mults = parse_grid(fee_multipliers, "--fee-multipliers")
    slips = parse_grid(slippage_grid, "--slippage-bps")
    check_output_dir(out_dir)
    dask_spec = None
    if dask_address is not None:
        from ..scale.cluster import normalize_spec, require_dask

        dask_spec = normalize_spec(dask_address)
        require_dask()
    inputs = build_inputs(opts)  # every input checked before Qlib's backtest modules are imported
    from .._atomic import atomic_dir, atomic_path, atomic_write_text
    from ..workflow.backtest_record import cost_sweep

    total = len(mults) * len(slips)
    done = [0]

    def progress(row: dict) -> None:
        done[0] += 1
        click.echo(
            f"[{done[0]}/{total}] fees x{row['fee_multiplier']:g}, slippage {row['slippage_bps']:g} bps: "
            f"total_return {row['total_return']:+.4%}"
        )

    table = cost_sweep(
        inputs["strategy"],
        fee_multipliers=mults,
        slippage_bps=slips,
        start_time=inputs["start_time"],
        end_time=inputs["end_time"],
        freq=inputs["freq"],
        account=inputs["account"],
        benchmark=inputs["benchmark"],
        exchange=inputs["exchange"],
        executor=inputs["executor"],
        progress=progress,
        dask=dask_spec,
        jobs=jobs,
    )
    out = Path(out_dir)
    records = [
        {k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
        for r in table.to_dict(orient="records")
    ]
    # one unit: staged beside out_dir and swapped in, so it holds the old set of files or the new one
    with atomic_dir(out, replaceable=SWEEP_FILES, what="--out directory") as stage:
        with atomic_path(stage / "sweep.csv") as tmp:
            table.to_csv(tmp, index=False)
        doc = {"strategy": inputs["strategy_name"], "freq": inputs["freq"], "runs": records}
        if model_run:
            doc["model_run"] = str(model_run)
        atomic_write_text(stage / "sweep.json", json.dumps(doc, indent=2) + "\n")
        sweep_figure_html(table, stage)
    png, html_path = out / "sweep.png", out / "sweep.html"
    click.echo(f"wrote {out / 'sweep.csv'}, {out / 'sweep.json'}, {png} and {html_path}")
    return 0
