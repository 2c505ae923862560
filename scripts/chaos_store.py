"""Chaos run of the raw store: concurrent writers and every crash point, with a table of what was lost.

    .venv/bin/python scripts/chaos_store.py                 # 10 trials per concurrent pair, every crash point
    .venv/bin/python scripts/chaos_store.py --trials 3 --instruments 40

Scenarios (machinery in tests/chaos.py, shared with tests/test_store_integrity.py):
- two ``collect --source synthetic`` runs (Jan-Jun and Jul-Dec 2023 of the same instruments) into one store
  at once; two ``import`` runs of disjoint halves of the same instruments at once. Bars lost = bars of the
  union (made independently) missing from the store when both exited 0.
- ``import``, ``import --overwrite`` and ``collect`` killed (SIGKILL) before every write and rename point, and
  with a full disk (ENOSPC at write point k and every later one). "bars lost" counts what the store lacked
  right after the fault compared with an uninterrupted run; "healed" counts the points after which re-running
  the same command gave exactly the uninterrupted run's data and a clean ``validate``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import chaos  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10, help="trials per concurrent pair (default 10)")
    parser.add_argument("--instruments", type=int, default=40, help="instruments per concurrent run (default 40)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="chaos-store-"))
    rows = []
    failed = False
    try:
        t0 = time.perf_counter()
        lost_total, clean, bad = 0, 0, 0
        for trial in range(args.trials):
            codes, got, ref, _ = chaos.concurrent_collect(work, trial, n_inst=args.instruments)
            equal, lost = chaos.same_data(got, ref)
            lost_total += lost
            clean += int(codes == [0, 0] and equal)
            bad += int(codes == [0, 0] and not equal)
        rows.append(
            (
                "2 x collect at once",
                args.trials,
                lost_total,
                f"{clean}/{args.trials} exact union",
                time.perf_counter() - t0,
            )
        )
        failed |= bad > 0
        t0 = time.perf_counter()
        lost_total, clean, bad = 0, 0, 0
        for trial in range(args.trials):
            codes, got, expected, _ = chaos.concurrent_import(work, trial, n_inst=args.instruments)
            lost = 0
            for name, bars in expected.items():
                have = chaos.stored_bars(got, name)
                lost += len(bars) - (0 if have is None else len(set(have["datetime"]) & set(bars["datetime"])))
            ok = all(chaos.bars_equal(chaos.stored_bars(got, n), b) for n, b in expected.items())
            lost_total += lost
            clean += int(codes == [0, 0] and ok)
            bad += int(codes == [0, 0] and not ok)
        rows.append(
            (
                "2 x import at once",
                args.trials,
                lost_total,
                f"{clean}/{args.trials} exact union",
                time.perf_counter() - t0,
            )
        )
        failed |= bad > 0
        for name in ("import", "import --overwrite", "collect"):
            for mode in ("kill", "enospc"):
                t0 = time.perf_counter()
                points, results = chaos.crash_matrix(chaos.SCENARIOS[name], mode, work)
                healed = sum(r.healed for r in results)
                label = f"{name}: {'SIGKILL' if mode == 'kill' else 'ENOSPC'} at point k"
                rows.append(
                    (
                        label,
                        points,
                        sum(r.lost_before for r in results),
                        f"{healed}/{points} healed by re-run",
                        time.perf_counter() - t0,
                    )
                )
                failed |= healed != points
                for r in results:
                    if not r.healed:
                        print(f"  NOT HEALED: {label} k={r.k}: {r.detail}", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{'scenario':<40} {'trials':>6} {'bars lost before re-run':>24} {'result':<26} {'time':>7}")
    for label, trials, lost, result, seconds in rows:
        print(f"{label:<40} {trials:>6} {lost:>24,} {result:<26} {seconds:>6.1f}s")
    print("FAILED: data lost or not healed" if failed else "every trial exact; every crash point healed by a re-run")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
