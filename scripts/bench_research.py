#!/usr/bin/env python
"""Benchmark the research layer on the synthetic market: wall time and peak memory per phase.

    nice -n 10 python scripts/bench_research.py --instruments 50 --start 2023-01-01 --end 2024-01-01

Builds a store and 60min + day provider directories from the synthetic market in a work directory
(setup, timed but not a research phase), then measures, in one process with ``kernels=1``:

- load:     raw fields ($open .. $amount, $funding_rate) of every instrument through Qlib's ``D.features``;
- features: ``CryptoAlpha158`` (expressions + processors) and ``DatasetH`` segments (``--set engine=qlib``
            for Qlib's expression engine instead of the fast one);
- fit:      ``LGBModel.fit`` (the 60min workflow's parameters);
- predict:  ``LGBModel.predict`` on the test segment;
- records:  the 60min workflow's own records in its order (``SignalRecord``, ``ModelArtifactRecord``,
            ``TrainingReportRecord``, ``SigAnaRecord`` with ann_scaler 8760, ``CryptoBacktestRecord`` with an
            hourly crypto backtest of the test segment, ``CryptoRiskRecord``), in a throwaway MLflow store;
            the time of each record is printed too.

Everything runs inside the work directory (a temporary directory by default, also the working directory
of the research phases): MLflow's store, the training report's ``out_dir`` and Qlib's experiment lock stay
there. The backtest reads lot sizes from the work directory's store (``instrument_meta``).

Peak memory is the process's peak resident set size sampled every 20 ms during the phase. Prints the
test-segment IC, ICIR, rank IC and rank ICIR.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "workflow_configs" / "workflow_config_lightgbm_crypto_60min.yaml"


class RssSampler:
    """Peak RSS of this process over a phase, from /proc/self/status sampled in a thread."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def rss() -> int:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def __enter__(self) -> "RssSampler":
        self.start_rss = self.peak = self.rss()
        self._stop.clear()

        def run() -> None:
            while not self._stop.is_set():
                self.peak = max(self.peak, self.rss())
                time.sleep(self.interval)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def build_data(workdir: Path, n_instruments: int, start: str, end: str, seed: int) -> dict[str, Path]:
    from qlib_crypto.provider import dump
    from qlib_crypto.sources.collector import collect
    from qlib_crypto.sources.synthetic import SyntheticSource

    store = workdir / "store"
    source = SyntheticSource(n_instruments, seed=seed)
    collect(source, store, source.list_instruments(), "1h", start, end, workers=2, progress=False)
    dirs = {"60min": workdir / "qlib" / "60min", "day": workdir / "qlib" / "day"}
    dump(store, dirs["60min"], "1h")
    dump(store, dirs["day"], "1d", source_timeframe="1h")
    return dirs


def segments(start: str, end: str) -> dict[str, tuple[pd.Timestamp, pd.Timestamp]]:
    """Train 2/3, valid 1/6, test 1/6 of the hourly range (bar open times, ends inclusive)."""
    s, e = pd.Timestamp(start), pd.Timestamp(end) - pd.Timedelta(hours=1)
    span = e - s
    t1 = (s + span * 2 / 3).floor("D")
    t2 = (s + span * 5 / 6).floor("D")
    hour = pd.Timedelta(hours=1)
    return {"train": (s, t1 - hour), "valid": (t1, t2 - hour), "test": (t2, e)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Research-layer benchmark (load, features, fit, predict, records).")
    parser.add_argument("--instruments", type=int, default=50)
    parser.add_argument("--start", default="2023-01-01")
    parser.add_argument("--end", default="2024-01-01")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", default=None, help="keep data here (default: a temporary directory)")
    parser.add_argument(
        "--no-backtest", action="store_true", help="records phase without CryptoBacktestRecord and CryptoRiskRecord"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a model (lr, num_leaves...) or handler (label_norm, engine...) kwarg, YAML value",
    )
    args = parser.parse_args(argv)

    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_research_")
        workdir = Path(tmp.name)
    else:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)

    workdir = workdir.resolve()
    cwd = os.getcwd()
    os.chdir(workdir)  # relative paths of the records (reports/...) and Qlib's lock stay in the work directory
    try:
        return run(args, workdir)
    finally:
        os.chdir(cwd)
        if tmp is not None:
            tmp.cleanup()


def bench_records(task: dict, workdir: Path, test_times: list, no_backtest: bool) -> list[dict]:
    """The workflow's record configs made to run here: the backtest over the test segment (ending a bar
    early: the exchange needs the next bar), lot sizes from the bench store, reports in the work directory."""
    records = []
    for record in copy.deepcopy(task["record"]):
        kwargs = record.setdefault("kwargs", {}) or {}
        record["kwargs"] = kwargs
        if record["class"] in ("CryptoBacktestRecord", "CryptoRiskRecord") and no_backtest:
            continue
        if record["class"] == "CryptoBacktestRecord":
            backtest = kwargs["config"]["backtest"]
            backtest.update(start_time=test_times[0], end_time=test_times[-2])
            exchange = backtest.get("exchange")
            if isinstance(exchange, dict) and isinstance(exchange.get("kwargs"), dict):
                exchange["kwargs"]["instrument_meta"] = str(workdir / "store")
        if kwargs.get("out_dir"):
            kwargs["out_dir"] = str(workdir / "reports" / Path(kwargs["out_dir"]).name)
        if kwargs.get("out_path"):
            kwargs["out_path"] = str(workdir / "models" / Path(kwargs["out_path"]).name)
        records.append(record)
    return records


def run(args: argparse.Namespace, workdir: Path) -> int:
    """The timed phases (setup, load, features, fit, predict, records) in ``workdir``."""
    results: list[tuple[str, float, int, int]] = []

    def phase(name: str):
        class _Phase:
            def __enter__(self):
                self.sampler = RssSampler().__enter__()
                self.t0 = time.perf_counter()
                return self

            def __exit__(self, *exc):
                dt = time.perf_counter() - self.t0
                self.sampler.__exit__(*exc)
                results.append((name, dt, self.sampler.peak, self.sampler.peak - self.sampler.start_rss))
                print(f"  {name:<9} {dt:8.1f} s   peak RSS {self.sampler.peak / 2**20:8.0f} MiB", flush=True)

        return _Phase()

    print(f"synthetic market: {args.instruments} instruments, 1h bars, {args.start} .. {args.end}", flush=True)
    with phase("setup"):
        dirs = build_data(workdir, args.instruments, args.start, args.end, args.seed)

    from qlib.data import D

    import qlib_crypto

    qlib_crypto.init(
        {k: str(v) for k, v in dirs.items()},
        kernels=1,
        exp_manager={
            "class": "MLflowExpManager",
            "module_path": "qlib.workflow.expm",
            "kwargs": {"uri": f"file:{workdir / 'mlruns'}", "default_exp_name": "bench"},
        },
    )
    with open(CONFIG) as fh:
        conf = yaml.safe_load(fh)
    task = conf["task"]
    for item in args.set:
        key, value = item.split("=", 1)
        handler_kw = task["dataset"]["kwargs"]["handler"]["kwargs"]
        target = (
            handler_kw
            if key in ("label_norm", "horizon", "windows", "include", "exclude", "engine")
            else task["model"]["kwargs"]
        )
        target[key] = yaml.safe_load(value)
    segs = segments(args.start, args.end)
    n_bars = len(D.calendar(freq="60min"))
    print(f"{n_bars} hourly bars; segments: " + ", ".join(f"{k} {v[0]} .. {v[1]}" for k, v in segs.items()), flush=True)

    with phase("load"):
        fields = ["$open", "$high", "$low", "$close", "$volume", "$amount", "$funding_rate"]
        raw = D.features(
            D.instruments("all"), fields, start_time=segs["train"][0], end_time=segs["test"][1], freq="60min"
        )
    rows = len(raw)
    del raw

    from qlib.data.dataset import DatasetH

    from qlib_crypto.data import CryptoAlpha158

    with phase("features"):
        handler_kwargs = dict(task["dataset"]["kwargs"]["handler"]["kwargs"])  # the workflow's choices
        handler_kwargs.update(
            instruments="all",
            start_time=segs["train"][0],
            end_time=segs["test"][1],
            fit_start_time=segs["train"][0],
            fit_end_time=segs["train"][1],
            freq="60min",
        )
        handler = CryptoAlpha158(**handler_kwargs)
        dataset = DatasetH(handler, segments=segs)
        dataset.prepare("train")  # materialise the learn frame
    n_features = len(handler.feature_names)

    from qlib.contrib.model.gbdt import LGBModel
    from qlib.workflow import R

    with R.start(experiment_name="bench_research"):
        model = LGBModel(**task["model"]["kwargs"])
        with phase("fit"):
            model.fit(dataset)
        with phase("predict"):
            pred = model.predict(dataset, segment="test")
        recorder = R.get_recorder()
        from qlib.utils import fill_placeholder, init_instance_by_config

        test_times = list(D.calendar(start_time=segs["test"][0], end_time=segs["test"][1], freq="60min"))
        record_times: list[tuple[str, float]] = []
        with phase("records"):
            for record in bench_records(task, workdir, test_times, args.no_backtest):
                t0 = time.perf_counter()
                record = fill_placeholder(record, {"<MODEL>": model, "<DATASET>": dataset})
                init_instance_by_config(
                    record,
                    recorder=recorder,
                    default_module="qlib.workflow.record_temp",
                    try_kwargs={"model": model, "dataset": dataset},
                ).generate()
                record_times.append((record["class"], time.perf_counter() - t0))
        for name, dt in record_times:
            print(f"    {name:<22} {dt:7.1f} s", flush=True)
    metrics = recorder.list_metrics()  # after the run ended: Qlib logs metrics asynchronously

    print()
    print(f"data: {args.instruments} instruments x {n_bars} hourly bars = {rows} rows; {n_features} features")
    print(f"test predictions: {len(pred)} rows; best iteration {model.model.best_iteration}")
    print(f"{'phase':<9} {'wall s':>8} {'peak RSS MiB':>13} {'RSS growth MiB':>15} {'share of research':>18}")
    research = sum(r[1] for r in results if r[0] != "setup")
    for name, dt, peak, growth in results:
        share = "" if name == "setup" else f"{dt / research:17.0%}"
        print(f"{name:<9} {dt:8.1f} {peak / 2**20:13.0f} {growth / 2**20:15.0f} {share:>18}")
    print(f"research total {research:.1f} s (setup excluded)")
    for key in ("IC", "ICIR", "Rank IC", "Rank ICIR", "Long-Short Ann Return"):
        if key in metrics:
            print(f"test {key}: {metrics[key]:.4f}")
    for key in (
        "backtest.total_return",
        "backtest.annualized_return",
        "backtest.sharpe",
        "backtest.max_drawdown",
        "backtest.turnover",
        "crypto.60min.excess_return_with_cost.annualized_return_365d",
    ):
        if key in metrics:
            print(f"{key}: {metrics[key]:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
