"""End-to-end: SignalStrategy and LongShortStrategy through CryptoExchange + CryptoExecutor on tiny hand-made
provider directories, checked against hand computation (qlib.init is process-global: the backtests run in one
subprocess and the tests read what it wrote)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

N_BARS = 12
IDX = pd.date_range("2024-01-01", periods=N_BARS, freq="h")
I = np.arange(N_BARS, dtype=float)
FEES = {"spot": {"maker": 0.0008, "taker": 0.001}, "swap": {"maker": 0.0002, "taker": 0.0005}}
SLIP_BPS = 10.0
ACCOUNT = 10_000.0
FUNDING = {4: 0.001, 8: -0.0005}  # bar -> rate on BTC-USDT-SWAP

BTC_CLOSE = 100.0 + I
BTC_OPEN = BTC_CLOSE - 0.5
ETH_CLOSE = 50.0 - 0.5 * I
SOL_CLOSE = 20.0 + 0.25 * I
# long/short universe
LS = {
    "A-USDT-SWAP": 10.0 + 0.25 * I,
    "B-USDT-SWAP": np.full(N_BARS, 20.0),
    "C-USDT-SWAP": np.full(N_BARS, 30.0),
    "D-USDT-SWAP": 40.0 - 0.5 * I,
}


def _bars(close, open_=None, funding=None):
    close = np.asarray(close, dtype=float)
    open_ = close if open_ is None else np.asarray(open_, dtype=float)
    df = pd.DataFrame(
        {
            "open": open_,
            "high": np.maximum(open_, close) + 1,
            "low": np.minimum(open_, close) - 1,
            "close": close,
            "volume": 1e6,
        },
        index=IDX,
    )
    if funding is not None:
        fr = np.full(N_BARS, np.nan)
        for bar, rate in funding.items():
            fr[bar] = rate
        df["funding_rate"] = fr
    return df


SCRIPT = textwrap.dedent(
    """
    import json, sys, pathlib
    import pandas as pd, qlib
    from qlib_crypto.workflow.backtest_record import run_backtest
    out = pathlib.Path(sys.argv[1])
    cfg = json.loads((out / "cfg.json").read_text())
    for name in ("signal", "longshort", "longshort_exit"):
        c = cfg[name]
        qlib.init(provider_uri=c["uri"], region="us", trade_unit=None, limit_threshold=None, deal_price="close",
                  kernels=1)
        if name == "signal":
            strategy = {"class": "SignalStrategy", "module_path": "qlib_crypto.strategy",
                        "kwargs": {"signals": str(out / "signals.parquet")}}
        else:
            pred = pd.read_pickle(out / ("pred.pkl" if name == "longshort" else "pred_exit.pkl"))
            strategy = {"class": "LongShortStrategy", "module_path": "qlib_crypto.strategy",
                        "kwargs": {"signal": pred, "topk": 1, "rebalance_every": 3}}
        run = run_backtest(strategy, start_time=c["start"], end_time=c["end"], freq="60min", account=c["account"],
                           benchmark=c["benchmark"], exchange=c["exchange"])
        d = out / name
        run.report().write(d)
        run.report_df.to_pickle(d / "report_df.pkl")
        run.fills.to_pickle(d / "fills.pkl")
        run.funding_events.to_pickle(d / "funding.pkl")
    # the record template, as qrun would run it after SignalRecord (pred.pkl in the recorder)
    from qlib.workflow import R
    from qlib_crypto.workflow.backtest_record import CryptoBacktestRecord
    c = cfg["longshort"]
    qlib.init(provider_uri=c["uri"], region="us", trade_unit=None, limit_threshold=None, deal_price="close", kernels=1,
              exp_manager={"class": "MLflowExpManager", "module_path": "qlib.workflow.expm",
                           "kwargs": {"uri": "file:" + str(out / "mlruns"), "default_exp_name": "e2e"}})
    with R.start(experiment_name="e2e"):
        rec = R.get_recorder()
        rec.save_objects(**{"pred.pkl": pd.read_pickle(out / "pred.pkl").to_frame("score")})
        CryptoBacktestRecord(rec, config={
            "strategy": {"class": "LongShortStrategy", "module_path": "qlib_crypto.strategy",
                         "kwargs": {"signal": "<PRED>", "topk": 1, "rebalance_every": 3}},
            "executor": {"class": "CryptoExecutor", "module_path": "qlib_crypto.backtest",
                         "kwargs": {"time_per_step": "60min"}},
            "backtest": {"start_time": c["start"], "end_time": c["end"], "account": c["account"],
                         "benchmark": c["benchmark"],
                         "exchange": {"class": "CryptoExchange", "module_path": "qlib_crypto.backtest",
                                      "kwargs": c["exchange"]}}}).generate()
        (out / "record.json").write_text(json.dumps({
            "artifacts": rec.list_artifacts("crypto_backtest") + rec.list_artifacts("portfolio_analysis"),
            "metrics": rec.list_metrics()}))
    """
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from tiny_provider import write_provider

    root = tmp_path_factory.mktemp("e2e")
    uri_sig = write_provider(
        root / "prov_signal",
        {
            "BTC-USDT-SWAP": _bars(BTC_CLOSE, BTC_OPEN, FUNDING),
            "ETH-USDT": _bars(ETH_CLOSE),
            "SOL-USDT": _bars(SOL_CLOSE),
        },
    )
    uri_ls = write_provider(root / "prov_ls", {k: _bars(v) for k, v in LS.items()})
    # signals as `qlib-crypto predict` writes them: signed sizes
    signals = pd.DataFrame(
        [
            (IDX[1], "BTC-USDT-SWAP", "SELL", -0.5),
            (IDX[1], "ETH-USDT", "BUY", 0.3),
            (IDX[1], "SOL-USDT", "SELL", -0.2),
            (IDX[3], "BTC-USDT-SWAP", "HOLD", 0.0),
            (IDX[3], "ETH-USDT", "BUY", 0.3),
            (IDX[6], "BTC-USDT-SWAP", "BUY", 0.2),
            (IDX[6], "ETH-USDT", "SELL", -0.3),
        ],
        columns=["datetime", "instrument", "signal", "position_size"],
    )
    signals["score"] = 0.0
    signals.to_parquet(root / "signals.parquet")
    # scores: A > B > C > D up to bar 5, reversed from bar 6 on
    rows = []
    for t, ts in enumerate(IDX):
        order = ["A-USDT-SWAP", "B-USDT-SWAP", "C-USDT-SWAP", "D-USDT-SWAP"]
        for rank, inst in enumerate(order if t < 6 else order[::-1]):
            rows.append((ts, inst, float(4 - rank)))
    pd.DataFrame(rows, columns=["datetime", "instrument", "score"]).set_index(["datetime", "instrument"])[
        "score"
    ].to_pickle(root / "pred.pkl")
    # scores for a short that leaves the book: A > B > C > D up to bar 5, then A > B > D > C (D's short is closed
    # to exactly zero at step 7 and C is shorted instead)
    rows = []
    for t, ts in enumerate(IDX):
        order = ["A-USDT-SWAP", "B-USDT-SWAP", "C-USDT-SWAP", "D-USDT-SWAP"]
        if t >= 6:
            order = ["A-USDT-SWAP", "B-USDT-SWAP", "D-USDT-SWAP", "C-USDT-SWAP"]
        for rank, inst in enumerate(order):
            rows.append((ts, inst, float(4 - rank)))
    pd.DataFrame(rows, columns=["datetime", "instrument", "score"]).set_index(["datetime", "instrument"])[
        "score"
    ].to_pickle(root / "pred_exit.pkl")
    exchange = {"fees": FEES, "slippage_bps": SLIP_BPS, "deal_price": "close"}
    cfg = {
        "signal": {
            "uri": uri_sig,
            "start": str(IDX[0]),
            "end": str(IDX[10]),
            "account": ACCOUNT,
            "benchmark": "BTC-USDT-SWAP",
            "exchange": exchange,
        },
        "longshort": {
            "uri": uri_ls,
            "start": str(IDX[0]),
            "end": str(IDX[10]),
            "account": ACCOUNT,
            "benchmark": "A-USDT-SWAP",
            "exchange": dict(exchange, slippage_bps=0.0),
        },
    }
    cfg["longshort_exit"] = cfg["longshort"]
    (root / "cfg.json").write_text(json.dumps(cfg))
    # cwd=root: Qlib's experiment lock path drops the leading "/" of a file: URI and lands relative to the cwd
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(root)], capture_output=True, text=True, timeout=300, cwd=root
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def _hand_signal_run():
    """Independent re-computation of the signal scenario (cash accounting by hand)."""
    s = SLIP_BPS / 1e4
    fr4, fr8 = float(np.float32(FUNDING[4])), float(np.float32(FUNDING[8]))  # stored as float32
    fees = slip = funding_received = 0.0
    cash = ACCOUNT
    # bar 2 (signals of bar 1): BTC short 0.5 x 10,000, ETH long 0.3 x 10,000; SOL spot SELL from flat: nothing
    q_btc = 0.5 * ACCOUNT / BTC_CLOSE[2]
    f = BTC_CLOSE[2] * (1 - s)
    cash += q_btc * f - q_btc * f * 0.0005
    fees += q_btc * f * 0.0005
    slip += q_btc * BTC_CLOSE[2] * s
    q_eth = 0.3 * ACCOUNT / ETH_CLOSE[2]
    f = ETH_CLOSE[2] * (1 + s)
    cash -= q_eth * f + q_eth * f * 0.001
    fees += q_eth * f * 0.001
    slip += q_eth * ETH_CLOSE[2] * s
    # bar 4 funding: short of q_btc at the bar's open, positive rate -> received
    funding_received += q_btc * BTC_OPEN[4] * fr4
    cash += q_btc * BTC_OPEN[4] * fr4
    # bar 7 (signals of bar 6): equity marked at bar 6's close
    e6 = cash - q_btc * BTC_CLOSE[6] + q_eth * ETH_CLOSE[6]
    new_btc = 0.2 * e6 / BTC_CLOSE[7]
    buy = new_btc + q_btc
    f = BTC_CLOSE[7] * (1 + s)
    cash -= buy * f + buy * f * 0.0005
    fees += buy * f * 0.0005
    slip += buy * BTC_CLOSE[7] * s
    f = ETH_CLOSE[7] * (1 - s)  # spot SELL -> flat
    cash += q_eth * f - q_eth * f * 0.001
    fees += q_eth * f * 0.001
    slip += q_eth * ETH_CLOSE[7] * s
    # bar 8 funding: long, negative rate -> received
    funding_received += -new_btc * BTC_OPEN[8] * fr8
    cash -= new_btc * BTC_OPEN[8] * fr8
    final = cash + new_btc * BTC_CLOSE[10]
    return {
        "q_btc": q_btc,
        "q_eth": q_eth,
        "buy_btc": buy,
        "final": final,
        "fees": fees,
        "slippage": slip,
        "funding_received": funding_received,
    }


def test_signal_strategy_fills_follow_t_plus_one_and_semantics(runs):
    fills = pd.read_pickle(runs / "signal" / "fills.pkl")
    hand = _hand_signal_run()
    got = [(r.datetime, r.instrument, r.side) for r in fills.itertuples()]
    # t -> t+1; HOLD and an unchanged BUY at bar 3 trade nothing; SOL spot SELL from flat trades nothing
    assert sorted(got) == sorted(
        [
            (IDX[2], "BTC-USDT-SWAP", "sell"),
            (IDX[2], "ETH-USDT", "buy"),
            (IDX[7], "BTC-USDT-SWAP", "buy"),
            (IDX[7], "ETH-USDT", "sell"),
        ]
    )
    amt = {(r.datetime, r.instrument): r.amount for r in fills.itertuples()}
    assert amt[(IDX[2], "BTC-USDT-SWAP")] == pytest.approx(hand["q_btc"], rel=1e-12)
    assert amt[(IDX[2], "ETH-USDT")] == pytest.approx(hand["q_eth"], rel=1e-12)
    # swap flips from a 0.5 short to a 0.2 long in one buy; spot SELL closes exactly what was held
    assert amt[(IDX[7], "BTC-USDT-SWAP")] == pytest.approx(hand["buy_btc"], rel=1e-9)
    assert amt[(IDX[7], "ETH-USDT")] == pytest.approx(hand["q_eth"], rel=1e-12)
    price = {(r.datetime, r.instrument): r.fill_price for r in fills.itertuples()}
    assert price[(IDX[2], "BTC-USDT-SWAP")] == pytest.approx(102.0 * (1 - 0.001), rel=1e-12)
    assert price[(IDX[7], "ETH-USDT")] == pytest.approx(46.5 * (1 - 0.001), rel=1e-12)


def test_signal_strategy_accounting_identity_and_final_equity(runs):
    rep = pd.read_pickle(runs / "signal" / "report_df.pkl")
    fills = pd.read_pickle(runs / "signal" / "fills.pkl")
    funding = pd.read_pickle(runs / "signal" / "funding.pkl")
    hand = _hand_signal_run()
    final = float(rep["account"].iloc[-1])
    assert rep.index[-1] == IDX[10]
    assert final == pytest.approx(hand["final"], rel=1e-9)
    # price P&L at deal prices from the bars written above, marks at the last close
    close = {"BTC-USDT-SWAP": BTC_CLOSE, "ETH-USDT": ETH_CLOSE, "SOL-USDT": SOL_CLOSE}
    bar_of = {t: i for i, t in enumerate(IDX)}
    pnl = 0.0
    for inst, group in fills.groupby("instrument"):
        signed = np.where(group["side"] == "buy", 1.0, -1.0) * group["amount"].to_numpy()
        deal = np.array([close[inst][bar_of[t]] for t in group["datetime"]])
        pnl += -(signed * deal).sum() + signed.sum() * close[inst][10]
    fees, slip = fills["fee"].sum(), fills["slippage"].sum()
    received = -funding["payment"].sum()
    assert fees == pytest.approx(hand["fees"], rel=1e-9)
    assert slip == pytest.approx(hand["slippage"], rel=1e-9)
    assert received == pytest.approx(hand["funding_received"], rel=1e-6)
    assert final == pytest.approx(ACCOUNT + pnl - fees - slip + received, rel=1e-9)


def test_signal_strategy_report_json(runs):
    metrics = json.loads((runs / "signal" / "metrics.json").read_text())
    assert list(metrics) == [
        "total_return",
        "annualized_return",
        "volatility",
        "sharpe",
        "sortino",
        "calmar",
        "max_drawdown",
        "max_drawdown_duration",
        "turnover",
        "win_rate",
        "exposure",
        "fees_paid",
        "slippage_paid",
        "funding_paid",
    ]
    hand = _hand_signal_run()
    assert metrics["total_return"] == pytest.approx(hand["final"] / ACCOUNT - 1, rel=1e-9)
    assert metrics["fees_paid"] == pytest.approx(hand["fees"], rel=1e-9)
    assert metrics["slippage_paid"] == pytest.approx(hand["slippage"], rel=1e-9)
    assert metrics["funding_paid"] == pytest.approx(-hand["funding_received"], rel=1e-6)
    # in the market from bar 2 to the end (ETH closed at bar 7 but BTC stays long): 9 of 11 bars
    assert metrics["exposure"] == pytest.approx(9 / 11)
    html = (runs / "signal" / "report.html").read_text()
    assert html.count('class="plotly-graph-div"') >= 6


def test_longshort_dollar_neutral_topk_rebalanced_every_n(runs):
    fills = pd.read_pickle(runs / "longshort" / "fills.pkl")
    rep = pd.read_pickle(runs / "longshort" / "report_df.pkl")
    # the first step with a previous bar is 1, then every 3 bars; B and C are never in a book
    assert sorted(set(fills["datetime"])) == [IDX[1], IDX[4], IDX[7], IDX[10]]
    assert set(fills["instrument"]) == {"A-USDT-SWAP", "D-USDT-SWAP"}
    signed = fills.assign(q=np.where(fills["side"] == "buy", 1.0, -1.0) * fills["amount"])
    held = signed.pivot_table(index="datetime", columns="instrument", values="q", aggfunc="sum").fillna(0).cumsum()
    for t in (1, 4, 7, 10):
        equity_before = ACCOUNT if t == 1 else float(rep["account"].loc[IDX[t - 1]])
        a = held.loc[IDX[t], "A-USDT-SWAP"] * LS["A-USDT-SWAP"][t]
        d = held.loc[IDX[t], "D-USDT-SWAP"] * LS["D-USDT-SWAP"][t]
        sign = 1.0 if t < 7 else -1.0  # scores reversed from bar 6 -> books swap at step 7
        assert a == pytest.approx(sign * 0.5 * equity_before, rel=1e-9)
        assert d == pytest.approx(-sign * 0.5 * equity_before, rel=1e-9)
        assert a + d == pytest.approx(0.0, abs=1e-9 * equity_before)


def _hand_longshort_run():
    """Independent re-computation of the long/short scenario (topk 1, rebalance every 3 bars, no slippage).

    Steps 1, 4, 7, 10 trade at the bar's close: long 0.5 x the previous bar's equity in the top instrument
    (A before bar 6's reversal, D after), short 0.5 x that equity in the bottom one; cash += -value for buys,
    +value for sells, minus value x taker fee; equity = cash + holdings x close."""
    fee = FEES["swap"]["taker"]
    cash, fees = ACCOUNT, 0.0
    held = {"A-USDT-SWAP": 0.0, "D-USDT-SWAP": 0.0}
    equity = ACCOUNT
    for t in range(11):
        if t in (1, 4, 7, 10):
            long_, short = ("A-USDT-SWAP", "D-USDT-SWAP") if t < 7 else ("D-USDT-SWAP", "A-USDT-SWAP")
            target = {long_: 0.5 * equity / LS[long_][t], short: -0.5 * equity / LS[short][t]}
            for inst, q in held.items():
                trade = target[inst] - q
                value = abs(trade) * LS[inst][t]
                cash += -trade * LS[inst][t] - value * fee
                fees += value * fee
                held[inst] = target[inst]
        equity = cash + sum(q * LS[inst][t] for inst, q in held.items())
    return {"final": equity, "fees": fees}


def test_record_template_logs_report_to_the_recorder(runs):
    rec = json.loads((runs / "record.json").read_text())
    names = {a.split("/")[-1] for a in rec["artifacts"]}
    assert {
        "metrics.json",
        "report.json",
        "report.html",
        "fills.csv",
        "trades.csv",
        "equity.csv",
        "report_normal_60min.pkl",
        "positions_normal_60min.pkl",
    } <= names
    # the long/short scenario by hand: final equity and fees from the cash walk
    hand = _hand_longshort_run()
    assert rec["metrics"]["backtest.total_return"] == pytest.approx(hand["final"] / ACCOUNT - 1, rel=1e-9)
    assert rec["metrics"]["backtest.fees_paid"] == pytest.approx(hand["fees"], rel=1e-9)
    assert rec["metrics"]["backtest.slippage_paid"] == pytest.approx(0.0, abs=1e-12)
    assert {f"backtest.{k}" for k in ("fees_paid", "slippage_paid", "funding_paid", "max_drawdown")} <= set(
        rec["metrics"]
    )


def test_longshort_short_leaving_the_book_is_closed_to_zero(runs):
    """A short covered to exactly zero (D leaves the short book at step 7) and a new short (C) opened."""
    fills = pd.read_pickle(runs / "longshort_exit" / "fills.pkl")
    rep = pd.read_pickle(runs / "longshort_exit" / "report_df.pkl")
    signed = fills.assign(q=np.where(fills["side"] == "buy", 1.0, -1.0) * fills["amount"])
    held = signed.pivot_table(index="datetime", columns="instrument", values="q", aggfunc="sum").fillna(0).cumsum()
    assert held.loc[IDX[4], "D-USDT-SWAP"] < 0 and held.loc[IDX[7], "D-USDT-SWAP"] == pytest.approx(0.0, abs=1e-12)
    assert held.loc[IDX[7], "C-USDT-SWAP"] * LS["C-USDT-SWAP"][7] == pytest.approx(
        -0.5 * float(rep["account"].loc[IDX[6]]), rel=1e-9
    )
    # cash accounting by hand over every fill (fee 0.05% taker, no slippage) gives the final equity
    cash = ACCOUNT
    for _, f in fills.iterrows():
        value = f["amount"] * f["fill_price"]
        cash += (-value if f["side"] == "buy" else value) - value * FEES["swap"]["taker"]
    final_held = held.iloc[-1]
    equity = cash + sum(final_held[k] * LS[k][10] for k in final_held.index)
    assert float(rep["account"].iloc[-1]) == pytest.approx(equity, rel=1e-9)
