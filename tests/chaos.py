"""Chaos machinery for the store: concurrent writers and crash points (used by tests and scripts/chaos_store.py).

Crash points: a command runs in a forked child in which every *write point* (``tempfile.mkstemp`` of a
temporary file inside the store: a file is about to be written) and every *rename point* (``os.replace``
into the store: a written file is about to take its place) is counted. Fault ``kill`` at point k sends
SIGKILL to the child just before point k (so every state between two points is reached); fault ``enospc``
raises ``OSError(ENOSPC)`` at write point k and at every later one (a disk that stays full). The parent then
re-runs the same command without faults and compares the store with one written by an uninterrupted run.

The expected data is built independently of the store: bar files are generated here with numpy, and the
synthetic collect is compared with an uninterrupted run of the same command.
"""

from __future__ import annotations

import errno
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
COLS = ["open", "high", "low", "close", "volume", "amount"]
_IGNORED_PREFIXES = (".qlib_crypto.lock", ".write-probe-")


# --- data made here, not by the package ---------------------------------------------------------------


def make_bars(start: str, periods: int, seed: int, freq: str = "1h") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, periods)))
    open_ = np.concatenate([[100.0], close[:-1]])
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.01, periods))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.01, periods))
    volume = rng.uniform(1, 10, periods)
    idx = pd.date_range(start, periods=periods, freq=freq, tz="UTC")
    return pd.DataFrame(
        {
            "datetime": idx,
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": volume,
            "amount": volume * close,
        }
    )


def write_csv(path: Path, bars: pd.DataFrame) -> Path:
    out = bars.copy()
    out["datetime"] = out["datetime"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    out.to_csv(path, index=False, float_format="%r")
    return path


# --- reading a store back (through files, compared as frames) --------------------------------------------


def store_data(store: Path) -> dict[str, pd.DataFrame]:
    """Every bars and funding series of a store as frames (rows sorted), and the coverage ranges."""
    import yaml

    out: dict[str, pd.DataFrame] = {}
    for kind in ("bars", "funding"):
        root = store / kind
        if not root.is_dir():
            continue
        for series in sorted(p for p in root.rglob("*") if p.is_dir() and any(p.glob("*.parquet"))):
            frames = [pd.read_parquet(f) for f in sorted(series.glob("[0-9]*.parquet"))]
            frame = pd.concat(frames, ignore_index=True).sort_values("datetime", kind="stable").reset_index(drop=True)
            out[str(series.relative_to(store))] = frame
            cov = series / "_coverage.yaml"
            if cov.exists():
                out[str(cov.relative_to(store))] = pd.DataFrame(
                    (yaml.safe_load(cov.read_text()) or {}).get("ranges", [])
                )
    return out


def same_data(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> tuple[bool, int]:
    """(equal, bars missing from ``a`` that ``b`` has)."""
    lost = 0
    for key, frame in b.items():
        if key.startswith("bars/") and not key.endswith(".yaml"):
            have = a.get(key)
            # distinct bar times of ``b`` that ``a`` lacks (an index difference: no Timestamp objects per row)
            lost += len(frame) if have is None else len(pd.Index(frame["datetime"]).difference(have["datetime"]))
    equal = sorted(a) == sorted(b) and all(a[k].equals(b[k]) for k in b)
    return equal, lost


# --- running commands ---------------------------------------------------------------------------------


def cli(args: list[str]) -> tuple[int, str]:
    """Run the CLI in this process; (exit code, output)."""
    from qlib_crypto.cli import main

    buf = io.StringIO()
    with redirect_stdout(buf), redirect_stderr(buf):
        code = main(list(args))
    return code, buf.getvalue()


def cli_subprocess(args: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "qlib_crypto", *args],
        cwd=tempfile.gettempdir(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


@dataclass
class ForkedCli:
    """The CLI running in a child forked from this process (see :func:`cli_forked`)."""

    pid: int
    fd: int  # read end of the pipe carrying the child's output

    def communicate(self, timeout: float = 600) -> tuple[int, str]:
        """Wait for the child; (exit code, output). The child is killed if it outlives ``timeout``."""
        import select

        chunks, deadline = [], time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    os.kill(self.pid, signal.SIGKILL)
                    os.waitpid(self.pid, 0)
                    raise TimeoutError(f"forked CLI (pid {self.pid}) still running after {timeout} s")
                if select.select([self.fd], [], [], left)[0]:
                    data = os.read(self.fd, 65536)
                    if not data:
                        break
                    chunks.append(data)
        finally:
            os.close(self.fd)
        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status), b"".join(chunks).decode("utf-8", "replace")


def cli_forked(args: list[str]) -> ForkedCli:
    """Start the CLI (``qlib_crypto.cli.main``, as :func:`cli`) in a child process forked from this one.

    A process of its own, like :func:`cli_subprocess` (the store lock is taken and waited for across
    processes), that starts at once with this process's imports instead of a new Python importing them: two
    children started one after the other reach the store within milliseconds of each other."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(rfd)
        code = 99
        try:
            code, out = cli(args)
            data = out.encode("utf-8", "replace")
        except BaseException as exc:  # noqa: BLE001
            data = f"child crashed: {type(exc).__name__}: {exc}".encode()
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(wfd, view) :]
            os.close(wfd)
        finally:
            os._exit(code)
    os.close(wfd)
    return ForkedCli(pid, rfd)


def _run_writers(argvs: list[list[str]], fork: bool) -> tuple[list[int], str]:
    """Start one CLI process per argv at once (forked, or new Pythons); (exit codes, their output)."""
    if fork:
        children = [cli_forked(a) for a in argvs]
        results = [c.communicate(timeout=600) for c in children]
        return [code for code, _ in results], "\n".join(out for _, out in results)
    procs = [cli_subprocess(a) for a in argvs]
    outs = [p.communicate(timeout=600) for p in procs]
    return [p.returncode for p in procs], "\n".join(o[0] + o[1] for o in outs)


@dataclass
class FaultRun:
    points: int  # points reached
    exit_code: int | None  # None: killed
    output: str


def run_with_fault(args: list[str], store: Path, mode: str, k: int) -> FaultRun:
    """Run the CLI in a forked child with fault ``mode`` ("count", "kill", "enospc") at point ``k``."""
    store_str = str(store.resolve())
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(rfd)
        counter = [0]

        def in_store(path: object) -> bool:
            p = os.path.abspath(os.fspath(path))
            return p.startswith(store_str + os.sep) and not os.path.basename(p).startswith(_IGNORED_PREFIXES)

        def point(is_write: bool) -> None:
            counter[0] += 1
            os.write(wfd, b".")
            if mode == "kill" and counter[0] == k:
                os.kill(os.getpid(), signal.SIGKILL)
            if mode == "enospc" and is_write and counter[0] >= k:
                raise OSError(errno.ENOSPC, "No space left on device (injected)")

        real_replace, real_mkstemp = os.replace, tempfile.mkstemp

        def replace(src, dst, *a, **kw):
            if in_store(dst):
                point(False)
            return real_replace(src, dst, *a, **kw)

        def mkstemp(*a, **kw):
            d = kw.get("dir") or (a[2] if len(a) > 2 else None)
            prefix = kw.get("prefix") or (a[1] if len(a) > 1 else "") or ""
            if d is not None and in_store(os.path.join(d, prefix + "x")):
                point(True)
            return real_mkstemp(*a, **kw)

        os.replace, tempfile.mkstemp = replace, mkstemp
        code = 99
        try:
            code, out = cli(args)
            os.write(wfd, b"\n" + out.encode("utf-8", "replace"))
        except BaseException as exc:  # noqa: BLE001
            os.write(wfd, f"\nchild crashed: {type(exc).__name__}: {exc}".encode())
        finally:
            os.close(wfd)
            os._exit(code)
    os.close(wfd)
    chunks = []
    while True:
        data = os.read(rfd, 65536)
        if not data:
            break
        chunks.append(data)
    os.close(rfd)
    _, status = os.waitpid(pid, 0)
    raw = b"".join(chunks)
    dots, _, out = raw.partition(b"\n")
    exit_code = os.waitstatus_to_exitcode(status)
    return FaultRun(
        points=dots.count(b"."), exit_code=None if exit_code < 0 else exit_code, output=out.decode("utf-8", "replace")
    )


# --- scenarios ----------------------------------------------------------------------------------------


@dataclass
class Scenario:
    name: str
    args: Callable[[Path, Path], list[str]]  # (store, inputs dir) -> CLI args of the faulted command
    prepare: Callable[[Path, Path], None]  # (store, inputs dir): the store before the command


def _inputs(work: Path) -> Path:
    """Two instruments x hourly bars across a year boundary (2 period files each), version A and B."""
    inputs = work / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(("BTC-USDT", "ETH-USDT")):
        a = make_bars("2023-12-20", 24 * 24, seed=10 + i)
        write_csv(inputs / f"{name}.a.csv", a)
        b = make_bars("2023-12-30", 24 * 24, seed=20 + i)  # overlaps A from 12-30 with other values
        write_csv(inputs / f"{name}.b.csv", b)
    return inputs


def _import_args(files: str, overwrite: bool) -> Callable[[Path, Path], list[str]]:
    def args(store: Path, inputs: Path) -> list[str]:
        out = []
        for name in ("BTC-USDT", "ETH-USDT"):
            out.append(
                [
                    "import",
                    str(inputs / f"{name}.{files}.csv"),
                    "--instrument",
                    name,
                    "--timeframe",
                    "1h",
                    "--store",
                    str(store),
                ]
                + (["--overwrite"] if overwrite else [])
            )
        return out  # type: ignore[return-value]

    return args


def _no_prep(store: Path, inputs: Path) -> None:
    return None


def _prep_a(store: Path, inputs: Path) -> None:
    for cmd in _import_args("a", False)(store, inputs):
        code, out = cli(cmd)
        assert code == 0, out


COLLECT_ARGS = [
    "collect",
    "--source",
    "synthetic",
    "--instruments",
    "2",
    "--seed",
    "3",
    "--timeframe",
    "1h",
    "--start",
    "2023-12-01",
    "--end",
    "2024-01-20",
    "--quiet",
]

SCENARIOS = {
    "import": Scenario("import", _import_args("a", False), _no_prep),
    "import --overwrite": Scenario("import --overwrite", _import_args("b", True), _prep_a),
    "collect": Scenario("collect", lambda store, inputs: [COLLECT_ARGS + ["--store", str(store)]], _no_prep),
}


def _run_all(cmds: list[list[str]], store: Path, mode: str, k: int) -> FaultRun:
    """The scenario's commands in sequence, with the fault at point k counted across them."""
    done = 0
    last = FaultRun(0, 0, "")
    for cmd in cmds:
        kk = k - done if mode != "count" else 0
        run = run_with_fault(cmd, store, mode if kk >= 1 else "count", kk)
        done += run.points
        last = FaultRun(done, run.exit_code, run.output)
        if run.exit_code != 0:
            return last
    return last


@dataclass
class CrashResult:
    scenario: str
    mode: str
    k: int
    exit_code: int | None
    lost_before: int
    healed: bool
    validate_code: int
    detail: str = ""


def crash_matrix(
    scenario: Scenario, mode: str, work: Path, ks: list[int] | None = None
) -> tuple[int, list[CrashResult]]:
    """Run the scenario with a fault at every point (or at ``ks``); returns (points, results)."""
    inputs = _inputs(work)
    ref = work / f"ref-{scenario.name.replace(' ', '_')}"
    if not ref.exists():
        scenario.prepare(ref, inputs)
        for cmd in scenario.args(ref, inputs):
            code, out = cli(cmd)
            assert code == 0, out
    expected = store_data(ref)
    probe = work / "probe"
    _fresh(probe)
    scenario.prepare(probe, inputs)
    total = _run_all(scenario.args(probe, inputs), probe, "count", 0)
    assert total.exit_code == 0, total.output
    results = []
    for k in ks or list(range(1, total.points + 1)):
        store = work / f"s-{mode}-{k}"
        _fresh(store)
        scenario.prepare(store, inputs)
        run = _run_all(scenario.args(store, inputs), store, mode, k)
        before = store_data(store) if store.exists() else {}
        _, lost_before = same_data(before, expected)
        detail = ""
        for cmd in scenario.args(store, inputs):  # the same command again, no fault
            code, out = cli(cmd)
            if code != 0:
                detail = f"re-run exit {code}: {out.strip()[-300:]}"
        vcode, vout = cli(["validate", "--store", str(store), "--report", str(work / "v.json")])
        equal, _ = same_data(store_data(store), expected)
        if not equal and not detail:
            detail = "data differs from the uninterrupted run"
        if vcode != 0:
            detail += f" validate: {vout.strip()[-300:]}"
        results.append(
            CrashResult(scenario.name, mode, k, run.exit_code, lost_before, equal and vcode == 0, vcode, detail)
        )
        _rm(store)
    return total.points, results


def _fresh(path: Path) -> None:
    _rm(path)


def _rm(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# --- concurrent writers -------------------------------------------------------------------------------


def concurrent_collect(
    work: Path, trial: int, n_inst: int = 12, fork: bool = False
) -> tuple[list[int], dict, dict, str]:
    """Two synthetic collects (Jan-Jun, Jul-Dec of the same instruments) into one store at once, in two new
    Pythons (``fork=True``: two children forked from this process, see :func:`cli_forked`)."""
    store = work / f"cc-{trial}"
    _rm(store)
    base = [
        "collect",
        "--source",
        "synthetic",
        "--instruments",
        str(n_inst),
        "--seed",
        "5",
        "--timeframe",
        "1h",
        "--quiet",
        "--no-funding",
        "--store",
        str(store),
    ]
    halves = [["--start", "2023-01-01", "--end", "2023-07-01"], ["--start", "2023-07-01", "--end", "2024-01-01"]]
    codes, text = _run_writers([base + h for h in halves], fork)
    ref = work / "cc-ref"
    if not ref.exists():
        for h in halves:
            code, out = cli(base[:-1] + [str(ref)] + h)
            assert code == 0, out
    return codes, store_data(store), store_data(ref), text


def concurrent_import(
    work: Path, trial: int, n_inst: int = 6, fork: bool = False
) -> tuple[list[int], dict, dict[str, pd.DataFrame], str]:
    """Two ``qlib-crypto import`` runs of disjoint halves (one file each, all instruments) into one store at once,
    in two new Pythons (``fork=True``: two children forked from this process, see :func:`cli_forked`)."""
    inputs = work / "ci-inputs"
    if not inputs.exists():
        inputs.mkdir(parents=True)
        halves: dict[str, list[pd.DataFrame]] = {"h1": [], "h2": []}
        for i in range(n_inst):
            bars = make_bars("2023-01-01", 24 * 365, seed=100 + i)
            bars.to_parquet(inputs / f"SYN{i}-USDT.parquet")
            bars = bars.assign(symbol=f"SYN{i}-USDT")
            halves["h1"].append(bars.iloc[: len(bars) // 2])
            halves["h2"].append(bars.iloc[len(bars) // 2 :])
        for h, parts in halves.items():
            write_csv(inputs / f"{h}.csv", pd.concat(parts, ignore_index=True))
    expected = {f"SYN{i}-USDT": pd.read_parquet(inputs / f"SYN{i}-USDT.parquet") for i in range(n_inst)}
    store = work / f"ci-{trial}"
    _rm(store)
    argvs = [
        ["import", str(inputs / f"{h}.csv"), "--symbol-column", "symbol", "--timeframe", "1h", "--store", str(store)]
        for h in ("h1", "h2")
    ]
    codes, text = _run_writers(argvs, fork)
    return codes, store_data(store), expected, text


def bars_equal(stored: pd.DataFrame | None, expected: pd.DataFrame) -> bool:
    """Same bar times (to the millisecond) and bit-identical values."""
    if stored is None or len(stored) != len(expected):
        return False
    t1 = pd.DatetimeIndex(stored["datetime"]).as_unit("ms").asi8
    t2 = pd.DatetimeIndex(expected["datetime"]).as_unit("ms").asi8
    return bool(np.array_equal(t1, t2) and np.array_equal(stored[COLS].to_numpy(), expected[COLS].to_numpy()))


def stored_bars(data: dict, instrument: str, tf: str = "1h") -> pd.DataFrame | None:
    return data.get(f"bars/{tf}/{instrument}")


def timed(fn: Callable, *a, **kw):
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t0
