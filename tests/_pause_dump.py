"""Run one ``qlib-crypto`` command and pause it at a named point of a provider dump, for a test to kill it there.

    python tests/_pause_dump.py POINT MARKER COMMAND ARGS...

At POINT the process writes its pid to the file MARKER, then sleeps 600 s (the test kills it meanwhile).
The points are reached by wrapping functions of ``qlib_crypto.provider.dump`` (the library has no hook):

- ``full-staged``: a full dump has staged the complete new directory and is about to swap it in
  (``_swap_in`` is called).
- ``update-written``: an update has appended every feature file and committed nothing (its next step,
  ``_update_daily``, is called).
- ``update-committing``: an update has renamed its first staged file into place (the first ``os.replace`` out of
  ``.qlib_crypto/staged/``).
"""

import importlib
import os
import sys
import time
from pathlib import Path

POINTS = ("full-staged", "update-written", "update-committing")


def _pause(marker: str) -> None:
    Path(marker).write_text(str(os.getpid()))
    sys.stdout.flush()
    time.sleep(600)


def main() -> int:
    point, marker, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    dump_mod = importlib.import_module("qlib_crypto.provider.dump")  # the module (the package exports a function)

    if point == "full-staged":
        real_swap_in = dump_mod._swap_in

        def swap_in(staging, qlib_dir):
            _pause(marker)
            return real_swap_in(staging, qlib_dir)

        dump_mod._swap_in = swap_in
    elif point == "update-written":
        real_update_daily = dump_mod._update_daily

        def update_daily(*args, **kwargs):
            _pause(marker)
            return real_update_daily(*args, **kwargs)

        dump_mod._update_daily = update_daily
    elif point == "update-committing":
        staged = os.sep + os.path.join(dump_mod.STATE_DIR, dump_mod.STAGED_DIR) + os.sep
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            result = real_replace(src, dst, *args, **kwargs)
            if staged in os.fspath(src):
                _pause(marker)
            return result

        os.replace = replace
    else:
        raise SystemExit(f"unknown point {point!r}: use one of {', '.join(POINTS)}")
    from qlib_crypto.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
