"""Walk-forward windows and cost-sweep cells as Dask tasks, merged exactly as the serial path merges them.

- :class:`DaskTrainerR`: Qlib's ``TrainerR`` whose ``train`` runs each task (one walk-forward window) as a Dask
  task: the worker initialises Qlib with the client's settings (same provider, same MLflow tracking URI:
  shared storage) and calls the same ``task_train``, which trains the window and saves its recorder. The
  client then returns the recorders in task order with the tags ``TrainerR`` sets, so Qlib's
  ``RecorderCollector`` + ``RollingEnsemble`` merge them as in the serial run.
- :func:`distributed_sweep`: each (fee multiplier, slippage) cell of ``cost_sweep`` is a task running the same
  :func:`qlib_crypto.workflow.backtest_record.sweep_cell` on the worker's exchange (built once per worker from
  the same config); the rows are put back in grid order.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable, Sequence

from qlib.model.trainer import TrainerR, task_train

from .cluster import get_client, iter_results, qlib_config, run_locked, task_spec

logger = logging.getLogger(__name__)


def _train_window(
    conf: dict, train_func: Callable, task: dict, experiment_name: str, recorder_name: Any, kwargs: dict
) -> tuple[str, float, float]:
    """On a worker: train one task into a recorder of ``experiment_name``; its recorder id, the wall time and
    the worker process's CPU time (seconds) spent on it."""

    def run() -> tuple[str, float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        rec = train_func(task, experiment_name, recorder_name=recorder_name, **kwargs)
        return str(rec.info["id"]), time.perf_counter() - t0, time.process_time() - c0

    return run_locked(conf, run)


class DaskTrainerR(TrainerR):
    """``TrainerR`` with one Dask task per Qlib task (see the module doc).

    ``dask``: a cluster spec (:mod:`qlib_crypto.scale.cluster`; a LocalCluster's workers allocate memory as
    one process does unless it says ``malloc_trim: true``, :func:`qlib_crypto.scale.cluster.task_spec`);
    ``qlib_init``: the ``qlib.init`` kwargs for the workers (default: this process's settings,
    :func:`qlib_crypto.scale.cluster.qlib_config`).

    Windows are submitted latest first: in an expanding walk-forward those are the largest, so the last
    windows running on the workers are the small ones. ``run_walk_forward`` also starts the cluster and has
    the workers import Qlib and the task's modules (:func:`qlib_crypto.scale.cluster.warm_workers`) before it
    initialises Qlib itself, so that the workers' start-up overlaps its own."""

    def __init__(
        self,
        experiment_name: str | None = None,
        train_func: Callable = task_train,
        default_rec_name: str | None = None,
        dask: Any = "local",
        qlib_init: dict | None = None,
    ) -> None:
        super().__init__(
            experiment_name=experiment_name,
            train_func=train_func,
            call_in_subproc=False,
            default_rec_name=default_rec_name,
        )
        self.dask = task_spec(dask)
        self.qlib_init = qlib_init

    def train(self, tasks: list, train_func: Callable | None = None, experiment_name: str | None = None, **kwargs):
        from qlib.workflow import R

        if isinstance(tasks, dict):
            tasks = [tasks]
        if len(tasks) == 0:
            return []
        train_func = train_func or self.train_func
        experiment_name = experiment_name or self.experiment_name
        conf = self.qlib_init or qlib_config()
        R.get_exp(experiment_name=experiment_name, create=True)  # created once, before the workers write to it
        client = get_client(self.dask)
        futures = [  # priority: the latest (in an expanding walk-forward the largest) window first
            client.submit(
                _train_window,
                conf,
                train_func,
                task,
                experiment_name,
                self.default_rec_name,
                kwargs,
                pure=False,
                priority=i,
            )
            for i, task in enumerate(tasks)
        ]
        ids: list[str | None] = [None] * len(tasks)
        for pos, (rid, wall, cpu) in iter_results(client, futures):
            ids[pos] = rid
            logger.info(
                "walk-forward window %d/%d trained in %.1f s (worker CPU %.1f s; recorder %s)",
                pos + 1,
                len(tasks),
                wall,
                cpu,
                rid,
            )
        recs = []
        for rid in ids:  # task order, as TrainerR returns them
            rec = R.get_recorder(recorder_id=rid, experiment_name=experiment_name)
            rec.set_tags(**{self.STATUS_KEY: self.STATUS_BEGIN})
            recs.append(rec)
        return recs


# ---------------------------------------------------------------------------------------------------------
# cost sweep
# ---------------------------------------------------------------------------------------------------------
_EXCHANGE: dict[str, Any] = {}


def _sweep_task(conf: dict, ex_conf: dict, strategy: dict, cell: tuple[float, float], kwargs: dict) -> dict:
    """On a worker: one sweep cell on this worker's exchange (built once per exchange config)."""

    def run() -> dict:
        import copy

        from dask.base import tokenize
        from qlib.utils import init_instance_by_config

        from ..backtest import CryptoExchange
        from ..workflow.backtest_record import sweep_cell

        key = json.dumps(conf, sort_keys=True, default=str) + tokenize(ex_conf)
        if key not in _EXCHANGE:
            _EXCHANGE.clear()
            ex = init_instance_by_config(copy.deepcopy(ex_conf), accept_types=CryptoExchange)
            _EXCHANGE[key] = (ex, copy.deepcopy(ex.fees))
        ex, base_fees = _EXCHANGE[key]
        try:
            return sweep_cell(ex, base_fees, strategy, cell[0], cell[1], **kwargs)
        finally:
            ex.fees = copy.deepcopy(base_fees)

    return run_locked(conf, run)


def distributed_sweep(
    dask: Any,
    ex_conf: dict,
    strategy: dict,
    cells: Sequence[tuple[float, float]],
    *,
    start_time: Any,
    end_time: Any,
    freq: str,
    account: float,
    benchmark: Any,
    executor: Any,
    progress: Callable | None = None,
) -> list[dict]:
    """The rows of ``cost_sweep`` for ``cells``, one Dask task per cell, in ``cells`` order."""
    client = get_client(dask)
    conf = qlib_config()
    kwargs = {
        "start_time": start_time,
        "end_time": end_time,
        "freq": freq,
        "account": account,
        "benchmark": benchmark,
        "executor": executor,
    }
    # the signals and benchmark go to every worker once, not once per cell
    strategy_f, kwargs_f = client.scatter([strategy, kwargs], broadcast=True, hash=False)
    futures = [client.submit(_sweep_task, conf, ex_conf, strategy_f, cell, kwargs_f, pure=False) for cell in cells]
    rows: list[dict | None] = [None] * len(cells)
    for pos, row in iter_results(client, futures):
        rows[pos] = row
        if progress is not None:
            progress(row)
    return rows  # type: ignore[return-value]
