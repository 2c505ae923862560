"""Model persistence: round trip, hash check, feature mismatch, recorder loading."""

from __future__ import annotations

import hashlib
import pickle

import lightgbm as lgb
import numpy as np
import pytest
import yaml

from qlib_crypto.errors import ModelError
from qlib_crypto.workflow.model_io import (
    check_features,
    load_model,
    load_model_from_recorder,
    metadata_path,
    save_model,
)

FEATURES = ["RET1", "MA5", "STD10"]
HANDLER = {
    "class": "DataHandlerLP",
    "module_path": "qlib.data.dataset.handler",
    "kwargs": {
        "instruments": "all",
        "data_loader": {
            "class": "QlibDataLoader",
            "kwargs": {
                "config": {
                    "feature": [["$close/Ref($close,1)-1", "$close/Mean($close,5)-1", "Std($close,10)"], FEATURES],
                    "label": [["Ref($close, -2)/Ref($close, -1) - 1"], ["LABEL0"]],
                },
                "freq": "60min",
            },
        },
    },
}


@pytest.fixture(scope="module")
def fitted_model():
    from qlib.contrib.model.gbdt import LGBModel

    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 3))
    y = 0.5 * x[:, 0] - 0.2 * x[:, 2] + rng.normal(scale=0.1, size=300)
    model = LGBModel(num_leaves=7, min_data_in_leaf=5)
    model.model = lgb.train(
        {"objective": "mse", "verbosity": -1, "num_leaves": 7, "min_data_in_leaf": 5},
        lgb.Dataset(x, label=y),
        num_boost_round=15,
    )
    return model, x


def _save(model, path):
    return save_model(
        model,
        path,
        feature_names=FEATURES,
        train_window=("2024-01-01", "2024-01-10 23:00"),
        handler_config=HANDLER,
        extra={"note": "test"},
    )


def test_round_trip_and_metadata(tmp_path, fitted_model):
    model, x = fitted_model
    path = tmp_path / "models" / "lgb.pkl"
    _save(model, path)
    loaded, meta = load_model(path)
    assert np.array_equal(loaded.model.predict(x), model.model.predict(x))
    on_disk = yaml.safe_load(metadata_path(path).read_text())
    assert on_disk["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert on_disk["feature_names"] == FEATURES and on_disk["n_features"] == 3
    assert on_disk["freq"] == "60min"
    assert on_disk["label"] == [["Ref($close, -2)/Ref($close, -1) - 1"], ["LABEL0"]]
    assert on_disk["train_window"] == {"start": "2024-01-01T00:00:00", "end": "2024-01-10T23:00:00"}
    assert on_disk["handler_config"]["kwargs"]["data_loader"]["kwargs"]["freq"] == "60min"
    assert set(on_disk["versions"]) >= {"qlib", "lightgbm", "pandas", "numpy", "qlib_crypto"}
    assert on_disk["versions"]["lightgbm"] == lgb.__version__
    assert on_disk["created_at"].endswith("+00:00") and on_disk["extra"] == {"note": "test"}
    assert meta["model_class"] == "qlib.contrib.model.gbdt.LGBModel"
    # no temporary files left beside the model
    assert sorted(p.name for p in path.parent.iterdir()) == ["lgb.pkl", "lgb.pkl.meta.yaml"]


def test_load_from_directory(tmp_path, fitted_model):
    _save(fitted_model[0], tmp_path / "m.pkl")
    _, meta = load_model(tmp_path)
    assert meta["model_path"].endswith("m.pkl")


def test_tampered_model_is_hash_error(tmp_path, fitted_model):
    model, _ = fitted_model
    path = tmp_path / "lgb.pkl"
    _save(model, path)
    other = pickle.loads(path.read_bytes())
    other.params["num_leaves"] = 31  # a different but valid model file
    path.write_bytes(pickle.dumps(other))
    with pytest.raises(ModelError, match="sha256") as err:
        load_model(path)
    assert "changed or replaced" in str(err.value)


def test_feature_mismatch_is_clear(tmp_path, fitted_model):
    path = tmp_path / "lgb.pkl"
    _save(fitted_model[0], path)
    with pytest.raises(ModelError) as err:
        load_model(path, feature_names=["RET1", "MA10", "STD10"])
    msg = str(err.value)
    assert "position 1" in msg and "'MA5'" in msg and "'MA10'" in msg
    assert "missing from data: MA5" in msg and "handler config stored in the model metadata" in msg
    with pytest.raises(ModelError, match=r"\(3\) do not match the data's \(2\).*position 2.*'STD10'.*'<end>'"):
        check_features(FEATURES, FEATURES[:2])
    check_features(FEATURES, list(FEATURES))  # equal: no error


def test_missing_files(tmp_path, fitted_model):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "nope.pkl")
    path = tmp_path / "lgb.pkl"
    _save(fitted_model[0], path)
    metadata_path(path).unlink()
    with pytest.raises(ModelError, match="metadata .* is missing"):
        load_model(path)


def test_load_from_recorder(tmp_path, fitted_model):
    from mlflow.tracking import MlflowClient

    model, x = fitted_model
    uri = "file:" + str(tmp_path / "mlruns")
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment("crypto")
    # an older run with only Qlib's own artifacts, then a newer one with the model/ artifact
    old = client.create_run(exp_id)
    (tmp_path / "params.pkl").write_bytes(pickle.dumps(model))
    task = {
        "dataset": {
            "class": "DatasetH",
            "kwargs": {
                "handler": HANDLER,
                "segments": {"train": ["2024-01-01", "2024-01-05"], "test": ["2024-01-06", "2024-01-07"]},
            },
        }
    }
    (tmp_path / "task").write_bytes(pickle.dumps(task))
    client.log_artifact(old.info.run_id, str(tmp_path / "params.pkl"))
    client.log_artifact(old.info.run_id, str(tmp_path / "task"))
    client.set_terminated(old.info.run_id)
    new = client.create_run(exp_id)
    _save(model, tmp_path / "art" / "model.pkl")
    client.log_artifacts(new.info.run_id, str(tmp_path / "art"), "model")
    client.set_terminated(new.info.run_id)

    loaded, meta = load_model_from_recorder("crypto", "latest", uri)
    assert meta["source"]["run_id"] == new.info.run_id and meta["feature_names"] == FEATURES
    assert np.array_equal(loaded.model.predict(x), model.model.predict(x))
    loaded_old, meta_old = load_model_from_recorder("crypto", old.info.run_id, uri)
    assert meta_old["feature_names"] is None and meta_old["freq"] == "60min"
    assert meta_old["train_window"] == {"start": "2024-01-01T00:00:00", "end": "2024-01-05T00:00:00"}
    assert np.array_equal(loaded_old.model.predict(x), model.model.predict(x))
    with pytest.raises(ModelError, match="experiment 'nope' not found"):
        load_model_from_recorder("nope", "latest", uri)
