"""The CLI's subcommands (one module each, imported lazily by ``qlib_crypto.cli``) and options they share."""

from __future__ import annotations

import click

#: help of ``--lock-timeout`` for the commands that write a store
LOCK_TIMEOUT_HELP = (
    "Seconds to wait while another command writes the store (default 3600, env "
    "QLIB_CRYPTO_LOCK_TIMEOUT; 0 = refuse at once, exit code 5)."
)


def lock_timeout_option(help_text: str = LOCK_TIMEOUT_HELP):
    """The ``--lock-timeout S`` option of every command that takes the store's writer lock."""
    return click.option("--lock-timeout", default=None, type=float, metavar="S", help=help_text)
