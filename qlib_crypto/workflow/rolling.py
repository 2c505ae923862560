"""Walk-forward (rolling) retraining with Qlib's own task generation, counted in bars.

Qlib's ``RollingGen`` steps over the *daily* calendar. :class:`BarRollingGen` is the same generator on the
calendar of the workflow's frequency, so ``step=720`` means 720 hourly bars (30 days) at 60min and the
label-leak truncation (``horizon + 1``) is in bars too. :func:`run_walk_forward` takes a ``qrun`` workflow
YAML, generates one task per test window (expanding or sliding train window), trains them with
``TrainerR``, merges the out-of-sample predictions with ``RecorderCollector`` + ``RollingEnsemble`` into
one recorder, and re-runs the workflow's analysis records on it (``SigAnaRecord``, ``CryptoBacktestRecord``
on the predicted range, ``CryptoRiskRecord``, the training report without a model; see
:func:`_analysis_records`).

On a Dask cluster (``dask=`` / the workflow's ``dask:`` block, docs/scale-out.md) each window is a Dask task
(:class:`qlib_crypto.scale.tasks.DaskTrainerR`, the same ``task_train`` on a worker) and the merge is the same
``RecorderCollector`` + ``RollingEnsemble`` on the same recorders: the merged predictions are the serial ones.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import ConfigError

logger = logging.getLogger(__name__)


def _handler_kwargs(task: dict) -> dict:
    handler = task["dataset"]["kwargs"]["handler"]
    if not isinstance(handler, dict):
        raise ConfigError(
            f"the walk-forward needs a handler config (class/kwargs), got {type(handler).__name__}",
            hint="give dataset.kwargs.handler as a dict in the workflow YAML",
        )
    return handler.setdefault("kwargs", {})


def bar_handler_mod(task: dict, rolling_gen: Any) -> None:
    """After each shift: extend the handler's end to the test end and refit normalisers on the train window."""
    from qlib.workflow.task.gen import handler_mod

    handler_mod(task, rolling_gen)
    kwargs = _handler_kwargs(task)
    train = task["dataset"]["kwargs"]["segments"][rolling_gen.train_key]
    if "fit_start_time" in kwargs or "fit_end_time" in kwargs:
        kwargs["fit_start_time"], kwargs["fit_end_time"] = train[0], train[1]


def make_rolling_gen(step: int, freq: str, horizon: int = 1, rtype: str = "expanding") -> Any:
    """A Qlib ``RollingGen`` whose steps and truncation are bars of ``freq`` (needs qlib initialised)."""
    from qlib.data import D
    from qlib.workflow.task.gen import RollingGen

    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ConfigError(f"bad walk-forward step {step!r}", hint="give a whole number of bars >= 1, e.g. 720")
    kinds = {"expanding": RollingGen.ROLL_EX, "sliding": RollingGen.ROLL_SD}
    if rtype not in kinds:
        raise ConfigError(f"bad rolling type {rtype!r}", hint="use expanding or sliding")

    class BarRollingGen(RollingGen):
        def __init__(self) -> None:
            super().__init__(step=step, rtype=kinds[rtype], ds_extra_mod_func=bar_handler_mod, trunc_days=horizon + 1)
            self.ta.cals = list(D.calendar(freq=freq, future=True))

    return BarRollingGen()


def rolling_tasks(task: dict, step: int, freq: str, horizon: int = 1, rtype: str = "expanding") -> list[dict]:
    """Split a workflow task into walk-forward tasks (each only records its predictions)."""
    from qlib.workflow.task.gen import task_generator

    task = copy.deepcopy(task)
    task["record"] = [{"class": "SignalRecord", "module_path": "qlib.workflow.record_temp"}]
    gen = make_rolling_gen(step, freq, horizon, rtype)
    # Qlib's truncation asserts that no segment starts on the calendar's first bar: start one bar later
    segments = task["dataset"]["kwargs"]["segments"]
    for key, seg in segments.items():
        if key != gen.test_key and seg[0] is not None and pd.Timestamp(seg[0]) <= gen.ta.cals[0]:
            segments[key] = (gen.ta.cals[1], seg[1])
    tasks = task_generator(task, gen)
    if not tasks:
        raise ConfigError("the walk-forward produced no task", hint="check the test segment and the step")
    return tasks


def _qlib_init(conf: dict) -> None:
    import qlib

    init = dict(conf.get("qlib_init") or {})
    if "exp_manager" not in init:  # what qrun does
        from qlib.config import C

        exp_manager = copy.deepcopy(C["exp_manager"])
        exp_manager["kwargs"]["uri"] = "file:" + str(Path(os.getcwd()).resolve() / "mlruns")
        init["exp_manager"] = exp_manager
    qlib.init(**init)


MODEL_PLACEHOLDERS = ("<MODEL>", "<DATASET>")
FROM_CONFIG = "<from the workflow's dask: block>"  # run_walk_forward's default for ``dask``


def _uses_placeholder(value: Any, names: tuple[str, ...] = MODEL_PLACEHOLDERS) -> bool:
    """Whether a record's kwargs (nested) use one of the placeholders ``names``."""
    if isinstance(value, str):
        return value in names
    if isinstance(value, dict):
        return any(_uses_placeholder(v, names) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_uses_placeholder(v, names) for v in value)
    return False


def _analysis_records(conf: dict, pred: pd.DataFrame, freq: str) -> list[dict]:
    """The workflow's records to re-run on the merged walk-forward recorder.

    - ``SignalRecord`` (and subclasses) is dropped: the merged recorder already holds ``pred.pkl``/``label.pkl``.
    - ``TrainingReportRecord`` runs without a model or dataset (there is one model per window): IC, rank IC
      and the prediction distribution of the whole out-of-sample series, no feature importance or loss
      curves; its ``out_dir`` gets a ``_walk_forward`` suffix so the qrun report is not overwritten.
    - Any other record that needs ``<MODEL>`` or ``<DATASET>`` (``ModelArtifactRecord``...) is skipped:
      each window's model is in its own recorder of the rolling experiment.
    - Records with a ``config.backtest`` block (``CryptoBacktestRecord``, Qlib's ``PortAnaRecord``) have
      the backtest moved onto the predicted range, ending one bar before its last bar (the exchange needs
      the next bar to fill and value).

    The other records (``SigAnaRecord``, ``CryptoRiskRecord``...) are kept as they are. ``conf`` is not
    modified.
    """
    from qlib.utils import get_cls_kwargs
    from qlib.workflow.record_temp import SignalRecord

    from .report_record import TrainingReportRecord

    records = conf["task"].get("record", [])
    records = [records] if isinstance(records, dict) else list(records)
    out = []
    times = pred.index.get_level_values("datetime").unique().sort_values()
    for record in records:
        cls = get_cls_kwargs(record, "qlib.workflow.record_temp")[0]
        name = getattr(cls, "__name__", str(cls))
        if issubclass(cls, SignalRecord):
            continue
        record = copy.deepcopy(record)
        if not isinstance(record, dict):
            raise ConfigError(
                f"walk-forward: record {record!r} is not a class/module_path/kwargs block",
                hint="write each task.record entry as a dict in the workflow YAML",
            )
        kwargs = record.get("kwargs") or {}
        record["kwargs"] = kwargs
        if issubclass(cls, TrainingReportRecord):
            kwargs["model"] = kwargs["dataset"] = None
            if kwargs.get("out_dir"):
                kwargs["out_dir"] = str(kwargs["out_dir"]).rstrip("/") + "_walk_forward"
            kwargs.setdefault("title", f"Walk-forward training report ({freq})")
        elif _uses_placeholder(kwargs):
            logger.info(
                "walk-forward: skipping %s (it needs one model/dataset; the window models are in "
                "the rolling experiment)",
                name,
            )
            continue
        config = kwargs.get("config")
        backtest = config.get("backtest") if isinstance(config, dict) else None
        if isinstance(backtest, dict) and len(times) > 2:
            # the walk-forward covers more than the original test segment; stop a bar early (the exchange
            # needs the next bar)
            backtest["start_time"], backtest["end_time"] = str(times[0]), str(times[-2])
        out.append(record)
    return out


def run_walk_forward(
    config_path: str | os.PathLike,
    step: int,
    *,
    rtype: str = "expanding",
    experiment_name: str | None = None,
    rolling_experiment: str | None = None,
    analyse: bool = True,
    dask: Any = FROM_CONFIG,
) -> dict[str, Any]:
    """Run a ``qrun`` workflow as a walk-forward.

    ``dask``: where to train the windows: None (serial, in this process), ``local`` (a LocalCluster with the
    machine's cores), a scheduler address ``tcp://HOST:PORT`` or a mapping (:mod:`qlib_crypto.scale.cluster`);
    by default the workflow YAML's top-level ``dask:`` block (serial without one). Results are the same.

    Returns ``{"experiment", "recorder_id", "rolling_experiment", "n_windows", "records", "metrics"}`` where
    the recorder holds the merged results, ``records`` names the analysis records run on it and ``metrics``
    its logged metrics.

    The merged recorder (experiment ``experiment_name``, default ``<workflow experiment>_walk_forward``)
    holds ``pred.pkl``/``label.pkl`` over every test window and, with ``analyse``, the workflow's analysis
    records (IC metrics, crypto backtest report of the predicted range, 24/7 metrics, training report).
    Each window's model is in its own recorder of
    ``rolling_experiment`` (default ``<experiment_name>_models_<timestamp>``).
    """
    from ruamel.yaml import YAML

    path = Path(config_path)
    if not path.is_file():
        raise ConfigError(f"workflow file {str(path)!r} not found", hint="pass a qrun YAML, e.g. workflow_configs/...")
    conf = YAML(typ="safe", pure=True).load(path.read_text())
    if dask is FROM_CONFIG:
        dask = conf.get("dask")
    warm = None
    if dask is not None and dask is not False:  # the workers start and import while this process imports Qlib
        from ..scale.cluster import task_modules, task_spec, warm_workers

        dask = task_spec(dask)
        warm = warm_workers(dask, ["qlib.model.trainer", *task_modules(conf.get("task"))])
    from qlib.model.ens.ensemble import RollingEnsemble
    from qlib.model.trainer import TrainerR
    from qlib.utils import init_instance_by_config
    from qlib.workflow import R
    from qlib.workflow.task.collect import RecorderCollector

    _qlib_init(conf)
    handler_kwargs = _handler_kwargs(conf["task"])
    freq = str(handler_kwargs.get("freq", "day"))
    horizon = int(handler_kwargs.get("horizon", 1))
    experiment_name = experiment_name or f"{conf.get('experiment_name', 'workflow')}_walk_forward"
    rolling_experiment = rolling_experiment or f"{experiment_name}_models_{pd.Timestamp.now():%Y%m%d%H%M%S}"

    tasks = rolling_tasks(conf["task"], step, freq, horizon, rtype)
    logger.info("walk-forward: %d tasks, step %d bars of %s (%s)", len(tasks), step, freq, rtype)
    if warm is None:
        TrainerR(experiment_name=rolling_experiment)(tasks)
    else:
        from ..scale.cluster import qlib_config
        from ..scale.tasks import DaskTrainerR

        extra = {k: v for k, v in (conf.get("qlib_init") or {}).items() if k not in ("provider_uri", "exp_manager")}
        DaskTrainerR(experiment_name=rolling_experiment, dask=dask, qlib_init=qlib_config(extra))(tasks)
        del warm

    collected = RecorderCollector(
        experiment=rolling_experiment,
        artifacts_key=["pred", "label"],
        process_list=[RollingEnsemble()],
        artifacts_path={"pred": "pred.pkl", "label": "label.pkl"},
    )()
    pred, label = collected["pred"], collected["label"]
    with R.start(experiment_name=experiment_name):
        R.log_params(
            rolling_experiment=rolling_experiment, step_bars=step, freq=freq, rtype=rtype, n_windows=len(tasks)
        )
        R.save_objects(**{"pred.pkl": pred, "label.pkl": label})
        recorder_id = R.get_recorder().id
    recorder = R.get_recorder(experiment_name=experiment_name, recorder_id=recorder_id)
    ran: list[str] = []
    if analyse:
        for record in _analysis_records(conf, pred, freq):
            init_instance_by_config(record, recorder=recorder, default_module="qlib.workflow.record_temp").generate()
            ran.append(str(record.get("class")))
    return {
        "experiment": experiment_name,
        "recorder_id": recorder_id,
        "rolling_experiment": rolling_experiment,
        "n_windows": len(tasks),
        "records": ran,
        "metrics": dict(recorder.list_metrics()),
    }
