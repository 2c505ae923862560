"""Ending a command's process without the interpreter's teardown.

After a command that imported Qlib, MLflow, LightGBM and numba, Python's own shutdown (freeing every module and
object, LLVM's and OpenMP's finalisers) takes 1-1.5 s on a 2-core machine, after the work is done and every
file is written (our writes are atomic: closed, then renamed). :func:`exit_now` does what a normal exit does
that matters (stops idle thread pools and waits for non-daemon threads, runs the ``atexit`` handlers: logging's flush, an MLflow run's
end, a Dask client's close; flushes stdout and stderr), then ends the process with ``os._exit``.

Used only where a process ends anyway: the console script ``qlib-crypto`` and ``python -m qlib_crypto``
(:func:`qlib_crypto.cli.console_main`), and the demo's ``qrun`` child. ``qlib_crypto.cli.main``, called in a
process that goes on (tests, notebooks), returns its exit code as before.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from typing import NoReturn


def exit_now(code: int) -> NoReturn:
    """End this process with ``code``: non-daemon threads joined, ``atexit`` handlers run, stdio flushed, then
    ``os._exit`` (no module teardown). Call it from the main thread only."""
    # what the interpreter runs first at exit (CPython 3.10-3.12, private; tests/test_exit.py): threading's own
    # exit hooks (idle thread-pool workers, such as MLflow's artifact uploaders, are told to stop), then the join
    # of every non-daemon thread; then the atexit handlers
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or broken stream: nothing left to flush
            stream.flush()
    os._exit(code)
