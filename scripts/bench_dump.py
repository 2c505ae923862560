"""Benchmark: ``qlib-crypto dump`` (full and --update) vs Qlib's ``dump_bin.py dump_all`` on the same data.

Builds a store of N instruments x D days of hourly bars (spot, so both dumpers write the same nine fields),
writes the same bars as CSVs for Qlib's dumper, then times whole commands (subprocess, process start
included) side by side:

    python scripts/bench_dump.py --qlib-dump-bin /work/ext/qlib_scripts/dump_bin.py

Prints seconds, rows/s, peak memory (max RSS of each child process), the speed-up over Qlib and the
update-to-full time ratio for an update of one day of new bars. Qlib's script is not part of this
repository; it is run with the same Python.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Commands are started by a small runner process launched before this script imports numpy/pandas: Linux keeps
# ru_maxrss across fork+exec, so children of a big parent would report the parent's memory as their peak.
RUNNER = r"""
import json, os, subprocess, sys, time
for line in sys.stdin:
    cmd = json.loads(line)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    out = {"seconds": time.perf_counter() - t0, "maxrss_kib": usage.ru_maxrss,
           "rc": os.waitstatus_to_exitcode(status), "stderr": err[-2000:]}
    print(json.dumps(out), flush=True)
"""
_runner = None


def start_runner() -> None:
    global _runner
    _runner = subprocess.Popen([sys.executable, "-c", RUNNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def make_bars(n_inst: int, n_bars: int, seed: int = 0):
    """(hourly index, array [instrument, field, bar]) of a random-walk market (fast numpy generator)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    idx = pd.date_range("2023-01-01", periods=n_bars, freq="h", tz="UTC")
    p0 = np.exp(rng.uniform(0, 10, (n_inst, 1)))
    close = p0 * np.exp(np.cumsum(rng.normal(0, 0.005, (n_inst, n_bars)), axis=1))
    open_ = np.concatenate([p0, close[:, :-1]], axis=1)
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.002, close.shape)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.002, close.shape)))
    vol = rng.uniform(1, 1000, close.shape)
    return idx, np.stack([open_, high, low, close, vol, vol * close], axis=1)


def run(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of a whole command, started by the runner."""
    _runner.stdin.write(json.dumps(cmd) + "\n")
    _runner.stdin.flush()
    res = json.loads(_runner.stdout.readline())
    if res["rc"] != 0:
        raise SystemExit(f"command failed ({res['rc']}): {' '.join(cmd)}\n{res['stderr']}")
    return res["seconds"], res["maxrss_kib"] / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qlib-dump-bin", help="path of Qlib's scripts/dump_bin.py (omit to time ours only)")
    ap.add_argument("--instruments", type=int, default=100)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each command; the best is reported")
    ap.add_argument("--workdir", help="keep the data here instead of a temporary directory")
    args = ap.parse_args()
    start_runner()

    import pandas as pd

    from qlib_crypto.store import write_bars

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_dump_"))
    work.mkdir(parents=True, exist_ok=True)
    store, csv_dir = work / "store", work / "csv"
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(csv_dir, ignore_errors=True)
    csv_dir.mkdir()
    n_bars = args.days * 24
    idx, data = make_bars(args.instruments, n_bars)
    names = [f"C{i:03d}-USDT" for i in range(args.instruments)]
    base = n_bars - 24  # the last day is held back for the update
    print(f"setup: {args.instruments} instruments x {base} hourly bars (+24 for the update) in {work}")
    cols = ["open", "high", "low", "close", "volume", "amount"]
    for name, arr in zip(names, data):
        df = pd.DataFrame(arr.T, columns=cols)
        df.insert(0, "datetime", idx)
        write_bars(store, name, "1h", df.iloc[:base], "bench")
        c = df.iloc[:base].copy()
        c.insert(0, "date", c.pop("datetime").dt.strftime("%Y-%m-%d %H:%M:%S"))
        c.insert(1, "symbol", name)
        c["vwap"] = c["amount"] / c["volume"]
        c["change"] = c["close"] / c["close"].shift(1) - 1
        c["factor"] = 1.0
        c.to_csv(csv_dir / f"{name}.csv", index=False)
    rows = args.instruments * base
    py = sys.executable
    ours = [py, "-m", "qlib_crypto", "dump", "--store", str(store), "--timeframe", "1h"]

    def best(make_cmd, prepare=None):
        results = []
        for _ in range(args.repeat):
            if prepare:
                prepare()
            os.sync()  # do not charge the command for flushing what the preparation wrote
            results.append(run(make_cmd()))
        return min(r[0] for r in results), max(r[1] for r in results)

    # each timed full dump writes a new directory (deleting the previous one right before would charge the
    # command for the filesystem's delayed work on the deleted files); old ones are removed at the end
    fresh = iter(range(10**6))
    full_dir = work / "qlib_ours"

    def ours_fresh():
        return ours + ["--qlib-dir", str(work / f"qlib_ours_{next(fresh)}")]

    t_full, m_full = best(ours_fresh)
    os.rename(work / "qlib_ours_0", full_dir)
    print(f"qlib-crypto dump (full):  {t_full:7.3f} s  {rows / t_full:12,.0f} rows/s  peak {m_full:6.0f} MiB")
    t_repl, _ = best(lambda: ours + ["--qlib-dir", str(full_dir)])
    print(f"qlib-crypto dump (full, replacing an existing dump): {t_repl:7.3f} s")

    t_qlib = None
    if args.qlib_dump_bin:
        qdir = work / "qlib_ref"

        qfresh = iter(range(10**6))

        def qlib_cmd():
            return [
                py,
                args.qlib_dump_bin,
                "dump_all",
                "--data_path",
                str(csv_dir),
                "--qlib_dir",
                str(work / f"qlib_ref_{next(qfresh)}"),
                "--freq",
                "60min",
                "--date_field_name",
                "date",
                "--symbol_field_name",
                "symbol",
                "--exclude_fields",
                "date,symbol",
            ]

        t_qlib, m_qlib = best(qlib_cmd)
        os.rename(work / "qlib_ref_0", qdir)
        print(f"Qlib dump_bin.py dump_all: {t_qlib:7.3f} s  {rows / t_qlib:12,.0f} rows/s  peak {m_qlib:6.0f} MiB")
        same = all(
            (full_dir / p.relative_to(qdir)).read_bytes() == p.read_bytes() for p in (qdir / "features").rglob("*.bin")
        )
        print(f"speed-up (Qlib / ours, whole commands): {t_qlib / t_full:5.1f}x; identical feature files: {same}")

    # update: one new day of bars for every instrument, appended to a copy of the full dump each run
    for name, arr in zip(names, data):
        df = pd.DataFrame(arr.T, columns=cols)
        df.insert(0, "datetime", idx)
        write_bars(store, name, "1h", df.iloc[base:], "bench")
    upd_dir = work / "qlib_upd"

    def reset_upd():
        shutil.rmtree(upd_dir, ignore_errors=True)
        shutil.copytree(full_dir, upd_dir)

    t_upd, m_upd = best(lambda: ours + ["--qlib-dir", str(upd_dir), "--update"], prepare=reset_upd)
    new_rows = args.instruments * 24
    print(
        f"qlib-crypto dump --update: {t_upd:7.3f} s  {new_rows / t_upd:12,.0f} rows/s  peak {m_upd:6.0f} MiB"
        f"  ({new_rows} new bars)"
    )
    t_noop, _ = best(lambda: ours + ["--qlib-dir", str(upd_dir), "--update"])
    print(f"qlib-crypto dump --update with nothing new: {t_noop:7.3f} s")
    t_start, _ = best(lambda: [py, "-c", "import qlib_crypto.cli"])
    print(f"python start + CLI import: {t_start:7.3f} s")
    print(f"update-to-full time ratio: {t_upd / t_full:5.2f}")
    _runner.stdin.close()
    _runner.wait()
    for p in list(work.glob("qlib_ours_*")) + list(work.glob("qlib_ref_*")):
        shutil.rmtree(p, ignore_errors=True)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
