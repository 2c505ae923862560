"""docs/notebooks/crypto_research.ipynb: committed without outputs, and executed end to end with nbclient on a
small synthetic provider built with the CLI (5 instruments, 3 months of hourly bars, 20 boosting rounds), in a
kernel that runs this virtualenv's Python. The numbers it shows are checked against values computed here from
the provider's files (bars, labels, IC, signals, fills)."""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import yaml
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "docs" / "notebooks" / "crypto_research.ipynb"
SWAP = "ETH-USDT-SWAP"  # the notebook's default SWAP parameter; one of the 5 synthetic instruments
TAKER = {"spot": 0.0010, "swap": 0.0005}  # OKX base tier, the exchange's default fees
SLIPPAGE = 2e-4  # the notebook's SLIPPAGE_BPS = 2
ACCOUNT = 1_000_000.0
FINISHED = 3  # mlflow.entities.RunStatus.FINISHED, as a run's meta.yaml stores it

OVERRIDES = """
PROVIDER = {{"60min": {p60!r}, "day": {pday!r}}}
START, END = "2024-01-01", "2024-03-31 23:00"
TRAIN = ("2024-01-01", "2024-02-15 23:00")
VALID = ("2024-02-16", "2024-02-29 23:00")
TEST = ("2024-03-01", "2024-03-31 23:00")
LGB_PARAMS = dict(LGB_PARAMS, num_boost_round=20, early_stopping_rounds=10, min_data_in_leaf=50)
REPORT_DIR = {report!r}
"""

# appended to the executed copy only: hands the notebook's results (and the kernel's interpreter) to the test
PROBE = """
import pickle, sys
with open({out!r}, "wb") as fh:
    pickle.dump({{"prefix": sys.prefix, "executable": sys.executable, "bars": bars, "pred": pred, "label": label,
                 "ic_metrics": ic_metrics, "signals": signals, "fills": run.fills, "metrics": report.metrics,
                 "equity": report.equity, "sweep": sweep}}, fh)
"""


def cli(*args) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "qlib_crypto", *map(str, args)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def read_bin(provider: Path, freq: str, inst: str, field: str) -> pd.Series:
    """A feature straight from Qlib's binary format: float32, the first value is the start index in the calendar."""
    cal = pd.DatetimeIndex([ln for ln in (provider / "calendars" / f"{freq}.txt").read_text().split("\n") if ln])
    data = np.fromfile(provider / "features" / inst.lower() / f"{field}.{freq}.bin", dtype="<f4")
    start = int(data[0])
    return pd.Series(data[1:], index=cal[start : start + len(data) - 1])


def code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


# ------------------------------------------------------------------------------------------- the committed file
def test_committed_notebook_has_no_outputs_and_a_parameters_cell():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    cells = code_cells(nb)
    assert len(cells) >= 10
    assert [c.outputs for c in cells] == [[]] * len(cells)
    assert [c.execution_count for c in cells] == [None] * len(cells)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is cells[0]  # the first code cell, before anything reads the values
    assert nb.metadata.kernelspec.name == "python3"
    source = "\n".join(c.source for c in cells)
    for api in (
        "qlib_crypto.init(",
        "D.features(",
        "CryptoAlpha158(",
        "DatasetH(",
        "LGBModel(",
        "make_signals(",
        "run_backtest(",
    ):
        assert api in source


def test_readme_and_research_docs_link_the_notebook():
    assert "(docs/notebooks/crypto_research.ipynb)" in (REPO / "README.md").read_text()
    assert "(notebooks/crypto_research.ipynb)" in (REPO / "docs" / "research.md").read_text()


# --------------------------------------------------------------------------------------------- executed run
@pytest.fixture(scope="module")
def provider(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nb_provider")
    cli(
        "collect",
        "--source",
        "synthetic",
        "--instruments",
        5,
        "--seed",
        7,
        "--timeframe",
        "1h",
        "--start",
        "2024-01-01",
        "--end",
        "2024-04-01",
        "--store",
        root / "store",
        "--quiet",
    )
    cli("dump", "--store", root / "store", "--qlib-dir", root / "qlib" / "60min", "--timeframe", "1h")
    cli(
        "dump",
        "--store",
        root / "store",
        "--qlib-dir",
        root / "qlib" / "day",
        "--timeframe",
        "1d",
        "--from-timeframe",
        "1h",
    )
    return root / "qlib"


@pytest.fixture(scope="module")
def executed(provider, tmp_path_factory):
    work = tmp_path_factory.mktemp("nb_run")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    override = OVERRIDES.format(p60=str(provider / "60min"), pday=str(provider / "day"), report=str(work / "report"))
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(override, metadata={"tags": ["injected-parameters"]}))
    nb.cells.append(nbformat.v4.new_code_cell(PROBE.format(out=str(work / "probe.pkl"))))
    # a kernelspec of our own, naming this interpreter: a user's or the system's `python3` kernelspec (found
    # first on Jupyter's path) could start another Python without qlib_crypto
    kernels = work / "kernels"
    (kernels / "python3").mkdir(parents=True)
    (kernels / "python3" / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "qlib-crypto venv",
                "language": "python",
            }
        )
    )
    km = AsyncKernelManager(
        kernel_name="python3",
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]),
        connection_file=str(work / "kernel-connection.json"),
    )
    client = NotebookClient(
        nb, km=km, kernel_name="python3", timeout=600, startup_timeout=120, resources={"metadata": {"path": str(work)}}
    )
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # the kernel's inline backend draws the PNGs
    env["IPYTHONDIR"] = str(work / "ipython")
    client.execute(env=env)  # raises CellExecutionError naming the cell on any error
    with open(work / "probe.pkl", "rb") as fh:
        probe = pickle.load(fh)
    return {"nb": nb, "probe": probe, "work": work}


def test_kernel_runs_this_virtualenv(executed):
    probe = executed["probe"]
    assert probe["prefix"] == sys.prefix
    assert Path(probe["executable"]).resolve() == Path(sys.executable).resolve()


def test_every_cell_ran_and_plots_were_drawn(executed):
    cells = code_cells(executed["nb"])
    assert all(isinstance(c.execution_count, int) for c in cells)
    assert not [o for c in cells for o in c.outputs if o.output_type == "error"]
    by_id = {c.get("id"): c for c in executed["nb"].cells}
    for cid in ("data-plot", "model", "ic-plot", "backtest-plot"):
        pngs = [o for o in by_id[cid].outputs if o.output_type == "display_data" and "image/png" in o.data]
        assert len(pngs) == 1, cid


def test_training_run_is_recorded_and_finished(executed):
    # the notebook records with Qlib's recorder in ./mlruns of its directory (here the scratch one, not the repo's)
    metas = [yaml.safe_load(p.read_text()) for p in (executed["work"] / "mlruns").glob("*/*/meta.yaml")]
    assert [(m["run_name"], m["status"]) for m in metas] == [
        ("lightgbm 60min, test 2024-03-01 .. 2024-03-31 23:00", FINISHED)
    ]
    run_dir = next((executed["work"] / "mlruns").glob(f"*/{metas[0]['run_id']}"))
    pred = pd.read_pickle(run_dir / "artifacts" / "pred.pkl")
    pd.testing.assert_series_equal(pred, executed["probe"]["pred"])


def test_bars_are_the_providers(executed, provider):
    bars = executed["probe"]["bars"]
    close = read_bin(provider / "60min", "60min", SWAP, "close")
    np.testing.assert_array_equal(bars["$close"].to_numpy(np.float32), close.reindex(bars.index).to_numpy())
    funding = read_bin(provider / "60min", "60min", SWAP, "funding_rate")
    assert bars["$funding_rate"].notna().sum() == funding.notna().sum() > 80  # 3 a day for 91 days
    np.testing.assert_array_equal(bars["$funding_rate"].dropna().to_numpy(np.float32), funding.dropna().to_numpy())


def test_ic_is_the_correlation_of_scores_and_next_bar_returns(executed, provider):
    probe = executed["probe"]
    pred, label = probe["pred"], probe["label"]
    # the label is the return from the next bar's close to the one after: close[t+2] / close[t+1] - 1
    close = read_bin(provider / "60min", "60min", SWAP, "close").astype("float64")
    expected = (close.shift(-2) / close.shift(-1) - 1).reindex(label.xs(SWAP, level="instrument").index)
    # (Qlib divides in float32: about 1e-7 of the price ratio; a one-bar shift would differ by about 1e-3)
    np.testing.assert_allclose(label.xs(SWAP, level="instrument").to_numpy(), expected.to_numpy(), rtol=0, atol=2e-7)
    assert pred.index.get_level_values("datetime").min() == pd.Timestamp("2024-03-01")
    both = pd.DataFrame({"p": pred, "l": label.reindex(pred.index)}).dropna()
    ics = [
        np.corrcoef(g["p"], g["l"])[0, 1]
        for _, g in both.groupby(level="datetime")
        if g["p"].std() > 0 and g["l"].std() > 0
    ]
    assert len(ics) > 700  # March, hourly
    assert probe["ic_metrics"]["IC"] == pytest.approx(np.mean(ics), abs=1e-9)
    assert probe["ic_metrics"]["ICIR"] == pytest.approx(np.mean(ics) / np.std(ics, ddof=1), rel=1e-6)


def test_signals_follow_the_quantile_rule(executed):
    signals = executed["probe"]["signals"]
    pred = executed["probe"]["pred"]
    assert len(signals) == len(pred)
    for _, g in signals.groupby("datetime"):
        k = math.floor(len(g) * 0.2)
        buy, sell, hold = (g[g["signal"] == s] for s in ("BUY", "SELL", "HOLD"))
        assert len(buy) == k and len(sell) == k
        assert buy["score"].min() >= g.drop(buy.index)["score"].max()
        assert sell["score"].max() <= g.drop(sell.index)["score"].min()
        assert (buy["position_size"] == 0.1).all() and (sell["position_size"] == -0.1).all()
        assert (hold["position_size"] == 0).all()


def test_backtest_fills_fees_and_returns(executed):
    probe = executed["probe"]
    fills, metrics, equity, signals = probe["fills"], probe["metrics"], probe["equity"], probe["signals"]
    assert len(fills) > 50
    taker = np.where(fills["instrument"].str.endswith("-SWAP"), TAKER["swap"], TAKER["spot"])
    fee = fills["amount"].abs() * fills["fill_price"] * taker
    np.testing.assert_allclose(fills["fee"], fee, rtol=1e-9)
    side = np.where(fills["side"] == "buy", 1.0, -1.0)
    np.testing.assert_allclose(fills["fill_price"], fills["deal_price"] * (1 + side * SLIPPAGE), rtol=1e-12)
    assert metrics["fees_paid"] == pytest.approx(fee.sum(), rel=1e-9)
    assert metrics["total_return"] == pytest.approx(equity.iloc[-1] / ACCOUNT - 1, rel=1e-9)
    # a signal trades at the next bar; the first one that changes a target is a BUY, or a SELL on a swap
    # (a SELL on a spot pair targets flat, which it already is)
    moves = signals[
        (signals["signal"] == "BUY") | ((signals["signal"] == "SELL") & signals["instrument"].str.endswith("-SWAP"))
    ]
    assert pd.Timestamp(fills["datetime"].min()) == moves["datetime"].min() + pd.Timedelta(hours=1)
    # the report written by the notebook holds the same figures
    written = json.loads((executed["work"] / "report" / "metrics.json").read_text())
    assert written["total_return"] == pytest.approx(metrics["total_return"], rel=1e-12)


def test_cost_sweep_costs_lower_the_return(executed):
    sweep = executed["probe"]["sweep"].set_index(["fee_multiplier", "slippage_bps"])
    assert len(sweep) == 4
    assert sweep.loc[(0.0, 0.0), "fees_paid"] == 0 and sweep.loc[(0.0, 0.0), "slippage_paid"] == 0
    assert sweep.loc[(1.0, 2.0), "total_return"] == pytest.approx(
        executed["probe"]["metrics"]["total_return"], rel=1e-9
    )
    assert sweep.loc[(0.0, 0.0), "total_return"] > sweep.loc[(1.0, 2.0), "total_return"]
