"""How long `qlib-crypto demo` takes after the install, per step and in total (the README quotes the total).

Runs the demo as a new user would, in a fresh scratch working copy: only `workflow_configs/` is copied there
(the demo reads it relative to the working directory), the directory is made a git work tree like a clone
(Qlib's recorder runs `git diff`/`git status` in the working directory and prints git's usage text outside
one), and `qlib-crypto demo` runs in a child process with its output piped. Prints each step's wall time
(from the demo's own `done in` lines), the total wall time, and the CPU time (user + system) of the child
processes from `resource.getrusage(RUSAGE_CHILDREN)`, which is less sensitive to other load on the machine
than wall time. `--repeat N` runs N fresh demos (data made from scratch each time).

`--cold` measures the first demo after an install: numba's cache of compiled feature kernels (written beside
the package's sources on first use, then reused by every later run) is pointed at an empty directory
(``NUMBA_CACHE_DIR``), so the kernels are compiled during the run, as on a fresh machine.

    .venv/bin/python scripts/bench_demo.py                 # the README's demo (20 instruments)
    .venv/bin/python scripts/bench_demo.py --instruments 5 --repeat 2
    .venv/bin/python scripts/bench_demo.py --cold         # the first run after the install
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEP = re.compile(r"^== (\d)/6 (\w+)")
DONE = re.compile(r"^\s+done in ([\d.]+) s")


def run_once(instruments: int | None, keep: bool, cold: bool = False) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench_demo_"))
    env = dict(os.environ)
    if cold:
        env["NUMBA_CACHE_DIR"] = str(work / "numba_cache_empty")
    try:
        shutil.copytree(REPO / "workflow_configs", work / "workflow_configs")
        subprocess.run(["git", "init", "-q", str(work)], check=True)
        cmd = [str(Path(sys.executable).with_name("qlib-crypto")), "demo"]
        if instruments is not None:
            cmd += ["--instruments", str(instruments)]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=env, check=False)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
            raise SystemExit(f"demo exited with code {proc.returncode} (scratch copy {work})")
        steps: dict[str, float] = {}
        current = None
        for line in proc.stdout.splitlines():
            m = STEP.match(line)
            if m:
                current = m.group(2)
            m = DONE.match(line)
            if m and current:
                steps[current] = float(m.group(1))
                current = None
        return {
            "steps": steps,
            "wall": wall,
            "user": after.ru_utime - before.ru_utime,
            "sys": after.ru_stime - before.ru_stime,
            "stderr_lines": len(proc.stderr.splitlines()),
            "stdout_lines": len(proc.stdout.splitlines()),
            "dir": str(work),
        }
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instruments", type=int, default=None, help="demo --instruments (default: the demo's 20)")
    ap.add_argument("--repeat", type=int, default=1, help="fresh demos to run (default 1)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch working copies")
    ap.add_argument("--cold", action="store_true", help="an empty numba cache: the first run after an install")
    args = ap.parse_args()
    print(
        f"qlib-crypto demo{'' if args.instruments is None else f' --instruments {args.instruments}'}"
        f"{' (cold: empty numba cache)' if args.cold else ''}: "
        f"{os.cpu_count()} CPUs, load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    for i in range(args.repeat):
        r = run_once(args.instruments, args.keep, args.cold)
        steps = ", ".join(f"{k} {v:.1f} s" for k, v in r["steps"].items())
        print(
            f"run {i + 1}: total {r['wall']:.1f} s wall; CPU of the child processes {r['user'] + r['sys']:.1f} s "
            f"(user {r['user']:.1f} s + system {r['sys']:.1f} s); steps: {steps}"
        )
        print(
            f"       console: {r['stdout_lines']} stdout lines, {r['stderr_lines']} stderr lines"
            + (f"; kept in {r['dir']}" if args.keep else "")
        )
    print(f"load average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
