"""The backtest and training reports opened in a real browser: headless Chromium (Debian's ``chromium`` package,
which ``.ci/run`` installs when missing) driven by Playwright pointed at the system browser.

Each page must load without a console error or page error and without any network request, draw every plotly
figure with a non-zero size (each trace of its data drawn), and show the key numbers as visible text (computed
here, independently of the report code, from the hand-worked backtest of tests/report_scenario.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from report_scenario import INIT, scenario

CHROMIUM = os.environ.get("QLIB_CRYPTO_CHROMIUM", "/usr/bin/chromium")
#: as root, without a sandbox, and never on the network (no updates, no sync, no QUIC probes)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


@pytest.fixture(scope="module")
def browser_context():
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}: install Debian's package (apt-get install -y chromium; "
            ".ci/run does it when missing) or point QLIB_CRYPTO_CHROMIUM at a Chromium binary",
            pytrace=False,
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: pip install -c constraints.txt -e '.[dev]'", pytrace=False)
    profile = tempfile.mkdtemp(prefix="qlib_crypto_chromium_")  # a fresh profile for every run
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield ctx
        finally:
            ctx.close()
            shutil.rmtree(profile, ignore_errors=True)


def open_report(ctx, path: Path) -> tuple[object, dict]:
    """Open ``path``; return the page and what went wrong: console errors, page errors, network requests."""
    page = ctx.new_page()
    problems = {"console": [], "pageerror": [], "network": []}
    page.on("console", lambda m: problems["console"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems["pageerror"].append(str(e)))

    def route(r):
        url = r.request.url
        if url.startswith(("file:", "data:", "about:", "blob:")):
            r.continue_()
        else:
            problems["network"].append(url)
            r.abort()

    page.route("**/*", route)
    page.goto(path.resolve().as_uri(), wait_until="load")
    # plotly draws asynchronously: wait until every figure has its svg and its traces
    page.wait_for_function(
        """() => Array.from(document.querySelectorAll('.plotly-graph-div')).every(
        d => d._fullLayout && d.querySelector('svg.main-svg') && d.querySelectorAll('.trace, .hm').length >= d.data.length)""",
        timeout=60_000,
    )
    return page, problems


FIGURE_SIZES = """() => Array.from(document.querySelectorAll('.plotly-graph-div')).map(d => {
    const box = d.getBoundingClientRect();
    const svg = d.querySelector('svg.main-svg').getBoundingClientRect();
    const traces = Array.from(d.querySelectorAll('.trace, .hm')).map(t => {
        const r = t.getBoundingClientRect(); return r.width > 0 || r.height > 0; });
    return {id: d.id, width: box.width, height: box.height, svg_w: svg.width, svg_h: svg.height,
            n_data: d.data.length, n_drawn: traces.length, all_drawn: traces.every(x => x)};
})"""


def check_page(page, problems: dict, figure_ids: set[str]) -> None:
    assert problems == {"console": [], "pageerror": [], "network": []}, problems
    figures = page.evaluate(FIGURE_SIZES)
    assert {f["id"] for f in figures} == figure_ids
    for f in figures:
        assert f["width"] > 100 and f["height"] > 100 and f["svg_w"] > 100 and f["svg_h"] > 100, f
        assert f["n_drawn"] == f["n_data"] > 0 and f["all_drawn"], f


def test_backtest_report_in_chromium(browser_context, tmp_path):
    from qlib_crypto.workflow._report_html import FIGURES
    from qlib_crypto.workflow.backtest_report import build_report

    hand = scenario()
    rep = build_report(
        hand["report_df"],
        hand["fills"],
        freq="60min",
        initial_equity=INIT,
        funding=hand["funding"],
        order_reports=hand["orders"],
        positions=hand["positions"],
        info={"benchmark": "BTC-USDT"},
    )
    paths = rep.write(tmp_path / "bt", title="Hand backtest")
    page, problems = open_report(browser_context, paths["report.html"])
    check_page(page, problems, set(FIGURES))
    text = page.inner_text("body")  # what a person sees
    eq = hand["equity"]
    net = eq[-1] - INIT
    bench = float(np.prod(1 + np.array(hand["report_df"]["bench"])) - 1)
    for expected in (
        f"{(eq[-1] / INIT - 1) * 100:.2f}%",
        f"{eq[-1]:,.2f} USDT",
        f"{net:+,.2f} USDT",
        f"{bench * 100:.2f}%",
        f"{hand['gross_pnl']:+,.2f} USDT",
        f"{-hand['fees']:+,.2f} USDT",
        "8,760 bars a year = 365 days x 24 bars a day",
    ):
        assert expected in text, expected
        assert page.get_by_text(expected, exact=False).first.is_visible(), expected
    for heading in (
        "Where the edge went",
        "Against the benchmark",
        "Rolling Sharpe and volatility",
        "Worst drawdowns",
        "Monthly returns",
        "Per instrument",
        "Trade statistics",
    ):
        assert page.get_by_role("heading", name=heading).is_visible(), heading
    page.close()


def test_training_report_in_chromium(browser_context, tmp_path):
    import lightgbm as lgb

    from qlib_crypto.workflow.training_report import training_report

    rng = np.random.default_rng(4)
    idx = pd.MultiIndex.from_product(
        [pd.date_range("2024-02-27", periods=72, freq="h"), [f"I{i:02d}-USDT-SWAP" for i in range(10)]],
        names=["datetime", "instrument"],
    )
    pred = pd.Series(rng.normal(size=len(idx)), index=idx)
    label = pd.Series(0.01 * pred.to_numpy() + rng.normal(0, 0.02, len(idx)), index=idx)
    x = rng.normal(size=(300, 3))
    booster = lgb.train(
        {"objective": "mse", "verbosity": -1, "num_leaves": 4, "num_threads": 1},
        lgb.Dataset(x, label=x[:, 0] + 0.1 * rng.normal(size=300)),
        num_boost_round=4,
    )
    paths = training_report(
        pred,
        label,
        booster,
        {"train": {"l2": [1.0, 0.6]}, "valid": {"l2": [1.1, 0.8]}},
        tmp_path / "tr",
        feature_names=["f0", "f1", "f2"],
        title="Browser training report",
    )
    page, problems = open_report(browser_context, paths["html"])
    check_page(
        page,
        problems,
        {
            "fig-ic",
            "fig-cum-ic",
            "fig-ic-monthly",
            "fig-ic-dist",
            "fig-groups",
            "fig-autocorr",
            "fig-importance",
            "fig-pred-dist",
            "fig-loss",
        },
    )
    text = page.inner_text("body")
    per_bar = [np.corrcoef(g[0], g[1])[0, 1] for _, g in pd.concat([pred, label], axis=1).groupby(level="datetime")]
    assert f"{np.mean(per_bar):.4f}" in text  # the IC
    assert f"{np.mean(per_bar) / np.std(per_bar, ddof=1):.4f}" in text  # the ICIR
    for heading in ("IC by month", "IC distribution", "Quantile (group) returns", "Score autocorrelation"):
        assert page.get_by_role("heading", name=heading).is_visible(), heading
    page.close()
