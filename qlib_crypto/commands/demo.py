"""``qlib-crypto demo``: the README's main job, offline on the embedded synthetic market.

synthetic market -> raw store (validated) -> Qlib provider (60min and day) -> LightGBM through the qrun
workflow (recorded in ./mlruns) -> BUY/SELL/HOLD signals -> crypto backtest report.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import click

WORKFLOW_60MIN = Path("workflow_configs") / "workflow_config_lightgbm_crypto_60min.yaml"


def _step(title: str, quiet: bool) -> float:
    if not quiet:
        click.secho(f"\n== {title}", bold=True)
    return time.perf_counter()


def _done(t0: float, quiet: bool, what: str = "") -> None:
    if not quiet:
        click.echo(f"   done in {time.perf_counter() - t0:.1f} s{(': ' + what) if what else ''}")


def _run(argv: list[str]) -> None:
    """Run one qlib-crypto command in-process; a non-zero exit stops the demo."""
    from ..cli import main
    from ..errors import QlibCryptoError

    code = main(argv)
    if code != 0:
        raise QlibCryptoError(f"demo step 'qlib-crypto {' '.join(argv)}' exited with code {code}",
                              hint="see the message above; re-run the demo once fixed: finished steps are skipped or repeated cheaply")


@click.command("demo")
@click.option("--instruments", default=20, show_default=True, type=click.IntRange(2, 200),
              help="Number of synthetic instruments (BTC-USDT first, then a mix of spot and -SWAP swaps).")
@click.option("--seed", default=7, show_default=True, help="Seed of the synthetic market.")
@click.option("--start", default="2023-01-01", show_default=True, help="First bar (UTC, inclusive).")
@click.option("--end", default="2024-07-01", show_default=True, help="End (UTC, exclusive).")
@click.option("--data-dir", default="data", show_default=True, type=click.Path(file_okay=False),
              help="Where the store and the Qlib provider go (the workflow files expect the default).")
@click.option("--reports-dir", default="reports", show_default=True, type=click.Path(file_okay=False),
              help="Where signals and the backtest report go.")
@click.option("--skip-research", is_flag=True, help="Stop after the Qlib provider (no model, signals or backtest).")
@click.option("--quiet", is_flag=True, help="Print only the final summary.")
def command(instruments: int, seed: int, start: str, end: str, data_dir: str, reports_dir: str,
            skip_research: bool, quiet: bool) -> int:
    """Run the whole chain offline on the synthetic market (run it from the repository root).

    \b
    1. collect   synthetic 1h bars, funding and metadata -> DATA/store/synthetic (validated)
    2. dump      Qlib provider DATA/qlib/synthetic/60min and .../day (day built from the 1h bars)
    3. qrun      workflow_configs/workflow_config_lightgbm_crypto_60min.yaml (LightGBM on CryptoAlpha158,
                 IC analysis, crypto backtest, 24/7 risk figures), recorded in ./mlruns
    4. predict   signals for the test period from the recorded model -> REPORTS/signals_60min.parquet
    5. backtest  those signals with CryptoExchange + CryptoExecutor -> REPORTS/backtest_60min/report.html
    6. sweep     the same backtest at fee multipliers 0, 0.5, 1 and slippage 0, 2 bps -> REPORTS/sweep_60min

    Re-running is cheap for the data steps: the collector fetches only what is missing.

    \b
    Example:
      qlib-crypto demo
      qlib-crypto demo --instruments 10 --skip-research
    """
    data = Path(data_dir)
    reports = Path(reports_dir)
    store = data / "store" / "synthetic"
    qlib_60 = data / "qlib" / "synthetic" / "60min"
    qlib_day = data / "qlib" / "synthetic" / "day"
    quiet_flag = ["--quiet"] if quiet else []
    t_all = time.perf_counter()

    t0 = _step(f"1/6 collect: {instruments} synthetic instruments, 1h bars, {start} .. {end} -> {store}", quiet)
    _run(["collect", "--source", "synthetic", "--instruments", str(instruments), "--seed", str(seed),
          "--timeframe", "1h", "--start", start, "--end", end, "--store", str(store), "--quiet"])
    _done(t0, quiet)

    t0 = _step(f"2/6 dump: Qlib provider -> {qlib_60} and {qlib_day}", quiet)
    _run(["dump", "--store", str(store), "--qlib-dir", str(qlib_60), "--timeframe", "1h"])
    _run(["dump", "--store", str(store), "--qlib-dir", str(qlib_day), "--timeframe", "1d", "--from-timeframe", "1h"])
    _done(t0, quiet)

    if not skip_research:
        if not WORKFLOW_60MIN.exists():
            from ..errors import ConfigError

            raise ConfigError(f"workflow file {str(WORKFLOW_60MIN)!r} not found in {str(Path.cwd())!r}",
                              hint="run the demo from the repository root, or pass --skip-research")
        t0 = _step(f"3/6 qrun {WORKFLOW_60MIN} (features, LightGBM, IC, backtest; recorded in ./mlruns)", quiet)
        code = subprocess.call(
            [sys.executable, "-c", "import sys; from qlib.cli.run import run; sys.argv[0] = 'qrun'; run()",
             str(WORKFLOW_60MIN)],
            stdout=subprocess.DEVNULL if quiet else None, stderr=subprocess.DEVNULL if quiet else None,
        )
        if code != 0:
            from ..errors import QlibCryptoError

            raise QlibCryptoError(f"qrun {WORKFLOW_60MIN} exited with code {code}",
                                  hint="run it by hand to see Qlib's log: .venv/bin/qrun " + str(WORKFLOW_60MIN))
        _done(t0, quiet)

        signals = reports / "signals_60min.parquet"
        t0 = _step(f"4/6 predict: test-period signals from the recorded model -> {signals}", quiet)
        _run(["predict", "--experiment", "crypto_lightgbm_60min", "--provider-dir", f"60min={qlib_60}",
              "--provider-dir", f"day={qlib_day}", "--freq", "60min", "--start", "2024-04-01",
              "--end", "2024-06-30 22:00", "--out", str(signals)])
        _done(t0, quiet)

        backtest_dir = reports / "backtest_60min"
        t0 = _step(f"5/6 backtest: the signals with CryptoExchange + CryptoExecutor -> {backtest_dir}", quiet)
        _run(["backtest", "--signals", str(signals), "--provider-dir", str(qlib_60), "--freq", "60min",
              "--start", "2024-04-01", "--end", "2024-06-30 22:00", "--slippage-bps", "2",
              "--out", str(backtest_dir)])
        _done(t0, quiet)

        sweep_dir = reports / "sweep_60min"
        t0 = _step(f"6/6 sweep: the same backtest over fee and slippage levels -> {sweep_dir}", quiet)
        _run(["sweep", "--signals", str(signals), "--provider-dir", str(qlib_60), "--freq", "60min",
              "--start", "2024-04-01", "--end", "2024-06-30 22:00", "--fee-multipliers", "0,0.5,1",
              "--slippage-bps", "0,2", "--out", str(sweep_dir)])
        _done(t0, quiet)

    click.secho(f"\nqlib-crypto demo finished in {time.perf_counter() - t_all:.0f} s", bold=True)
    click.echo(f"  raw store        {store}   (qlib-crypto validate --store {store})")
    click.echo(f"  Qlib provider    {qlib_60}  and  {qlib_day}")
    click.echo("  load it          import qlib_crypto; qlib_crypto.init({'60min': '%s', 'day': '%s'})" % (qlib_60, qlib_day))
    click.echo("                   from qlib.data import D; D.features(['BTC-USDT'], ['$close'], freq='60min')")
    if not skip_research:
        click.echo(f"  workflows        qrun {WORKFLOW_60MIN}   (and ..._day.yaml)")
        click.echo("  recorder         mlflow ui --backend-store-uri ./mlruns --host 127.0.0.1")
        click.echo(f"  signals          {reports / 'signals_60min.parquet'}")
        click.echo(f"  backtest report  {reports / 'backtest_60min' / 'report.html'}")
        click.echo(f"  cost sweep       {reports / 'sweep_60min' / 'sweep.html'}")
    return 0
