"""A quiet console: Qlib's known noise is silenced, our own warnings (``qlib_crypto.*`` loggers) are kept.

:func:`install` is called by the ``qlib-crypto`` command line (unless ``--verbose``) and when ``qrun`` imports
our workflow classes (``qlib_crypto.workflow``). Every filter is targeted at one known message or logger:

- Qlib's INFO logs (``qlib.Initialization``, ``qlib.timer``, ``qlib.workflow``, ``qlib.fill_placeholder`` with
  its "``<PRED>`` lookes like a placeholder"...; :data:`QLIB_CHATTY_LOGGERS`) and a few of its warnings that
  are normal here (:data:`NOISE_WARNINGS`: "``common_infra`` is not set", "$close field data contains nan"
  for bars missing in a 24/7 gap, "No valid experiment found" on a first run); MLflow's "Param value ... is
  truncated" when Qlib logs a workflow's task config as a parameter;
- Python warnings raised inside Qlib: ``Mean of empty slice`` and pandas' ``SettingWithCopyWarning``;
- text printed at import time: the Gym deprecation banner (``import gym``, pulled in by ``qlib.strategy``)
  and the "ModuleNotFoundError. CatBoostModel/XGBModel/PyTorch models are skipped" lines of
  ``qlib.contrib.model``: an import hook captures what these two imports print and passes on every other line;
- tqdm bars (Qlib's "backtest loop", MLflow's "Downloading artifacts") only on a terminal. tqdm 4.67 reads
  ``TQDM_DISABLE`` (``tqdm.utils.envwrap``) once, when ``tqdm.std`` is imported, and binds it as the default of
  ``tqdm.__init__``; so setting the variable later does nothing. We set that default to ``disable=None``
  (tqdm's own "off when the output is not a terminal"), at import time or at once if tqdm is already
  imported, unless the user set ``TQDM_DISABLE`` (then theirs stands).

Inside ``qrun`` the first lines (template rendering, the ``ModuleNotFoundError`` prints when the model class
is built before any of our classes) come before this module can act; the workflow YAMLs set Qlib's own
``logging_level: WARNING`` in ``qlib_init`` for what follows ``qlib.init``. ``qlib-crypto demo`` runs the
workflow in-process, after :func:`install`, so it is quiet throughout.
"""

from __future__ import annotations

import functools
import importlib.abc
import io
import logging
import re
import sys
import threading
import warnings
from typing import Any

#: Qlib loggers whose INFO/DEBUG records are dropped (their WARNING and above pass, unless in NOISE_WARNINGS)
QLIB_CHATTY_LOGGERS = (
    "qlib",
    "qlib.qrun",
    "qlib.Initialization",
    "qlib.workflow",
    "qlib.timer",
    "qlib.fill_placeholder",
    "qlib.data",
    "qlib.DataHandlerLP",
    "qlib.BaseExecutor",
    "qlib.online operator",
    "qlib.backtest caller",
    "qlib.TrainerR",
    "qlib.task",
    "qlib.utils",
    "qlib.utils.file",
    "qlib.ops",
    "qlib.cache",
    "qlib.Provider",
    "qlib.storage",
    "qlib.file_storage",
    "qlib.mount nfs",
    "qlib.LGBModel",
    "qlib.Rolling",
    "qlib.RollingEnsemble",
    "qlib.RecorderCollector",
)

#: logger -> warnings that are noise here (regular expressions searched in the formatted message)
NOISE_WARNINGS: dict[str, tuple[str, ...]] = {
    "qlib.BaseExecutor": (r"`common_infra` is not set",),
    "qlib.online operator": (r"field data contains nan",),  # bars missing in gaps; our exchange handles them
    "qlib.workflow": (r"^No valid experiment found\. Create a new experiment",),
    "mlflow.utils.validation": (r"^Param value .* is truncated to \d+ characters",),
}

#: module imported -> (stream, patterns of the lines it prints that are dropped)
PRINT_NOISE: dict[str, tuple[str, tuple[str, ...]]] = {
    "gym": (
        "stderr",
        (
            r"^Gym has been unmaintained since 2022",
            r"^Please upgrade to Gymnasium",
            r"^Users of this version of Gym should be able to",
            r"^See the migration guide at https://gymnasium",
        ),
    ),
    "qlib.contrib.model": ("stdout", (r"^ModuleNotFoundError\.\s+.*skipped",)),
}

#: Python warnings raised from Qlib's modules: (message pattern, category name or None)
QLIB_PY_WARNINGS = (
    (r"Mean of empty slice", RuntimeWarning),
    (r"\s*A value is trying to be set on a copy of a slice from a DataFrame", None),  # SettingWithCopyWarning
)

_lock = threading.Lock()
_installed = False
_disabled = False  # `qlib-crypto --verbose`: everything shows, later install() calls do nothing


class NoiseFilter(logging.Filter):
    """Drops one logger's INFO/DEBUG records (``drop_info``) and its warnings matching ``patterns``."""

    def __init__(self, patterns: tuple[str, ...] = (), drop_info: bool = True) -> None:
        super().__init__()
        self.patterns = tuple(re.compile(p) for p in patterns)
        self.drop_info = drop_info

    def filter(self, record: logging.LogRecord) -> bool:
        if self.drop_info and record.levelno < logging.WARNING:
            return False
        if self.patterns:
            try:
                message = record.getMessage()
            except Exception:  # noqa: BLE001  # a broken record is not ours to judge
                return True
            return not any(p.search(message) for p in self.patterns)
        return True


def _drop_lines(text: str, patterns: tuple[str, ...]) -> str:
    compiled = [re.compile(p) for p in patterns]
    lines = text.splitlines(keepends=True)
    kept = [line for line in lines if not any(p.search(line) for p in compiled)]
    # the Gym banner ends with an empty line of its own
    return "".join(kept) if len(kept) == len(lines) else "".join(k for k in kept if k.strip())


class _ThreadCapture:
    """Stands in for ``sys.stdout``/``sys.stderr`` while one thread imports a noisy module: that thread's writes
    go to a buffer, every other thread's to the real stream. (A plain ``redirect_stdout`` is process-wide: a
    module imported in a background thread, such as the demo's preload, would capture, and could lose, what the
    main thread prints meanwhile.) After :meth:`release` everything goes to the real stream."""

    def __init__(self, stream: Any) -> None:
        self._stream, self._thread, self.buffer = stream, threading.get_ident(), io.StringIO()

    def _target(self) -> Any:
        return self.buffer if threading.get_ident() == self._thread else self._stream

    def write(self, text: str) -> int:
        return self._target().write(text)

    def writelines(self, lines: Any) -> None:
        self._target().writelines(lines)

    def flush(self) -> None:
        self._target().flush()

    def release(self) -> None:
        self._thread = None  # no thread's writes are captured any more

    def __getattr__(self, name: str) -> Any:  # encoding, isatty, fileno, buffer... of the real stream
        return getattr(self._stream, name)


class _QuietLoader(importlib.abc.Loader):
    """Runs the real loader of a noisy module with its prints captured; passes on every line that is not noise."""

    def __init__(self, loader: Any, stream: str, patterns: tuple[str, ...]) -> None:
        self._loader, self._stream, self._patterns = loader, stream, patterns

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        real = getattr(sys, self._stream)
        capture = _ThreadCapture(real)
        setattr(sys, self._stream, capture)
        try:
            self._loader.exec_module(module)
        finally:
            capture.release()
            if getattr(sys, self._stream) is capture:  # not replaced meanwhile by another thread's redirect
                setattr(sys, self._stream, real)
            rest = _drop_lines(capture.buffer.getvalue(), self._patterns)
            if rest:
                real.write(rest)

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package... of the real loader
        return getattr(self._loader, name)


class _QuietImports(importlib.abc.MetaPathFinder):
    """Finds the modules of :data:`PRINT_NOISE` with the other finders and wraps their loaders; also sets tqdm's
    default when ``tqdm.std`` is imported."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in PRINT_NOISE and fullname != "tqdm.std":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        if fullname == "tqdm.std":
            spec.loader = _AfterLoader(spec.loader, _tqdm_terminal_only)
        else:
            stream, patterns = PRINT_NOISE[fullname]
            spec.loader = _QuietLoader(spec.loader, stream, patterns)
        return spec


class _AfterLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, after: Any) -> None:
        self._loader, self._after = loader, after

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        self._after(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


def _tqdm_terminal_only(std: Any = None) -> bool:
    """tqdm bars only on a terminal: the default of ``tqdm.__init__``'s ``disable`` becomes None (tqdm: off
    when the file is not a TTY), as ``TQDM_DISABLE`` would have set it at import. Not when the user set
    ``TQDM_DISABLE`` (or another tqdm version binds no defaults). True when set."""
    std = std if std is not None else sys.modules.get("tqdm.std")
    cls = getattr(std, "tqdm", None)
    init = getattr(cls, "__dict__", {}).get("__init__")
    if not isinstance(init, functools.partialmethod) or "disable" in init.keywords:
        return False
    cls.__init__ = functools.partialmethod(init.func, *init.args, **{**init.keywords, "disable": None})
    return True


def install() -> None:
    """Install every filter (idempotent; cheap: imports nothing heavy)."""
    global _installed
    with _lock:
        if _installed or _disabled:
            return
        _installed = True
        for name in QLIB_CHATTY_LOGGERS:
            logging.getLogger(name).addFilter(NoiseFilter(NOISE_WARNINGS.get(name, ())))
        for name, patterns in NOISE_WARNINGS.items():
            if name not in QLIB_CHATTY_LOGGERS:
                logging.getLogger(name).addFilter(NoiseFilter(patterns, drop_info=False))
        for message, category in QLIB_PY_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category or Warning, module=r"qlib(\.|$)")
        if not any(isinstance(f, _QuietImports) for f in sys.meta_path):
            sys.meta_path.insert(0, _QuietImports())
        if "tqdm.std" in sys.modules:  # imported before us (qrun): its default is bound already
            _tqdm_terminal_only()


def installed() -> bool:
    return _installed


def disable() -> None:
    """Keep all of Qlib's output (``qlib-crypto --verbose``): later :func:`install` calls (such as the one
    importing ``qlib_crypto.workflow`` makes) do nothing. Filters already installed stay."""
    global _disabled
    _disabled = True


__all__ = ["NOISE_WARNINGS", "PRINT_NOISE", "QLIB_CHATTY_LOGGERS", "NoiseFilter", "disable", "install", "installed"]
