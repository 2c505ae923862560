#!/usr/bin/env python
"""Scale-out benchmark: the whole synthetic universe end to end on a 2-worker Dask cluster vs one process, and a
walk-forward serial vs 2 workers.

    nice -n 10 python scripts/bench_scale.py                          # 250 instruments x 2 years of 1h bars
    python scripts/bench_scale.py --instruments 40 --start 2024-01-01 --end 2024-07-01 --wf-instruments 20   # quick

Setup (timed, not compared): the synthetic market's store and a 60min provider in a work directory.

End to end (features -> train -> predict -> backtest), each arm in a fresh process:

- ``single``: ``CryptoAlpha158`` + ``DatasetH`` + ``LGBModel`` (the 60min workflow's parameters, ``num_threads``
  = the machine's cores) + predict + the crypto backtest (``LongShortStrategy`` on the test segment);
- ``dask``: a ``LocalCluster`` of ``--workers`` single-threaded worker processes; ``DaskAlpha158`` (features per
  group of instruments on the workers) + ``DaskLGBModel`` (lightgbm.dask, early stopping on the valid segment) +
  predict + the same backtest in the client.

Peak memory is each process's ``VmHWM`` (peak resident set size, from /proc): the single process; each Dask
worker process and the client (which holds the merged handler frames, as the single process does). A worker
or process killed for memory is reported as such.

Walk-forward: ``run_walk_forward`` of the 60min workflow (``LGBModel`` with ``num_threads: 1``, only
``SignalRecord``, no analysis records) on ``--wf-instruments`` instruments with ``--windows`` test windows,
serial (``TrainerR`` in one process) vs ``--workers`` Dask workers (one window per task); the merged
predictions are compared byte for byte. Goals printed: every worker under 8 GiB, walk-forward >= 1.7x.

Every arm also reports its CPU time (user + system, the arm's process and its worker processes) and the load
average before and after it; the Dask walk-forward arm reports each worker's CPU time and share of a core
during the run. Wall-clock speed-ups need free cores: on a machine shared with other jobs the workers get
less than a core each (Linux's autogroup scheduling gives all processes of one session, here the benchmark
and its workers, one session's share of the CPUs, so two workers may get what one process gets), and the
report says so when a worker got less than 80% of a core.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "workflow_configs" / "workflow_config_lightgbm_crypto_60min.yaml"
GIB = 2**30


def cpu_seconds() -> float:
    """CPU time (user + system) of this process so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def loadavg() -> float:
    with open("/proc/loadavg") as fh:
        return float(fh.read().split()[0])


def vm_hwm(pid: int | str = "self") -> int:
    """Peak resident set size of a process (bytes)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def build_provider(workdir: Path, n: int, start: str, end: str, seed: int) -> Path:
    from qlib_crypto.provider import dump
    from qlib_crypto.sources.collector import collect
    from qlib_crypto.sources.synthetic import SyntheticSource

    store = workdir / f"store_{n}"
    qdir = workdir / f"qlib_{n}" / "60min"
    if not (qdir / "calendars" / "60min.txt").exists():
        source = SyntheticSource(n, seed=seed)
        collect(source, store, source.list_instruments(), "1h", start, end, workers=2, progress=False)
        dump(store, qdir, "1h")
    return qdir


def segments(start: str, end: str) -> dict:
    import pandas as pd

    s, e = pd.Timestamp(start), pd.Timestamp(end) - pd.Timedelta(hours=1)
    span = e - s
    t1, t2 = (s + span * 2 / 3).floor("D"), (s + span * 5 / 6).floor("D")
    hour = pd.Timedelta(hours=1)
    return {"train": (s, t1 - hour), "valid": (t1, t2 - hour), "test": (t2, e)}


def workflow(rounds: int) -> dict:
    import yaml

    conf = yaml.safe_load(CONFIG.read_text())
    conf["task"]["model"]["kwargs"]["num_boost_round"] = rounds
    return conf


# ------------------------------------------------------------------------------------------------- end to end
def arm_end_to_end(args, mode: str) -> dict:
    import pandas as pd
    from qlib.data.dataset import DatasetH

    import qlib_crypto

    qdir = Path(args.provider)
    segs = segments(args.start, args.end)
    qlib_crypto.init({"60min": str(qdir)}, kernels=1)
    conf = workflow(args.rounds)
    hkw = dict(conf["task"]["dataset"]["kwargs"]["handler"]["kwargs"])
    hkw.update(
        instruments="all",
        start_time=segs["train"][0],
        end_time=segs["test"][1],
        fit_start_time=segs["train"][0],
        fit_end_time=segs["train"][1],
        freq="60min",
    )
    mkw = dict(conf["task"]["model"]["kwargs"])
    out: dict = {"arm": mode}
    t_all = time.perf_counter()
    client = None
    if mode == "dask":
        from qlib_crypto.scale import get_client

        spec = {"n_workers": args.workers, "threads_per_worker": 1, "memory_limit": 0}
        t0 = time.perf_counter()
        client = get_client(spec)
        client.wait_for_workers(args.workers, timeout=120)
        out["cluster_start_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if mode == "dask":
        from qlib_crypto.scale import DaskAlpha158

        handler = DaskAlpha158(dask=spec, **hkw)
    else:
        from qlib_crypto.data import CryptoAlpha158

        handler = CryptoAlpha158(**hkw)
    dataset = DatasetH(handler, segments=segs)
    dataset.prepare("train")
    out["features_s"] = time.perf_counter() - t0
    out["n_features"] = len(handler.feature_names)
    t0 = time.perf_counter()
    if mode == "dask":
        from qlib_crypto.model import DaskLGBModel

        model = DaskLGBModel(dask=spec, **mkw)
    else:
        from qlib.contrib.model.gbdt import LGBModel

        mkw["num_threads"] = os.cpu_count() or 1
        model = LGBModel(**mkw)
    from qlib.workflow import R

    with R.start(experiment_name=f"bench_scale_{mode}"):
        model.fit(dataset)
    out["train_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = model.predict(dataset, segment="test")
    out["predict_s"] = time.perf_counter() - t0
    label = dataset.prepare("test", col_set="label", data_key="raw").iloc[:, 0]
    frame = pd.DataFrame({"p": pred, "y": label.reindex(pred.index)}).dropna()
    out["test_ic"] = float(frame.groupby(level="datetime").apply(lambda g: g["p"].corr(g["y"])).mean())
    out["rows"] = int(len(handler.fetch(col_set="label", data_key="infer")))
    del dataset, handler
    t0 = time.perf_counter()
    from qlib_crypto.workflow.backtest_record import run_backtest

    bt = copy.deepcopy(conf["port_analysis_config"])
    strategy = bt["strategy"]
    strategy["kwargs"]["signal"] = pred
    times = pred.index.get_level_values("datetime").unique().sort_values()
    ex = copy.deepcopy(bt["backtest"]["exchange"])
    ex["kwargs"]["instrument_meta"] = str(Path(args.provider).parents[1] / f"store_{args.instruments}")
    run = run_backtest(
        strategy,
        start_time=times[0],
        end_time=times[-2],
        freq="60min",
        account=float(bt["backtest"]["account"]),
        benchmark="BTC-USDT",
        exchange=ex,
        executor=bt["executor"]["kwargs"],
    )
    out["backtest_s"] = time.perf_counter() - t0
    out["backtest_total_return"] = float(run.report().metrics["total_return"])
    out["wall_s"] = time.perf_counter() - t_all
    out["peak_client"] = vm_hwm()
    if client is not None:
        out["peak_workers"] = sorted(client.run(vm_hwm).values())
    return out


# ------------------------------------------------------------------------------------------------ walk-forward
def arm_walk_forward(args, mode: str) -> dict:
    import pandas as pd
    import yaml

    from qlib_crypto.workflow.rolling import run_walk_forward

    qdir = Path(args.wf_provider)
    work = Path(args.workdir)
    segs = segments(args.wf_start, args.end)
    test_bars = int((segs["test"][1] - segs["test"][0]) / pd.Timedelta(hours=1)) + 1
    step = -(-test_bars // args.windows)
    conf = workflow(args.wf_rounds)
    conf["qlib_init"]["provider_uri"] = {"60min": str(qdir)}
    conf["qlib_init"]["exp_manager"]["kwargs"]["uri"] = f"file:{work / 'mlruns'}"
    conf["task"]["model"]["kwargs"]["num_threads"] = 1
    conf["task"]["record"] = [r for r in conf["task"]["record"] if r["class"] == "SignalRecord"]
    hkw = conf["task"]["dataset"]["kwargs"]["handler"]["kwargs"]
    hkw.update(
        start_time=str(segs["train"][0]),
        end_time=str(segs["test"][1]),
        fit_start_time=str(segs["train"][0]),
        fit_end_time=str(segs["train"][1]),
    )
    conf["task"]["dataset"]["kwargs"]["segments"] = {k: [str(a), str(b)] for k, (a, b) in segs.items()}
    conf.pop("port_analysis_config", None)
    conf.pop("data_handler_config", None)
    path = work / "wf.yaml"
    path.write_text(yaml.safe_dump(conf))
    spec = {"n_workers": args.workers, "threads_per_worker": 1} if mode == "dask" else None
    t0, c0 = time.perf_counter(), cpu_seconds()
    res = run_walk_forward(path, step, experiment_name=f"wf_{mode}", analyse=False, dask=spec)
    wall = time.perf_counter() - t0
    out = {"arm": f"wf-{mode}", "wall_s": wall, "n_windows": res["n_windows"], "step": step}
    out["client_cpu_s"] = cpu_seconds() - c0
    if spec is not None:  # the workers were started by run_walk_forward: their CPU time is all walk-forward
        from qlib_crypto.scale.cluster import get_client, task_spec

        out["worker_cpu_s"] = sorted(get_client(task_spec(spec)).run(cpu_seconds).values())
    from qlib.workflow import R

    rec = R.get_recorder(experiment_name=res["experiment"], recorder_id=res["recorder_id"])
    pred = rec.load_object("pred.pkl")
    (work / f"wf_pred_{mode}.pkl").write_bytes(pickle.dumps(pred))
    out["rows"] = len(pred)
    return out


def run_arm(args, arm: str) -> dict | None:
    cmd = [sys.executable, __file__, "--arm", arm, *sys.argv[1:]]
    load0, ru0 = loadavg(), resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the arm's process and its (reaped) worker processes
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        killed = proc.returncode in (-9, 137)
        print(
            f"  {arm}: {'killed (out of memory?)' if killed else 'failed'} (exit {proc.returncode})\n"
            + proc.stderr[-3000:],
            flush=True,
        )
        return {"arm": arm, "failed": True, "exit": proc.returncode}
    res = json.loads(lines[-1][7:])
    res["arm_cpu_s"] = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    res["arm_sys_s"] = ru1.ru_stime - ru0.ru_stime
    res["load"] = [load0, loadavg()]
    print(f"  {arm}: {json.dumps(res)}", flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instruments", type=int, default=250)
    parser.add_argument("--start", default="2022-07-01")
    parser.add_argument("--end", default="2024-07-01")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=100, help="num_boost_round of the end-to-end model (default 100)")
    parser.add_argument("--wf-instruments", type=int, default=30)
    parser.add_argument("--wf-start", default="2023-07-01", help="first bar of the walk-forward's data")
    parser.add_argument("--wf-rounds", type=int, default=100)
    parser.add_argument("--windows", type=int, default=6)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--skip", action="append", default=[], choices=["single", "dask", "wf"], help="leave out an arm"
    )
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--arm", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--provider", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--wf-provider", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.arm:  # a child process: one arm
        os.chdir(args.workdir)
        if args.arm in ("single", "dask"):
            res = arm_end_to_end(args, args.arm)
        else:
            res = arm_walk_forward(args, args.arm.split("-", 1)[1])
        print("RESULT " + json.dumps(res), flush=True)
        return 0

    tmp = tempfile.TemporaryDirectory(prefix="bench_scale_") if args.workdir is None else None
    work = Path(tmp.name if tmp else args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        print(
            f"setup: synthetic market, {args.instruments} instruments, 1h bars, {args.start} .. {args.end}", flush=True
        )
        qdir = build_provider(work, args.instruments, args.start, args.end, args.seed)
        wf_qdir = build_provider(work, args.wf_instruments, args.wf_start, args.end, args.seed)
        print(f"setup {time.perf_counter() - t0:.0f} s", flush=True)
        sys.argv[1:] = [a for a in (argv if argv is not None else sys.argv[1:])]
        sys.argv += ["--workdir", str(work), "--provider", str(qdir), "--wf-provider", str(wf_qdir)]
        results = {}
        for arm in ("single", "dask", "wf-serial", "wf-dask"):
            if arm.split("-")[0] in args.skip:
                continue
            results[arm] = run_arm(args, arm)
        report(results, args, work)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


def report(results: dict, args, work: Path) -> None:
    def gib(x):
        return f"{x / GIB:.2f} GiB"

    print()
    print("| arm | wall time | features | train | predict | backtest | peak memory | test IC |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for arm in ("single", "dask"):
        r = results.get(arm)
        if not r:
            continue
        if r.get("failed"):
            print(f"| {arm} | failed (exit {r['exit']}) | | | | | | |")
            continue
        mem = f"process {gib(r['peak_client'])}"
        if arm == "dask":
            mem = "workers " + ", ".join(gib(w) for w in r["peak_workers"]) + f"; client {gib(r['peak_client'])}"
            extra = f" (incl. {r['cluster_start_s']:.0f} s cluster start)"
        else:
            extra = ""
        print(
            f"| {arm} ({r['rows']:,} rows x {r['n_features']} features) | {r['wall_s']:.0f} s{extra} | "
            f"{r['features_s']:.0f} s | {r['train_s']:.0f} s | {r['predict_s']:.1f} s | {r['backtest_s']:.0f} s | "
            f"{mem} | {r['test_ic']:.4f} |"
        )
    d = results.get("dask")
    if d and not d.get("failed"):
        worst = max(d["peak_workers"])
        print(f"goal: every worker < 8 GiB: {'met' if worst < 8 * GIB else 'NOT met'} (largest {gib(worst)})")
    s, p = results.get("wf-serial"), results.get("wf-dask")
    if s and p and not s.get("failed") and not p.get("failed"):
        same = (work / "wf_pred_serial.pkl").read_bytes() == (work / "wf_pred_dask.pkl").read_bytes()
        speed = s["wall_s"] / p["wall_s"]
        print(
            f"walk-forward ({args.wf_instruments} instruments, {s['n_windows']} windows of {s['step']} bars): "
            f"serial {s['wall_s']:.0f} s, {args.workers} workers {p['wall_s']:.0f} s = {speed:.2f}x "
            f"(goal >= 1.7x: {'met' if speed >= 1.7 else 'NOT met'}); merged predictions byte-identical: {same}"
        )
        shares = [c / p["wall_s"] for c in p["worker_cpu_s"]]
        print(
            f"  CPU time: serial {s['arm_cpu_s']:.0f} s (system {s['arm_sys_s']:.0f} s), {args.workers} workers "
            f"{p['arm_cpu_s']:.0f} s (system {p['arm_sys_s']:.0f} s; workers "
            + ", ".join(f"{c:.0f} s" for c in p["worker_cpu_s"])
            + f", client {p['client_cpu_s']:.0f} s); each worker had "
            + ", ".join(f"{x:.0%}" for x in shares)
            + f" of a core; load average {s['load'][0]:.1f} -> {s['load'][1]:.1f} (serial), "
            f"{p['load'][0]:.1f} -> {p['load'][1]:.1f} (workers)"
        )
        if min(shares) < 0.8:
            print(
                "  note: a worker got less than 80% of a core (other load on the machine): the wall-clock "
                "speed-up understates what free cores give"
            )


if __name__ == "__main__":
    raise SystemExit(main())
