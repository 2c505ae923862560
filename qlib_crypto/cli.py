"""The ``qlib-crypto`` command line: a thin layer that parses options and calls one function per command.

Subcommands live in ``qlib_crypto/commands/<name>.py`` (each defines a click command named ``command``) and
are imported only when used, so ``qlib-crypto dump`` does not pay for importing Qlib, ccxt or LightGBM.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import NoReturn

import click

from .errors import QlibCryptoError

# command name -> module under qlib_crypto.commands
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "Run the offline quickstart: synthetic market -> store -> Qlib provider -> model -> backtest."),
    "collect": ("collect", "Collect OHLCV bars (OKX or the synthetic market) into the Parquet store."),
    "import": ("import_files", "Import OHLCV bars from CSV or Parquet files into the store."),
    "validate": ("validate", "Re-hash and validate every file of a store; exit non-zero on problems."),
    "dump": ("dump", "Dump the store into Qlib's binary provider format (full or --update)."),
    "check": ("check", "Check a qrun workflow YAML (paths, dates, classes, arguments) before training."),
    "predict": ("predict", "Score bars with a trained model and write BUY/SELL/HOLD signals."),
    "backtest": ("backtest", "Backtest signals or a strategy with the crypto exchange and write a report."),
    "sweep": ("sweep", "Re-run a backtest over a grid of fee and slippage values."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module_name, _ = COMMANDS[cmd_name]
        try:
            module = importlib.import_module(f"qlib_crypto.commands.{module_name}")
        except ModuleNotFoundError as exc:  # command not built in this version
            if exc.name == f"qlib_crypto.commands.{module_name}":
                return None
            raise
        return module.command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Short help from the table, without importing every command module.
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--verbose", "-v", is_flag=True, help="Show debug logs and full tracebacks on errors.")
@click.version_option(package_name="qlib-crypto")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """qlib-crypto: crypto data, research and backtesting for Microsoft Qlib.

    \b
    Example (offline, synthetic market):
      qlib-crypto collect --source synthetic --instruments 10 --timeframe 1h \\
          --start 2024-01-01 --end 2024-03-01 --store data/store/okx
      qlib-crypto dump --store data/store/okx --qlib-dir data/qlib/okx/60min --timeframe 1h
    """
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Qlib's known noise off (targeted filters; our qlib_crypto.* warnings stay); --verbose keeps all of it
    from . import _quiet

    if verbose:
        _quiet.disable()
    else:
        _quiet.install()


def console_main() -> NoReturn:
    """The console script ``qlib-crypto`` and ``python -m qlib_crypto``: :func:`main`, then the process ends with
    its exit code without the interpreter's teardown (qlib_crypto/_exit.py: about 1 s after a command that
    imported Qlib)."""
    from ._exit import exit_now

    exit_now(main())


def main(argv: list[str] | None = None) -> int:
    """The command line: runs the command in ``argv`` (default ``sys.argv[1:]``) and returns the process exit
    code (for a process that goes on; the console script is :func:`console_main`)."""
    verbose = "--verbose" in (argv or sys.argv[1:]) or "-v" in (argv or sys.argv[1:])
    try:
        rv = cli.main(args=argv, prog_name="qlib-crypto", standalone_mode=False)
    except QlibCryptoError as err:
        if verbose:
            import traceback

            traceback.print_exc()
        click.echo(f"error: {err}", err=True)
        return err.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted: files written so far are complete; re-run the command to resume", err=True)
        return 130
    except Exception as err:  # an internal bug: one line, traceback with --verbose
        if verbose:
            import traceback

            traceback.print_exc()
        click.echo(f"internal error: {type(err).__name__}: {err} (re-run with --verbose for the traceback)", err=True)
        return 1
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
