"""Qlib record templates for ``qrun`` workflows: the training report and the model with its metadata.

In a workflow YAML, after ``SignalRecord``::

    record:
      - class: SignalRecord
        module_path: qlib.workflow.record_temp
        kwargs: {model: <MODEL>, dataset: <DATASET>}
      - class: ModelArtifactRecord
        module_path: qlib_crypto.workflow.report_record
        kwargs: {model: <MODEL>, dataset: <DATASET>}          # optional: out_path: models/lgb_60min.pkl
      - class: TrainingReportRecord
        module_path: qlib_crypto.workflow.report_record
        kwargs: {model: <MODEL>, dataset: <DATASET>}          # optional: out_dir: reports/training
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

from qlib.workflow.record_temp import RecordTemp, SignalRecord

from .model_io import RECORDER_ARTIFACT_DIR, RECORDER_MODEL_NAME, save_model
from .training_report import HTML_NAME, JSON_NAME, training_report

logger = logging.getLogger(__name__)


def _feature_names(dataset: Any) -> list[str] | None:
    handler = getattr(dataset, "handler", None)
    if handler is None:
        return None
    try:
        cols = handler.get_cols("feature")
    except Exception:
        return None
    return [str(c[-1] if isinstance(c, tuple) else c) for c in cols]


def _task(recorder: Any) -> dict:
    try:
        task = recorder.load_object("task")
    except Exception:  # outside qrun there may be no task artifact
        return {}
    return task if isinstance(task, dict) else {}


def loss_curves(recorder: Any) -> dict[str, dict[str, list[float]]]:
    """LightGBM loss curves as ``LGBModel.fit`` logs them (metrics ``<metric>.<split>`` with steps)."""
    client, run_id = getattr(recorder, "client", None), getattr(recorder, "id", None)
    if client is None or run_id is None:
        return {}
    curves: dict[str, dict[str, list[float]]] = {}
    for key in recorder.list_metrics():
        metric, _, split = key.rpartition(".")
        if split not in ("train", "valid") or not metric:
            continue
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        if len(history) > 1:
            curves.setdefault(split, {})[metric] = [float(m.value) for m in history]
    return curves


class TrainingReportRecord(RecordTemp):
    """Writes the training report (JSON + HTML) into the recorder's ``training_report/`` artifacts and,
    with ``out_dir``, to that directory too. Needs ``pred.pkl`` and ``label.pkl`` from ``SignalRecord``."""

    artifact_path = "training_report"
    depend_cls = SignalRecord

    def __init__(
        self,
        recorder: Any,
        model: Any = None,
        dataset: Any = None,
        out_dir: str | None = None,
        evals_result: Mapping | None = None,
        title: str | None = None,
    ) -> None:
        super().__init__(recorder=recorder)
        self.model = model
        self.dataset = dataset
        self.out_dir = out_dir
        self.evals_result = evals_result
        self.title = title

    def generate(self, **kwargs: Any) -> dict[str, Path]:
        from .._run_guard import guard_recorder

        guard_recorder(self.recorder)  # run name (also of the merged walk-forward recorder); KILLED on Ctrl-C/SIGTERM
        pred = self.load("pred.pkl")
        label = self.load("label.pkl")
        evals = self.evals_result if self.evals_result is not None else loss_curves(self.recorder)
        info = {
            "experiment_id": getattr(self.recorder, "experiment_id", None),
            "run_id": getattr(self.recorder, "id", None),
        }
        title = self.title or f"Training report (run {info['run_id']})"
        tmp = Path(tempfile.mkdtemp(prefix="qlib_crypto_report_"))
        try:
            paths = training_report(
                pred, label, self.model, evals, tmp, feature_names=_feature_names(self.dataset), title=title, info=info
            )
            self.recorder.save_objects(local_path=str(tmp), artifact_path=self.artifact_path)
            if self.out_dir is not None:  # the same two files, copied (not computed a second time), as one unit
                from .._atomic import atomic_dir

                out = Path(self.out_dir)
                with atomic_dir(out, replaceable=(JSON_NAME, HTML_NAME), what="training report directory") as stage:
                    for name in (JSON_NAME, HTML_NAME):
                        shutil.copyfile(tmp / name, stage / name)
                paths = {"json": out / JSON_NAME, "html": out / HTML_NAME}
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return paths

    def list(self) -> list[str]:
        return [JSON_NAME, HTML_NAME]


#: called with the recorder's run id once a ModelArtifactRecord has saved the model: the demo's qrun child
#: (qlib_crypto/commands/demo_qrun.py) tells the demo, which predicts while qrun writes its other records
MODEL_SAVED_HOOKS: list[Callable[[str], None]] = []


class ModelArtifactRecord(RecordTemp):
    """Saves the trained model with its metadata (and the fitted dataset without data) as the recorder's
    ``model/`` artifacts, loadable with ``load_model_from_recorder`` or ``qlib-crypto predict --experiment``;
    with ``out_path``, also as a model file there."""

    artifact_path = RECORDER_ARTIFACT_DIR

    def __init__(
        self,
        recorder: Any,
        model: Any = None,
        dataset: Any = None,
        out_path: str | None = None,
        warmup_bars: int | None = None,
    ) -> None:
        super().__init__(recorder=recorder)
        self.model = model
        self.dataset = dataset
        self.out_path = out_path
        self.warmup_bars = warmup_bars

    def _save(self, path: Path) -> dict:
        task = _task(self.recorder)
        dataset_config = task.get("dataset") if isinstance(task.get("dataset"), Mapping) else None
        segments = dict(
            getattr(self.dataset, "segments", None)
            or (dataset_config or {}).get("kwargs", {}).get("segments", {})
            or {}
        )
        extra: dict[str, Any] = {
            "recorder": {
                "experiment_id": getattr(self.recorder, "experiment_id", None),
                "run_id": getattr(self.recorder, "id", None),
            },
            "segments": segments,
        }
        if self.warmup_bars is not None:
            extra["warmup_bars"] = int(self.warmup_bars)
        return save_model(
            self.model,
            path,
            feature_names=_feature_names(self.dataset) or [],
            train_window=segments.get("train"),
            dataset_config=dataset_config,
            dataset=self.dataset,
            extra=extra,
            handler_config=None if dataset_config else {},
        )

    def generate(self, **kwargs: Any) -> dict:
        tmp = Path(tempfile.mkdtemp(prefix="qlib_crypto_model_"))
        try:
            meta = self._save(tmp / RECORDER_MODEL_NAME)
            self.recorder.save_objects(local_path=str(tmp), artifact_path=self.artifact_path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if self.out_path is not None:
            self._save(Path(self.out_path))
            logger.info("model saved to %s", self.out_path)
        for hook in MODEL_SAVED_HOOKS:
            hook(str(self.recorder.id))
        return meta

    def list(self) -> list[str]:
        return [RECORDER_MODEL_NAME, RECORDER_MODEL_NAME + ".meta.yaml", RECORDER_MODEL_NAME + ".dataset.pkl"]
