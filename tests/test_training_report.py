"""Training report: metrics against hand computation, importance against the model dump, self-contained HTML,
and the record template writing into a recorder (a minimal stand-in here; the MLflow one is in test_predict)."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from report_scenario import json_values, nan_equal, plotly_figures, values, visible_text

from qlib_crypto.errors import ConfigError
from qlib_crypto.workflow.training_report import training_report

TIMES = pd.date_range("2024-01-01", periods=3, freq="h")
INSTS = ["A", "B", "C", "D"]
PRED = [[0.1, 0.4, 0.2, 0.3], [0.5, -0.1, 0.0, 0.2], [0.3, 0.1, 0.2, 0.4]]
LABEL = [[0.01, 0.03, 0.00, 0.02], [-0.02, 0.01, 0.00, 0.03], [0.02, -0.01, 0.01, 0.05]]


def _series(values):
    idx = pd.MultiIndex.from_product([TIMES, INSTS], names=["datetime", "instrument"])
    return pd.Series(np.ravel(values), index=idx)


def _pearson(x, y):
    x, y = np.asarray(x, float), np.asarray(y, float)
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))


def _ranks(x):
    return np.argsort(np.argsort(x)).astype(float)  # no ties in these rows


@pytest.fixture(scope="module")
def booster():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(400, 3))
    y = 2.0 * x[:, 1] + 0.1 * rng.normal(size=400)
    return lgb.train(
        {"objective": "mse", "verbosity": -1, "num_leaves": 4, "num_threads": 1},
        lgb.Dataset(x, label=y),
        num_boost_round=5,
    )


def _gain_from_dump(booster):
    gains = {}

    def walk(node):
        if "split_feature" in node:
            gains[node["split_feature"]] = gains.get(node["split_feature"], 0.0) + node["split_gain"]
            walk(node["left_child"])
            walk(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    return gains


def test_metrics_and_files(tmp_path, booster):
    evals = {"train": {"l2": [1.0, 0.5, 0.3]}, "valid": {"l2": [1.1, 0.7, 0.6]}}
    paths = training_report(
        _series(PRED),
        _series(LABEL).to_frame("LABEL0"),
        booster,
        evals,
        tmp_path / "r",
        feature_names=["f_noise", "f_signal", "f_other"],
        title="Unit report",
    )
    assert paths == {"json": tmp_path / "r" / "training_report.json", "html": tmp_path / "r" / "training_report.html"}
    report = json.loads(paths["json"].read_text())
    ic = [_pearson(p, l) for p, l in zip(PRED, LABEL)]
    ric = [_pearson(_ranks(p), _ranks(l)) for p, l in zip(PRED, LABEL)]
    m = report["metrics"]
    assert m["IC"] == pytest.approx(np.mean(ic))
    assert m["ICIR"] == pytest.approx(np.mean(ic) / np.std(ic, ddof=1))
    assert m["Rank IC"] == pytest.approx(np.mean(ric))
    assert m["Rank ICIR"] == pytest.approx(np.mean(ric) / np.std(ric, ddof=1))
    assert m["n_datetimes"] == 3 and m["n_predictions"] == 12
    assert m["pred_stats"]["mean"] == pytest.approx(np.mean(PRED))
    assert list(report["ic"].values()) == pytest.approx(ic)
    assert list(report["ic"]) == [t.isoformat() for t in TIMES]
    # gain importance: summed split gains of the dumped trees, named, largest first
    gains = _gain_from_dump(booster)
    values = report["feature_importance"]["values"]
    assert report["feature_importance"]["type"] == "gain"
    assert list(values)[0] == "f_signal"
    for i, name in enumerate(["f_noise", "f_signal", "f_other"]):
        assert values[name] == pytest.approx(gains.get(i, 0.0), rel=1e-6)
    assert report["evals_result"] == evals
    html = paths["html"].read_text()
    # 4 instruments: fewer than the 5 score groups, so no group returns (as in Qlib)
    assert set(plotly_figures(html)) == {
        "fig-ic",
        "fig-cum-ic",
        "fig-ic-monthly",
        "fig-ic-dist",
        "fig-autocorr",
        "fig-importance",
        "fig-pred-dist",
        "fig-loss",
    }
    assert not re.search(r"<(script|img|link|iframe)[^>]+(src|href)=['\"]?https?:", html) and "Unit report" in html
    assert not [p for p in (tmp_path / "r").iterdir() if p.name.endswith(".tmp")]


def test_without_model_or_losses(tmp_path):
    paths = training_report(_series(PRED), _series(LABEL), None, None, tmp_path)
    report = json.loads(paths["json"].read_text())
    assert report["feature_importance"] is None and report["evals_result"] is None
    # IC, cumulative IC, the model analysis and the prediction distribution; no importance, no loss curves
    assert set(plotly_figures(paths["html"].read_text())) == {
        "fig-ic",
        "fig-cum-ic",
        "fig-ic-monthly",
        "fig-ic-dist",
        "fig-autocorr",
        "fig-pred-dist",
    }


def test_bad_input_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="index levels"):
        training_report(pd.Series([1.0, 2.0]), pd.Series([1.0, 2.0]), None, None, tmp_path)


class _Recorder:
    """The slice of Qlib's Recorder API the record uses."""

    id = "run123"
    experiment_id = "1"

    def __init__(self, objects, store: Path):
        self.objects, self.store = objects, store

    def load_object(self, name):
        from qlib.utils.exceptions import LoadObjectError

        if name not in self.objects:
            raise LoadObjectError(name)
        return self.objects[name]

    def save_objects(self, local_path=None, artifact_path=None, **kwargs):
        shutil.copytree(local_path, self.store / artifact_path, dirs_exist_ok=True)

    def list_metrics(self):
        return {}


def test_record_writes_artifacts_and_user_dir(tmp_path, booster):
    from qlib_crypto.workflow.report_record import TrainingReportRecord

    rec = _Recorder(
        {"pred.pkl": _series(PRED).to_frame("score"), "label.pkl": _series(LABEL).to_frame("LABEL0")},
        tmp_path / "artifacts",
    )
    evals = {"train": {"l2": [0.9, 0.4]}, "valid": {"l2": [1.0, 0.8]}}
    TrainingReportRecord(rec, model=booster, out_dir=str(tmp_path / "mine"), evals_result=evals).generate()
    for folder in (tmp_path / "artifacts" / "training_report", tmp_path / "mine"):
        report = json.loads((folder / "training_report.json").read_text())
        assert report["info"]["run_id"] == "run123" and report["evals_result"] == evals
        assert report["metrics"]["IC"] == pytest.approx(np.mean([_pearson(p, l) for p, l in zip(PRED, LABEL)]))
        assert (folder / "training_report.html").is_file()


def _hourly(n_bars=60, n_inst=10, seed=2):
    rng = np.random.default_rng(seed)
    idx = pd.MultiIndex.from_product(
        [pd.date_range("2024-02-28", periods=n_bars, freq="h"), [f"I{i}-USDT-SWAP" for i in range(n_inst)]],
        names=["datetime", "instrument"],
    )
    pred = pd.Series(rng.normal(size=len(idx)), index=idx)
    return pred, pd.Series(0.01 * pred.to_numpy() + rng.normal(0, 0.02, len(idx)), index=idx)


def test_model_analysis_in_json_and_every_figure_from_the_json(tmp_path, booster):
    pred, label = _hourly()
    evals = {"train": {"l2": [1.0, 0.5]}, "valid": {"l2": [1.1, 0.7]}}
    paths = training_report(pred, label, booster, evals, tmp_path / "r", feature_names=["x", "y", "z"])
    report = json.loads(paths["json"].read_text())
    assert report["annualisation"]["freq"] == "60min" and report["annualisation"]["bars_per_year"] == 8760
    ma = report["model_analysis"]
    assert set(ma) == {
        "n_groups",
        "lag",
        "bars_per_year",
        "ic_monthly",
        "rank_ic_monthly",
        "ic_monthly_table",
        "ic_distribution",
        "group_returns",
        "group_cumulative_returns",
        "group_summary",
        "score_autocorrelation",
    }
    ic = pd.Series(report["ic"])
    assert list(ma["ic_monthly"]) == ["2024-02", "2024-03"]
    assert ma["ic_monthly"]["2024-02"] == pytest.approx(ic[[k for k in ic.index if k.startswith("2024-02")]].mean())
    ls = np.array(ma["group_returns"]["long-short"], dtype=float)
    assert ma["group_summary"]["long-short"]["annualized_return"] == pytest.approx(np.nanmean(ls) * 8760)
    assert ma["group_summary"]["long-short"]["information_ratio"] == pytest.approx(
        np.nanmean(ls) / np.nanstd(ls, ddof=1) * math.sqrt(8760)
    )
    html = paths["html"].read_text()
    figs = plotly_figures(html)

    def y(fig, name=None, key="y"):
        traces = figs[fig]["data"]
        t = traces[0] if name is None else next(t for t in traces if t.get("name") == name)
        return values(t[key])

    assert nan_equal(y("fig-ic", "IC"), json_values(report["ic"].values()))
    assert nan_equal(y("fig-ic", "Rank IC"), json_values(report["rank_ic"].values()))
    assert nan_equal(
        y("fig-ic", f"IC, {report['ic_rolling_window']}-bar mean"), json_values(report["ic_rolling_mean"].values())
    )
    assert nan_equal(y("fig-cum-ic", "cumulative IC"), json_values(report["cumulative_ic"].values()))
    assert nan_equal(y("fig-cum-ic", "cumulative rank IC"), json_values(report["cumulative_rank_ic"].values()))
    table = ma["ic_monthly_table"]
    assert nan_equal(
        y("fig-ic-monthly", key="z"), json_values([table[yr][f"{m:02d}"] for yr in table for m in range(1, 13)])
    )
    assert nan_equal(y("fig-ic-dist"), ma["ic_distribution"]["histogram"]["counts"])
    qq = figs["fig-ic-dist"]["data"][1]
    assert nan_equal(values(qq["x"]), ma["ic_distribution"]["qq"]["theoretical"])
    assert nan_equal(values(qq["y"]), ma["ic_distribution"]["qq"]["sample"])
    for col in ("Group1", "Group5", "long-short", "long-average"):
        assert nan_equal(y("fig-groups", col), json_values(ma["group_cumulative_returns"][col]))
    assert nan_equal(y("fig-autocorr"), json_values(ma["score_autocorrelation"]["value"]))
    imp = report["feature_importance"]["values"]
    assert nan_equal(y("fig-importance", key="x"), list(imp.values())[::-1])
    assert nan_equal(y("fig-pred-dist"), report["prediction_histogram"]["counts"])
    assert nan_equal(y("fig-loss", "l2 valid"), evals["valid"]["l2"])
    text = visible_text(html)
    assert f"{ma['group_summary']['long-short']['annualized_return'] * 100:,.2f}%" in text
    assert "8,760 bars a year = 365 days x 24 bars a day" in text and f"{report['metrics']['IC']:.4f}" in text


def test_ic_series_equals_per_bar_correlations_with_gaps_ties_and_constants():
    """The vectorised IC / rank IC equal a per-bar Pearson / Spearman (scipy) over the pairs present, NaN where
    a bar has fewer than two pairs or a constant side (as Qlib's calc_ic)."""
    from scipy.stats import pearsonr, spearmanr

    from qlib_crypto.workflow.training_report import ic_series

    rng = np.random.default_rng(5)
    times = pd.date_range("2024-01-01", periods=60, freq="h")
    idx = pd.MultiIndex.from_product([times, [f"I{i}" for i in range(7)]], names=["datetime", "instrument"])
    pred = pd.Series(rng.normal(size=len(idx)), index=idx)
    label = pd.Series(rng.normal(size=len(idx)), index=idx)
    pred.iloc[::5] = np.nan
    label.iloc[::3] = np.nan
    pred.loc[times[1]] = 0.5  # constant predictions
    label.loc[times[2]] = np.nan  # no label at all
    label.loc[times[3]] = np.r_[1.0, [np.nan] * 6]  # a single pair
    pred.loc[times[4]] = np.round(pred.loc[times[4]].to_numpy(), 0)  # ties
    ic, ric = ic_series(pred, label)
    assert list(ic.index) == list(times) and list(ric.index) == list(times)
    for t in times:
        p, y = pred.loc[t].to_numpy(), label.loc[t].to_numpy()
        ok = ~np.isnan(p) & ~np.isnan(y)
        if ok.sum() < 2 or np.ptp(p[ok]) == 0 or np.ptp(y[ok]) == 0:
            assert np.isnan(ic[t]) and np.isnan(ric[t]), t
            continue
        assert ic[t] == pytest.approx(pearsonr(p[ok], y[ok])[0], abs=1e-12), t
        assert ric[t] == pytest.approx(spearmanr(p[ok], y[ok])[0], abs=1e-12), t


@pytest.mark.parametrize("kind", ["Scatter", "Bar", "Heatmap"])
def test_graph_figure_is_the_figure_of_qlibs_graph_classes(kind):
    """The report's figures are drawn as Qlib's ScatterGraph/BarGraph/HeatmapGraph draw them (without importing
    qlib.contrib.report.graph in the report's process): the same figure JSON, traces, data and layout."""
    import subprocess
    import sys

    from qlib.contrib.report import graph

    from qlib_crypto._html import graph_figure

    rng = np.random.default_rng(3)
    idx = pd.date_range("2024-01-01", periods=7, freq="h")
    df = pd.DataFrame({"IC": rng.normal(size=7), "rank IC": rng.normal(size=7)}, index=idx)
    df.iloc[2, 1] = np.nan
    kwargs = {"mode": "lines", "hovertemplate": "%{y:.3f}"} if kind == "Scatter" else {"hovertemplate": "%{y}"}
    layout = {"title": "t", "height": 300}
    ours = graph_figure(kind, df, layout=layout, graph_kwargs=kwargs)
    theirs = getattr(graph, f"{kind}Graph")(df, layout=layout, graph_kwargs=kwargs).figure
    assert ours.to_json() == theirs.to_json()
    assert len(ours.data) == (1 if kind == "Heatmap" else 2)
    with pytest.raises(ValueError, match="df is empty"):
        graph_figure(kind, df.iloc[:0])
    # and drawing a report's figures leaves Qlib's graph module (and its 3 s of imports) out of the process
    code = (
        "import sys, numpy as np, pandas as pd\n"
        "from qlib_crypto._html import graph_figure, plotly_div\n"
        "fig = graph_figure('Scatter', pd.DataFrame({'a': np.arange(3.0)}))\n"
        "plotly_div(fig, 'f')\n"
        "print('qlib.contrib.report.graph' in sys.modules, 'nbformat' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["False", "False"]
