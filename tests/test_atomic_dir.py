"""Output directories written as one unit (``qlib_crypto._atomic.atomic_dir``): a reader sees the old complete set
of files or the new complete set, never a mix, even when the writer is killed.

The command tests run ``qlib-crypto backtest`` and ``qlib-crypto sweep`` in subprocesses through
``tests/_kill_at_write.py``, which SIGKILLs the process mid-write (after some files), after every file was
written but before the swap, or between the two renames of the fallback swap; the output directory is then
compared with the files of a complete earlier run (the old set), and a re-run with the files of a complete run
of the new command (the new set).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qlib_crypto import _atomic
from qlib_crypto._atomic import atomic_dir, recover_dir
from qlib_crypto.errors import ConfigError

KILLER = Path(__file__).with_name("_kill_at_write.py")
BACKTEST_FILES = [
    "equity.csv",
    "fills.csv",
    "funding.csv",
    "metrics.json",
    "monthly_returns.csv",
    "order_reports.csv",
    "report.html",
    "report.json",
    "trades.csv",
]
SWEEP_FILES = ["sweep.csv", "sweep.html", "sweep.json", "sweep.png"]


def files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def siblings(d: Path) -> list[str]:
    """Leftovers of atomic_dir beside ``d`` (staging / old directories)."""
    return sorted(p.name for p in d.parent.iterdir() if p.name.startswith(f".{d.name}."))


# ---------------------------------------------------------------------------------------------- the helper
def write_set(path: Path, contents: dict[str, str], **kwargs) -> None:
    with atomic_dir(path, **kwargs) as stage:
        for name, text in contents.items():
            (stage / name).write_text(text)


def test_new_directory_and_whole_set_replaced(tmp_path):
    out = tmp_path / "reports" / "bt"
    write_set(out, {"a.txt": "old a", "b.txt": "old b"})
    assert files(out) == {"a.txt": b"old a", "b.txt": b"old b"}
    write_set(out, {"a.txt": "new a", "c.txt": "new c"})
    # exactly the new set: b.txt of the old run is gone, nothing staged is left beside it
    assert files(out) == {"a.txt": b"new a", "c.txt": b"new c"}
    assert siblings(out) == []


def test_error_inside_leaves_old_set_and_no_staging(tmp_path):
    out = tmp_path / "bt"
    write_set(out, {"a.txt": "old a", "b.txt": "old b"})
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as stage:
            (stage / "a.txt").write_text("new a")
            raise RuntimeError("killed by a bug")
    assert files(out) == {"a.txt": b"old a", "b.txt": b"old b"}
    assert siblings(out) == []


def test_directory_with_other_files_is_refused(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError) as err:
        write_set(out, {"metrics.json": "{1}"}, replaceable=["metrics.json"], what="--out directory")
    assert "notes.txt" in str(err.value) and err.value.hint
    assert files(out) == {"notes.txt": b"keep me", "metrics.json": b"{}"}
    # only its own files (and temporary files a killed older writer left): replaced
    (out / "notes.txt").unlink()
    (out / ".metrics.json.x1y2.tmp").write_text("partial")
    write_set(out, {"metrics.json": "{2}"}, replaceable=["metrics.json"])
    assert files(out) == {"metrics.json": b"{2}"} and not list(out.glob(".*"))


def test_fallback_swap_without_renameat2(tmp_path, monkeypatch):
    monkeypatch.setattr(_atomic, "_exchange_dirs", lambda a, b: False)
    out = tmp_path / "bt"
    write_set(out, {"a.txt": "old"})
    write_set(out, {"a.txt": "new", "b.txt": "new b"})
    assert files(out) == {"a.txt": b"new", "b.txt": b"new b"}
    assert siblings(out) == []


def test_leftovers_of_a_killed_writer_are_cleaned_or_put_back(tmp_path):
    out = tmp_path / "bt"
    write_set(out, {"a.txt": "old"})
    # killed while staging: a partial staging directory is left beside the old set
    stale = tmp_path / ".bt.staging-999999"
    stale.mkdir()
    (stale / "a.txt").write_text("half")
    # killed between the fallback's two renames: the old set sits in .bt.old-*, bt is missing
    os.rename(out, tmp_path / ".bt.old-999998")
    assert not out.exists()
    recover_dir(out)
    assert files(out) == {"a.txt": b"old"} and siblings(out) == []
    # the next writer also cleans up first
    stale.mkdir()
    write_set(out, {"a.txt": "new"})
    assert files(out) == {"a.txt": b"new"} and siblings(out) == []


def test_training_report_directory_is_one_unit(tmp_path, monkeypatch):
    from qlib_crypto.workflow import training_report as tr

    idx = pd.MultiIndex.from_product(
        [pd.date_range("2024-01-01", periods=30, freq="h"), ["A", "B", "C", "D"]], names=["datetime", "instrument"]
    )
    rng = np.random.default_rng(0)
    pred = pd.Series(rng.normal(size=len(idx)), index=idx)
    label = pd.DataFrame({"LABEL0": pred.to_numpy() + rng.normal(size=len(idx))}, index=idx)
    out = tmp_path / "training"
    tr.training_report(pred, label, None, None, out, title="first")
    old = files(out)
    assert sorted(old) == [tr.HTML_NAME, tr.JSON_NAME] and b"first" in old[tr.JSON_NAME]

    def broken_page(*args, **kwargs):  # fails after the JSON file was staged
        raise RuntimeError("html failed")

    import qlib_crypto._html as html  # training_report imports page from it when called

    monkeypatch.setattr(html, "page", broken_page)
    with pytest.raises(RuntimeError):
        tr.training_report(pred, label, None, None, out, title="second")
    assert files(out) == old and siblings(out) == []


# ---------------------------------------------------------------------------------------------- commands, killed
@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from tiny_provider import random_walk_bars, write_provider

    root = tmp_path_factory.mktemp("atomic_cmds")
    insts = ["BTC-USDT", "ETH-USDT", "SOL-USDT-SWAP"]
    write_provider(root / "qlib", random_walk_bars(insts, 240, start="2024-03-01", seed=4))
    rng = np.random.default_rng(8)
    times = pd.date_range("2024-03-02", periods=200, freq="h")
    rows = [
        (t, i, rng.choice(["BUY", "SELL", "HOLD"], p=[0.15, 0.15, 0.7]), rng.uniform(0.1, 0.3))
        for t in times
        for i in insts
    ]
    pd.DataFrame(rows, columns=["datetime", "instrument", "signal", "position_size"]).to_parquet(
        root / "signals.parquet"
    )
    return root


def _args(root: Path, command: str, out: Path, new: bool) -> list[str]:
    common = [
        "--signals",
        str(root / "signals.parquet"),
        "--provider-dir",
        str(root / "qlib" / "60min"),
        "--account",
        "100000",
        "--out",
        str(out),
    ]
    if command == "backtest":
        return ["backtest", *common, "--slippage-bps", "5" if new else "0"]
    return ["sweep", *common, "--fee-multipliers", "0,1" if new else "0,2", "--slippage-bps", "0,3"]


def _start(argv: list[str], mode: str | None = None, needle: str = "") -> subprocess.Popen:
    cmd = [sys.executable, str(KILLER), mode, needle, *argv] if mode else [sys.executable, "-m", "qlib_crypto", *argv]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _run_in_one(argvs: list[list[str]]) -> None:
    """Complete (never killed) commands, in this process through the console script's entry point
    (``qlib_crypto.cli:main``): no new Python importing Qlib per command. Only the killed runs need processes
    of their own."""
    from qlib_crypto.cli import main

    for argv in argvs:
        assert main(argv) == 0, argv  # the command's output is in the test's captured output


def _wait_all(procs: dict) -> dict:
    out = {}
    for key, proc in procs.items():
        text, _ = proc.communicate(timeout=600)
        out[key] = (proc.returncode, text)
    return out


def test_killed_backtest_and_sweep_leave_old_set_and_rerun_writes_new_set(inputs):
    root = inputs
    # reference runs: the old set and the new set of each command (complete, never killed)
    refs = {(c, new): root / "ref" / f"{c}_{'new' if new else 'old'}" for c in ("backtest", "sweep") for new in (0, 1)}
    _run_in_one([_args(root, k[0], d, bool(k[1])) for k, d in refs.items()])
    old = {c: files(refs[(c, 0)]) for c in ("backtest", "sweep")}
    new = {c: files(refs[(c, 1)]) for c in ("backtest", "sweep")}
    assert sorted(old["backtest"]) == BACKTEST_FILES and sorted(old["sweep"]) == SWEEP_FILES
    for c in ("backtest", "sweep"):  # the two sets differ in every file that depends on the costs
        assert (
            old[c]["metrics.json" if c == "backtest" else "sweep.json"]
            != new[c]["metrics.json" if c == "backtest" else "sweep.json"]
        )

    # each scenario: its own parent directory holding a copy of the old set, then the new command, killed
    scenarios = {
        "bt_write4": ("backtest", "write:4"),
        "bt_swap": ("backtest", "swap"),
        "bt_renames": ("backtest", "between-renames"),
        "sw_write2": ("sweep", "write:2"),
    }
    outs = {}
    for name, (command, _mode) in scenarios.items():
        out = root / "kill" / name / "out"
        shutil.copytree(refs[(command, 0)], out)
        outs[name] = out
    done = _wait_all(
        {
            name: _start(_args(root, c, outs[name], True), mode, needle=f"{os.sep}kill{os.sep}{name}{os.sep}")
            for name, (c, mode) in scenarios.items()
        }
    )
    for name, (rc, text) in done.items():
        assert rc == -signal.SIGKILL, f"{name} was not killed (exit {rc}): {text[-2000:]}"
        command, mode = scenarios[name]
        out = outs[name]
        if mode == "between-renames":
            # the old set waits beside the directory; recovery (or the next writer) puts it back
            assert not out.exists() and any(s.startswith(".out.old-") for s in siblings(out))
            recover_dir(out)
        assert files(out) == old[command], f"{name}: not the old set after the kill"
    # the next run cleans up what the killed one left and writes the new set
    _run_in_one([_args(root, scenarios[name][0], outs[name], True) for name in scenarios])
    for name in scenarios:
        assert files(outs[name]) == new[scenarios[name][0]], f"{name}: not the new set after the re-run"
        assert siblings(outs[name]) == []
