"""``qlib-crypto demo``: the README's main job, offline on the embedded synthetic market.

synthetic market -> raw store (validated) -> Qlib provider (60min and day) -> LightGBM through the qrun
workflow (recorded in ./mlruns) -> BUY/SELL/HOLD signals -> crypto backtest report.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import click

WORKFLOW_60MIN = Path("workflow_configs") / "workflow_config_lightgbm_crypto_60min.yaml"
EXPERIMENT_60MIN = "crypto_lightgbm_60min"
#: Qlib's recorder logs every ``_QLIB_*`` environment variable as a run parameter: the demo's run stamp goes
#: there, so the demo finds the run its own qrun made (never "the latest run" of the experiment).
STAMP_PARAM = "_QLIB_CRYPTO_DEMO_RUN"
LATEST = "latest"
TEST_START, TEST_END = "2024-04-01", "2024-06-30 22:00"


def _step(title: str, quiet: bool) -> float:
    if not quiet:
        click.secho(f"\n== {title}", bold=True)
    return time.perf_counter()


def _done(t0: float, quiet: bool, what: str = "") -> None:
    if not quiet:
        click.echo(f"   done in {time.perf_counter() - t0:.1f} s{(': ' + what) if what else ''}")


def _show(text: str, quiet: bool, keep: Callable[[str], bool]) -> None:
    """Print the lines of a step's output that ``keep`` selects (indented), unless quiet."""
    if quiet:
        return
    for line in text.splitlines():
        if keep(line):
            click.echo(f"   {line}")


def _run(argv: list[str], log: TextIO | None = None) -> str:
    """Run one qlib-crypto command in-process; its stdout goes to ``log`` (the run's demo.log) and is returned
    (the step prints a digest). A non-zero exit stops the demo, with the command's output shown."""
    from ..cli import main
    from ..errors import QlibCryptoError

    root = click.get_current_context(silent=True)
    verbose = bool(root is not None and (root.find_root().obj or {}).get("verbose"))
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["--verbose", *argv] if verbose else argv)
    text = buf.getvalue()
    if log is not None:
        log.write(f"$ qlib-crypto {' '.join(argv)}\n{text}\n")
        log.flush()
    if code != 0:
        click.echo(text, nl=False)
        raise QlibCryptoError(
            f"demo step 'qlib-crypto {' '.join(argv)}' exited with code {code}",
            hint="see the message above; re-run the demo once fixed: finished steps are skipped or repeated cheaply",
        )
    return text


def _tracking_uri(workflow: Path) -> str:
    """The MLflow tracking URI the workflow's qlib_init sets (a relative ``file:`` URI made absolute)."""
    from ruamel.yaml import YAML

    with open(workflow) as fh:
        config = YAML(typ="safe", pure=True).load(fh) or {}
    uri = str(((config.get("qlib_init") or {}).get("exp_manager") or {}).get("kwargs", {}).get("uri") or "file:mlruns")
    if uri.startswith("file:") and not uri.startswith("file:/"):
        uri = "file:" + str(Path(uri[len("file:") :]).resolve())
    return uri


#: qrun's own lines the demo shows while it trains (LightGBM's evaluation every 20 rounds, early stopping)
QRUN_SHOWN = re.compile(r"^(\[\d+\]\s|Training until |Early stopping|Did not meet early stopping)")
#: the child: qrun (Qlib's qlib.cli.run), with our quiet console installed before Qlib's first import
QRUN_CHILD = (
    "import sys; from qlib_crypto._quiet import install; install(); "
    "from qlib.cli.run import run; sys.argv[0] = 'qrun'; run()"
)


def _qrun(workflow: Path, stamp: str, log: TextIO | None, quiet: bool) -> None:
    """``qrun WORKFLOW`` as a child process (Qlib's own entry point), its stdout copied to ``log`` and, unless
    quiet, its training progress lines to the console; stderr (warnings) passes through. The demo's stamp goes
    to the child's environment, where Qlib's recorder logs it as a run parameter. SIGINT/SIGTERM are passed on
    to the child, which ends its MLflow run KILLED before the demo exits (qlib_crypto/_run_guard.py)."""
    import threading

    from .._run_guard import call_forwarding_signals
    from ..errors import QlibCryptoError

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env[STAMP_PARAM] = stamp
    # LightGBM's OpenMP threads sleep when idle instead of spinning: on a 2-core machine with other load,
    # spinning threads made training many times slower; the wait policy changes no result (a user's own
    # setting is kept)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    def tee(stream: Any) -> None:
        for line in stream:
            if log is not None:
                log.write(line)
            if not quiet and QRUN_SHOWN.match(line):
                click.echo("   " + line.rstrip("\n"))
        stream.close()

    if log is not None:
        log.write(f"$ qrun {workflow}\n")
        log.flush()
    read_fd, write_fd = os.pipe()  # the child's stdout; drained by a thread while it runs (no pipe stall)
    reader = threading.Thread(target=tee, args=(os.fdopen(read_fd, encoding="utf-8", errors="replace"),), daemon=True)
    reader.start()
    try:
        code = call_forwarding_signals([sys.executable, "-c", QRUN_CHILD, str(workflow)], stdout=write_fd, env=env)
    finally:
        os.close(write_fd)  # the child has exited: end of its output
        reader.join(timeout=30)
        if log is not None:
            log.flush()
    if code != 0:
        raise QlibCryptoError(
            f"qrun {workflow} exited with code {code}",
            hint="its output is in the run's demo.log; or run it by hand: .venv/bin/qrun " + str(workflow),
        )


def _find_run(uri: str, experiment: str, stamp: str) -> Any:
    """The finished MLflow run of ``experiment`` whose ``_QLIB_CRYPTO_DEMO_RUN`` parameter is ``stamp``."""
    from mlflow.tracking import MlflowClient

    from ..errors import QlibCryptoError

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = (
        []
        if exp is None
        else client.search_runs(
            [exp.experiment_id], filter_string=f"params.{STAMP_PARAM} = '{stamp}' and attributes.status = 'FINISHED'"
        )
    )
    if len(runs) != 1:
        raise QlibCryptoError(
            f"found {len(runs)} finished runs of experiment {experiment!r} with {STAMP_PARAM}={stamp} in {uri}",
            hint="the workflow did not record its run there; check its qlib_init.exp_manager",
        )
    return runs[0]


def _copy_artifacts(run: Any, artifact: str, dest: Path) -> bool:
    """Copy a local run's artifact directory to ``dest``; False when the artifacts are not on this machine."""
    import shutil
    from urllib.parse import unquote, urlparse

    parsed = urlparse(run.info.artifact_uri)
    if parsed.scheme not in ("", "file"):
        return False
    src = Path(unquote(parsed.path)) / artifact
    if not src.is_dir():
        return False
    shutil.copytree(src, dest)
    return True


def _point_latest(reports: Path, stamp: str) -> Path:
    """``REPORTS/latest`` -> ``REPORTS/<stamp>`` (a relative symlink, replaced atomically); where symlinks are
    not allowed, ``REPORTS/latest.txt`` names the run directory instead."""
    link = reports / LATEST
    tmp = reports / f".{LATEST}.{os.getpid()}"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(stamp, tmp, target_is_directory=True)
        os.replace(tmp, link)
        return link
    except OSError:
        from .._atomic import atomic_write_text

        atomic_write_text(reports / f"{LATEST}.txt", stamp + "\n")
        return reports / stamp


def _stamp() -> str:
    """``YYYYMMDD-HHMMSS-<pid>`` (UTC): sorts by time; two demos started in the same second differ."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{os.getpid()}"


@click.command("demo")
@click.option(
    "--instruments",
    default=20,
    show_default=True,
    type=click.IntRange(2, 200),
    help="Number of synthetic instruments (BTC-USDT first, then a mix of spot and -SWAP swaps).",
)
@click.option("--seed", default=7, show_default=True, help="Seed of the synthetic market.")
@click.option("--start", default="2023-01-01", show_default=True, help="First bar (UTC, inclusive).")
@click.option("--end", default="2024-07-01", show_default=True, help="End (UTC, exclusive).")
@click.option(
    "--data-dir",
    default="data",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the store and the Qlib provider go (the workflow files expect the default).",
)
@click.option(
    "--reports-dir",
    default="reports",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the reports go: one REPORTS/<stamp>/ directory per run, REPORTS/latest points to the newest.",
)
@click.option("--skip-research", is_flag=True, help="Stop after the Qlib provider (no model, signals or backtest).")
@click.option("--quiet", is_flag=True, help="Print only the final summary.")
def command(
    instruments: int, seed: int, start: str, end: str, data_dir: str, reports_dir: str, skip_research: bool, quiet: bool
) -> int:
    """Run the whole chain offline on the synthetic market (run it from the repository root).

    \b
    1. collect   synthetic 1h bars, funding and metadata -> DATA/store/synthetic (validated)
    2. dump      Qlib provider DATA/qlib/synthetic/60min and .../day (day built from the 1h bars)
    3. qrun      workflow_configs/workflow_config_lightgbm_crypto_60min.yaml (LightGBM on CryptoAlpha158,
                 IC analysis, crypto backtest, 24/7 risk figures), recorded in ./mlruns
    4. predict   signals for the test period from the model that step 3 trained (its MLflow run, found by the
                 run stamp) -> REPORTS/<stamp>/signals_60min.parquet
    5. backtest  those signals with CryptoExchange + CryptoExecutor -> REPORTS/<stamp>/backtest_60min/report.html
    6. sweep     the same backtest at fee multipliers 0, 0.5, 1 and slippage 0, 2 bps -> REPORTS/<stamp>/sweep_60min

    Each run writes its reports under REPORTS/<stamp>/ (<stamp> = UTC start time and process id): the three
    above, training_60min/ (the run's training report), demo.log (every step's full output) and run.json
    (the MLflow run id of the model, the files). The directory is named <stamp>.partial until the run is
    complete; REPORTS/latest then points to it. Runs never share or overwrite each other's reports.

    Re-running is cheap for the data steps: the collector fetches only what is missing.

    \b
    Example:
      qlib-crypto demo
      qlib-crypto demo --instruments 10 --skip-research
    """
    data = Path(data_dir)
    reports = Path(reports_dir)
    store = data / "store" / "synthetic"
    qlib_60 = data / "qlib" / "synthetic" / "60min"
    qlib_day = data / "qlib" / "synthetic" / "day"
    t_all = time.perf_counter()
    times: dict[str, float] = {}
    stamp = _stamp()
    run_dir = reports / stamp
    partial = reports / f"{stamp}.partial"
    log: TextIO | None = None
    if not skip_research:
        if not WORKFLOW_60MIN.exists():
            from ..errors import ConfigError

            raise ConfigError(
                f"workflow file {str(WORKFLOW_60MIN)!r} not found in {str(Path.cwd())!r}",
                hint="run the demo from the repository root, or pass --skip-research",
            )
        partial.mkdir(parents=True)
        log = open(partial / "demo.log", "w", encoding="utf-8")  # noqa: SIM115  # closed in the finally below
    try:
        t0 = _step(f"1/6 collect: {instruments} synthetic instruments, 1h bars, {start} .. {end} -> {store}", quiet)
        out = _run(
            [
                "collect",
                "--source",
                "synthetic",
                "--instruments",
                str(instruments),
                "--seed",
                str(seed),
                "--timeframe",
                "1h",
                "--start",
                start,
                "--end",
                end,
                "--store",
                str(store),
                "--quiet",
            ],
            log,
        )
        _show(out, quiet, lambda line: line.startswith(("collected ", "store ")))
        times["collect"] = time.perf_counter() - t0
        _done(t0, quiet)

        t0 = _step(f"2/6 dump: Qlib provider -> {qlib_60} and {qlib_day}", quiet)
        out = _run(["dump", "--store", str(store), "--qlib-dir", str(qlib_60), "--timeframe", "1h"], log)
        out += _run(
            ["dump", "--store", str(store), "--qlib-dir", str(qlib_day), "--timeframe", "1d", "--from-timeframe", "1h"],
            log,
        )
        _show(out, quiet, lambda line: not line.startswith(" "))
        times["dump"] = time.perf_counter() - t0
        _done(t0, quiet)

        if not skip_research:
            _run(["check", str(WORKFLOW_60MIN), "--quiet"], log)  # paths, dates, classes and arguments, before training
            t0 = _step(f"3/6 qrun {WORKFLOW_60MIN} (features, LightGBM, IC, backtest; recorded in ./mlruns)", quiet)
            uri = _tracking_uri(WORKFLOW_60MIN)
            _qrun(WORKFLOW_60MIN, stamp, log, quiet)
            run = _find_run(uri, EXPERIMENT_60MIN, stamp)
            rid = run.info.run_id
            m = run.data.metrics
            if not quiet:
                click.echo(
                    f"   MLflow run {rid} ({run.data.tags.get('mlflow.runName', '')}) in experiment {EXPERIMENT_60MIN}"
                )
                click.echo(
                    f"   test quarter: IC {m.get('IC', float('nan')):.4f}, rank IC "
                    f"{m.get('Rank IC', float('nan')):.4f}; long/short backtest total return "
                    f"{m.get('backtest.total_return', float('nan')):+.2%} after costs"
                )
            _copy_artifacts(run, "training_report", partial / "training_60min")
            times["qrun"] = time.perf_counter() - t0
            _done(t0, quiet)

            signals = partial / "signals_60min.parquet"
            t0 = _step(f"4/6 predict: test-period signals from run {rid} -> {run_dir / signals.name}", quiet)
            out = _run(
                [
                    "predict",
                    "--experiment",
                    EXPERIMENT_60MIN,
                    "--run-id",
                    rid,
                    "--tracking-uri",
                    uri,
                    "--provider-dir",
                    f"60min={qlib_60}",
                    "--provider-dir",
                    f"day={qlib_day}",
                    "--freq",
                    "60min",
                    "--start",
                    TEST_START,
                    "--end",
                    TEST_END,
                    "--out",
                    str(signals),
                ],
                log,
            )
            _show(out, quiet, lambda line: line.startswith("wrote "))
            times["predict"] = time.perf_counter() - t0
            _done(t0, quiet)

            backtest_dir = partial / "backtest_60min"
            t0 = _step(
                f"5/6 backtest: the signals with CryptoExchange + CryptoExecutor -> {run_dir / backtest_dir.name}",
                quiet,
            )
            # the backtest and the sweep read the same signals, provider and test period, for the same model run
            same = ["--signals", str(signals), "--provider-dir", str(qlib_60), "--freq", "60min"]
            same += ["--start", TEST_START, "--end", TEST_END, "--model-run", rid]
            out = _run(["backtest", *same, "--slippage-bps", "2", "--out", str(backtest_dir)], log)
            _show(out, quiet, lambda line: line.startswith(("backtest ", "{")))
            times["backtest"] = time.perf_counter() - t0
            _done(t0, quiet)

            sweep_dir = partial / "sweep_60min"
            t0 = _step(
                f"6/6 sweep: the same backtest over fee and slippage levels -> {run_dir / sweep_dir.name}", quiet
            )
            out = _run(
                ["sweep", *same, "--fee-multipliers", "0,0.5,1", "--slippage-bps", "0,2", "--out", str(sweep_dir)], log
            )
            _show(out, quiet, lambda line: line.startswith("["))
            times["sweep"] = time.perf_counter() - t0
            _done(t0, quiet)

            from .._atomic import atomic_write_text

            manifest = {
                "stamp": stamp,
                "experiment": EXPERIMENT_60MIN,
                "recorder_id": rid,
                "run_name": run.data.tags.get("mlflow.runName"),
                "tracking_uri": uri,
                "workflow": str(WORKFLOW_60MIN),
                "provider": {"60min": str(qlib_60), "day": str(qlib_day)},
                "store": str(store),
                "test": [TEST_START, TEST_END],
                "seconds": {k: round(v, 1) for k, v in times.items()},
                "files": sorted(str(p.relative_to(partial)) for p in partial.rglob("*") if p.is_file()) + ["run.json"],
            }
            atomic_write_text(partial / "run.json", json.dumps(manifest, indent=2) + "\n")
    finally:
        if log is not None:
            log.close()
    latest = None
    if not skip_research:
        os.replace(partial, run_dir)  # complete: only now under its final name
        latest = _point_latest(reports, stamp)

    click.secho(f"\nqlib-crypto demo finished in {time.perf_counter() - t_all:.0f} s", bold=True)
    if times and not quiet:
        click.echo("  step times       " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
    click.echo(f"  raw store        {store}   (qlib-crypto validate --store {store})")
    click.echo(f"  Qlib provider    {qlib_60}  and  {qlib_day}")
    click.echo(
        "  load it          import qlib_crypto; qlib_crypto.init({'60min': '%s', 'day': '%s'})" % (qlib_60, qlib_day)
    )
    click.echo("                   from qlib.data import D; D.features(['BTC-USDT'], ['$close'], freq='60min')")
    if not skip_research:
        click.echo(f"  workflows        qrun {WORKFLOW_60MIN}   (and ..._day.yaml)")
        click.echo(
            f"  recorder         MLflow run {rid} of experiment {EXPERIMENT_60MIN}: "
            "mlflow ui --backend-store-uri ./mlruns --host 127.0.0.1"
        )
        click.echo(f"  this run         {run_dir}/   ({latest} points to it; run.json names the model's run)")
        click.echo(f"  signals          {run_dir / 'signals_60min.parquet'}")
        click.echo(f"  backtest report  {run_dir / 'backtest_60min' / 'report.html'}")
        click.echo(f"  cost sweep       {run_dir / 'sweep_60min' / 'sweep.html'}")
        click.echo(f"  training report  {run_dir / 'training_60min'}/   (all steps' output: {run_dir / 'demo.log'})")
    return 0
