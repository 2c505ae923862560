"""The fast feature engine against Qlib's own expression engine, operator by operator and feature set by set.

A small provider (7 instruments x 20 days of hourly bars, and their daily bars) is written with the awkward
cases on purpose: gaps (NaN bars), a late listing, an early delisting, a flat run with zero volume (constant
windows, divisions by zero and so +-inf), tied prices, spot instruments without ``$funding_rate``, and a
market file whose instruments enter and leave the universe. Qlib runs in a subprocess (``qlib.init`` is
process-global) that computes every expression through both engines; the tests compare the results here.

Tolerance: the two outputs must have the same index, columns and NaN cells, and every other cell must be
within 1 ULP of float32 (Qlib's output dtype). The engine repeats Qlib's arithmetic step by step in float64
(pandas' Kahan sums and Welford variance, Qlib's Cython regression sums) and casts to float32 last, so the
only room left is the last rounding; the tests report how many cells are not bit-identical (none so far).
"""

from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_handlers import daily_bars, synthetic_bars, write_provider  # noqa: E402

from qlib_crypto.data.expr import ExpressionError, parse  # noqa: E402

INSTRUMENTS = ["BTC-USDT", "ETH-USDT", "SOL-USDT-SWAP", "DOGE-USDT-SWAP", "LATE-USDT", "GONE-USDT-SWAP", "TIE-USDT"]
N_BARS = 480
T_CUT = "2023-01-12 09:00:00"

# Every operator of the engine, with windows of 1 bar, ordinary ones, and ones longer than the data; NaN, inf,
# bool and constant inputs; nested expressions. Keys name the operator each group exercises.
OPERATOR_EXPRS: dict[str, list[str]] = {
    "Ref": [
        "Ref($close, 1)",
        "Ref($close, 5)",
        "Ref($close, -2)",
        "Ref($close, 0)",
        "Ref($close>$open, 2)",
        "Ref(Mean($close, 3), -1)",
    ],
    "Mean": [
        "Mean($close, 1)",
        "Mean($close, 5)",
        "Mean($volume, 30)",
        "Mean($close>Ref($close, 1), 6)",
        "Mean($funding_rate, 8)",
        "Mean($close, 0)",
        "Mean($volume/Ref($volume, 1), 4)",
    ],
    "Sum": [
        "Sum($volume, 5)",
        "Sum($funding_rate, 24)",
        "Sum(Greater($close-Ref($close, 1), 0), 12)",
        "Sum($close, 0)",
        "Sum($close<Ref($close, 1), 3)",
    ],
    "Std": [
        "Std($close, 2)",
        "Std($close, 10)",
        "Std($volume, 24)",
        "Std($close/Ref($close, 1)-1, 6)",
        "Std($close, 700)",
    ],
    "Var": ["Var($close, 7)", "Var($volume, 3)"],
    "Max": ["Max($high, 5)", "Max($high, 1000)", "Max($volume/Ref($volume, 1), 4)"],
    "Min": ["Min($low, 5)", "Min($low, 1)", "Min($volume, 12)"],
    "Quantile": [
        "Quantile($close, 5, 0.8)",
        "Quantile($close, 12, 0.2)",
        "Quantile($close, 4, 0.5)",
        "Quantile($volume, 3, 0)",
        "Quantile($volume, 3, 1)",
        "Quantile($close, 0, 0.3)",
    ],
    "Rank": ["Rank($close, 5)", "Rank($close, 24)", "Rank(Ref($close, 1), 3)", "Rank($volume, 6)"],
    "IdxMax": [
        "IdxMax($high, 5)",
        "IdxMax($high, 24)",
        "IdxMax($close/Ref($close, 1), 6)",
        "IdxMax($volume/Ref($volume, 1), 5)",
    ],
    "IdxMin": ["IdxMin($low, 5)", "IdxMin($low, 48)", "IdxMin(Ref($low, 2), 3)"],
    "Corr": [
        "Corr($close, Log($volume+1), 6)",
        "Corr($close/Ref($close,1), Log($volume/Ref($volume, 1)+1), 12)",
        "Corr($close, $volume, 2)",
        "Corr($high, $low, 24)",
    ],
    "Cov": ["Cov($close, $volume, 5)"],
    "Slope": ["Slope($close, 5)", "Slope($close, 24)", "Slope($close, 1)", "Slope($close>$open, 4)"],
    "Rsquare": ["Rsquare($close, 5)", "Rsquare($close, 24)", "Rsquare($volume, 3)"],
    "Resi": ["Resi($close, 5)", "Resi($close, 24)"],
    "Count": ["Count($funding_rate, 24)", "Count($close, 5)"],
    "Delta": ["Delta($close, 3)", "Delta($close, 0)"],
    "Abs": ["Abs($close-$open)", "Abs($close/Ref($close, 1)-1)*$volume"],
    "Log": ["Log($volume)", "Log($volume+1)"],
    "Sign": ["Sign($close-$open)"],
    "Greater": ["Greater($open, $close)", "Greater($close-Ref($close, 1), 0)"],
    "Less": ["Less($open, $close)", "Less(Ref($close, 1)-$close, 0)"],
    "arithmetic": [
        "$close+$open",
        "$close-1",
        "2*$close",
        "1-$close",
        "$close/$open",
        "($high-$low)/($high-$low+1e-12)",
        "$volume/Ref($volume, 1)",
        "1/$volume",
        "$close**2",
        "Power($close, 0.5)",
        "-1*$close",
        "(2*$close-$high-$low)/$open",
    ],
    "compare": [
        "$close>$open",
        "$close>=Ref($close,1)",
        "$close<$open",
        "$close<=$open",
        "$close==Ref($close, 1)",
        "$close!=Ref($close, 1)",
    ],
    "logic": ["($close>$open)&($volume>100)", "($close>$open)|($volume>100)"],
    "If": ["If($close>$open, $close, $open)"],
}
STARTS = {"calendar start": None, "mid-way": "2023-01-09 05:00:00"}

SCRIPT = textwrap.dedent(
    """
    import pickle, sys
    import numpy as np, pandas as pd
    import qlib
    provider_60, provider_day, out, mode = sys.argv[1:5]
    qlib.init(provider_uri={"60min": provider_60, "day": provider_day}, region="us", trade_unit=None,
              limit_threshold=None, deal_price="close", kernels=1)
    from qlib.data import D
    from qlib_crypto.data import CryptoAlpha158, CryptoAlpha360
    from qlib_crypto.data.loader import CryptoAlpha158DL, CryptoAlpha360DL, load_expressions
    ops = pickle.loads(bytes.fromhex(sys.argv[5]))
    result = {}
    END = "2023-01-20 23:00:00"
    if mode == "compare":
        for start_name, start in ops["starts"].items():
            for market in ("all", "half"):
                exprs = [e for group in ops["exprs"].values() for e in group]
                inst = D.instruments(market)
                ref = D.features(inst, exprs, start, END, freq="60min")
                ref.columns = exprs
                ref = ref.swaplevel().sort_index()
                ours = load_expressions(inst, exprs, pd.Index(exprs), start, END, "60min")
                result[("ops", start_name, market)] = (ref, ours)
        inst = D.instruments("half")
        exprs = ops["exprs"]["Mean"] + ops["exprs"]["IdxMax"]
        ref = D.features(inst, exprs, None, END, freq="60min")
        ref.columns = exprs
        result["unswapped"] = (ref, load_expressions(inst, exprs, pd.Index(exprs), None, END, "60min", swap_level=False))
        result["instrument list"] = (
            D.features(["ETH-USDT", "LATE-USDT"], ["Mean($close, 5)"], None, END, freq="60min").swaplevel().sort_index(),
            load_expressions(["ETH-USDT", "LATE-USDT"], ["Mean($close, 5)"], pd.Index(["Mean($close, 5)"]), None, END, "60min"))
        for freq, start, end in (("60min", "2023-01-02", END), ("day", "2023-01-01", "2023-01-20")):
            for key, cls, kw in (("158", CryptoAlpha158DL, {}), ("360", CryptoAlpha360DL, {})):
                label = {"label": [["Ref($close, -2)/Ref($close, -1) - 1"], ["LABEL0"]]}
                frames = [cls(config=label, freq=freq, engine=e, **kw).load("all", start, end) for e in ("qlib", "fast")]
                result[(key, freq)] = tuple(frames)
        import os
        for n in ("1", "3"):  # the engine's thread count (expression groups, robust statistics) changes nothing
            os.environ["QLIB_CRYPTO_THREADS"] = n
            h = CryptoAlpha158(instruments="all", start_time="2023-01-02", end_time=END, freq="60min",
                               fit_start_time="2023-01-02", fit_end_time="2023-01-12 23:00:00")
            result[("threads", n)] = {
                "loader": CryptoAlpha158DL(freq="60min").load("all", "2023-01-02", END),
                "infer": h.fetch(col_set="__all", data_key="infer"),
                "learn": h.fetch(col_set="__all", data_key="learn"),
            }
        del os.environ["QLIB_CRYPTO_THREADS"]
        from qlib.data.dataset import DatasetH
        from qlib.data.dataset.handler import DataHandlerLP

        class QlibPath(CryptoAlpha158):  # Qlib's own processing and fetching, for reference
            def process_data(self, with_fit=False):
                DataHandlerLP.process_data(self, with_fit=with_fit)

            def fetch(self, *args, **kwargs):
                return DataHandlerLP.fetch(self, *args, **kwargs)

        segments = {"train": ("2023-01-02", "2023-01-12 23:00:00"), "test": ("2023-01-13", END)}
        for variant, kw in (("zscore", {}), ("rank", {"label_norm": "rank"}), ("drop_raw", {"drop_raw": True})):
            hs = {}
            for engine, cls in (("qlib", QlibPath), ("fast", CryptoAlpha158)):
                h = cls(instruments="all", start_time="2023-01-02", end_time=END, freq="60min",
                        fit_start_time="2023-01-02", fit_end_time="2023-01-12 23:00:00", engine=engine, **kw)
                keys = ("infer", "learn") if kw.get("drop_raw") else ("raw", "infer", "learn")
                hs[engine] = {}
                if not kw.get("drop_raw"):  # SignalRecord's call: the raw label of a segment (first, before "raw")
                    hs[engine]["raw label"] = h.fetch(slice("2023-01-13", END), col_set="label", data_key="raw")
                hs[engine].update({k: h.fetch(col_set="__all", data_key=k) for k in keys})
                ds = DatasetH(h, segments=segments)
                hs[engine]["train"] = ds.prepare("train", col_set=["feature", "label"], data_key=DataHandlerLP.DK_L)
                hs[engine]["test"] = ds.prepare("test", col_set="feature", data_key=DataHandlerLP.DK_I)
                hs[engine]["robust"] = [(p.mean_train, p.std_train) for p in h.infer_processors if hasattr(p, "mean_train")]
            result[("handler", variant)] = hs
    else:  # look-ahead: features of the fast engine only
        frames = {}
        for key, cls in (("158", CryptoAlpha158DL), ("360", CryptoAlpha360DL)):
            frames[key] = cls(freq="60min").load("all", "2023-01-02", END)
        frames["handler"] = CryptoAlpha158(instruments="all", start_time="2023-01-02", end_time=END, freq="60min",
                                           fit_start_time="2023-01-02", fit_end_time="2023-01-08 23:00:00").fetch(
                                               col_set="feature", data_key="infer")
        result = frames
    with open(out, "wb") as fh:
        pickle.dump(result, fh)
    """
)


def awkward_bars() -> dict[str, pd.DataFrame]:
    bars = synthetic_bars(instruments=INSTRUMENTS, n_bars=N_BARS, seed=3)
    eth = bars["ETH-USDT"]
    eth.iloc[100:112] = np.nan  # a 12-bar gap
    eth.iloc[[200, 230, 231]] = np.nan  # single missing bars
    bars["LATE-USDT"] = bars["LATE-USDT"].iloc[260:]  # listed on day 11
    bars["GONE-USDT-SWAP"] = bars["GONE-USDT-SWAP"].iloc[:300]  # delisted on day 13
    doge = bars["DOGE-USDT-SWAP"]
    flat = doge.iloc[150][["open", "high", "low", "close"]].to_numpy()
    doge.iloc[150:200, :4] = flat[3]  # flat price: constant windows
    doge.iloc[150:200, 4:6] = 0.0  # no trades: zero volume, zero amount (divisions by zero)
    tie = bars["TIE-USDT"]
    tie.iloc[:, :4] = (tie.iloc[:, :4] * 10).round() / 10  # ties in every window
    return bars


def _write_markets(root: Path) -> None:
    # a universe the instruments enter and leave (spans limit the rows Qlib returns)
    (root / "instruments" / "half.txt").write_text(
        "BTC-USDT\t2023-01-01 00:00:00\t2023-01-06 23:00:00\n"
        "BTC-USDT\t2023-01-10 00:00:00\t2023-01-20 23:00:00\n"
        "ETH-USDT\t2023-01-04 00:00:00\t2023-01-15 23:00:00\n"
        "LATE-USDT\t2023-01-01 00:00:00\t2023-01-20 23:00:00\n"
        "GONE-USDT-SWAP\t2023-01-08 00:00:00\t2023-01-20 23:00:00\n"
    )


def _run(script_mode: str, p60: Path, pday: Path, out: Path) -> dict:
    payload = pickle.dumps({"exprs": OPERATOR_EXPRS, "starts": STARTS}).hex()
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(p60), str(pday), str(out), script_mode, payload],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(out, "rb") as fh:
        return pickle.load(fh)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("fast_features")
    bars = awkward_bars()
    p60 = write_provider(tmp / "orig" / "60min", bars, "60min")
    pday = write_provider(tmp / "orig" / "day", daily_bars(bars), "day")
    _write_markets(p60)
    # the same provider with every bar after T_CUT changed (look-ahead check)
    changed = tmp / "changed" / "60min"
    shutil.copytree(p60, changed)
    cal = pd.DatetimeIndex(pd.read_csv(changed / "calendars" / "60min.txt", header=None)[0])
    rng = np.random.default_rng(5)
    for path in (changed / "features").glob("*/*.bin"):
        values = np.fromfile(path, dtype="<f4")
        start = int(values[0])
        after = np.asarray(cal[start : start + len(values) - 1] > pd.Timestamp(T_CUT))
        values[1:][after] *= rng.uniform(0.5, 1.5, after.sum()).astype("f4")
        values.tofile(path)
    return {
        "compare": _run("compare", p60, pday, tmp / "compare.pkl"),
        "orig": _run("lookahead", p60, pday, tmp / "orig.pkl"),
        "changed": _run("lookahead", changed, pday, tmp / "changed.pkl"),
    }


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ULP distance between float32 arrays (0 where both are NaN; inf where only one is)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)
    ia = a.view(np.int32).astype(np.int64)
    ib = b.view(np.int32).astype(np.int64)
    # map the sign-magnitude bit patterns onto a monotonic integer line
    ia = np.where(ia < 0, -(ia & 0x7FFFFFFF), ia)
    ib = np.where(ib < 0, -(ib & 0x7FFFFFFF), ib)
    dist = np.abs(ia - ib).astype(np.float64)
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    dist[nan_a & nan_b] = 0
    dist[nan_a ^ nan_b] = np.inf
    return dist


def assert_same(ref: pd.DataFrame, ours: pd.DataFrame, what: str) -> int:
    """Same index, columns and dtypes; values within 1 float32 ULP. Returns the number of inexact cells."""
    assert ours.index.equals(ref.index), f"{what}: rows differ"
    assert list(ours.index.names) == list(ref.index.names), what
    assert list(ours.columns) == list(ref.columns), f"{what}: columns differ"
    assert (ours.dtypes == np.float32).all() and (ref.dtypes == np.float32).all(), what
    dist = ulp_distance(ref.to_numpy(), ours.to_numpy())
    if dist.size and dist.max() > 1:
        r, c = np.unravel_index(np.argmax(dist), dist.shape)
        raise AssertionError(
            f"{what}: column {ref.columns[c]!r} row {ref.index[r]}: qlib {ref.iat[r, c]!r} fast {ours.iat[r, c]!r} "
            f"({int((dist > 1).sum())} cells beyond 1 ULP)"
        )
    return int((dist > 0).sum())


@pytest.mark.parametrize("op", list(OPERATOR_EXPRS))
def test_operator_matches_qlib(results, op):
    """Each operator (several windows and inputs) equals Qlib's on gaps, late listings, delistings, constant
    windows, ties and +-inf, from the calendar start and from mid-way (truncated history), for the whole
    market and for a universe whose members enter and leave."""
    inexact = 0
    for (_kind, start_name, market), (ref, ours) in ((k, v) for k, v in results["compare"].items() if k[0] == "ops"):
        for expr in OPERATOR_EXPRS[op]:
            inexact += assert_same(ref[[expr]], ours[[expr]], f"{expr} ({start_name}, market {market})")
    assert inexact == 0, f"{inexact} cells within 1 ULP but not bit-identical"


def test_frame_layout_matches_qlib(results):
    """Instrument-major frames (swap_level=False) and plain instrument lists give Qlib's rows too."""
    ref, ours = results["compare"]["unswapped"]
    assert list(ours.index.names) == ["instrument", "datetime"]
    assert assert_same(ref, ours, "swap_level=False") == 0
    ref, ours = results["compare"]["instrument list"]
    assert set(ours.index.get_level_values("instrument")) == {"ETH-USDT", "LATE-USDT"}
    assert assert_same(ref, ours, "instrument list") == 0


@pytest.mark.parametrize("feature_set, freq", [("158", "60min"), ("360", "60min"), ("158", "day"), ("360", "day")])
def test_feature_set_matches_qlib(results, feature_set, freq):
    """Whole CryptoAlpha158 / CryptoAlpha360 feature sets and their label, both engines through the loaders."""
    ref, ours = results["compare"][(feature_set, freq)]
    assert ref.shape[1] == (256 if feature_set == "158" else 7 * 60 + 1)
    assert len(ref) > 0 and ref["feature"].notna().to_numpy().mean() > 0.1
    assert assert_same(ref, ours, f"CryptoAlpha{feature_set} {freq}") == 0


@pytest.mark.parametrize("variant", ["zscore", "rank", "drop_raw"])
def test_handler_matches_qlib(results, variant):
    """The CryptoAlpha158 handler with its default processors (label z-score or rank; raw kept or dropped):
    the fast engine with the handler's copy-free processing and fetching gives the frames, fitted
    statistics and dataset segments of Qlib's expression engine with Qlib's own processing and fetching."""
    hs = results["compare"][("handler", variant)]
    for key in hs["qlib"]:
        ref, ours = hs["qlib"][key], hs["fast"][key]
        if key == "robust":
            assert len(ref) == len(ours) == 1
            for a, b in zip(ref[0], ours[0]):
                assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
            continue
        assert list(ours.dtypes) == list(ref.dtypes), key  # e.g. CSRankNorm's float64 label
        f32 = [c for c, t in ref.dtypes.items() if t == np.float32]
        assert assert_same(ref[f32], ours[f32], f"handler {variant} {key}") == 0
        other = [c for c in ref.columns if c not in f32]
        pd.testing.assert_frame_equal(ref[other], ours[other], check_exact=True)


def test_thread_count_changes_no_bit(results):
    """One thread and three threads give the same frames, bit for bit (each piece of work writes its own part)."""
    one, three = results["compare"][("threads", "1")], results["compare"][("threads", "3")]
    for key in ("loader", "infer", "learn"):
        a, b = one[key], three[key]
        assert a.index.equals(b.index) and list(a.columns) == list(b.columns), key
        assert a.to_numpy().tobytes() == b.to_numpy().tobytes(), key
    # and the one-thread loader is Qlib's frame (the feature columns of the compared CryptoAlpha158 set)
    ref = results["compare"][("158", "60min")][0]["feature"]
    ours = one["loader"]["feature"]
    assert (
        assert_same(
            ref.loc[ours.index.intersection(ref.index)], ours.loc[ours.index.intersection(ref.index)], "1 thread"
        )
        == 0
    )


def test_no_look_ahead_with_gaps_and_listings(results):
    """Changing every bar after T leaves every fast-engine feature at or before T unchanged (and changes later ones)."""
    t_cut = pd.Timestamp(T_CUT)
    for key in ("158", "360", "handler"):
        orig, changed = results["orig"][key], results["changed"][key]
        assert orig.index.equals(changed.index)
        before = orig.index.get_level_values("datetime") <= t_cut
        pd.testing.assert_frame_equal(orig[before], changed[before], check_exact=True)
        assert not np.allclose(orig[~before].to_numpy(), changed[~before].to_numpy(), equal_nan=True)


@pytest.mark.parametrize(
    "expr, message",
    [
        ("EMA($close, 5)", "'EMA' is not supported"),
        ("Mad($close, 5)", "'Mad' is not supported"),
        ("Foo($close, 5)", "unknown operator 'Foo'"),
        ("Mean($close, 2.5)", "Mean needs a whole number"),
        ("Quantile($close, 5, 2)", "quantile between 0 and 1"),
        ("Mean($close, 5", "invalid syntax"),
        ("-$close", "unary"),
        ("1+2", "constant"),
        ("Slope($close, 0)", "N=0"),
        ("$$roe_q", "point-in-time"),
    ],
)
def test_unsupported_expressions_fail_with_the_operator_named(expr, message):
    with pytest.raises(ExpressionError, match=message) as err:
        parse(expr)
    assert expr in str(err.value) or "$$" in expr


def test_parser_follows_python_precedence_like_qlib():
    node = parse("$close>Ref($close, 1)-2*$open/Mean($volume, 3)")
    assert node.key == "Gt($close,Sub(Ref($close,1),Div(Mul(2,$open),Mean($volume,3))))"
    assert parse("Mean($close, 2*3)").params == (6,)
    assert parse("Ref($close, -2)").extended_window() == (0, 2)
    assert parse("Corr($close/Ref($close,1), Log($volume/Ref($volume, 1)+1), 12)").extended_window() == (12, 0)
    assert parse("Mean(Std($close, 5), 3)").extended_window() == (6, 0)
    assert parse("Sum($close, 0)").extended_window() == (0, 0)


def test_handler_engine_switch_and_errors():
    from qlib_crypto.data.loader import CryptoAlpha158DL, FastDataLoader
    from qlib_crypto.errors import ConfigError

    with pytest.raises(ConfigError, match="engine"):
        CryptoAlpha158DL(engine="turbo")
    with pytest.raises(ExpressionError, match="'EMA' is not supported"):
        FastDataLoader(config={"feature": (["EMA($close, 5)"], ["E"])}, freq="60min")
    # the same expression is accepted with Qlib's engine
    assert FastDataLoader(config={"feature": (["EMA($close, 5)"], ["E"])}, freq="60min", engine="qlib").engine == "qlib"


@pytest.mark.parametrize("clip", [True, False])
def test_in_place_processors_are_qlibs_bits(clip):
    """InfToNaN, RobustZScoreNorm (fit and apply) and Fillna on the float32 block give the bits of Qlib's own
    processors on the same frame (values with NaN, +-inf, constant columns, huge and tiny magnitudes)."""
    from qlib.data.dataset import processor as qp

    from qlib_crypto.data.processors import Block, InfToNaN, apply_wide, fit_rows

    rng = np.random.default_rng(5)
    times = pd.date_range("2024-01-01", periods=400, freq="h")
    index = pd.MultiIndex.from_product([times, ["A", "B", "C"]], names=["datetime", "instrument"])
    n = len(index)
    cols = pd.MultiIndex.from_tuples([("feature", f"F{i}") for i in range(7)] + [("label", "LABEL0")])
    data = rng.standard_normal((n, 8)).astype(np.float32) * np.float32(3)
    data[:, 1] *= np.float32(1e30)
    data[:, 2] *= np.float32(1e-30)
    data[:, 3] = np.float32(7.25)  # constant: MAD 0 -> std EPS * 1.4826
    data[rng.random((n, 8)) < 0.1] = np.nan
    data[rng.random((n, 8)) < 0.02] = np.inf
    data[rng.random((n, 8)) < 0.02] = -np.inf
    frame = pd.DataFrame(data, index=index, columns=cols)
    fit_start, fit_end = times[0], times[250]

    def procs():
        return [
            InfToNaN(),
            qp.RobustZScoreNorm(
                fit_start_time=fit_start, fit_end_time=fit_end, fields_group="feature", clip_outlier=clip
            ),
            qp.Fillna(fields_group="feature", fill_value=0.5),
        ]

    expected = frame.copy()
    for p in procs():
        p.fit(expected)
        expected = p(expected)
    block = Block(np.ascontiguousarray(frame.to_numpy().T), index, cols)
    for p in procs():
        apply_wide(p, block, True, fit_rows(p, index) if hasattr(p, "fit_start_time") else None)
    got = block.frame()
    want = expected.to_numpy(dtype=np.float32)
    assert got.to_numpy().dtype == np.float32
    assert np.array_equal(np.isnan(got.to_numpy()), np.isnan(want))
    ok = ~np.isnan(want)
    assert np.array_equal(got.to_numpy().view(np.uint32)[ok], want.view(np.uint32)[ok])
