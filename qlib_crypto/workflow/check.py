"""Check a ``qrun`` workflow YAML before any work: ``qlib-crypto check WORKFLOW.yaml``.

What is checked, without training or loading features (a few seconds, most of it importing the classes):

- the file parses (a YAML syntax error names the file, the line and the column);
- ``qlib_init``: its keys are known to ``qlib.init``; every provider directory (``provider_uri``, a path or a
  dict frequency -> path; relative paths resolve against the current directory, as in ``qrun``) exists
  and has the calendar of its frequency, and every frequency the workflow uses has a directory;
- every ``class``/``module_path`` resolves (Qlib's own resolver, ``qlib.utils.get_callable_kwargs``), and
  every ``kwargs`` key is an argument of its class: the constructor's signature, followed through
  ``**kwargs`` handed to ``super().__init__`` (or to another method or class), so a typo such as
  ``slipage_bps`` or ``label_nrom`` is caught with a "did you mean"; a class that consumes any keyword
  (``LGBModel`` passes unknown ones to LightGBM) accepts everything;
- the ``config`` of a backtest record (``strategy``, ``executor``, ``backtest`` and its ``exchange``);
- the handler's times, the dataset segments and the backtest dates lie inside the calendar (segments also
  inside the handler's range, start <= end), the market file and the backtest benchmark exist.

:func:`check_workflow` returns a :class:`CheckReport`; each :class:`Problem` prints as one line
``FILE:LINE: YAML.PATH: message``. The YAML path is where the key is written in the file (for a key
reached through an alias such as ``*port_analysis_config``, the anchor's definition).
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import inspect
import io
import os
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from ..errors import ConfigError

RECORD_MODULE = "qlib.workflow.record_temp"
TASK_KEYS = ("model", "dataset", "record", "reweighter")
#: ``config.backtest`` keys of Qlib's ``PortAnaRecord`` (``qlib.backtest.backtest`` minus strategy/executor)
PORT_ANA_BACKTEST_KEYS = ("start_time", "end_time", "benchmark", "account", "exchange_kwargs", "pos_type")
#: ``config.backtest`` keys of ``CryptoBacktestRecord``
CRYPTO_BACKTEST_KEYS = ("start_time", "end_time", "account", "benchmark", "exchange", "exchange_kwargs")
RECORD_CONFIG_KEYS = ("strategy", "executor", "backtest")
#: arguments ``qlib.init`` pops itself before ``C.set``
QLIB_INIT_EXTRA = ("default_conf", "clear_mem_cache", "skip_if_reg")


# ------------------------------------------------------------------------------------------------------
# problems and the report
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """One problem: ``path`` is the YAML path of the key (``task.model.kwargs.num_leaves``; empty for the
    file), ``line`` its 1-based line in the file when known."""

    path: str
    message: str
    line: int | None = None

    def format(self, file: str) -> str:
        where = f"{file}:{self.line}" if self.line else file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


@dataclass
class CheckReport:
    """What :func:`check_workflow` found. ``ok`` when there is no problem."""

    file: str
    problems: list[Problem] = field(default_factory=list)
    classes: int = 0
    kwargs_checked: int = 0
    dates_checked: int = 0
    freqs: dict[str, str] = field(default_factory=dict)  # freq -> provider directory (resolved)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        return [p.format(self.file) for p in self.problems]

    def summary(self) -> str:
        provs = ", ".join(f"{f}={d}" for f, d in sorted(self.freqs.items()))
        return (
            f"{self.file}: ok ({self.classes} classes resolved, {self.kwargs_checked} arguments checked, "
            f"{self.dates_checked} dates inside the calendar; provider {provs or '-'})"
        )


# ------------------------------------------------------------------------------------------------------
# YAML paths and lines
# ------------------------------------------------------------------------------------------------------
def _fmt_path(keys: Iterable[Any]) -> str:
    out = ""
    for k in keys:
        if isinstance(k, int):
            out += f"[{k}]"
        else:
            out += ("." if out else "") + str(k)
    return out


class _Locator:
    """Maps objects and key paths of the loaded config to the YAML path where they are written and its line."""

    def __init__(self, data: Any, rt: Any) -> None:
        self.rt = rt
        self.where: dict[int, tuple] = {}  # id(container) -> first key path (document order)
        self._index(data, ())

    def _index(self, node: Any, path: tuple) -> None:
        if isinstance(node, (dict, list)):
            if id(node) in self.where:
                return
            self.where[id(node)] = path
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for k, v in items:
                self._index(v, path + (k,))

    def written(self, container: Any, key: Any, fallback: tuple) -> tuple:
        base = self.where.get(id(container))
        return (base if base is not None else fallback) + (key,)

    def line(self, path: tuple) -> int | None:
        node = self.rt
        try:
            for i, k in enumerate(path):
                if i == len(path) - 1:
                    lc = node.lc
                    pos = lc.key(k) if isinstance(k, str) else lc.item(k)
                    return int(pos[0]) + 1
                node = node[k]
        except Exception:  # merged keys, base configs, plain dicts: no line
            return None
        return None


# ------------------------------------------------------------------------------------------------------
# keyword arguments a callable accepts
# ------------------------------------------------------------------------------------------------------
_KW_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
_KEY_METHODS = ("get", "pop", "setdefault")


def _defining_class(cls: type, name: str, after: type | None = None) -> type | None:
    mro = cls.__mro__
    start = mro.index(after) + 1 if after is not None and after in mro else 0
    for klass in mro[start:]:
        if name in vars(klass):
            return klass
    return None


def _func_ast(func: Any) -> ast.FunctionDef | None:
    try:
        src = textwrap.dedent(inspect.getsource(func))
        tree = ast.parse(src)
    except (OSError, TypeError, SyntaxError, IndentationError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == func.__name__:
            return node
    return None


class _KwargsAnalyzer:
    """``accepted(target)``: the keyword names ``target`` (a class or function) uses, or ``None`` when it
    accepts any keyword (its ``**kwargs`` go somewhere this analysis cannot follow)."""

    MAX_DEPTH = 10

    def __init__(self) -> None:
        self._cache: dict[Any, frozenset[str] | None] = {}

    def accepted(self, target: Any) -> frozenset[str] | None:
        key = target
        if key not in self._cache:
            self._cache[key] = None  # recursion guard: open while being computed
            try:
                self._cache[key] = self._target(target, 0)
            except Exception:  # anything unexpected: do not claim an argument is unknown
                self._cache[key] = None
        return self._cache[key]

    # a class: its __init__; a function: itself
    def _target(self, target: Any, depth: int) -> frozenset[str] | None:
        if isinstance(target, type):
            owner = _defining_class(target, "__init__")
            if owner is None or owner is object:
                return frozenset()
            return self._function(target, owner, vars(owner)["__init__"], depth, skip=(), n_pos=0)
        if callable(target):
            return self._function(None, None, target, depth, skip=(), n_pos=0)
        return None

    def _function(
        self, cls: type | None, owner: type | None, func: Any, depth: int, skip: Iterable[str], n_pos: int
    ) -> frozenset[str] | None:
        """Keywords ``func`` accepts; ``skip``: keywords its caller passes itself; ``n_pos``: positional
        arguments its caller passes (bound to the first parameters)."""
        if depth > self.MAX_DEPTH:
            return None
        if isinstance(func, (staticmethod, classmethod)):
            func = func.__func__
        func = inspect.unwrap(func)
        if not (inspect.isfunction(func) or inspect.ismethod(func)):
            try:
                sig = inspect.signature(func)
            except (TypeError, ValueError):
                return None
            if any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
                return None
            return frozenset(p.name for p in sig.parameters.values() if p.kind in _KW_KINDS)
        sig = inspect.signature(func)
        params = list(sig.parameters.values())
        if cls is not None and params and params[0].kind == params[0].POSITIONAL_OR_KEYWORD:
            params = params[1:]  # self
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        bound = {p.name for p in positional[:n_pos]} | set(skip)
        names = {p.name for p in params if p.kind in _KW_KINDS} - bound
        var = next((p.name for p in params if p.kind == p.VAR_KEYWORD), None)
        if var is None:
            return frozenset(names)
        extra = self._flow(cls, owner, func, var, depth)
        return None if extra is None else frozenset(names | extra)

    def _flow(self, cls: type | None, owner: type | None, func: Any, var: str, depth: int) -> set[str] | None:
        """Keys read from the dict ``var`` inside ``func``, following it into the calls it is handed to."""
        node = _func_ast(func)
        if node is None:
            return None
        parents: dict[int, ast.AST] = {}
        for parent in ast.walk(node):
            for child in ast.iter_child_nodes(parent):
                parents[id(child)] = parent
        loop_keys = _loop_constants(node)

        def key_of(expr: ast.AST) -> set[str] | None:
            """The string keys an index expression can take: a constant, or a loop variable over constants."""
            if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
                return {expr.value}
            if isinstance(expr, ast.Name) and expr.id in loop_keys:
                return set(loop_keys[expr.id])
            return None

        keys: set[str] = set()
        for name in ast.walk(node):
            if not (isinstance(name, ast.Name) and name.id == var and isinstance(name.ctx, ast.Load)):
                continue
            parent = parents.get(id(name))
            if isinstance(parent, ast.keyword):  # f(**var) or f(name=var)
                call = parents.get(id(parent))
                if not isinstance(call, ast.Call):
                    return None
                got = self._call(cls, owner, func, call, parent.arg, depth)
                if got is None:
                    return None
                keys |= got
            elif isinstance(parent, ast.Attribute) and parent.attr in _KEY_METHODS:
                call = parents.get(id(parent))
                got = key_of(call.args[0]) if isinstance(call, ast.Call) and call.args else None
                if got is None:
                    return None
                keys |= got
            elif isinstance(parent, ast.Subscript) and parent.value is name:
                if isinstance(parent.ctx, (ast.Store, ast.Del)):
                    continue  # writing a key reads none of the caller's
                got = key_of(parent.slice)
                if got is None:
                    return None
                keys |= got
            elif isinstance(parent, ast.Compare) and parent.comparators and parent.comparators[-1] is name:
                got = key_of(parent.left)
                if got is None:
                    return None
                keys |= got
            elif isinstance(parent, (ast.If, ast.BoolOp, ast.UnaryOp, ast.IfExp, ast.FormattedValue)):
                continue  # truth tests and messages read no key
            elif isinstance(parent, ast.Call) and isinstance(parent.func, ast.Name) and parent.func.id == "len":
                continue
            else:  # stored, passed positionally, iterated...: any key may be used
                return None
        return keys

    def _call(
        self, cls: type | None, owner: type | None, func: Any, call: ast.Call, as_name: str | None, depth: int
    ) -> set[str] | None:
        """Keys accepted by the callee of ``call`` for the dict passed as ``**var`` (``as_name`` None) or as
        the argument ``as_name``."""
        explicit = [kw.arg for kw in call.keywords if kw.arg is not None]
        n_pos = len(call.args)
        f = call.func
        target_cls, target_owner, target = None, None, None
        if isinstance(f, ast.Attribute):
            base = f.value
            if (
                isinstance(base, ast.Call)
                and isinstance(base.func, ast.Name)
                and base.func.id == "super"
                and cls is not None
                and owner is not None
            ):
                target_owner = _defining_class(cls, f.attr, after=owner)
                target_cls = cls
            elif isinstance(base, ast.Name) and base.id in ("self", "cls") and cls is not None:
                target_owner = _defining_class(cls, f.attr)
                target_cls = cls
            elif isinstance(base, ast.Name) and f.attr == "__init__":  # Base.__init__(self, ...)
                klass = getattr(func, "__globals__", {}).get(base.id)
                if isinstance(klass, type):
                    target_owner = _defining_class(klass, "__init__")
                    target_cls = cls if cls is not None and issubclass(cls, klass) else klass
                    n_pos = max(0, n_pos - 1)
            if target_owner is None or target_owner is object:
                return set() if target_owner is object and as_name is None else None
            target = vars(target_owner)[f.attr]
        elif isinstance(f, ast.Name):
            obj = getattr(func, "__globals__", {}).get(f.id)
            if isinstance(obj, type):
                target_owner = _defining_class(obj, "__init__")
                if target_owner is None or target_owner is object:
                    return set()
                target_cls, target = obj, vars(target_owner)["__init__"]
            elif callable(obj):
                target = obj
            else:
                return None
        else:
            return None
        if as_name is None:  # **var
            got = self._function(target_cls, target_owner, target, depth + 1, skip=explicit, n_pos=n_pos)
            return None if got is None else set(got)
        # var handed over as a named argument: follow that parameter inside the callee
        if isinstance(target, (staticmethod, classmethod)):
            target = target.__func__
        target = inspect.unwrap(target)
        if not inspect.isfunction(target):
            return None
        return self._flow(target_cls, target_owner, target, as_name, depth + 1)


def _loop_constants(func: ast.AST) -> dict[str, tuple[str, ...]]:
    """Names bound by ``for`` loops over literal tuples/lists of strings (or of tuples starting with
    strings), e.g. ``for key, forced in (("trade_unit", None), ...)`` gives ``{"key": ("trade_unit", ...)}``."""
    out: dict[str, tuple[str, ...]] = {}
    for loop in ast.walk(func):
        if not (isinstance(loop, ast.For) and isinstance(loop.iter, (ast.Tuple, ast.List))):
            continue
        target = loop.target
        names = [target] if isinstance(target, ast.Name) else list(getattr(target, "elts", []))
        for pos, t in enumerate(names):
            if not isinstance(t, ast.Name):
                continue
            values = []
            for item in loop.iter.elts:
                elt = (
                    item
                    if isinstance(target, ast.Name)
                    else (item.elts[pos] if isinstance(item, (ast.Tuple, ast.List)) and len(item.elts) > pos else None)
                )
                if isinstance(elt, ast.Constant) and isinstance(elt.value, str):
                    values.append(elt.value)
                else:
                    values = None
                    break
            if values:
                out[t.id] = tuple(values)
    return out


def suggest(key: str, known: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the closest known name, or the list of known names when short."""
    known = sorted(set(known))
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]}?)"
    if 0 < len(known) <= 12:
        return f" (known: {', '.join(known)})"
    return ""


# ------------------------------------------------------------------------------------------------------
# provider directories and calendars
# ------------------------------------------------------------------------------------------------------
def _norm_freq(freq: Any) -> str:
    from ..data.features import normalize_freq

    return normalize_freq(str(freq))


def _read_calendar(path: Path) -> pd.DatetimeIndex:
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    return pd.DatetimeIndex(pd.to_datetime(lines))


def _read_instruments(path: Path) -> dict[str, tuple[pd.Timestamp, pd.Timestamp]]:
    out: dict[str, tuple[pd.Timestamp, pd.Timestamp]] = {}
    for ln in path.read_text().splitlines():
        parts = ln.strip().split("\t")
        if len(parts) >= 3:
            out[parts[0].upper()] = (pd.Timestamp(parts[1]), pd.Timestamp(parts[2]))
        elif parts and parts[0]:
            out[parts[0].upper()] = (pd.Timestamp.min, pd.Timestamp.max)
    return out


def _short_time(ts: pd.Timestamp) -> str:
    return ts.strftime("%Y-%m-%d") if ts == ts.normalize() else ts.strftime("%Y-%m-%d %H:%M")


def _as_time(value: Any) -> pd.Timestamp | None:
    if value is None:
        return None
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        return None
    if ts is pd.NaT:
        return None
    return ts.tz_convert(None) if ts.tzinfo is not None else ts


@contextlib.contextmanager
def _quiet_imports():
    """Qlib's optional-model and Gym banners go to a buffer while classes are imported."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        yield


# ------------------------------------------------------------------------------------------------------
# the checker
# ------------------------------------------------------------------------------------------------------
class _Checker:
    def __init__(self, data: dict, rt: Any, file: str, cwd: Path, yaml_dir: Path) -> None:
        self.data = data
        self.loc = _Locator(data, rt)
        self.report = CheckReport(file=file)
        self.cwd = cwd
        self.yaml_dir = yaml_dir
        self.kw = _KwargsAnalyzer()
        self.calendars: dict[str, pd.DatetimeIndex] = {}
        self.instruments: dict[str, dict[str, tuple[pd.Timestamp, pd.Timestamp]]] = {}
        self.provider_dirs: dict[str, Path] = {}
        self.single_dir: Path | None = None  # provider_uri given as one path
        self.provider_ok = True

    # -- reporting ---------------------------------------------------------------------------------
    def add(self, container: Any, key: Any, fallback: tuple, message: str) -> None:
        path = self.loc.written(container, key, fallback) if container is not None else fallback
        self.report.problems.append(Problem(_fmt_path(path), message, self.loc.line(path)))

    # -- qlib_init -----------------------------------------------------------------------------------
    def check_qlib_init(self) -> None:
        init = self.data.get("qlib_init")
        if not isinstance(init, dict):
            self.add(self.data, "qlib_init", (), "missing: qrun needs a qlib_init mapping with provider_uri")
            self.provider_ok = False
            return
        from qlib.config import MODE_CONF, _default_config, _default_region_config

        known = set(_default_config) | set(QLIB_INIT_EXTRA)
        for conf in list(MODE_CONF.values()) + list(_default_region_config.values()):
            known |= set(conf)
        for key in init:
            if key not in known:
                self.add(init, key, ("qlib_init",), f"unknown qlib.init setting{suggest(str(key), known)}")
        if "exp_manager" in init:
            self.check_class(init["exp_manager"], init, "exp_manager", ("qlib_init",))
        self.check_provider(init)

    def _resolve_dir(self, raw: Any) -> Path:
        p = Path(os.path.expanduser(str(raw)))
        return p if p.is_absolute() else self.cwd / p

    def _missing_dir_message(self, raw: str, resolved: Path) -> str:
        msg = f"provider directory {raw!r} not found"
        if not Path(os.path.expanduser(raw)).is_absolute():
            msg += f" (relative paths resolve against the current directory {str(self.cwd)!r}: {str(resolved)!r})"
            for base in (self.yaml_dir, *self.yaml_dir.parents):
                if (base / raw).is_dir():
                    return msg + f"; it exists under {str(base)!r}: run qrun from there, or write an absolute path"
            return msg + "; run from the directory the workflow's paths are written for, or write an absolute path"
        return msg + "; build it with qlib-crypto dump (or qlib-crypto demo for the shipped workflows)"

    def check_provider(self, init: dict) -> None:
        uri = init.get("provider_uri")
        if uri is None:
            self.add(
                init,
                "provider_uri",
                ("qlib_init",),
                "missing: without it Qlib reads ~/.qlib/qlib_data/cn_data; give the provider directory "
                "(or a dict frequency -> directory)",
            )
            self.provider_ok = False
            return
        entries = uri.items() if isinstance(uri, dict) else [(None, uri)]
        for freq, raw in entries:
            key_path_container = uri if isinstance(uri, dict) else init
            key = freq if isinstance(uri, dict) else "provider_uri"
            if not isinstance(raw, (str, os.PathLike)):
                self.add(key_path_container, key, ("qlib_init", "provider_uri"), f"{raw!r} is not a path")
                self.provider_ok = False
                continue
            resolved = self._resolve_dir(raw)
            if not resolved.is_dir():
                self.add(
                    key_path_container,
                    key,
                    ("qlib_init", "provider_uri"),
                    self._missing_dir_message(str(raw), resolved),
                )
                self.provider_ok = False
                continue
            cal_dir = resolved / "calendars"
            if freq is None:
                self.single_dir = resolved
                freqs = sorted(p.stem for p in cal_dir.glob("*.txt") if not p.stem.endswith("_future"))
                if not freqs:
                    self.add(
                        init,
                        "provider_uri",
                        ("qlib_init",),
                        f"{str(resolved)!r} has no calendars/<freq>.txt: not a Qlib provider directory "
                        "(build one with qlib-crypto dump)",
                    )
                    self.provider_ok = False
                for f in freqs:
                    self.provider_dirs[f] = resolved
            else:
                f = str(freq)
                if not (cal_dir / f"{f}.txt").is_file():
                    have = sorted(p.stem for p in cal_dir.glob("*.txt") if not p.stem.endswith("_future"))
                    self.add(
                        uri,
                        freq,
                        ("qlib_init", "provider_uri"),
                        f"{str(resolved)!r} has no calendar for frequency {f} (calendars/{f}.txt; "
                        f"it has: {', '.join(have) or 'none'}); point {f} at the directory dumped with "
                        f"that frequency",
                    )
                    self.provider_ok = False
                    continue
                self.provider_dirs[f] = resolved
        self.report.freqs = {f: str(d) for f, d in self.provider_dirs.items()}

    def calendar(self, freq: str) -> pd.DatetimeIndex | None:
        if freq not in self.calendars:
            d = self.provider_dirs.get(freq)
            path = d / "calendars" / f"{freq}.txt" if d is not None else None
            if path is None or not path.is_file():
                return None
            try:
                self.calendars[freq] = _read_calendar(path)
            except (ValueError, OSError):
                return None
        return self.calendars[freq]

    def instrument_spans(self, freq: str, market: str = "all") -> dict | None:
        key = f"{freq}/{market}"
        if key not in self.instruments:
            d = self.provider_dirs.get(freq)
            path = d / "instruments" / f"{market.lower()}.txt" if d is not None else None
            if path is None or not path.is_file():
                return None
            self.instruments[key] = _read_instruments(path)
        return self.instruments[key]

    def need_freq(self, freq: Any, container: Any, key: Any, fallback: tuple, what: str) -> str | None:
        """The frequency, when the provider has it; else a problem."""
        try:
            f = _norm_freq(freq)
        except Exception:
            f = str(freq)
        if not self.provider_ok and f not in self.provider_dirs:
            return None  # the provider problem is already reported
        if f in self.provider_dirs:
            return f
        have = ", ".join(sorted(self.provider_dirs)) or "none"
        self.add(
            container,
            key,
            fallback,
            f"{what} frequency {f!r} has no provider directory (qlib_init.provider_uri provides: {have}); "
            f"add '{f}: <directory dumped at {f}>' to provider_uri",
        )
        return None

    # -- dates -----------------------------------------------------------------------------------------
    def check_time(
        self, value: Any, container: Any, key: Any, fallback: tuple, freq: str | None, what: str
    ) -> pd.Timestamp | None:
        if value is None:
            return None
        ts = _as_time(value)
        if ts is None:
            self.add(
                container,
                key,
                fallback,
                f"{what} {value!r} is not a date; write e.g. 2024-04-01 or '2024-04-01 05:00:00'",
            )
            return None
        cal = self.calendar(freq) if freq else None
        if cal is not None and len(cal):
            self.report.dates_checked += 1
            if ts < cal[0] or ts > cal[-1]:
                self.add(
                    container,
                    key,
                    fallback,
                    f"{what} {_short_time(ts)} is outside the {freq} calendar "
                    f"({_short_time(cal[0])} .. {_short_time(cal[-1])}); move it inside, or extend the "
                    f"provider with qlib-crypto dump --update",
                )
        return ts

    def check_range(
        self,
        pair: Any,
        container: Any,
        key: Any,
        fallback: tuple,
        freq: str | None,
        what: str,
        within: tuple[pd.Timestamp | None, pd.Timestamp | None] | None = None,
    ) -> None:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            self.add(container, key, fallback, f"{what} must be [start, end], got {pair!r}")
            return
        before = len(self.report.problems)
        start = self.check_time(pair[0], pair, 0, fallback + (key,), freq, f"{what} start")
        end = self.check_time(pair[1], pair, 1, fallback + (key,), freq, f"{what} end")
        if start is not None and end is not None and start > end:
            self.add(
                container, key, fallback, f"{what} starts after it ends ({_short_time(start)} > {_short_time(end)})"
            )
        elif within is not None and len(self.report.problems) == before:
            lo, hi = within
            if (lo is not None and start is not None and start < lo) or (
                hi is not None and end is not None and end > hi
            ):
                self.add(
                    container,
                    key,
                    fallback,
                    f"{what} {_short_time(start) if start is not None else '..'} .. "
                    f"{_short_time(end) if end is not None else '..'} is not inside the handler's "
                    f"start_time .. end_time ({_short_time(lo) if lo is not None else '..'} .. "
                    f"{_short_time(hi) if hi is not None else '..'}); widen the handler's range",
                )

    # -- classes -------------------------------------------------------------------------------------
    def resolve(self, conf: dict, container: Any, key: Any, fallback: tuple, default_module: str | None = None) -> Any:
        from qlib.utils import get_callable_kwargs

        where = self.loc.written(container, key, fallback)
        name = conf.get("class", conf.get("func"))
        label = "class" if "class" in conf else "func"
        if not isinstance(name, str):
            self.add(conf, label, where, f"{name!r} is not a class name")
            return None
        module = conf.get("module_path", default_module)
        if "." not in name and module is None:
            self.add(conf, label, where, f"{name}: no module_path; add module_path: <python module of {name}>")
            return None
        try:
            with _quiet_imports():
                obj, _ = get_callable_kwargs(conf, default_module=default_module)
        except ModuleNotFoundError as exc:
            self.add(
                conf,
                "module_path" if "module_path" in conf else label,
                where,
                f"module {exc.name or module!r} not found (for {name}); check the spelling, or install it",
            )
            return None
        except AttributeError:
            import importlib

            mod_name = name.rpartition(".")[0] or module
            try:
                with _quiet_imports():
                    mod = importlib.import_module(str(mod_name))
                names = [n for n in dir(mod) if not n.startswith("_")]
            except Exception:
                names = []
            self.add(
                conf,
                label,
                where,
                f"{name.rpartition('.')[2]!r} not found in module {mod_name!r}"
                f"{suggest(name.rpartition('.')[2], names) if names else ''}",
            )
            return None
        except Exception as exc:  # the module raised while importing
            self.add(
                conf,
                "module_path" if "module_path" in conf else label,
                where,
                f"importing {module or name!r} failed: {type(exc).__name__}: {exc}",
            )
            return None
        self.report.classes += 1
        return obj

    def check_kwargs(self, obj: Any, kwargs: Any, conf: dict, where: tuple, skip: Iterable[str] = ()) -> None:
        if kwargs is None:
            return
        if not isinstance(kwargs, dict):
            self.add(conf, "kwargs", where, f"kwargs must be a mapping, got {type(kwargs).__name__}")
            return
        known = self.kw.accepted(obj)
        name = getattr(obj, "__name__", str(obj))
        for key in kwargs:
            if key in skip:
                continue
            self.report.kwargs_checked += 1
            if known is not None and key not in known:
                self.add(kwargs, key, where + ("kwargs",), f"unknown argument of {name}{suggest(str(key), known)}")

    def check_class(
        self,
        conf: Any,
        container: Any,
        key: Any,
        fallback: tuple,
        default_module: str | None = None,
        nested: bool = True,
    ) -> Any:
        """Resolve a ``{class, module_path, kwargs}`` block and check its kwargs (and nested blocks)."""
        where = self.loc.written(container, key, fallback)
        if isinstance(conf, str) or not isinstance(conf, dict):
            return None  # an instance, a placeholder or a plain string: Qlib accepts them as they are
        if "class" not in conf and "func" not in conf:
            self.add(container, key, fallback, "a class block needs class: (and module_path:)")
            return None
        for extra in conf:
            if extra not in ("class", "func", "module_path", "kwargs", "model_path"):
                self.add(
                    conf,
                    extra,
                    where,
                    f"unknown key of a class block{suggest(str(extra), ('class', 'module_path', 'kwargs'))}",
                )
        obj = self.resolve(conf, container, key, fallback, default_module)
        if obj is None:
            return None
        kwargs = conf.get("kwargs")
        self.check_kwargs(obj, kwargs, conf, where)
        if nested and isinstance(kwargs, dict):
            for k, v in kwargs.items():
                self.check_nested(v, kwargs, k, where + ("kwargs",))
        return obj

    def check_nested(self, value: Any, container: Any, key: Any, fallback: tuple) -> None:
        if isinstance(value, dict) and ("class" in value) and isinstance(value.get("class"), str):
            self.check_class(value, container, key, fallback)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                self.check_nested(item, value, i, self.loc.written(container, key, fallback))

    # -- task --------------------------------------------------------------------------------------------
    def check_task(self) -> None:
        task = self.data.get("task")
        if not isinstance(task, dict):
            self.add(self.data, "task", (), "missing: qrun needs task: with model: and dataset:")
            return
        for key in task:
            if key not in TASK_KEYS:
                self.add(task, key, ("task",), f"unknown task key{suggest(str(key), TASK_KEYS)}")
        for key in ("model", "dataset"):
            if key not in task:
                self.add(self.data, "task", (), f"task has no {key}:")
        if "model" in task:
            self.check_class(task["model"], task, "model", ("task",))
        handler_range: tuple[pd.Timestamp | None, pd.Timestamp | None] | None = None
        handler_freq = None
        dataset = task.get("dataset")
        if isinstance(dataset, dict):
            self.check_class(dataset, task, "dataset", ("task",), nested=False)
            dkw = dataset.get("kwargs") if isinstance(dataset.get("kwargs"), dict) else {}
            dwhere = self.loc.written(task, "dataset", ("task",)) + ("kwargs",)
            handler = dkw.get("handler")
            if isinstance(handler, dict):
                self.check_class(handler, dkw, "handler", dwhere)
                handler_freq, handler_range = self.check_handler(handler, dkw, dwhere)
            for k, v in dkw.items():
                if k != "handler":
                    self.check_nested(v, dkw, k, dwhere)
            segments = dkw.get("segments")
            if isinstance(segments, dict):
                for name, pair in segments.items():
                    self.check_range(
                        pair,
                        segments,
                        name,
                        dwhere + ("segments",),
                        handler_freq,
                        f"segment {name}",
                        within=handler_range,
                    )
        records = task.get("record", [])
        records = [records] if isinstance(records, dict) else records
        container = task.get("record") if isinstance(task.get("record"), list) else task
        for i, rec in enumerate(records or []):
            ckey = i if container is not task else "record"
            cls = self.check_class(
                rec,
                container,
                ckey,
                ("task", "record") if container is not task else ("task",),
                default_module=RECORD_MODULE,
                nested=False,
            )
            if cls is not None and isinstance(rec, dict):
                self.check_record(cls, rec, self.loc.written(container, ckey, ("task", "record")), handler_freq)

    def check_handler(self, handler: dict, container: Any, fallback: tuple) -> tuple[str | None, Any]:
        kwargs = handler.get("kwargs") if isinstance(handler.get("kwargs"), dict) else {}
        where = self.loc.written(container, "handler", fallback) + ("kwargs",)
        freq = None
        raw_freq = kwargs.get("freq", "day")
        if self.provider_ok or self.provider_dirs:
            freq = self.need_freq(
                raw_freq,
                kwargs if "freq" in kwargs else None,
                "freq",
                where if "freq" in kwargs else self.loc.written(container, "handler", fallback),
                "the handler's",
            )
        times = {}
        for key in ("start_time", "end_time", "fit_start_time", "fit_end_time"):
            if key in kwargs:
                times[key] = self.check_time(kwargs[key], kwargs, key, where, freq, key)
        for a, b in (("start_time", "end_time"), ("fit_start_time", "fit_end_time")):
            if times.get(a) is not None and times.get(b) is not None and times[a] > times[b]:
                self.add(kwargs, a, where, f"{a} {_short_time(times[a])} is after {b} {_short_time(times[b])}")
        market = kwargs.get("instruments")
        if isinstance(market, str) and freq is not None and self.instrument_spans(freq, market) is None:
            d = self.provider_dirs[freq]
            have = sorted(p.stem for p in (d / "instruments").glob("*.txt"))
            self.add(
                kwargs,
                "instruments",
                where,
                f"market {market!r} has no instruments/{market.lower()}.txt in {str(d)!r} "
                f"(it has: {', '.join(have) or 'none'})",
            )
        return freq, (times.get("start_time"), times.get("end_time"))

    def check_record(self, cls: type, rec: dict, where: tuple, handler_freq: str | None) -> None:
        kwargs = rec.get("kwargs")
        if not isinstance(kwargs, dict):
            return
        kwhere = where + ("kwargs",)
        for k, v in kwargs.items():
            if k != "config":
                self.check_nested(v, kwargs, k, kwhere)
        config = kwargs.get("config")
        if not isinstance(config, dict):
            return
        from qlib.workflow.record_temp import PortAnaRecord

        from .backtest_record import CryptoBacktestRecord

        crypto = issubclass(cls, CryptoBacktestRecord)
        if not (crypto or issubclass(cls, PortAnaRecord)):
            self.check_nested(config, kwargs, "config", kwhere)
            return
        cwhere = self.loc.written(kwargs, "config", kwhere)
        for key in config:
            if key not in RECORD_CONFIG_KEYS:
                self.add(
                    config,
                    key,
                    cwhere,
                    f"unknown key of {cls.__name__}'s config{suggest(str(key), RECORD_CONFIG_KEYS)}",
                )
        if "strategy" in config:
            self.check_class(config["strategy"], config, "strategy", cwhere)
        executor = config.get("executor")
        exec_freq = None
        if isinstance(executor, dict):
            ewhere = self.loc.written(config, "executor", cwhere)
            if "class" in executor:
                self.check_class(executor, config, "executor", cwhere)
                ekw = executor.get("kwargs") if isinstance(executor.get("kwargs"), dict) else {}
            else:
                from ..backtest import CryptoExecutor

                ekw = executor  # CryptoBacktestRecord: plain CryptoExecutor kwargs
                self._check_plain_kwargs(CryptoExecutor, executor, config, "executor", cwhere)
            if "time_per_step" in ekw:
                exec_freq = self.need_freq(
                    ekw["time_per_step"],
                    ekw,
                    "time_per_step",
                    ewhere + (("kwargs",) if "class" in executor else ()),
                    "the executor's",
                )
        freq = exec_freq
        if freq is None and crypto:
            raw = kwargs.get("freq", "60min")
            freq = self.need_freq(
                raw,
                kwargs if "freq" in kwargs else None,
                "freq",
                kwhere if "freq" in kwargs else where,
                f"{cls.__name__}'s",
            )
        freq = freq or handler_freq
        backtest = config.get("backtest")
        if not isinstance(backtest, dict):
            return
        bwhere = self.loc.written(config, "backtest", cwhere)
        allowed = CRYPTO_BACKTEST_KEYS if crypto else PORT_ANA_BACKTEST_KEYS
        for key in backtest:
            if key not in allowed:
                self.add(
                    backtest, key, bwhere, f"unknown backtest setting of {cls.__name__}{suggest(str(key), allowed)}"
                )
        start = self.check_time(backtest.get("start_time"), backtest, "start_time", bwhere, freq, "backtest start_time")
        end = self.check_time(backtest.get("end_time"), backtest, "end_time", bwhere, freq, "backtest end_time")
        if start is not None and end is not None and start > end:
            self.add(
                backtest,
                "start_time",
                bwhere,
                f"backtest start_time {_short_time(start)} is after end_time {_short_time(end)}",
            )
        bench = backtest.get("benchmark")
        if isinstance(bench, str) and freq is not None:
            spans = self.instrument_spans(freq)
            if spans is not None and bench.upper() not in spans:
                self.add(
                    backtest,
                    "benchmark",
                    bwhere,
                    f"benchmark {bench!r} is not an instrument of the {freq} provider "
                    f"({str(self.provider_dirs[freq])!r}, instruments/all.txt){suggest(bench.upper(), spans)}",
                )
        for key in ("exchange", "exchange_kwargs"):
            ex = backtest.get(key)
            if not isinstance(ex, dict):
                continue
            if "class" in ex:
                self.check_class(ex, backtest, key, bwhere)
                exkw = ex.get("kwargs") if isinstance(ex.get("kwargs"), dict) else {}
                exwhere = self.loc.written(backtest, key, bwhere) + ("kwargs",)
            elif crypto:
                from ..backtest import CryptoExchange

                self._check_plain_kwargs(CryptoExchange, ex, backtest, key, bwhere)
                exkw, exwhere = ex, self.loc.written(backtest, key, bwhere)
            else:
                from qlib.backtest import get_exchange

                self._check_plain_kwargs(get_exchange, ex, backtest, key, bwhere)
                exkw, exwhere = ex, self.loc.written(backtest, key, bwhere)
            if "freq" in exkw:
                self.need_freq(exkw["freq"], exkw, "freq", exwhere, "the exchange's")

    def _check_plain_kwargs(self, obj: Any, kwargs: dict, container: Any, key: Any, fallback: tuple) -> None:
        """Check a dict of keyword arguments written directly under ``key`` (no class block)."""
        known = self.kw.accepted(obj)
        where = self.loc.written(container, key, fallback)
        name = getattr(obj, "__name__", str(obj))
        for k in kwargs:
            self.report.kwargs_checked += 1
            if known is not None and k not in known:
                self.add(kwargs, k, where, f"unknown argument of {name}{suggest(str(k), known)}")
            elif isinstance(kwargs[k], dict) and "class" in kwargs[k]:
                self.check_class(kwargs[k], kwargs, k, where)


# ------------------------------------------------------------------------------------------------------
# entry point
# ------------------------------------------------------------------------------------------------------
def _render(text: str) -> str:
    """The Jinja rendering ``qrun`` applies (variables from the environment), only when the file uses it."""
    if "{{" not in text and "{%" not in text:
        return text
    from jinja2 import Template, meta

    template = Template(text)
    variables = meta.find_undeclared_variables(template.environment.parse(text))
    return template.render({v: os.environ[v] for v in sorted(variables) if v in os.environ})


def _load(text: str, file: str) -> tuple[Any, Any, Problem | None]:
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    try:
        data = YAML(typ="safe", pure=True).load(text)
        rt = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        col = f", column {mark.column + 1}" if mark is not None else ""
        what = " ".join(str(s) for s in (exc.context, exc.problem) if s)
        return None, None, Problem("", f"YAML syntax error{col}: {what}", line)
    except YAMLError as exc:
        return None, None, Problem("", f"YAML error: {exc}")
    return data, rt, None


def check_workflow(path: str | os.PathLike, cwd: str | os.PathLike | None = None) -> CheckReport:
    """Check the ``qrun`` workflow at ``path``; relative paths inside resolve against ``cwd`` (default: the
    current directory, where ``qrun`` would run). Raises :class:`ConfigError` only when the file cannot be
    read; everything else is a :class:`Problem` of the returned report."""
    file = Path(path)
    shown = str(path)
    base = Path(cwd) if cwd is not None else Path.cwd()
    if not file.is_file():
        raise ConfigError(
            f"workflow file {shown!r} not found (from {str(base)!r})",
            hint="pass the path of a qrun YAML, e.g. workflow_configs/workflow_config_lightgbm_crypto_60min.yaml",
        )
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read workflow file {shown!r}: {exc}", hint="check the file") from exc
    report = CheckReport(file=shown)
    try:
        text = _render(text)
    except Exception as exc:  # a Jinja syntax error
        line = getattr(exc, "lineno", None)
        report.problems.append(Problem("", f"template error: {exc}", line))
        return report
    data, rt, problem = _load(text, shown)
    if problem is not None:
        report.problems.append(problem)
        return report
    if not isinstance(data, dict):
        report.problems.append(
            Problem("", f"a workflow is a mapping with qlib_init: and task:, got {type(data).__name__}")
        )
        return report
    if data.get("BASE_CONFIG_PATH"):
        from qlib.utils.data import update_config

        base_path = Path(str(data["BASE_CONFIG_PATH"]))
        found = next((p for p in (base / base_path, file.resolve().parent / base_path) if p.is_file()), None)
        if found is None:
            report.problems.append(
                Problem(
                    "BASE_CONFIG_PATH",
                    f"base config {str(base_path)!r} not found (from {str(base)!r} or next to the workflow)",
                    None,
                )
            )
            return report
        base_data, _, problem = _load(_render(found.read_text()), str(found))
        if problem is not None:
            report.problems.append(Problem("BASE_CONFIG_PATH", f"{found}: {problem.message}", problem.line))
            return report
        data = update_config(base_data, data)
    checker = _Checker(data, rt, shown, base.resolve() if cwd is None else base, file.resolve().parent)
    checker.report = report
    checker.check_qlib_init()
    checker.check_task()
    report.freqs = {f: str(d) for f, d in sorted(checker.provider_dirs.items())}
    # in file order (problems without a line, e.g. from a base config, last)
    report.problems.sort(key=lambda p: (p.line is None, p.line or 0))
    return report


def problem_lines(report: CheckReport) -> list[str]:
    """The report's problems, one line each (as ``qlib-crypto check`` prints them)."""
    return report.lines()
