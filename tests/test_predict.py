"""predict -> signals on a small LightGBM model trained (through Qlib's task_train, as qrun does) on a
hand-written provider directory. Qlib is initialised only in subprocesses (qlib.init is process-global)."""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qlib_crypto.cli import main as cli_main

N_BARS = 300
CAL = pd.date_range("2024-01-01 00:00", periods=N_BARS, freq="h")
FIELDS = ["open", "high", "low", "close", "volume", "amount", "vwap", "factor", "change"]
FEATURES = ["RET1", "MA5", "STD10"]
TRAIN, VALID, TEST = (0, 179), (180, 229), (230, N_BARS - 1)
RANGE_START = 250


def _bars():
    """Close series per instrument (float32 as stored): ETH has no bar at the last hour, SOL lists late."""
    rng = np.random.default_rng(7)
    starts = {"BTC-USDT": 0, "ETH-USDT": 0, "SOL-USDT-SWAP": 40, "XRP-USDT": 0}
    bars = {}
    for k, (inst, s) in enumerate(starts.items()):
        n = N_BARS - s
        # mildly mean-reverting returns so the model has something to learn
        r = np.zeros(n)
        eps = rng.normal(0, 0.01, n)
        for t in range(1, n):
            r[t] = -0.3 * r[t - 1] + eps[t]
        close = (100.0 * (k + 1)) * np.exp(np.cumsum(r))
        if inst == "ETH-USDT":
            close[-1] = np.nan
        bars[inst] = (s, close.astype("float32"))
    return bars


def _write_provider(root: Path) -> None:
    (root / "calendars").mkdir(parents=True)
    (root / "instruments").mkdir()
    (root / "calendars" / "60min.txt").write_text("\n".join(CAL.strftime("%Y-%m-%d %H:%M:%S")) + "\n")
    lines = []
    for inst, (s, close) in _bars().items():
        lines.append(f"{inst}\t{CAL[s]:%Y-%m-%d %H:%M:%S}\t{CAL[-1]:%Y-%m-%d %H:%M:%S}")
        folder = root / "features" / inst.lower()
        folder.mkdir(parents=True)
        prev = np.r_[np.nan, close[:-1]]
        values = {
            "open": prev,
            "high": close * 1.001,
            "low": close * 0.999,
            "close": close,
            "volume": np.full(len(close), 10.0),
            "amount": close * 10.0,
            "vwap": close,
            "factor": np.where(np.isnan(close), np.nan, 1.0),
            "change": close / prev - 1,
        }
        for field in FIELDS:
            np.r_[float(s), values[field]].astype("<f4").tofile(folder / f"{field}.60min.bin")
    (root / "instruments" / "all.txt").write_text("\n".join(lines) + "\n")


HANDLER = {
    "class": "DataHandlerLP",
    "module_path": "qlib.data.dataset.handler",
    "kwargs": {
        "instruments": "all",
        "start_time": str(CAL[0]),
        "end_time": str(CAL[-1]),
        "data_loader": {
            "class": "QlibDataLoader",
            "kwargs": {
                "freq": "60min",
                "config": {
                    "feature": [
                        ["$close/Ref($close,1)-1", "$close/Mean($close,5)-1", "Std($close/Ref($close,1)-1,10)"],
                        FEATURES,
                    ],
                    "label": [["Ref($close,-2)/Ref($close,-1)-1"], ["LABEL0"]],
                },
            },
        },
        "infer_processors": [
            {
                "class": "ZScoreNorm",
                "kwargs": {
                    "fields_group": "feature",
                    "fit_start_time": str(CAL[TRAIN[0]]),
                    "fit_end_time": str(CAL[TRAIN[1]]),
                },
            },
            {"class": "Fillna", "kwargs": {"fields_group": "feature"}},
        ],
        "learn_processors": [{"class": "DropnaLabel"}],
    },
}

TRAIN_SCRIPT = """
import json, sys
from pathlib import Path
import qlib
from qlib.model.trainer import task_train
root = Path(sys.argv[1]); task = json.loads(Path(sys.argv[2]).read_text())
qlib.init(provider_uri=str(root / "qlib"), region="us", trade_unit=None, limit_threshold=None,
          deal_price="close", kernels=1,
          exp_manager={"class": "MLflowExpManager", "module_path": "qlib.workflow.expm",
                       "kwargs": {"uri": "file:" + str(root / "mlruns"), "default_exp_name": "Experiment"}})
rec = task_train(task, experiment_name="crypto_test")
from qlib_crypto.workflow.model_io import load_model, save_model
model, meta = load_model(root / "models" / "lgb_rec.pkl")
save_model(model, root / "models" / "lgb_nods.pkl", dataset_config=meta["dataset_config"],
           feature_names=meta["feature_names"], train_window=(meta["train_window"]["start"], meta["train_window"]["end"]))
save_model(model, root / "models" / "bad.pkl", dataset_config=meta["dataset_config"],
           feature_names=["RET1", "MA10", "STD10"], train_window=(meta["train_window"]["start"], meta["train_window"]["end"]))
arts = sorted(a for a in rec.list_artifacts())
sub = {d: sorted(rec.list_artifacts(d)) for d in ("model", "training_report")}
Path(root / "train.json").write_text(json.dumps({"run_id": rec.id, "artifacts": arts, "sub": sub,
                                                "metrics": sorted(rec.list_metrics())}))
"""

PREDICT_SCRIPT = """
import json, sys
from pathlib import Path
from qlib_crypto.errors import ModelError
from qlib_crypto.workflow.predict import predict
root = Path(sys.argv[1]); cfg = json.loads(sys.argv[2]); prov = str(root / "qlib")
predict(root / "models" / "lgb_rec.pkl", provider_uri=prov, rules=cfg["a"], out=root / "a.parquet")
predict(root / "models" / "lgb_nods.pkl", provider_uri=prov, freq="60min", start=cfg["start"], latest=False,
        rules=cfg["b"], out=root / "b.parquet")
predict(experiment="crypto_test", tracking_uri="file:" + str(root / "mlruns"), provider_uri={"60min": prov},
        start=cfg["start"], latest=False, rules=cfg["b"], out=root / "c.parquet")
try:
    predict(root / "models" / "bad.pkl", provider_uri=prov)
    err = None
except ModelError as exc:
    err = str(exc)
Path(root / "predict.json").write_text(json.dumps({"mismatch": err}))
"""

RULES_A = {"mode": "threshold", "buy_threshold": 0.0, "sell_threshold": 0.0, "max_position": 0.4, "max_total": 1.0}
RULES_B = {
    "mode": "quantile",
    "buy_quantile": 0.34,
    "sell_quantile": 0.34,
    "max_position": 0.3,
    "max_total": 0.5,
    "vol_target": 0.5,
    "vol_window": 24,
}


def _run(args, cwd):
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    _write_provider(root / "qlib")
    segments = {k: [str(CAL[a]), str(CAL[b])] for k, (a, b) in (("train", TRAIN), ("valid", VALID), ("test", TEST))}
    task = {
        "model": {
            "class": "LGBModel",
            "module_path": "qlib.contrib.model.gbdt",
            "kwargs": {
                "loss": "mse",
                "num_boost_round": 30,
                "early_stopping_rounds": 30,
                "num_leaves": 7,
                "min_data_in_leaf": 10,
                "learning_rate": 0.1,
                "num_threads": 1,
                "seed": 1,
            },
        },
        "dataset": {
            "class": "DatasetH",
            "module_path": "qlib.data.dataset",
            "kwargs": {"handler": HANDLER, "segments": segments},
        },
        "record": [
            {
                "class": "SignalRecord",
                "module_path": "qlib.workflow.record_temp",
                "kwargs": {"model": "<MODEL>", "dataset": "<DATASET>"},
            },
            {
                "class": "ModelArtifactRecord",
                "module_path": "qlib_crypto.workflow.report_record",
                "kwargs": {
                    "model": "<MODEL>",
                    "dataset": "<DATASET>",
                    "out_path": str(root / "models" / "lgb_rec.pkl"),
                    "warmup_bars": 30,
                },
            },
            {
                "class": "TrainingReportRecord",
                "module_path": "qlib_crypto.workflow.report_record",
                "kwargs": {"model": "<MODEL>", "dataset": "<DATASET>", "out_dir": str(root / "report")},
            },
        ],
    }
    (root / "task.json").write_text(json.dumps(task))
    (root / "train.py").write_text(TRAIN_SCRIPT)
    (root / "predict.py").write_text(PREDICT_SCRIPT)
    _run([str(root / "train.py"), str(root), str(root / "task.json")], cwd=root)
    cfg = {"a": RULES_A, "b": RULES_B, "start": str(CAL[RANGE_START])}
    _run([str(root / "predict.py"), str(root), json.dumps(cfg)], cwd=root)
    return root


def _expected_scores(root: Path) -> pd.Series:
    """Features by hand (pandas on the stored float32 closes), z-scored with train-window statistics, NaN -> 0,
    then the saved booster's prediction."""
    frames = []
    for inst, (s, close) in _bars().items():
        c = pd.Series(close.astype("float64"), index=CAL[s:])
        ret = c / c.shift(1) - 1
        frames.append(
            pd.DataFrame(
                {
                    "RET1": ret,
                    "MA5": c / c.rolling(5, min_periods=1).mean() - 1,
                    "STD10": ret.rolling(10, min_periods=1).std(),
                }
            ).assign(instrument=inst)
        )
    feats = pd.concat(frames).rename_axis("datetime").set_index("instrument", append=True).sort_index()
    in_train = feats.index.get_level_values("datetime") <= CAL[TRAIN[1]]
    mean, std = np.nanmean(feats[in_train].values, axis=0), np.nanstd(feats[in_train].values, axis=0)
    z = ((feats - mean) / std).fillna(0.0)
    model = pickle.loads((root / "models" / "lgb_rec.pkl").read_bytes())
    return pd.Series(model.model.predict(z[FEATURES].values), index=z.index)


def test_recorder_holds_model_and_report(trained):
    info = json.loads((trained / "train.json").read_text())
    assert {"pred.pkl", "label.pkl", "params.pkl", "model", "training_report"} <= set(info["artifacts"])
    assert set(info["sub"]["model"]) == {"model/model.pkl", "model/model.pkl.meta.yaml", "model/model.pkl.dataset.pkl"}
    assert set(info["sub"]["training_report"]) == {
        "training_report/training_report.json",
        "training_report/training_report.html",
    }
    assert {"l2.train", "l2.valid"} <= set(info["metrics"])
    report = json.loads((trained / "report" / "training_report.json").read_text())
    assert set(report["evals_result"]) == {"train", "valid"} and len(report["evals_result"]["valid"]["l2"]) > 1
    assert set(report["feature_importance"]["values"]) == set(FEATURES)
    html = (trained / "report" / "training_report.html").read_text()
    # IC, cumulative IC, IC by month, IC distribution, autocorrelation, importance, predictions, loss (4 instruments:
    # fewer than the 5 score groups, so no group returns)
    assert html.count('class="plotly-graph-div"') == 8


def test_latest_threshold_signals(trained):
    a = pd.read_parquet(trained / "a.parquet")
    assert list(a.columns) == ["datetime", "instrument", "score", "signal", "position_size"]
    assert str(a["datetime"].dtype) == "datetime64[ms, UTC]"
    assert set(a["datetime"]) == {CAL[-1].tz_localize("UTC")}
    # ETH-USDT has no bar at the last hour: left out
    assert sorted(a["instrument"]) == ["BTC-USDT", "SOL-USDT-SWAP", "XRP-USDT"]
    expected = _expected_scores(trained).xs(CAL[-1], level="datetime")
    got = a.set_index("instrument")["score"]
    assert np.allclose(got.values, expected.reindex(got.index).values, rtol=1e-4, atol=1e-7)
    # hand rule: score > 0 BUY, < 0 SELL; 0.4 each, scaled down when the gross exceeds 1.0
    sig = np.where(got > 0, "BUY", np.where(got < 0, "SELL", "HOLD"))
    assert list(a.set_index("instrument")["signal"]) == list(sig)
    raw = np.where(sig == "BUY", 0.4, np.where(sig == "SELL", -0.4, 0.0))
    gross = np.abs(raw).sum()
    want = raw * (1.0 / gross if gross > 1.0 else 1.0)
    assert np.allclose(a["position_size"].values, want)


def test_range_quantile_vol_target(trained):
    b = pd.read_parquet(trained / "b.parquet")
    c = pd.read_parquet(trained / "c.parquet")
    pd.testing.assert_frame_equal(b, c)  # model file without dataset == recorder run with fitted dataset
    assert (
        b["datetime"].min() == CAL[RANGE_START].tz_localize("UTC") and b["datetime"].nunique() == N_BARS - RANGE_START
    )
    expected = _expected_scores(trained)
    key = pd.MultiIndex.from_arrays([b["datetime"].dt.tz_localize(None).astype("datetime64[ns]"), b["instrument"]])
    assert np.allclose(b["score"].values, expected.reindex(key).values, rtol=1e-4, atol=1e-7)
    # independent vol: log returns of the stored closes, sample std over 24 bars, x sqrt(8760)
    closes = {inst: pd.Series(close.astype("float64"), index=CAL[s:]) for inst, (s, close) in _bars().items()}
    for t, part in b.groupby("datetime"):
        t0 = t.tz_localize(None)
        part = part.sort_values("instrument")
        n = len(part)
        k = math.floor(n * 0.34)
        pairs = list(zip(part["instrument"], part["score"]))  # instrument order; ties keep it (documented)
        buy = {i for i, _ in sorted(pairs, key=lambda p: -p[1])[:k]}
        sell = {i for i, _ in sorted(pairs, key=lambda p: p[1])[:k]}
        want_sig = ["BUY" if i in buy else "SELL" if i in sell else "HOLD" for i in part["instrument"]]
        assert list(part["signal"]) == want_sig, t
        sizes = []
        for inst, sig in zip(part["instrument"], want_sig):
            lr = np.log(closes[inst].loc[:t0]).diff().iloc[-24:]
            vol = lr.std(ddof=1) * math.sqrt(8760)
            mag = min(0.3, 0.5 / vol) if np.isfinite(vol) and vol > 0 else 0.0
            sizes.append(mag if sig == "BUY" else -mag if sig == "SELL" else 0.0)
        gross = sum(abs(x) for x in sizes)
        if gross > 0.5:
            sizes = [x * 0.5 / gross for x in sizes]
        assert np.allclose(part["position_size"].values, sizes, rtol=1e-5, atol=1e-9), t


def test_feature_mismatch_is_model_error(trained):
    msg = json.loads((trained / "predict.json").read_text())["mismatch"]
    assert msg is not None and "position 1" in msg and "'MA10'" in msg and "'MA5'" in msg


def test_cli_predict_prints_table(trained):
    out = trained / "cli.parquet"
    proc = _run(
        [
            "-m",
            "qlib_crypto",
            "predict",
            "--model",
            str(trained / "models" / "lgb_rec.pkl"),
            "--provider-dir",
            f"60min={trained / 'qlib'}",
            "--mode",
            "threshold",
            "--buy-threshold",
            "0",
            "--sell-threshold",
            "0",
            "--max-position",
            "0.4",
            "--out",
            str(out),
        ],
        cwd=trained,
    )
    a = pd.read_parquet(trained / "a.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(out), a)
    lines = proc.stdout.splitlines()
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("wrote ")) :]
    assert table[1] == f"latest bar 2024-01-13 11:00:00+00:00 ({len(a)} instruments, best score first):"
    assert table[2].split() == ["instrument", "score", "signal", "position_size"]
    best = a.sort_values("score", ascending=False).iloc[0]
    assert table[3].split()[0] == best["instrument"] and table[3].split()[2] == best["signal"]
    assert f"wrote {len(a)} signals" in proc.stdout


def test_cli_missing_model_one_line(tmp_path, capsys):
    code = cli_main(
        [
            "predict",
            "--model",
            str(tmp_path / "nope.pkl"),
            "--provider-dir",
            str(tmp_path),
            "--out",
            str(tmp_path / "s.parquet"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "nope.pkl" in err[0] and "does not exist" in err[0]
    assert not (tmp_path / "s.parquet").exists()
