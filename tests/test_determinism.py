"""The same command with the same inputs writes the same bytes under any ``PYTHONHASHSEED``.

Every command runs twice, in two subprocesses with ``PYTHONHASHSEED`` 1 and 12345 (string hashes, and so set and
dict-of-set iteration orders, differ between the two), at the same time, each in its own directory; then every
output file of the two runs is compared byte for byte. Inputs are small: a synthetic market of 6 instruments x
5 weeks of hourly bars, one store and one provider shared by the whole module.

What is excluded from the comparison, and why (these are timestamps or ids, not results):

- store manifests (collect, import): the ``collected_at:`` line, the wall-clock time of the write;
- qrun: the MLflow run's ``meta.yaml`` and ``tags/`` (start/end times, run id, user, host), the timestamp column
  of each ``metrics/<name>`` file (the value and step are compared), and in text artifacts the run id and
  experiment id (replaced by placeholders) plus the model metadata's ``created_at:`` line and the digest line
  over the metadata (it covers ``created_at``). Pickled artifacts (predictions, labels, portfolio report and
  positions, model, dataset) are compared byte for byte.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / "workflow_configs" / "workflow_config_lightgbm_crypto_60min.yaml"
QRUN = Path(sys.executable).with_name("qrun")
SEEDS = ("1", "12345")
START, END = "2024-01-01", "2024-02-05"  # 35 days of hourly bars
SIGNAL_START, SIGNAL_END = "2024-01-22", "2024-02-04 22:00"


# ---------------------------------------------------------------------------------------------- helpers
def _cli(*args: object) -> list[str]:
    return [sys.executable, "-m", "qlib_crypto", *map(str, args)]


def run_pair(root: Path, name: str, make_cmds, timeout: float = 600) -> list[Path]:
    """Run the commands ``make_cmds(run_dir)`` in ``root/name/seed<N>`` once per seed, both seeds at the same
    time (each seed's commands in sequence); logs go beside the run directories. Returns the run directories."""
    running = []
    for seed in SEEDS:
        run_dir = root / name / f"seed{seed}"
        run_dir.mkdir(parents=True)
        log = open(root / name / f"seed{seed}.log", "w")
        env = dict(os.environ, PYTHONHASHSEED=seed, MPLBACKEND="Agg")
        env.pop("MLFLOW_TRACKING_URI", None)
        running.append((run_dir, log, env, list(make_cmds(run_dir))))
    procs = {}
    for run_dir, log, env, cmds in running:
        procs[run_dir] = subprocess.Popen(cmds[0], cwd=run_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
    for run_dir, log, env, cmds in running:
        rc = procs[run_dir].wait(timeout=timeout)
        for cmd in cmds[1:]:
            if rc != 0:
                break
            rc = subprocess.run(
                cmd, cwd=run_dir, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout
            ).returncode
        log.close()
        text = Path(log.name).read_text(errors="replace")
        assert rc == 0, f"{name} in {run_dir} exited with {rc}:\n{text[-3000:]}"
    return [r[0] for r in running]


def tree(root: Path, normalize=None) -> dict[str, bytes]:
    """``relative path -> bytes`` of every file under ``root`` (after ``normalize(rel, data)``; None drops)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            rel, data = p.relative_to(root).as_posix(), p.read_bytes()
            if normalize is not None:
                rel, data = normalize(rel, data)
            if rel is not None:
                out[rel] = data
    return out


def assert_same_tree(a: Path, b: Path, normalize=None, min_files: int = 1) -> dict[str, bytes]:
    ta, tb = tree(a, normalize), tree(b, normalize)
    assert len(ta) >= min_files, f"only {len(ta)} files under {a}"
    assert sorted(ta) == sorted(tb), f"different files: {sorted(set(ta) ^ set(tb))}"
    differ = [rel for rel in ta if ta[rel] != tb[rel]]
    assert not differ, f"bytes differ between PYTHONHASHSEED={SEEDS[0]} and {SEEDS[1]}: {differ}"
    return ta


def without_collected_at(rel: str, data: bytes) -> tuple[str, bytes]:
    if rel.endswith(".manifest.yaml"):
        data = b"\n".join(ln for ln in data.split(b"\n") if not ln.startswith(b"collected_at:"))
    return rel, data


# ---------------------------------------------------------------------------------------------- shared inputs
def _collect_cmds(d: Path) -> list[list[str]]:
    return [
        _cli(
            "collect",
            "--source",
            "synthetic",
            "--instruments",
            6,
            "--seed",
            3,
            "--timeframe",
            "1h",
            "--start",
            START,
            "--end",
            END,
            "--store",
            d / "store",
            "--quiet",
        )
    ]


def _snapshot_days(runs: list[Path]) -> set[tuple[str, ...]]:
    return {tuple(sorted(p.name for p in (d / "store" / "meta" / "instruments").iterdir())) for d in runs}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A synthetic store (collected under both seeds), its provider (dumped under both seeds), signals and scores."""
    root = tmp_path_factory.mktemp("determinism")
    collect = run_pair(root, "collect", _collect_cmds)
    store = collect[0] / "store"
    dump = run_pair(
        root,
        "dump",
        lambda d: [
            _cli("dump", "--store", store, "--qlib-dir", d / "qlib" / "60min", "--timeframe", "1h"),
            _cli(
                "dump",
                "--store",
                store,
                "--qlib-dir",
                d / "qlib" / "day",
                "--timeframe",
                "1d",
                "--from-timeframe",
                "1h",
            ),
        ],
    )
    provider = dump[0] / "qlib"
    instruments = sorted(p.name for p in (store / "bars" / "1h").iterdir())
    # random BUY/SELL/HOLD signals with sizes, and random scores, for every instrument and bar of the test window
    rng = np.random.default_rng(42)
    idx = pd.date_range(SIGNAL_START, SIGNAL_END, freq="h")
    rows = []
    for t in idx:
        for inst in instruments:
            u = rng.random()
            rows.append(
                (t, inst, "BUY" if u < 0.1 else ("SELL" if u < 0.2 else "HOLD"), rng.uniform(0.05, 0.3), rng.normal())
            )
    frame = pd.DataFrame(rows, columns=["datetime", "instrument", "signal", "position_size", "score"])
    frame.to_parquet(root / "signals.parquet")
    frame.set_index(["datetime", "instrument"])["score"].to_pickle(root / "pred.pkl")
    return {
        "root": root,
        "collect": collect,
        "dump": dump,
        "store": store,
        "provider": provider,
        "instruments": instruments,
        "signals": root / "signals.parquet",
        "pred": root / "pred.pkl",
    }


# ---------------------------------------------------------------------------------------------- data commands
def test_synthetic_collect_same_bytes(world):
    a, b = world["collect"]
    if len(_snapshot_days([a, b])) > 1:
        # The metadata snapshot is named (and stamped) by the UTC day it was read: the pair straddled midnight.
        # Run it again; two runs of a few seconds cannot straddle midnight twice in a row.
        a, b = run_pair(world["root"], "collect-again", _collect_cmds)
        assert len(_snapshot_days([a, b])) == 1
    files = assert_same_tree(a / "store", b / "store", without_collected_at)
    assert sum(rel.startswith("bars/1h/") and rel.endswith(".parquet") for rel in files) == 6


def test_dump_same_bytes(world):
    a, b = world["dump"]
    files = assert_same_tree(a / "qlib", b / "qlib")
    assert "60min/instruments/all.txt" in files and "day/calendars/day.txt" in files
    listed = [ln.split("\t")[0] for ln in files["60min/instruments/all.txt"].decode().splitlines()]
    assert listed == world["instruments"]


def test_import_same_bytes(world):
    from qlib_crypto.store import read_bars

    # one CSV holding three instruments, rows shuffled (the importer groups them by symbol)
    parts = []
    for inst in world["instruments"][:3]:
        bars = read_bars(world["store"], inst, "1h").reset_index()
        bars.insert(1, "symbol", inst)
        parts.append(bars)
    rows = pd.concat(parts, ignore_index=True)
    rows = rows.iloc[np.random.default_rng(5).permutation(len(rows))]
    rows["timestamp"] = rows.pop("datetime").dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    csv = world["root"] / "import.csv"
    rows.to_csv(csv, index=False)
    runs = run_pair(
        world["root"],
        "import",
        lambda d: [_cli("import", csv, "--symbol-column", "symbol", "--timeframe", "1h", "--store", d / "store")],
    )
    files = assert_same_tree(runs[0] / "store", runs[1] / "store", without_collected_at)
    assert sum(rel.endswith(".parquet") for rel in files) == 3


# ---------------------------------------------------------------------------------------------- backtest, sweep
#: several commands in one subprocess per seed (one Qlib import instead of four): ``qlib_crypto.cli.main`` per argv
MAIN_SCRIPT = (
    "import json, sys\n"
    "from qlib_crypto.cli import main\n"
    "for argv in json.loads(sys.argv[1]):\n"
    "    code = main(argv)\n"
    "    if code:\n"
    "        sys.exit(f'{argv[0]} exited with {code}')\n"
)


def backtest_args(world, strategy: str, out: Path) -> list[str]:
    source = ["--signals", world["signals"]] if strategy == "signal" else ["--pred", world["pred"]]
    return [
        str(a)
        for a in (
            "backtest",
            *source,
            "--strategy",
            strategy,
            "--provider-dir",
            world["provider"] / "60min",
            "--slippage-bps",
            2,
            "--account",
            1_000_000,
            "--out",
            out,
        )
    ]


@pytest.fixture(scope="module")
def backtest_pair(world):
    """``backtest`` with each strategy and a ``sweep``, under both seeds."""

    def commands(d: Path):
        argvs = [backtest_args(world, s, d / f"backtest_{s}") for s in ("signal", "longshort", "topk")]
        argvs.append(
            [
                str(a)
                for a in (
                    "sweep",
                    "--signals",
                    world["signals"],
                    "--provider-dir",
                    world["provider"] / "60min",
                    "--fee-multipliers",
                    "0,1",
                    "--slippage-bps",
                    "0,5",
                    "--out",
                    d / "sweep",
                )
            ]
        )
        return [[sys.executable, "-c", MAIN_SCRIPT, json.dumps(argvs)]]

    return run_pair(world["root"], "backtest", commands)


@pytest.mark.parametrize("strategy", ["signal", "longshort", "topk"])
def test_backtest_same_bytes(backtest_pair, strategy):
    a, b = (d / f"backtest_{strategy}" for d in backtest_pair)
    files = assert_same_tree(a, b, min_files=9)
    # not a vacuous comparison: many fills, and bars holding several instruments at once (the equity is a sum
    # over holdings, whose order used to follow set order)
    fills = pd.read_csv(a / "fills.csv")
    assert len(fills) > 100
    signed = pd.Series(
        np.where(fills["side"] == "buy", fills["amount"], -fills["amount"]),
        index=[fills["datetime"], fills["instrument"]],
    )
    holdings = signed.groupby(level=[0, 1]).sum().unstack(fill_value=0.0).cumsum()  # after each fill time
    assert (holdings.abs() > 1e-6 * holdings.abs().max()).sum(axis=1).max() >= 2
    assert json.loads(files["metrics.json"])["fees_paid"] > 0


def test_sweep_same_bytes(backtest_pair):
    a, b = (d / "sweep" for d in backtest_pair)
    files = assert_same_tree(a, b, min_files=4)
    assert len(json.loads(files["sweep.json"])["runs"]) == 4


# ---------------------------------------------------------------------------------------------- qrun, predict
def _small_workflow(world, run_dir: Path) -> Path:
    """The repository's 60min workflow on the module's provider: 3 weeks train, 1 valid, 1 test; a small model."""
    conf = yaml.safe_load(WORKFLOW.read_text())
    conf["qlib_init"]["provider_uri"] = {
        "60min": str(world["provider"] / "60min"),
        "day": str(world["provider"] / "day"),
    }
    handler = conf["task"]["dataset"]["kwargs"]["handler"]["kwargs"]
    handler.update(
        start_time=START,
        end_time="2024-02-04 23:00:00",
        fit_start_time=START,
        fit_end_time="2024-01-21 23:00:00",
        windows=[3, 12, 24],
    )
    conf["task"]["dataset"]["kwargs"]["segments"] = {
        "train": [START, "2024-01-21 23:00:00"],
        "valid": ["2024-01-22", "2024-01-28 23:00:00"],
        "test": ["2024-01-29", "2024-02-04 23:00:00"],
    }
    conf["task"]["model"]["kwargs"].update(num_boost_round=20, min_data_in_leaf=20, num_leaves=7)
    for record in conf["task"]["record"]:
        if record["class"] == "CryptoBacktestRecord":
            backtest = record["kwargs"]["config"]["backtest"]
            backtest.update(start_time="2024-01-29 00:00:00", end_time="2024-02-04 20:00:00")
            backtest["exchange"]["kwargs"]["instrument_meta"] = str(world["store"])
            record["kwargs"]["config"]["strategy"]["kwargs"].update(topk=1, rebalance_every=2)
        if record["class"] == "TrainingReportRecord":
            record["kwargs"]["out_dir"] = "reports/training"
    for anchor in ("data_handler_config", "port_analysis_config"):
        conf.pop(anchor, None)
    path = run_dir / "wf.yaml"
    path.write_text(yaml.safe_dump(conf, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def qrun_pair(world):
    # a relative path: qrun logs its argv as a run parameter
    return run_pair(world["root"], "qrun", lambda d: [[str(QRUN), _small_workflow(world, d).name]])


def _mlflow_run(run_dir: Path) -> Path:
    runs = [p for p in (run_dir / "mlruns").glob("*/*") if (p / "artifacts").is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def _recorder_normalizer(run: Path):
    """Drops MLflow bookkeeping (run meta.yaml, tags, metric timestamps) and run/experiment ids, created_at and
    the metadata digest from text artifacts (see the module docstring)."""
    from qlib_crypto.workflow import model_io

    digest_key = getattr(model_io, "METADATA_DIGEST_KEY", "metadata_sha256").encode()
    ids = [(run.name.encode(), b"<RUN_ID>"), (run.parent.name.encode(), b"<EXPERIMENT_ID>")]

    def normalize(rel: str, data: bytes):
        if rel == "meta.yaml" or rel.startswith("tags/"):
            return None, data
        if rel.startswith("metrics/"):  # "timestamp value step" lines: keep value and step
            return rel, b"\n".join(b" ".join(ln.split(b" ")[1:]) for ln in data.split(b"\n"))
        if rel.startswith("artifacts/") and Path(rel).suffix in (".yaml", ".json", ".html"):
            for raw, placeholder in ids:
                data = data.replace(raw, placeholder)
            data = b"\n".join(
                ln
                for ln in data.split(b"\n")
                if not ln.startswith(b"created_at:") and not ln.startswith(digest_key + b":")
            )
        return rel, data

    return normalize


def test_qrun_artifacts_same(qrun_pair):
    a, b = qrun_pair
    run_a, run_b = _mlflow_run(a), _mlflow_run(b)
    ta = tree(run_a, _recorder_normalizer(run_a))
    tb = tree(run_b, _recorder_normalizer(run_b))
    assert sorted(ta) == sorted(tb), sorted(set(ta) ^ set(tb))
    for name in (
        "artifacts/pred.pkl",
        "artifacts/label.pkl",
        "artifacts/portfolio_analysis/report_normal_60min.pkl",
        "artifacts/crypto_backtest/fills.csv",
        "artifacts/model/model.pkl",
        "metrics/IC",
    ):
        assert name in ta, name
    differ = [rel for rel in ta if ta[rel] != tb[rel]]
    assert not differ, f"recorder files differ between PYTHONHASHSEED={SEEDS[0]} and {SEEDS[1]}: {differ}"
    # the frames themselves (equal bytes imply this; it names the first differing cell if not)
    for name in ("pred.pkl", "label.pkl", "portfolio_analysis/report_normal_60min.pkl"):
        pd.testing.assert_frame_equal(
            pd.read_pickle(run_a / "artifacts" / name), pd.read_pickle(run_b / "artifacts" / name), check_exact=True
        )
    assert len(pd.read_csv(run_a / "artifacts" / "crypto_backtest" / "fills.csv")) > 10
    # the training report written to out_dir: same files up to the run/experiment ids
    ids = {a: (run_a.name, run_a.parent.name), b: (run_b.name, run_b.parent.name)}

    def report_files(d: Path) -> dict[str, bytes]:
        run_id, exp_id = ids[d]
        return {
            rel: data.replace(run_id.encode(), b"<RUN_ID>").replace(exp_id.encode(), b"<EXPERIMENT_ID>")
            for rel, data in tree(d / "reports" / "training").items()
        }

    ra, rb = report_files(a), report_files(b)
    assert sorted(ra) == ["training_report.html", "training_report.json"] and ra == rb


def test_predict_same_bytes(world, qrun_pair):
    tracking = f"file:{qrun_pair[0] / 'mlruns'}"
    runs = run_pair(
        world["root"],
        "predict",
        lambda d: [
            _cli(
                "predict",
                "--experiment",
                "crypto_lightgbm_60min",
                "--tracking-uri",
                tracking,
                "--provider-dir",
                f"60min={world['provider'] / '60min'}",
                "--provider-dir",
                f"day={world['provider'] / 'day'}",
                "--freq",
                "60min",
                "--start",
                "2024-01-29",
                "--end",
                "2024-02-04 22:00",
                "--out",
                d / "out" / "signals.parquet",
            )
        ],
    )
    assert_same_tree(runs[0] / "out", runs[1] / "out")
    signals = pd.read_parquet(runs[0] / "out" / "signals.parquet")
    assert len(signals) > 100 and signals["instrument"].nunique() == 6


# ---------------------------------------------------------------------------------------------- pieces
def test_position_lists_holdings_in_name_order():
    """Qlib's Position.get_stock_list is list(set(...)); ours is sorted whatever the insertion order."""
    from qlib_crypto.backtest import CryptoPosition

    pos = CryptoPosition(cash=1000.0)
    for name, amount in (("XRP-USDT", 1.0), ("ADA-USDT-SWAP", -2.0), ("BTC-USDT", 0.5), ("DOGE-USDT", 3.0)):
        pos._init_stock(name, amount, price=10.0)
    assert pos.get_stock_list() == ["ADA-USDT-SWAP", "BTC-USDT", "DOGE-USDT", "XRP-USDT"]
    assert pos.calculate_value() == 1000.0 + 10.0 * (1.0 - 2.0 + 0.5 + 3.0)


def test_round_trips_ignore_rounding_dust_of_closing_fill():
    """A sell that closes a long holds a few ulps more than the buys added up to (the position books
    value / price): one closed trade, not a closed trade plus a dust short."""
    from qlib_crypto.workflow.backtest_report import round_trips

    a, b = 1234567.1, 2345678.3
    held = a + b
    sell = np.nextafter(np.nextafter(held, np.inf), np.inf)  # two ulps more than the buys' float sum
    assert sell > held and sell - held < 1e-9
    t = pd.Timestamp("2024-01-01")
    fills = pd.DataFrame(
        {
            "datetime": [t, t + pd.Timedelta(hours=1), t + pd.Timedelta(hours=2)],
            "instrument": ["SOL-USDT"] * 3,
            "side": ["buy", "buy", "sell"],
            "amount": [a, b, sell],
            "price": [0.15, 0.15, 0.16],
            "fee": [0.0, 0.0, 0.0],
            "slippage": [0.0] * 3,
            "deal_price": [0.15, 0.15, 0.16],
            "value": [a * 0.15, b * 0.15, sell * 0.16],
            "role": ["taker"] * 3,
            "market": ["spot"] * 3,
        }
    )
    trades = round_trips(fills)
    assert len(trades) == 1
    trade = trades.iloc[0]
    assert trade["side"] == "long" and bool(trade["closed"])
    assert trade["pnl"] == pytest.approx(held * (0.16 - 0.15), rel=1e-12)
