"""Compile the fast feature engine's numba kernels ahead of a run: the first run after an install.

numba compiles each kernel the first time it is called and keeps the machine code in its cache (beside the
package's sources, or under ``NUMBA_CACHE_DIR``); every later process loads it from there. On a fresh install
the first feature build therefore also compiles: about 13 s of one core for the 60min workflow's handler,
25 s of ``qrun`` while its feature threads wait for each other. ``qlib-crypto demo`` asks :func:`kernels_cached`
when it starts and, on a cold cache, runs :func:`main` in a separate process while it collects and its
``qrun`` process imports: the kernels are compiled on the machine's other core, and ``qrun`` finds them cached.

:func:`warm_up` builds the workflow's own handler (class and arguments from the YAML; only the instruments and
the dates changed) on a tiny synthetic provider written in a temporary directory with our ``collect`` and
``dump`` commands, so the kernels are compiled for exactly the argument types of a real run.
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from pathlib import Path
from typing import Any

#: the tiny provider's span (hourly bars): long enough for every window of the 60min feature set (168 bars)
TINY_START, TINY_END = "2024-01-01", "2024-01-21"
TINY_FIT_END = "2024-01-14 23:00:00"


def kernels_cached() -> bool:
    """True when numba's cache holds a compiled kernel of the feature engine for these sources (a feature build
    has run since the install). Reads numba's cache index (``Dispatcher._cache``, numba 0.5x-0.6x); when that
    cannot be read the answer is True (nothing is warmed up; the run compiles what it needs, as without this)."""
    try:
        from . import kernels

        index = kernels.sink_rows._cache._cache_file._load_index()  # the loader's last step: every build calls it
    except Exception:  # noqa: BLE001 (another numba: behave as without the warm-up)
        return True
    return bool(index)


def _handler_config(workflow: str | Path) -> dict[str, Any]:
    """The workflow's handler ``{class, module_path, kwargs}`` over the tiny provider's instruments and dates."""
    import yaml

    with open(workflow, encoding="utf-8") as fh:
        conf = yaml.safe_load(fh)
    handler = dict(conf["task"]["dataset"]["kwargs"]["handler"])
    kwargs = dict(handler.get("kwargs") or {})
    kwargs.update(instruments="all", start_time=TINY_START, end_time=f"{TINY_END} 00:00:00")
    if kwargs.get("fit_start_time") is not None or kwargs.get("fit_end_time") is not None:
        kwargs.update(fit_start_time=TINY_START, fit_end_time=TINY_FIT_END)
    handler["kwargs"] = kwargs
    return handler


def warm_up(workflow: str | Path, workdir: str | Path) -> None:
    """Build ``workflow``'s handler once on a tiny synthetic provider under ``workdir`` (its kernels compiled
    and cached). Only 60min handlers are warmed up (other frequencies return at once)."""
    from qlib.utils import init_instance_by_config

    from .. import init
    from ..cli import main as cli

    handler = _handler_config(workflow)
    if str(handler["kwargs"].get("freq", "day")) not in ("60min", "1h"):
        return
    work = Path(workdir)
    store, provider = work / "store", work / "qlib"
    with contextlib.redirect_stdout(io.StringIO()):
        for argv in (
            ["collect", "--source", "synthetic", "--instruments", "6", "--timeframe", "1h", "--quiet"]
            + ["--start", TINY_START, "--end", TINY_END, "--store", str(store)],
            ["dump", "--store", str(store), "--qlib-dir", str(provider), "--timeframe", "1h"],
        ):
            if cli(argv) != 0:
                return  # nothing to warm up with; the run compiles what it needs
    init({"60min": str(provider)})
    init_instance_by_config(handler)


def main(argv: list[str] | None = None) -> int:
    """``python -c "from qlib_crypto.data.warmup import main; main()" WORKFLOW``: warm up, quietly."""
    from .._quiet import install

    install()
    args = sys.argv[1:] if argv is None else argv
    with tempfile.TemporaryDirectory(prefix="qlib_crypto_warmup_") as tmp:
        try:
            warm_up(args[0], tmp)
        except KeyboardInterrupt:
            return 130
        except Exception:  # noqa: BLE001 (a warm-up only: the run itself reports real problems)
            return 1
    return 0
