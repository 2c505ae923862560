"""MLflow run names: `<workflow> | <freq> | test <start>..<end>` instead of Qlib's `mlflow_recorder`, for runs of
`qrun` on our workflows and of the walk-forward (each window, and the merged recorder), read back from MLflow.

A small provider (5 instruments x 60 days of hourly bars) and the repository's 60min workflow shrunk as in
test_workflow_e2e.py, with a 5-round model and two records, so each run takes seconds of work.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from test_handlers import daily_bars, synthetic_bars, write_provider  # noqa: E402
from test_workflow_e2e import CONFIG, INSTRUMENTS, QRUN, small_workflow  # noqa: E402

from qlib_crypto._run_guard import name_recorder, name_run, run_name  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("names")
    bars = synthetic_bars(INSTRUMENTS, n_bars=60 * 24, seed=11)
    write_provider(tmp / "qlib" / "60min", bars, "60min")
    write_provider(tmp / "qlib" / "day", daily_bars(bars), "day")
    with open(CONFIG) as fh:
        conf = small_workflow(yaml.safe_load(fh))
    conf["experiment_name"] = "names"
    conf["task"]["model"]["kwargs"].update(num_boost_round=5, early_stopping_rounds=5)
    conf["task"]["dataset"]["kwargs"]["handler"]["kwargs"]["windows"] = [3]
    conf["task"]["record"] = [
        r for r in conf["task"]["record"] if r["class"] in ("SignalRecord", "TrainingReportRecord")
    ]
    (tmp / "workflow_config_tiny_60min.yaml").write_text(yaml.safe_dump(conf, sort_keys=False))
    return tmp


def runs(workdir: Path, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"file:{workdir / 'mlruns'}")
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, experiment
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def test_qrun_run_is_named_after_workflow_freq_and_test_segment(workdir):
    proc = subprocess.run(
        [str(QRUN), "workflow_config_tiny_60min.yaml"], cwd=workdir, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (run,) = runs(workdir, "names")
    # the file name without workflow_config_, the handler's freq, the test segment written by small_workflow
    expected = "tiny_60min | 60min | test 2023-02-15..2023-03-01 23:00"
    assert run.info.run_name == expected
    assert run.data.tags["mlflow.runName"] == expected
    assert run.info.status == "FINISHED"


def test_walk_forward_runs_are_named_per_window(workdir):
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "walk_forward.py"),
            "--config",
            "workflow_config_tiny_60min.yaml",
            "--step",
            "168",
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"file:{workdir / 'mlruns'}")
    models = [e.name for e in client.search_experiments() if e.name.startswith("names_walk_forward_models_")]
    assert len(models) == 1
    # 168-bar test windows from 2023-02-15 00:00 over the test segment ending 2023-03-01 23:00; Qlib leaves the
    # last window's end open
    assert [r.info.run_name for r in runs(workdir, models[0])] == [
        "tiny_60min | 60min | test 2023-02-15..2023-02-21 23:00",
        "tiny_60min | 60min | test 2023-02-22..2023-02-28 23:00",
        "tiny_60min | 60min | test 2023-03-01..",
    ]
    (merged,) = runs(workdir, "names_walk_forward")
    assert merged.info.run_name == "tiny_60min | 60min | walk-forward test 2023-02-15..2023-03-01 23:00"


# ------------------------------------------------------------------------------------------------------
# the naming rules, on recorders written here
# ------------------------------------------------------------------------------------------------------
class FakeClient:
    def __init__(self) -> None:
        self.tags: dict = {}

    def set_tag(self, run_id, key, value):
        self.tags[(run_id, key)] = value

    def get_experiment(self, experiment_id):
        return SimpleNamespace(name="my_experiment")


class FakeRecorder:
    def __init__(self, name="mlflow_recorder", objects=None, params=None, run_id="r1"):
        self.name, self.id, self.experiment_id = name, run_id, "1"
        self.client = FakeClient()
        self.objects, self.params = objects or {}, params or {}

    def load_object(self, key):
        if key not in self.objects:
            raise OSError(key)
        return self.objects[key]

    def list_params(self):
        return dict(self.params)


def test_run_name_from_task():
    task = {
        "dataset": {
            "kwargs": {"handler": {"kwargs": {"freq": "day"}}, "segments": {"test": ["2024-04-01", "2024-06-29"]}}
        }
    }
    assert run_name(task, "lightgbm_crypto_day") == "lightgbm_crypto_day | day | test 2024-04-01..2024-06-29"
    assert run_name({}, None) is None


def test_a_chosen_name_is_kept():
    rec = FakeRecorder(name="my baseline")
    assert not name_run(rec, "x | 60min | test 2024-04-01..2024-06-30")
    assert rec.client.tags == {}


def test_merged_walk_forward_recorder_named_from_params_and_predictions(monkeypatch):
    monkeypatch.setattr(
        sys, "argv", ["walk_forward.py", "--config", "workflow_configs/workflow_config_lightgbm_crypto_60min.yaml"]
    )
    idx = pd.MultiIndex.from_product(
        [pd.date_range("2024-04-01", "2024-06-30 22:00", freq="h"), ["BTC-USDT"]], names=["datetime", "instrument"]
    )
    rec = FakeRecorder(
        objects={"pred.pkl": pd.DataFrame({"score": 0.0}, index=idx)},
        params={"step_bars": "720", "freq": "60min"},
        run_id="merged",
    )
    assert name_recorder(rec)
    assert rec.client.tags == {
        ("merged", "mlflow.runName"): "lightgbm_crypto_60min | 60min | walk-forward test 2024-04-01..2024-06-30 22:00"
    }
    # a recorder that is neither a qrun/TrainerR one (no task) nor a walk-forward one is left alone
    other = FakeRecorder(run_id="other")
    assert not name_recorder(other) and other.client.tags == {}
