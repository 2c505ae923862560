#!/usr/bin/env python
"""Benchmark the fast feature engine against Qlib's expression engine on CryptoAlpha158.

    python scripts/bench_features.py                       # 50 instruments x 2023 of hourly bars, 3 rounds
    python scripts/bench_features.py --instruments 30 --rounds 2 --level loader

Builds a synthetic store and a 60min Qlib provider in a work directory (setup, not timed), then runs the
two engines interleaved (fast, qlib, fast, qlib, ...), each run in a fresh Python process so that its peak
memory is its own (Qlib with ``kernels=1``, as in scripts/bench_research.py). Two levels are measured:

- ``loader``: the CryptoAlpha158 feature set and its label over the whole range through
  ``CryptoAlpha158DL(engine=...).load(...)``, the call ``DataHandlerLP`` makes (the engine alone);
- ``handler``: the features as a model gets them: the ``CryptoAlpha158`` handler (load + the default
  processors, RobustZScoreNorm fit on the first two thirds) and ``DatasetH.prepare("train")``. The ``qlib`` arm
  is Qlib's expression engine with Qlib's own ``DataHandlerLP`` processing and fetching (what the handler did
  before the fast engine); the ``fast`` arm is the handler as it is now.

Per run: wall time (imports and ``qlib.init`` excluded), peak RSS of the process (``VmHWM``) and its growth
over the RSS just before the timed part. Then the two outputs are compared cell by cell: same index, same
columns, same NaN cells, and the maximum absolute and relative difference (0 means bit-identical float32).

A first, untimed fast run with an empty numba cache measures the one-time JIT compilation of the kernels
(paid once per installation: numba caches the compiled kernels next to the package).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build_provider(workdir: Path, n_instruments: int, start: str, end: str, seed: int) -> Path:
    from qlib_crypto.provider import dump
    from qlib_crypto.sources.collector import collect
    from qlib_crypto.sources.synthetic import SyntheticSource

    store = workdir / "store"
    provider = workdir / "qlib" / "60min"
    if (provider / "calendars" / "60min.txt").exists():
        return provider
    source = SyntheticSource(n_instruments, seed=seed)
    collect(source, store, source.list_instruments(), "1h", start, end, workers=2, progress=False)
    dump(store, provider, "1h")
    return provider


def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def child(args: argparse.Namespace) -> int:
    """One run of one engine (in its own process); prints a JSON line."""
    import numpy as np
    import qlib

    qlib.init(
        provider_uri={"60min": args.provider},
        region="us",
        trade_unit=None,
        limit_threshold=None,
        deal_price="close",
        kernels=1,
    )
    from qlib_crypto.data import CryptoAlpha158, get_label_config
    from qlib_crypto.data.loader import CryptoAlpha158DL

    label = get_label_config(1)
    if args.handler:
        from qlib.data.dataset import DatasetH
        from qlib.data.dataset.handler import DataHandlerLP

        class QlibPath(CryptoAlpha158):  # the expression engine with Qlib's own processing and fetching
            def process_data(self, with_fit=False):
                DataHandlerLP.process_data(self, with_fit=with_fit)

            def fetch(self, *a, **k):
                return DataHandlerLP.fetch(self, *a, **k)

        cls = CryptoAlpha158 if args.engine == "fast" else QlibPath
    rss0 = _status("VmRSS")
    t0 = time.perf_counter()
    if args.handler:
        handler = cls(
            instruments="all",
            start_time=args.start,
            end_time=args.end_bar,
            freq="60min",
            fit_start_time=args.start,
            fit_end_time=args.fit_end,
            engine=args.engine,
        )
        dataset = DatasetH(handler, segments={"train": (args.start, args.fit_end)})
        frame = dataset.prepare("train", col_set=["feature", "label"], data_key=DataHandlerLP.DK_L)
    else:
        loader = CryptoAlpha158DL(config={"label": label}, freq="60min", engine=args.engine)
        frame = loader.load(instruments="all", start_time=args.start, end_time=args.end_bar)
    wall = time.perf_counter() - t0
    peak = _status("VmHWM")
    if args.out:
        np.save(args.out + ".npy", frame.to_numpy(dtype=np.float32))
        frame.index.to_frame(index=False).to_pickle(args.out + ".index.pkl")
        with open(args.out + ".columns.json", "w") as fh:
            json.dump([list(map(str, c)) if isinstance(c, tuple) else str(c) for c in frame.columns], fh)
    print(
        json.dumps(
            {
                "engine": args.engine,
                "wall": wall,
                "peak": peak,
                "rss0": rss0,
                "rows": frame.shape[0],
                "cols": frame.shape[1],
            }
        ),
        flush=True,
    )
    return 0


def run_child(engine: str, provider: Path, out: str | None, extra: list[str], env: dict | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", engine, "--provider", str(provider), *extra]
    if out:
        cmd += ["--out", out]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(REPO))
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"{engine} run failed")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    return json.loads(line)


def compare(a_path: str, b_path: str) -> dict:
    import numpy as np
    import pandas as pd

    a, b = np.load(a_path + ".npy"), np.load(b_path + ".npy")
    same_index = pd.read_pickle(a_path + ".index.pkl").equals(pd.read_pickle(b_path + ".index.pkl"))
    same_cols = Path(a_path + ".columns.json").read_text() == Path(b_path + ".columns.json").read_text()
    if a.shape != b.shape:
        return {"same_shape": False, "same_index": same_index, "same_columns": same_cols}
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    both = ~nan_a & ~nan_b
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    diff[~both] = 0
    rel = diff / np.maximum(np.abs(b.astype(np.float64)), np.finfo(np.float32).tiny)
    rel[~both] = 0
    return {
        "same_shape": True,
        "same_index": same_index,
        "same_columns": same_cols,
        "cells": int(a.size),
        "nan_cells_differ": int((nan_a != nan_b).sum()),
        "cells_differ": int((diff > 0).sum()),
        "max_abs_diff": float(diff.max()),
        "max_rel_diff": float(rel.max()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fast feature engine vs Qlib's expression engine (CryptoAlpha158).")
    parser.add_argument("--instruments", type=int, default=50)
    parser.add_argument("--start", default="2023-01-01")
    parser.add_argument("--end", default="2024-01-01", help="end of the data (exclusive)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (each: one fast and one qlib run)")
    parser.add_argument(
        "--level",
        choices=["loader", "handler", "both"],
        default="both",
        help="what a run does: the loader alone, the handler and dataset, or both (default)",
    )
    parser.add_argument("--handler", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help="keep the provider here (default: a temporary directory)")
    parser.add_argument("--child", choices=["fast", "qlib"], help=argparse.SUPPRESS)
    parser.add_argument("--provider", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--end-bar", dest="end_bar", help=argparse.SUPPRESS)
    parser.add_argument("--fit-end", dest="fit_end", help=argparse.SUPPRESS)
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.engine = args.child
        return child(args)

    import pandas as pd

    tmp = tempfile.TemporaryDirectory(prefix="bench_features_") if args.workdir is None else None
    workdir = Path(tmp.name if tmp else args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        provider = build_provider(workdir, args.instruments, args.start, args.end, args.seed)
        print(
            f"setup: {args.instruments} synthetic instruments, 1h bars, {args.start} .. {args.end} "
            f"({time.perf_counter() - t0:.1f} s)",
            flush=True,
        )
        end_bar = str(pd.Timestamp(args.end) - pd.Timedelta(hours=1))
        fit_end = str(pd.Timestamp(args.start) + (pd.Timestamp(args.end) - pd.Timestamp(args.start)) * 2 / 3)
        extra = ["--start", args.start, "--end-bar", end_bar, "--fit-end", fit_end]
        levels = ["loader", "handler"] if args.level == "both" else [args.level]

        def level_args(level: str) -> list[str]:
            return extra + (["--handler"] if level == "handler" else [])

        with tempfile.TemporaryDirectory(prefix="numba_cold_") as cold:
            env = dict(os.environ, NUMBA_CACHE_DIR=cold)
            t0 = time.perf_counter()
            first = run_child("fast", provider, None, level_args("loader"), env=env)
            print(
                f"fast loader, empty numba cache (JIT compile included): {first['wall']:.2f} s "
                f"(process {time.perf_counter() - t0:.1f} s)",
                flush=True,
            )
        run_child("fast", provider, None, level_args("loader"))  # fills the package's numba cache if it is empty

        results = {(lv, e): [] for lv in levels for e in ("fast", "qlib")}
        outs = {(lv, e): str(workdir / f"out_{lv}_{e}") for lv in levels for e in ("fast", "qlib")}
        for r in range(args.rounds):
            for level in levels:
                for engine in ("fast", "qlib"):
                    res = run_child(engine, provider, outs[(level, engine)] if r == 0 else None, level_args(level))
                    results[(level, engine)].append(res)
                    print(
                        f"round {r + 1} {level:<7} {engine:<4}: {res['wall']:7.2f} s, peak RSS "
                        f"{res['peak'] / 2**20:6.0f} MiB (+{(res['peak'] - res['rss0']) / 2**20:.0f} MiB), "
                        f"{res['rows']} rows x {res['cols']} columns",
                        flush=True,
                    )

        for level in levels:
            what = (
                "CryptoAlpha158 handler + DatasetH.prepare('train') (learn frame)"
                if level == "handler"
                else "CryptoAlpha158DL.load (features + label)"
            )
            cmp = compare(outs[(level, "fast")], outs[(level, "qlib")])
            r0 = results[(level, "fast")][0]
            print()
            print(
                f"{what}: {args.instruments} instruments, {r0['rows']} rows x {r0['cols']} columns, "
                f"{args.rounds} interleaved rounds, median"
            )
            print("| engine | wall s | peak RSS MiB | RSS growth MiB |")
            print("| --- | ---: | ---: | ---: |")
            med = {}
            for engine in ("qlib", "fast"):
                rs = results[(level, engine)]
                med[engine] = (
                    statistics.median(x["wall"] for x in rs),
                    statistics.median(x["peak"] for x in rs),
                    statistics.median(x["peak"] - x["rss0"] for x in rs),
                )
                print(
                    f"| {engine} | {med[engine][0]:.2f} | {med[engine][1] / 2**20:.0f} | {med[engine][2] / 2**20:.0f} |"
                )
            print(
                f"speed-up {med['qlib'][0] / med['fast'][0]:.1f}x; peak RSS fast/qlib "
                f"{med['fast'][1] / med['qlib'][1]:.2f}; growth fast/qlib {med['fast'][2] / med['qlib'][2]:.2f}"
            )
            print("outputs: " + ", ".join(f"{k} {v}" for k, v in cmp.items()))
        return 0
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
