"""Run a crypto backtest (``CryptoExchange`` + ``CryptoExecutor`` + ``CryptoPosition``) and record its report.

- :func:`run_backtest`: one backtest through ``qlib.backtest.backtest``; returns a :class:`BacktestRun` with
  Qlib's portfolio report, positions and the executor's fills, funding events and order reports (plain
  DataFrames, read from the executor's own API; the report DataFrame carries no ``attrs``).
- :func:`cost_sweep`: the same backtest over a grid of fee multipliers and slippage values (one exchange,
  loaded once, re-priced per run).
- :class:`CryptoBacktestRecord`: a qrun record template (in the spirit of Qlib's ``PortAnaRecord``) that
  runs the backtest on ``pred.pkl`` and logs the report metrics, JSON, HTML, fills and positions.

Qlib must be initialised (``qlib.init`` / ``qlib_crypto.init``) with the bar frequency's provider directory; no
``day`` directory is needed (the benchmark is passed to Qlib as bar returns, see
:func:`qlib_crypto.backtest.benchmark_returns`).
"""

from __future__ import annotations

import copy
import logging
import math
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import pandas as pd
from qlib.workflow.record_temp import RecordTemp

from ..errors import BacktestError, ConfigError
from .backtest_report import BacktestReport, build_report, iter_metric_items, report_metrics

logger = logging.getLogger(__name__)

EXCHANGE_CLASS = {"class": "CryptoExchange", "module_path": "qlib_crypto.backtest"}
EXECUTOR_CLASS = {"class": "CryptoExecutor", "module_path": "qlib_crypto.backtest"}
POS_TYPE = "qlib_crypto.backtest.CryptoPosition"
SWEEP_COLUMNS = [
    "fee_multiplier",
    "slippage_bps",
    "total_return",
    "annualized_return",
    "sharpe",
    "max_drawdown",
    "fees_paid",
    "slippage_paid",
    "funding_paid",
    "turnover",
    "final_equity",
]


@dataclass
class BacktestRun:
    """What one backtest produced: Qlib's portfolio report and positions, and the executor's tables."""

    freq: str
    initial_equity: float
    report_df: pd.DataFrame
    positions: dict
    fills: pd.DataFrame
    funding_events: pd.DataFrame
    order_reports: pd.DataFrame
    liquidations: pd.DataFrame
    settings: dict = field(default_factory=dict)
    totals: dict = field(default_factory=dict)
    bar_costs: pd.DataFrame | None = None

    @property
    def funding_received(self) -> float:
        if self.funding_events is None or len(self.funding_events) == 0:
            return 0.0
        return -float(self.funding_events["payment"].sum())

    def order_summary(self) -> dict[str, Any]:
        """Orders sent, and those the participation cap clipped or that were not (fully) filled, with notionals.

        ``orders_capped``: orders the participation cap clipped (reason ``participation_cap`` or ``no_volume``);
        ``capped_notional``: the amount it removed x the bar's deal price; ``orders_unfilled``: orders filled only
        partly or not at all (any reason); ``unfilled_notional``: their unfilled amount x the bar's deal price."""
        rep = self.order_reports
        out: dict[str, Any] = {
            "orders": 0,
            "orders_capped": 0,
            "capped_notional": 0.0,
            "orders_unfilled": 0,
            "unfilled_notional": 0.0,
        }
        if rep is None or len(rep) == 0:
            return out
        price = pd.to_numeric(rep["deal_price"], errors="coerce").fillna(0.0) if "deal_price" in rep else 0.0
        capped = pd.to_numeric(rep["capped"], errors="coerce").fillna(0.0) if "capped" in rep else None
        unfilled = pd.to_numeric(rep["unfilled"], errors="coerce").fillna(0.0)
        out["orders"] = int(len(rep))
        if capped is not None:
            out["orders_capped"] = int((capped > 0).sum())
            out["capped_notional"] = float((capped * price).sum())
        not_full = rep["status"] != "filled"
        out["orders_unfilled"] = int(not_full.sum())
        out["unfilled_notional"] = float((unfilled * price)[not_full].sum())
        return out

    def metrics(self) -> dict[str, Any]:
        """``report().metrics`` without building the rest of the report (a cost sweep's row)."""
        return report_metrics(
            self.report_df, self.fills, freq=self.freq, initial_equity=self.initial_equity, funding=self._funding()
        ).metrics

    def _funding(self) -> Any:
        """What the report reads as funding: the executor's events when there were any, else the total received."""
        events = self.funding_events
        return events if events is not None and len(events) else self.funding_received

    def report(self, info: Mapping[str, Any] | None = None) -> BacktestReport:
        """The :class:`~qlib_crypto.workflow.backtest_report.BacktestReport` of this run."""
        extra = dict(self.settings)
        extra.update(self.order_summary())
        extra.update(info or {})
        extra["n_liquidations"] = int(len(self.liquidations)) if self.liquidations is not None else 0
        if self.order_reports is not None and len(self.order_reports):
            extra["orders_not_fully_filled"] = int((self.order_reports["status"] != "filled").sum())
        return build_report(
            self.report_df,
            self.fills,
            freq=self.freq,
            initial_equity=self.initial_equity,
            funding=self._funding(),
            order_reports=self.order_reports,
            positions=self.positions,
            info=extra,
        )


def exchange_config(freq: str, exchange: Mapping[str, Any] | None = None) -> dict:
    """A ``CryptoExchange`` config dict from its kwargs, or from a full ``{class, module_path, kwargs}`` block
    (an ``exchange:`` wrapper as in the docs is accepted too)."""
    ex = dict(exchange or {})
    if set(ex) == {"exchange"} and isinstance(ex["exchange"], Mapping):
        ex = dict(ex["exchange"])
    if "class" in ex:
        conf = {
            "class": ex["class"],
            "module_path": ex.get("module_path", EXCHANGE_CLASS["module_path"]),
            "kwargs": dict(ex.get("kwargs") or {}),
        }
    else:
        conf = dict(EXCHANGE_CLASS, kwargs=ex)
    conf["kwargs"].setdefault("freq", freq)
    return conf


def _calendar(freq: str) -> pd.DatetimeIndex:
    from qlib.data import D

    return pd.DatetimeIndex(D.calendar(freq=freq))


def default_benchmark(freq: str, start_time: Any = None, end_time: Any = None) -> str:
    """``BTC-USDT`` when the provider has it, else ``BTC-USDT-SWAP``, else the first instrument."""
    from qlib.data import D

    names = sorted(
        D.list_instruments(D.instruments("all"), start_time=start_time, end_time=end_time, freq=freq, as_list=True)
    )
    if not names:
        raise BacktestError(f"the provider has no instruments at freq {freq!r}", hint="dump the store first")
    for name in ("BTC-USDT", "BTC-USDT-SWAP"):
        if name in names:
            return name
    return names[0]


def clip_to_calendar(freq: str, start_time: Any, end_time: Any) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Start/end snapped to bars of the calendar (``None`` = its first/last bar); raises when empty."""
    cal = _calendar(freq)
    if len(cal) == 0:
        raise BacktestError(f"the {freq} calendar is empty", hint="dump the store at this frequency first")
    start = cal[0] if start_time is None else pd.Timestamp(start_time)
    end = cal[-1] if end_time is None else pd.Timestamp(end_time)
    for ts in (start, end):
        if ts.tzinfo is not None:
            raise ConfigError(f"time {ts} has a time zone", hint="give naive UTC times such as 2024-01-01 00:00")
    inside = cal[(cal >= start) & (cal <= end)]
    if len(inside) == 0:
        raise ConfigError(
            f"no {freq} bar between {start} and {end} (calendar {cal[0]} .. {cal[-1]})",
            hint="choose start and end inside the provider's calendar",
        )
    return inside[0], inside[-1]


def run_backtest(
    strategy: Any,
    *,
    start_time: Any = None,
    end_time: Any = None,
    freq: str = "60min",
    account: float = 1_000_000.0,
    benchmark: str | pd.Series | None = None,
    exchange: Mapping[str, Any] | Any | None = None,
    executor: Mapping[str, Any] | None = None,
    codes: str | Sequence[str] = "all",
) -> BacktestRun:
    """Backtest ``strategy`` (a Qlib strategy config dict or instance) with the crypto exchange and executor.

    ``exchange``: ``CryptoExchange`` kwargs (or a class/module_path/kwargs block, or a ready exchange
    instance); ``executor``: ``CryptoExecutor`` kwargs (``max_leverage``, ``maintenance_margin``...).
    ``benchmark``: an instrument (default ``BTC-USDT``, else ``BTC-USDT-SWAP``, else the first one) whose bar
    returns are computed at ``freq`` (:func:`~qlib_crypto.backtest.benchmark_returns`), or a ``pd.Series``
    of bar returns. Any range of one bar or more works, with only the ``freq`` provider directory.
    """
    from qlib.backtest import backtest
    from qlib.backtest.exchange import Exchange

    from ..backtest import CryptoExecutor, benchmark_returns

    start, end = clip_to_calendar(freq, start_time, end_time)
    if isinstance(benchmark, pd.Series):
        bench_name, bench_series = str(benchmark.name or "series"), benchmark
    else:
        bench_name = benchmark if benchmark is not None else default_benchmark(freq, start, end)
        bench_series = benchmark_returns(bench_name, start, end, freq)
    if isinstance(exchange, Exchange):
        ex_conf: Any = exchange
    else:
        ex_conf = exchange_config(freq, exchange)
        ex_conf["kwargs"].setdefault("codes", codes)
        ex_conf["kwargs"].setdefault("start_time", start)
        ex_conf["kwargs"].setdefault("end_time", end)
    ex_kwargs = dict(executor or {})
    ex_kwargs.pop("generate_portfolio_metrics", None)
    ex_kwargs.setdefault("time_per_step", freq)
    crypto_executor = CryptoExecutor(generate_portfolio_metrics=True, **ex_kwargs)
    portfolio, _ = backtest(
        start_time=start,
        end_time=end,
        strategy=copy.copy(strategy) if isinstance(strategy, dict) else strategy,
        executor=crypto_executor,
        benchmark=bench_series,
        account=float(account),
        exchange_kwargs={"exchange": ex_conf, "freq": freq, "codes": codes},
        pos_type=POS_TYPE,
    )
    if not portfolio:
        raise BacktestError("the backtest returned no portfolio report", hint="check the executor configuration")
    key = next(iter(portfolio))
    report_df, positions = portfolio[key]
    result = crypto_executor.result()
    used = crypto_executor.crypto_exchange
    meta = used.metadata_summary()
    settings = {
        "start": str(start),
        "end": str(end),
        "benchmark": bench_name,
        "account": float(account),
        "max_participation": used.max_participation,
        "instrument_meta_source": meta["source"],
        "instrument_meta_read_at": meta["read_at"],
        "instruments_with_metadata": len(meta["with_metadata"]),
        "instruments_default_metadata": len(meta["defaults"]),
        "instruments_default_metadata_names": ", ".join(meta["defaults"]),
    }
    return BacktestRun(
        freq=freq,
        initial_equity=float(account),
        report_df=report_df,
        positions=positions,
        fills=result.fills,
        funding_events=result.funding_events,
        order_reports=result.order_reports,
        liquidations=result.liquidations,
        settings=settings,
        totals=result.totals,
        bar_costs=result.bar_costs,
    )


def scale_fees(fees: Mapping[str, Mapping[str, float]], multiplier: float) -> dict[str, dict[str, float]]:
    """Every fee rate multiplied by ``multiplier``."""
    return {
        market: {role: float(rate) * float(multiplier) for role, rate in rates.items()}
        for market, rates in fees.items()
    }


def cost_sweep(
    strategy: Any,
    *,
    fee_multipliers: Sequence[float],
    slippage_bps: Sequence[float],
    start_time: Any = None,
    end_time: Any = None,
    freq: str = "60min",
    account: float = 1_000_000.0,
    benchmark: str | pd.Series | None = None,
    exchange: Mapping[str, Any] | None = None,
    executor: Mapping[str, Any] | None = None,
    progress: Any = None,
    dask: Any = None,
    jobs: int | None = 1,
) -> pd.DataFrame:
    """Re-run one backtest for every (fee multiplier, slippage) pair; one row per run (:data:`SWEEP_COLUMNS`).

    The exchange (quotes) is built once; each run sets its ``fees`` (base fees x multiplier) and
    ``slippage_bps``. ``strategy`` must be a config dict (a fresh strategy is built per run).
    ``dask``: a Dask cluster spec (scheduler address or ``local``, :mod:`qlib_crypto.scale.cluster`): each cell
    is then a task on the cluster (:func:`sweep_cell` on a worker's own exchange) and the rows are put in grid
    order, so the table is the serial one, byte for byte. None: serial.
    ``jobs``: without Dask, the cells run in up to ``jobs`` forked processes of this one (None: one per CPU,
    :func:`qlib_crypto.data.threads.n_threads`), each with a copy of the exchange built here; rows in grid order,
    the same table as ``jobs=1`` (serial, in this process). Where ``fork`` is not available the run is serial.
    """
    from qlib.utils import init_instance_by_config

    from ..backtest import CryptoExchange, benchmark_returns

    if not isinstance(strategy, dict):
        raise ConfigError("cost_sweep needs the strategy as a config dict", hint="give {class, module_path, kwargs}")
    for name, values in (("fee multiplier", fee_multipliers), ("slippage", slippage_bps)):
        if not len(values):
            raise ConfigError(f"the {name} grid is empty", hint="give at least one value, e.g. 0,1")
        bad = [v for v in values if not (math.isfinite(float(v)) and float(v) >= 0)]
        if bad:
            raise ConfigError(f"{name} value {bad[0]!r} is not a finite number >= 0", hint="e.g. 0,0.5,1,2")
    start, end = clip_to_calendar(freq, start_time, end_time)
    if not isinstance(benchmark, pd.Series):  # loaded once for every run
        name = benchmark if benchmark is not None else default_benchmark(freq, start, end)
        benchmark = benchmark_returns(name, start, end, freq).rename(name)
    conf = exchange_config(freq, exchange)
    conf["kwargs"].setdefault("codes", "all")
    conf["kwargs"].setdefault("start_time", start)
    conf["kwargs"].setdefault("end_time", end)
    cells = [(float(m), float(s)) for m in fee_multipliers for s in slippage_bps]
    if dask is not None and dask is not False:
        from ..scale.tasks import distributed_sweep

        rows = distributed_sweep(
            dask,
            conf,
            strategy,
            cells,
            start_time=start,
            end_time=end,
            freq=freq,
            account=account,
            benchmark=benchmark,
            executor=executor,
            progress=progress,
        )
        return pd.DataFrame(rows, columns=SWEEP_COLUMNS)
    ex = init_instance_by_config(conf, accept_types=CryptoExchange)
    base_fees = copy.deepcopy(ex.fees)
    kwargs = {
        "start_time": start,
        "end_time": end,
        "freq": freq,
        "account": account,
        "benchmark": benchmark,
        "executor": executor,
    }
    rows = []
    with _each_message_once():  # every cell trades the same data: its data warnings are the same in each
        for row in _sweep_rows(ex, base_fees, strategy, cells, kwargs, jobs):
            rows.append(row)
            if progress is not None:
                progress(row)
    ex.fees = base_fees
    return pd.DataFrame(rows, columns=SWEEP_COLUMNS)


class _FirstTimeOnly(logging.Filter):
    """Passes each distinct (logger, level, message) once; later copies are dropped."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[tuple[str, int, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, record.getMessage())
        if key in self._seen:
            return False
        self._seen.add(key)
        return True


@contextmanager
def _each_message_once(prefix: str = "qlib_crypto") -> Iterator[None]:
    """Within the block, each distinct message of our loggers is logged once (per process: a forked sweep
    process starts from what this one had seen), e.g. a missing price met again by every cell of a sweep."""
    once = _FirstTimeOnly()
    names = sorted(
        name
        for name, lg in logging.Logger.manager.loggerDict.items()
        if isinstance(lg, logging.Logger) and (name == prefix or name.startswith(prefix + "."))
    )
    loggers = [logging.getLogger(name) for name in names]
    for lg in loggers:
        lg.addFilter(once)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(once)


_FORKED: dict[str, Any] = {}  # what a forked sweep process inherits: exchange, fees, strategy, arguments


def _forked_cell(cell: tuple[float, float]) -> dict[str, Any]:
    f = _FORKED
    return sweep_cell(f["ex"], f["base_fees"], f["strategy"], cell[0], cell[1], **f["kwargs"])


def _sweep_rows(ex: Any, base_fees: Any, strategy: dict, cells: list, kwargs: dict, jobs: int | None):
    """The rows of ``cells`` in grid order: in this process, or on forked processes (see :func:`cost_sweep`)."""
    import multiprocessing

    from ..data.threads import n_threads

    jobs = n_threads() if jobs is None else int(jobs)
    if jobs < 1:
        raise ConfigError(f"jobs={jobs} is not a positive number of processes", hint="use 1 (serial), 2, ...")
    jobs = min(jobs, len(cells))
    if jobs <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        for m, s in cells:
            yield sweep_cell(ex, base_fees, strategy, m, s, **kwargs)
        return
    from concurrent.futures import ProcessPoolExecutor

    _FORKED.update(ex=ex, base_fees=base_fees, strategy=strategy, kwargs=kwargs)
    try:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            yield from pool.map(_forked_cell, cells)  # in grid order, as each is done
    finally:
        _FORKED.clear()


def sweep_cell(
    ex: Any,
    base_fees: Mapping[str, Any],
    strategy: dict,
    fee_multiplier: float,
    slippage_bps: float,
    *,
    start_time: Any,
    end_time: Any,
    freq: str,
    account: float,
    benchmark: Any,
    executor: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """One cell of :func:`cost_sweep`: the backtest on exchange ``ex`` re-priced with ``base_fees`` x
    ``fee_multiplier`` and ``slippage_bps``; its row of :data:`SWEEP_COLUMNS`."""
    ex.fees = scale_fees(base_fees, float(fee_multiplier))
    ex.slippage_bps = float(slippage_bps)
    run = run_backtest(
        copy.deepcopy(strategy),
        start_time=start_time,
        end_time=end_time,
        freq=freq,
        account=account,
        benchmark=benchmark,
        exchange=ex,
        executor=executor,
    )
    metrics = run.metrics()
    row = {"fee_multiplier": float(fee_multiplier), "slippage_bps": float(slippage_bps)}
    row.update({k: metrics[k] for k in SWEEP_COLUMNS if k in metrics})
    row["final_equity"] = float(run.report_df["account"].astype("float64").iloc[-1])
    return row


# ------------------------------------------------------------------------------------------------------
# the record template
# ------------------------------------------------------------------------------------------------------
class CryptoBacktestRecord(RecordTemp):
    """Backtest the model's ``pred.pkl`` with ``CryptoExchange`` + ``CryptoExecutor`` and log the report.

    ``config`` mirrors Qlib's ``PortAnaRecord``: ``strategy`` (``signal: <PRED>`` is filled with the
    predictions), optional ``executor`` (``CryptoExecutor`` kwargs under ``kwargs``), and ``backtest``
    (``start_time end_time account benchmark``, ``exchange`` = ``CryptoExchange`` kwargs). Logs the
    fourteen report metrics as ``backtest.<name>`` and these artifacts under ``crypto_backtest/``:
    ``metrics.json report.json report.html fills.csv trades.csv equity.csv monthly_returns.csv
    order_reports.csv funding.csv``; plus ``portfolio_analysis/report_normal_<freq>.pkl`` and
    ``positions_normal_<freq>.pkl`` (so ``CryptoRiskRecord`` can follow it).
    """

    artifact_path = "crypto_backtest"
    metric_prefix = "backtest"

    def __init__(
        self,
        recorder: Any,
        config: Mapping[str, Any] | None = None,
        freq: str = "60min",
        skip_existing: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(recorder=recorder)
        from qlib.utils.data import deepcopy_basic_type

        config = deepcopy_basic_type(dict(config or {}))
        self.freq = str(freq)
        self.strategy_config = config.get("strategy") or {
            "class": "LongShortStrategy",
            "module_path": "qlib_crypto.strategy",
            "kwargs": {"signal": "<PRED>", "topk": 3, "rebalance_every": 24},
        }
        executor = dict(config.get("executor") or {})
        self.executor_kwargs = dict(executor.get("kwargs", executor))
        self.executor_kwargs.pop("generate_portfolio_metrics", None)
        self.freq = str(self.executor_kwargs.get("time_per_step", self.freq))
        self.backtest_config = dict(config.get("backtest") or {})
        self.skip_existing = skip_existing

    def list(self) -> list[str]:
        return [f"{self.artifact_path}/{n}" for n in ("metrics.json", "report.json", "report.html", "fills.csv")]

    def generate(self, **kwargs: Any) -> dict[str, Any]:
        from qlib.utils import fill_placeholder

        from .._run_guard import guard_recorder

        guard_recorder(self.recorder)  # run name; KILLED on Ctrl-C/SIGTERM
        pred = self.recorder.load_object("pred.pkl")
        strategy = fill_placeholder(copy.deepcopy(self.strategy_config), {"<PRED>": pred})
        bt = dict(self.backtest_config)
        times = pd.DatetimeIndex(pred.index.get_level_values("datetime"))
        start = bt.get("start_time") or times.min()
        end = bt.get("end_time") or times.max()
        exchange = bt.get("exchange") or bt.get("exchange_kwargs")
        run = run_backtest(
            strategy,
            start_time=start,
            end_time=end,
            freq=self.freq,
            account=float(bt.get("account", 1_000_000.0)),
            benchmark=bt.get("benchmark"),
            exchange=exchange,
            executor=self.executor_kwargs,
        )
        report = run.report(
            {
                "strategy": strategy.get("class", type(strategy).__name__)
                if isinstance(strategy, dict)
                else type(strategy).__name__
            }
        )
        metrics = {f"{self.metric_prefix}.{k}": v for k, v in iter_metric_items(report.metrics)}
        if metrics:
            self.recorder.log_metrics(**metrics)
        with tempfile.TemporaryDirectory(prefix="crypto_backtest_") as tmp:
            paths = report.write(tmp, title=f"Crypto backtest ({self.freq})")
            extra = {"order_reports.csv": run.order_reports, "funding.csv": run.funding_events}
            for name, frame in extra.items():
                p = Path(tmp) / name
                (frame if frame is not None else pd.DataFrame()).to_csv(p, index=False)
                paths[name] = p
            for p in paths.values():
                self.recorder.log_artifact(str(p), artifact_path=self.artifact_path)
        self.recorder.save_objects(
            artifact_path="portfolio_analysis",
            **{f"report_normal_{self.freq}.pkl": run.report_df, f"positions_normal_{self.freq}.pkl": run.positions},
        )
        print(report.summary_text(f"Crypto backtest ({self.freq})"), flush=True)  # as PortAnaRecord prints its tables
        return {"metrics": report.metrics}
