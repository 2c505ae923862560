"""Two `qlib-crypto demo` runs in one scratch directory, each keeping its own reports (the README's main job
run twice; tests/test_demo.py runs it once with the defaults). A file of its own so that, under
`--dist loadfile`, the two demo files can run on the two workers at the same time."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def _mlflow_runs(root: Path) -> dict[str, Path]:
    """run id -> run directory of the finished qrun runs in ROOT/mlruns (file store: one directory per run)."""
    return {p.name: p for p in (root / "mlruns").glob("*/*") if (p / "artifacts" / "pred.pkl").exists()}


def test_two_tiny_demos_keep_their_own_reports(tmp_path):
    """Two demos in one directory: each leaves a complete report set naming the MLflow run of its own model;
    --quiet prints only the final summary; without it, step headers and short outputs."""
    shutil.copytree(REPO / "workflow_configs", tmp_path / "workflow_configs")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)  # as in a clone (Qlib's recorder runs git)
    demo = [sys.executable, "-m", "qlib_crypto", "demo", "--instruments", "5"]  # 5: two swaps for the long/short
    first = subprocess.run(demo, cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    second = subprocess.run(demo + ["--quiet"], cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]

    # without --quiet: the six step headers and short outputs, not Qlib's whole console
    lines = first.stdout.splitlines()
    assert [line.split()[1] for line in lines if line.startswith("== ")] == [f"{i}/6" for i in range(1, 7)]
    assert len(lines) < 60, first.stdout
    assert sum("done in" in line for line in lines) == 6
    # --quiet: only the final summary
    assert second.stdout.lstrip("\n").startswith("qlib-crypto demo finished in ")
    assert "== " not in second.stdout and "done in" not in second.stdout
    assert len(second.stdout.splitlines()) < 20

    reports = tmp_path / "reports"
    sets = sorted(p for p in reports.iterdir() if p.is_dir() and not p.is_symlink() and (p / "run.json").exists())
    assert len(sets) == 2
    assert not [p.name for p in reports.iterdir() if p.name.endswith(".partial")]
    runs = _mlflow_runs(tmp_path)
    assert len(runs) == 2
    ids = []
    for run_dir in sets:
        manifest = json.loads((run_dir / "run.json").read_text())
        rid = manifest["recorder_id"]
        ids.append(rid)
        assert manifest["stamp"] == run_dir.name
        # the run's own MLflow run: Qlib logged this demo's stamp (its _QLIB_CRYPTO_DEMO_RUN variable) as a param
        assert (runs[rid] / "params" / "_QLIB_CRYPTO_DEMO_RUN").read_text() == run_dir.name
        # complete: every file the manifest lists is there, and the expected ones are listed
        for name in manifest["files"]:
            assert (run_dir / name).is_file(), name
        assert {
            "signals_60min.parquet",
            "backtest_60min/report.html",
            "backtest_60min/report.json",
            "sweep_60min/sweep.json",
            "sweep_60min/sweep.csv",
            "training_60min/training_report.json",
            "demo.log",
            "run.json",
        } <= set(manifest["files"])
        # each report names the model's run
        assert json.loads((run_dir / "backtest_60min/report.json").read_text())["info"]["model_run"] == rid
        assert json.loads((run_dir / "sweep_60min/sweep.json").read_text())["model_run"] == rid
        assert json.loads((run_dir / "training_60min/training_report.json").read_text())["info"]["run_id"] == rid
        log = (run_dir / "demo.log").read_text()
        assert f"qlib-crypto predict --experiment crypto_lightgbm_60min --run-id {rid} " in log
        assert len(pd.read_csv(run_dir / "sweep_60min/sweep.csv")) == 4
        # the signals are the scores of that run's model on the test quarter (its pred.pkl)
        sig = pd.read_parquet(run_dir / "signals_60min.parquet")
        pred = pd.read_pickle(runs[rid] / "artifacts" / "pred.pkl").iloc[:, 0]
        sig = sig.set_index([sig["datetime"].dt.tz_localize(None).astype("datetime64[ns]"), "instrument"])["score"]
        joined = pd.concat([sig.rename("signal_score"), pred.rename("pred")], axis=1, join="inner")
        assert len(joined) == len(sig) > 1000
        np.testing.assert_allclose(joined["signal_score"], joined["pred"], rtol=1e-6, atol=1e-9)
    assert len(set(ids)) == 2 and set(ids) == set(runs)
    # reports/latest is the second run; each summary printed its own run directory
    assert (reports / "latest").resolve() == sets[1].resolve()
    assert f"reports/{sets[0].name}/" in first.stdout and f"reports/{sets[1].name}/" in second.stdout
