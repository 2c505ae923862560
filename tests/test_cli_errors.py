"""Bad values on the command line: one `error: ...` line naming the value, exit code 2, nothing written.

Covers `dump` (output paths under a file, on /proc, on a read-only or full filesystem, a write that fails
with ENOSPC/EROFS, --window-days), `backtest` and `sweep` (account, slippage, times, fees, benchmark, config,
unreadable signals files, --out), `predict` (--warmup-bars, --out, --tracking-uri) and the conflict line of
`import`. Everything is checked before Qlib is imported, so the commands run in this process; the
filesystem failures are injected in a subprocess (tests run as root, which ignores a chmod 0555):

- read-only / full filesystem: `os.statvfs` is wrapped to report ST_RDONLY / zero free blocks, as a
  read-only mount or a full disk report them;
- ENOSPC / EROFS while writing: `os.write` (the call that writes the feature files) raises the OSError a full
  or read-only disk raises, after the dump has started staging files.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qlib_crypto import store
from qlib_crypto.cli import main

N_HOURS = 24 * 14
IDX = pd.date_range("2024-01-01", periods=N_HOURS, freq="h")
INSTRUMENTS = ["BTC-USDT", "ETH-USDT", "BTC-USDT-SWAP"]


def _bars(seed: int = 3) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    out = {}
    for k, inst in enumerate(INSTRUMENTS):
        close = 100.0 * (k + 1) * np.exp(np.cumsum(rng.normal(0, 0.01, N_HOURS)))
        open_ = np.r_[close[0], close[:-1]]
        out[inst] = pd.DataFrame(
            {
                "open": open_,
                "high": np.maximum(open_, close) * 1.002,
                "low": np.minimum(open_, close) * 0.998,
                "close": close,
                "volume": rng.uniform(10, 20, N_HOURS),
            },
            index=IDX,
        )
    return out


class Canary:
    """Unpickling it creates ``marker``: proof that a file was (or was not) unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = Path(marker)

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A provider (60min + day), valid and broken signals files, config files and a raw store."""
    from tiny_provider import write_provider

    root = tmp_path_factory.mktemp("cli_errors")
    bars = _bars()
    write_provider(root / "prov", bars)
    signals = pd.DataFrame(
        {
            "datetime": [IDX[5], IDX[30]],
            "instrument": ["BTC-USDT", "ETH-USDT"],
            "signal": ["BUY", "SELL"],
            "position_size": [0.3, -0.2],
            "score": [1.0, -1.0],
        }
    )
    signals.to_parquet(root / "signals.parquet")
    import pickle

    (root / "signals.pkl").write_bytes(pickle.dumps(Canary(root / "unpickled.marker")))
    rng = np.random.default_rng(0)
    (root / "binary.parquet").write_bytes(rng.bytes(512))
    (root / "binary.csv").write_bytes(b"datetime,instrument\x00\xff\xfe" + rng.bytes(300))
    (root / "empty.parquet").write_bytes(b"")
    (root / "empty.csv").write_bytes(b"")
    (root / "list.yaml").write_text("- slippage_bps: 2\n- fees: {}\n")
    (root / "exchange_scalar.yaml").write_text("exchange: 5\n")
    (root / "a_file").write_text("not a directory\n")
    st = root / "store"
    for inst, df in bars.items():
        store.write_bars(st, inst, "1h", df.assign(amount=df["volume"] * df["close"]), source="test")
    return root


def run(args: list[str], capsys) -> tuple[int, list[str]]:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip()]


def assert_one_line_error(code: int, lines: list[str], *needles: str) -> None:
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# --------------------------------------------------------------------------------------------- backtest / sweep
# (extra args, substrings the error line must hold); {root} is the fixture directory
BACKTEST_CASES = {
    "account-zero": (["--account", "0"], ["--account", "0"]),
    "account-negative": (["--account", "-5"], ["--account", "-5"]),
    "account-nan": (["--account", "nan"], ["--account", "nan"]),
    "account-inf": (["--account", "inf"], ["--account", "inf"]),
    "slippage-nan": (["--slippage-bps", "nan"], ["--slippage-bps", "nan"]),
    "start-junk": (["--start", "junk"], ["--start", "'junk'"]),
    "fees-not-a-number": (["--fees", "{spot: {taker: abc}}"], ["--fees", "spot.taker", "'abc'"]),
    "benchmark-unknown": (["--benchmark", "NOPE"], ["--benchmark", "'NOPE'"]),
    "config-list": (["--config", "{root}/list.yaml"], ["list.yaml", "not a mapping"]),
    "config-exchange-scalar": (["--config", "{root}/exchange_scalar.yaml"], ["exchange_scalar.yaml", "exchange 5"]),
    "signals-binary-parquet": (["--signals", "{root}/binary.parquet"], ["--signals", "binary.parquet"]),
    "signals-binary-csv": (["--signals", "{root}/binary.csv"], ["--signals", "binary.csv"]),
    "signals-empty-parquet": (["--signals", "{root}/empty.parquet"], ["--signals", "empty.parquet", "empty"]),
    "signals-empty-csv": (["--signals", "{root}/empty.csv"], ["--signals", "empty.csv", "empty"]),
}


@pytest.mark.parametrize("command", ["backtest", "sweep"])
@pytest.mark.parametrize("case", sorted(BACKTEST_CASES))
def test_backtest_and_sweep_bad_values(env, tmp_path, capsys, command, case):
    extra, needles = BACKTEST_CASES[case]
    extra = [a.replace("{root}", str(env)) for a in extra]
    signals = [] if "--signals" in extra else ["--signals", env / "signals.parquet"]
    out = tmp_path / "out"
    code, lines = run([command, *signals, "--provider-dir", env / "prov" / "60min", *extra, "--out", out], capsys)
    assert_one_line_error(code, lines, *needles)
    assert listing(tmp_path) == []  # no --out directory, nothing staged beside it


@pytest.mark.parametrize("command", ["backtest", "sweep"])
def test_pickled_signals_are_never_unpickled(env, tmp_path, capsys, command):
    code, lines = run(
        [
            command,
            "--signals",
            env / "signals.pkl",
            "--provider-dir",
            env / "prov" / "60min",
            "--out",
            tmp_path / "out",
        ],
        capsys,
    )
    assert_one_line_error(code, lines, "signals.pkl", "pickle", "Parquet or CSV")
    assert not (env / "unpickled.marker").exists()
    assert listing(tmp_path) == []


@pytest.mark.parametrize("command", ["backtest", "sweep"])
@pytest.mark.parametrize("where", ["a file", "under a file", "proc"])
def test_backtest_and_sweep_bad_out(env, tmp_path, capsys, command, where):
    out = {
        "a file": env / "a_file",
        "under a file": env / "a_file" / "reports",
        "proc": Path("/proc/qlib-crypto-test/reports"),
    }[where]
    before = listing(env)
    code, lines = run(
        [command, "--signals", env / "signals.parquet", "--provider-dir", env / "prov" / "60min", "--out", out], capsys
    )
    assert_one_line_error(code, lines, "--out", str(out))
    assert listing(env) == before and (env / "a_file").read_text() == "not a directory\n"


# --------------------------------------------------------------------------------------------- dump
def test_dump_into_a_path_under_a_file(env, tmp_path, capsys):
    (tmp_path / "plain").write_text("x")
    target = tmp_path / "plain" / "qlib" / "60min"
    code, lines = run(["dump", "--store", env / "store", "--qlib-dir", target, "--timeframe", "1h"], capsys)
    assert_one_line_error(code, lines, "--qlib-dir", str(target), "which is a file")
    assert listing(tmp_path) == ["plain"] and (tmp_path / "plain").read_text() == "x"


def test_dump_into_proc(env, capsys):
    target = Path("/proc/qlib-crypto-test/60min")
    code, lines = run(["dump", "--store", env / "store", "--qlib-dir", target, "--timeframe", "1h"], capsys)
    assert_one_line_error(code, lines, str(target), "proc")
    assert not target.exists()


def test_dump_negative_window_days(env, tmp_path, capsys):
    target = tmp_path / "qlib" / "60min"
    code, lines = run(
        ["dump", "--store", env / "store", "--qlib-dir", target, "--timeframe", "1h", "--window-days", "-5"], capsys
    )
    assert_one_line_error(code, lines, "--window-days", "-5")
    assert listing(tmp_path) == []


INJECT = textwrap.dedent(
    """
    import errno, os, sys
    from qlib_crypto.cli import main

    mode = sys.argv[1]
    real_statvfs = os.statvfs

    def statvfs(path):
        r = real_statvfs(path)
        flag = r.f_flag | os.ST_RDONLY if mode == "statvfs-readonly" else r.f_flag
        free = 0 if mode == "statvfs-full" else r.f_bavail
        return os.statvfs_result((r.f_bsize, r.f_frsize, r.f_blocks, free, free, r.f_files, r.f_ffree,
                                  r.f_favail, flag, r.f_namemax))

    def failing_write(fd, data):
        code = errno.ENOSPC if mode == "write-enospc" else errno.EROFS
        raise OSError(code, os.strerror(code))

    if mode.startswith("statvfs"):
        os.statvfs = statvfs
    else:
        os.write = failing_write
    sys.exit(main(sys.argv[2:]))
    """
)


@pytest.mark.parametrize(
    "mode, needle",
    [
        ("statvfs-readonly", "read-only filesystem"),
        ("statvfs-full", "full filesystem"),
        ("write-enospc", os.strerror(errno.ENOSPC)),
        ("write-erofs", os.strerror(errno.EROFS)),
    ],
)
def test_dump_read_only_or_full_filesystem(env, tmp_path, mode, needle):
    parent = tmp_path / "qlib"
    parent.mkdir()
    target = parent / "60min"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            INJECT,
            mode,
            "dump",
            "--store",
            str(env / "store"),
            "--qlib-dir",
            str(target),
            "--timeframe",
            "1h",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert_one_line_error(proc.returncode, lines, str(target) if mode.startswith("write") else "--qlib-dir", needle)
    assert not target.exists()
    if mode.startswith("statvfs"):  # refused before anything was created
        assert listing(parent) == []
    else:  # the staging directory was removed; at most the (empty) lock file of the dump remains
        assert set(listing(parent)) <= {".60min.lock"}
        assert all(p.stat().st_size == 0 for p in parent.iterdir())


# --------------------------------------------------------------------------------------------- predict
@pytest.fixture(scope="module")
def model(env):
    from qlib_crypto.workflow.model_io import save_model

    path = env / "models" / "m.pkl"
    handler = {
        "class": "DataHandlerLP",
        "module_path": "qlib.data.dataset.handler",
        "kwargs": {
            "instruments": "all",
            "data_loader": {
                "class": "QlibDataLoader",
                "kwargs": {
                    "freq": "60min",
                    "config": {"feature": [["$close"], ["CLOSE"]], "label": [["Ref($close,-1)/$close-1"], ["LABEL0"]]},
                },
            },
        },
    }
    save_model(
        {"weights": [1.0]},
        path,
        feature_names=["CLOSE"],
        train_window=(str(IDX[0]), str(IDX[100])),
        handler_config=handler,
    )
    return path


def test_predict_negative_warmup_bars(env, model, tmp_path, capsys):
    out = tmp_path / "signals.parquet"
    code, lines = run(
        ["predict", "--model", model, "--provider-dir", env / "prov" / "60min", "--warmup-bars", "-5", "--out", out],
        capsys,
    )
    assert_one_line_error(code, lines, "--warmup-bars", "-5")
    assert listing(tmp_path) == []


def test_predict_out_is_a_directory(env, model, tmp_path, capsys):
    out = tmp_path / "reports"
    out.mkdir()
    code, lines = run(["predict", "--model", model, "--provider-dir", env / "prov" / "60min", "--out", out], capsys)
    assert_one_line_error(code, lines, "--out", str(out), "is a directory")
    assert listing(tmp_path) == ["reports"]


@pytest.mark.parametrize("form", ["path", "file-uri", "default"])
def test_predict_tracking_uri_that_does_not_exist(env, tmp_path, capsys, monkeypatch, form):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store_dir = tmp_path / ("mlruns" if form == "default" else "nowhere")
    uri = {
        "path": ["--tracking-uri", str(store_dir)],
        "file-uri": ["--tracking-uri", "file:" + str(store_dir)],
        "default": [],
    }[form]
    out = tmp_path / "signals.parquet"
    code, lines = run(
        ["predict", "--experiment", "crypto", *uri, "--provider-dir", env / "prov" / "60min", "--out", out], capsys
    )
    assert_one_line_error(code, lines, str(store_dir), "does not exist")
    assert listing(tmp_path) == []  # no mlruns store was created


# --------------------------------------------------------------------------------------------- import
def test_import_conflict_names_the_fields_that_differ(tmp_path, capsys):
    header = "timestamp,open,high,low,close,volume,amount"
    stamps = ["2024-03-01T00:00:00Z", "2024-03-01T01:00:00Z", "2024-03-01T02:00:00Z"]
    rows = [
        [100.0, 101.0, 99.0, 100.5, 10.0, 1003.5],
        [100.5, 102.25, 100.0, 101.5, 12.0, 1214.0],
        [101.5, 103.0, 101.0, 102.5, 5.5, 563.75],
    ]
    changed = [list(r) for r in rows]
    changed[1][4] = 12.5  # only the volume of 01:00 differs
    changed[2][1], changed[2][5] = 104.0, 570.0  # high and amount of 02:00 differ

    def write(name, table):
        path = tmp_path / name
        path.write_text(
            "\n".join([header] + [",".join([s] + [repr(v) for v in r]) for s, r in zip(stamps, table)]) + "\n"
        )
        return path

    st = tmp_path / "store"
    args = ["--instrument", "BTC-USDT", "--timeframe", "1h", "--store", st]
    assert main(["import", str(write("first.csv", rows)), *map(str, args)]) == 0
    capsys.readouterr()
    assert main(["import", str(write("second.csv", changed)), *map(str, args)]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("conflicts:"))
    assert "2 bars differ" in line
    assert "first at 2024-03-01T01:00:00" in line
    assert f"volume stored {12.0!r} vs file {12.5!r}" in line
    assert "close" not in line and "open" not in line and "amount" not in line
    # the second conflicting bar, imported alone, shows both of its fields
    (tmp_path / "third.csv").write_text(header + "\n" + ",".join([stamps[2]] + [repr(v) for v in changed[2]]) + "\n")
    assert main(["import", str(tmp_path / "third.csv"), *map(str, args)]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("conflicts:"))
    assert f"high stored {103.0!r} vs file {104.0!r}" in line and f"amount stored {563.75!r} vs file {570.0!r}" in line
    assert "volume" not in line and "close" not in line
