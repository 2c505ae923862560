"""The fast feature engine: Qlib expressions evaluated for all instruments at once on (time x instrument) arrays.

Qlib's expression engine evaluates every expression for every instrument separately, through pandas. This
engine reads each raw field once into a ``(T, N)`` float32 array (calendar bars x instruments, NaN where an
instrument has no bar) and evaluates the same expression strings column-wise with numpy (element-wise
operators) and the numba kernels of :mod:`qlib_crypto.data.kernels` (rolling operators).

What makes the values Qlib's own, bit for bit in the cases tested (see docs/research.md):

- **Same range per expression.** Qlib loads an expression over ``[start - left, end + right]``
  (``get_extended_window_size``), so a rolling sum's running state starts there. Expressions are grouped by
  their ``(left, right)`` extension and each group is evaluated on that slice of the arrays (sub-expressions
  shared within a group are computed once).
- **Same series per instrument.** An instrument's series starts at its first bar (late listings) and has NaN
  in its gaps. Leading NaN rows leave every pandas / Qlib rolling state untouched, so padding with NaN is
  exact; the two operators whose result depends on where the series starts (``IdxMax``/``IdxMin``, whose
  window is a raw slice, and ``Ref(x, 0)``) are given each column's first row.
- **Same dtypes.** Fields are float32 as in the ``.bin`` files; element-wise operators run on numpy arrays of
  the same dtypes with the same Python operators pandas dispatches to (float32 stays float32, comparisons give
  bool); rolling operators see float64 with +-inf as NaN, as pandas prepares them; the result is cast to
  float32 as Qlib's ``ExpressionProvider`` does.
- **Same rows.** A row exists where the instrument's fields have data within the requested range and the
  instrument's universe spans; an expression whose fields end earlier is NaN there.
"""

from __future__ import annotations

import logging
import mmap
import operator
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

from .expr import ExpressionError, Node, parse

K = None  # qlib_crypto.data.kernels, imported on first use (numba is needed only by the fast engine)


def _kernels():
    global K
    if K is None:
        from . import kernels

        K = kernels
    return K


logger = logging.getLogger(__name__)

_NO_ROW = np.iinfo(np.int64).max // 4  # "first" of a field an instrument does not have

_BINARY: dict[str, Callable] = {
    # pandas dispatches np.add(series, series) & co. to the Python operators on the underlying arrays
    "Add": operator.add,
    "Sub": operator.sub,
    "Mul": operator.mul,
    "Div": operator.truediv,
    "Power": operator.pow,
    "Gt": operator.gt,
    "Ge": operator.ge,
    "Lt": operator.lt,
    "Le": operator.le,
    "Eq": operator.eq,
    "Ne": operator.ne,
    "And": operator.and_,
    "Or": operator.or_,
    "Greater": np.maximum,
    "Less": np.minimum,
}


@dataclass
class Panel:
    """Raw fields of ``instruments`` over calendar rows ``g0 .. g0 + T - 1`` (``T`` = ``length``).

    ``values[f]`` is a ``(T, N)`` float32 array (NaN where there is no bar); ``first[f]`` / ``last[f]`` are the
    calendar indices (global) of each instrument's first / last stored value of field ``f`` (``first`` is a
    huge number and ``last`` -1 when the instrument has no such field).
    """

    g0: int
    length: int
    instruments: list[str]
    values: dict[str, np.ndarray] = field(default_factory=dict)
    first: dict[str, np.ndarray] = field(default_factory=dict)
    last: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.instruments)

    def add_missing(self, name: str) -> None:
        self.values[name] = np.full((self.length, self.n), np.nan, dtype=np.float32)
        self.first[name] = np.full(self.n, _NO_ROW, dtype=np.int64)
        self.last[name] = np.full(self.n, -1, dtype=np.int64)

    def span(self, fields: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per instrument, the first and last calendar index at which any of ``fields`` has a stored value."""
        first = np.full(self.n, _NO_ROW, dtype=np.int64)
        last = np.full(self.n, -1, dtype=np.int64)
        for f in fields:
            first = np.minimum(first, self.first[f])
            last = np.maximum(last, self.last[f])
        return first, last


def extended_range(nodes: Sequence[Node], start_index: int, end_index: int, cal_len: int) -> tuple[int, int]:
    """Calendar rows the expressions read: ``[start - max left, end + max right]`` clipped to the calendar."""
    lft = max((n.extended_window()[0] for n in nodes), default=0)
    rgt = max((n.extended_window()[1] for n in nodes), default=0)
    return max(0, start_index - lft), min(cal_len - 1, end_index + rgt)


def _deps(node: Node) -> list[Node]:
    """The nodes ``node`` evaluates: its children plus the rolling stds Qlib's Rsquare / Corr compute to mask
    constant windows (shared with any ``Std`` of the same input and window)."""
    kids = node.children()
    if node.op == "Rsquare":
        return kids + [Node("Std", (kids[0],), node.params)]
    if node.op == "Corr":
        return kids + [Node("Std", (kids[0],), node.params), Node("Std", (kids[1],), node.params)]
    return kids


_NAN_PRESERVING = ("$", "Abs", "Log", "Sign", "Add", "Sub", "Mul", "Div", "Greater", "Less")
_ROLLING_NAN_BEFORE = (
    "Mean",
    "Sum",
    "Std",
    "Var",
    "Max",
    "Min",
    "Quantile",
    "Rank",
    "IdxMax",
    "IdxMin",
    "Slope",
    "Rsquare",
    "Resi",
    "Corr",
    "Cov",
)


def _dirty(node: Node) -> tuple[bool, bool]:
    """Whether ``node``'s array may hold non-NaN values before the start / after the end of its series.

    Outside an instrument's series Qlib has no rows at all; here those rows hold NaN, and most operators keep
    them NaN. Comparisons (NaN > x is False), ``If``, ``Power`` (NaN ** 0 is 1), ``Count`` (0) and shifts do
    not, and a rolling window carries values past the series' end. Operators that move values between rows
    (rolling windows, ``Ref``, ``Delta``) blank such rows of their input first.
    """
    op = node.op
    if op in _NAN_PRESERVING:
        before = after = False
        for c in node.children():
            b, a = _dirty(c)
            before, after = before or b, after or a
        return before, after
    if op in _ROLLING_NAN_BEFORE:
        return False, True
    if op == "Ref" and node.params[0] > 0:
        return False, True
    if op == "Ref" and node.params[0] < 0:
        return True, False
    return True, True


def _prep(x) -> np.ndarray:
    """What pandas' rolling does to its input: float64 (bool -> 0/1), +-inf -> NaN (always a new array)."""
    a = np.array(x, dtype=np.float64)
    a[np.isinf(a)] = np.nan
    return a


def _near_zero(std: np.ndarray) -> np.ndarray:
    """Qlib's ``np.isclose(std, 0, atol=2e-05)`` (|std| <= 2e-05 + 1e-05 * 0; NaN and inf are not close)."""
    return np.abs(std) <= 2e-05


def _zsqrt(var: np.ndarray) -> np.ndarray:
    out = np.sqrt(var)
    out[var < 0] = 0
    return out


class _Group:
    """Evaluates expressions sharing one loaded range ``[qs, qe]`` (global calendar indices)."""

    def __init__(self, panel: Panel, qs: int, qe: int, nodes: Sequence[Node]) -> None:
        self.panel = panel
        self.qs, self.qe = qs, qe
        self.rows = qe - qs + 1
        self.cache: dict[str, object] = {}
        self.uses: dict[str, int] = {}
        seen: set[str] = set()
        # rolling quantiles / ranks of the same input and window share one pass over sorted windows
        self.order_stats: dict[tuple[str, int], dict[str, Node]] = {}
        stack = list(nodes)
        for top in nodes:
            self.uses[top.key] = self.uses.get(top.key, 0) + 1
        while stack:  # count every reference once per distinct parent node
            node = stack.pop()
            if node.key in seen:
                continue
            seen.add(node.key)
            if node.op in ("Quantile", "Rank"):
                self.order_stats.setdefault((node.args[0].key, node.params[0]), {})[node.key] = node
            for d in _deps(node):
                self.uses[d.key] = self.uses.get(d.key, 0) + 1
                stack.append(d)

    # -- values -----------------------------------------------------------------------------------------
    def value(self, node: Node):
        key = node.key
        if key in self.cache:
            val = self.cache[key]
        else:
            val = self._compute(node)
        left = self.uses.get(key, 1) - 1
        self.uses[key] = left
        if left > 0:
            self.cache[key] = val
        else:
            self.cache.pop(key, None)
        return val

    def _arg(self, a):
        return self.value(a) if isinstance(a, Node) else a

    def first_row(self, node: Node) -> np.ndarray:
        """Per instrument, the row (relative to ``qs``) at which Qlib's series of ``node`` starts."""
        first, _ = self.panel.span(node.fields())
        rel = np.maximum(first, self.qs) - self.qs
        return np.minimum(rel, self.rows).astype(np.int64)  # self.rows: no series at all

    def outside(self, node: Node, *, before: bool, after: bool) -> np.ndarray | None:
        """Rows (relative to ``qs``) outside ``node``'s series that ``_dirty`` says may hold values."""
        b, a = _dirty(node)
        before, after = before and b, after and a
        if not (before or after):
            return None
        first, last = self.panel.span(node.fields())
        rows = np.arange(self.qs, self.qe + 1, dtype=np.int64)[:, None]
        mask = np.zeros((self.rows, self.panel.n), dtype=bool)
        if before:
            mask |= rows < first[None, :]
        if after:
            mask |= rows > last[None, :]
        return mask if mask.any() else None

    def input(self, node: Node, *, raw: bool = False, before: bool = True, after: bool = False) -> np.ndarray:
        """``node``'s value as a new float64 array for a rolling/shifting operator: NaN outside its series
        where needed, and (unless ``raw``, for Qlib's own Cython operators) +-inf as NaN like pandas."""
        x = self.value(node)
        a = np.array(x, dtype=np.float64) if raw else _prep(x)
        mask = self.outside(node, before=before, after=after)
        if mask is not None:
            a[mask] = np.nan
        return a

    def _compute(self, node: Node):
        op = node.op
        if op == "$":
            p = self.panel
            if node.name not in p.values:
                p.add_missing(node.name)
            return p.values[node.name][self.qs - p.g0 : self.qe - p.g0 + 1]
        try:
            with np.errstate(all="ignore"):
                return self._operator(node)
        except ExpressionError:
            raise
        except (TypeError, ValueError) as err:
            raise ExpressionError(
                f"operator {op} failed on {node.key}: {err}",
                hint="the same expression fails in Qlib's engine too, or use engine: qlib",
            ) from None

    def _operator(self, node: Node):
        op = node.op
        if op in _BINARY:
            a, b = (self._arg(x) for x in node.args)
            return _BINARY[op](a, b)
        if op == "Abs":
            return np.abs(self.value(node.args[0]))
        if op == "Log":
            return np.log(self.value(node.args[0]))
        if op == "Sign":
            return np.sign(np.asarray(self.value(node.args[0])).astype(np.float32))
        if op == "If":
            cond, a, b = (self._arg(x) for x in node.args)
            return np.where(cond, a, b)
        if op == "Ref":
            return self._ref(node)
        if op == "Delta":
            x = self.value(node.args[0])
            n = node.params[0]
            if n == 0:
                return x - self._first_values(x, self.first_row(node))
            mask = self.outside(node.args[0], before=True, after=False)
            if mask is None:
                return x - _shift(x, n)
            xs = np.array(x, dtype=np.float64 if x.dtype.kind not in "f" else x.dtype)
            xs[mask] = np.nan
            return x - _shift(xs, n)
        if op in ("Corr", "Cov"):
            return self._pair(node)
        child = node.args[0]
        n = node.params[0]
        w = n if n > 0 else max(self.rows, 1)  # N == 0: expanding = a window covering the whole series
        if op == "Slope":
            return K.roll_slope(self.input(child, raw=True), w)
        if op == "Resi":
            return K.roll_resi(self.input(child, raw=True), w)
        if op == "Rsquare":
            out = K.roll_rsquare(self.input(child, raw=True), w)
            std = self.value(Node("Std", node.args, node.params))
            out[_near_zero(std)] = np.nan
            return out
        a = self.input(child)
        if op == "Mean":
            return K.roll_mean(a, w)
        if op == "Sum":
            return K.roll_sum(a, w)
        if op == "Std":
            return _zsqrt(K.roll_var(a, w, 1))
        if op == "Var":
            return K.roll_var(a, w, 1)
        if op == "Max":
            return K.roll_max(a, w)
        if op == "Min":
            return K.roll_min(a, w)
        if op == "Count":
            return K.roll_count(a, w)
        if op in ("Quantile", "Rank"):
            return self._order_stats(node, a, w)
        if op == "IdxMax":
            return K.roll_argmax(a, w, self.first_row(node))
        if op == "IdxMin":
            return K.roll_argmin(a, w, self.first_row(node))
        raise ExpressionError(f"operator {op!r} is not supported by the fast feature engine", hint="use engine: qlib")

    def _order_stats(self, node: Node, a: np.ndarray, w: int) -> np.ndarray:
        """Quantiles and rank of one input and window in one kernel call; the siblings wait in the cache."""
        siblings = [
            m
            for m in self.order_stats.get((node.args[0].key, node.params[0]), {}).values()
            if m.key != node.key and m.key not in self.cache and self.uses.get(m.key, 0) > 0
        ]
        todo = [node, *siblings]
        quantiles = [m for m in todo if m.op == "Quantile"]
        with_rank = any(m.op == "Rank" for m in todo)
        qs = np.array([float(m.params[1]) for m in quantiles], dtype=np.float64)
        res = K.roll_order_stats(a, w, qs, with_rank)
        result = None
        for m in todo:
            val = res[quantiles.index(m)] if m.op == "Quantile" else res[len(quantiles)]
            if m.key == node.key:
                result = val
            else:
                self.cache[m.key] = val
                self._release(m.args[0])  # what evaluating the sibling would have consumed
        return result

    def _release(self, node: Node) -> None:
        left = self.uses.get(node.key, 1) - 1
        self.uses[node.key] = left
        if left <= 0:
            self.cache.pop(node.key, None)

    def _ref(self, node: Node):
        child = node.args[0]
        x = self.value(child)
        n = node.params[0]
        if x.dtype == np.bool_:
            x = x.astype(np.float64)  # pandas shifts a bool series into object dtype holding 1/0/NaN
        if n == 0:
            return self._first_values(x, self.first_row(node))
        mask = self.outside(child, before=n > 0, after=n < 0)
        if mask is not None:
            x = np.array(x)
            x[mask] = np.nan
        return _shift(x, n)

    def _masked(self, node: Node):
        """``node``'s value with NaN before its series starts (a float copy when something is blanked)."""
        x = self.value(node)
        mask = self.outside(node, before=True, after=False)
        if mask is None:
            return x
        x = np.array(x, dtype=np.float64 if x.dtype.kind != "f" else x.dtype)
        x[mask] = np.nan
        return x

    @staticmethod
    def _first_values(x: np.ndarray, first: np.ndarray) -> np.ndarray:
        """``series.iloc[0]`` per column, broadcast down the column (NaN where the column has no series)."""
        x = np.asarray(x)
        if x.dtype.kind != "f":
            x = x.astype(np.float64)
        rows = x.shape[0]
        vals = np.full(x.shape[1], np.nan, dtype=x.dtype)
        has = first < rows
        vals[has] = x[first[has], np.nonzero(has)[0]]
        return np.broadcast_to(vals, x.shape).copy()

    def _pair(self, node: Node):
        left, right = (self._masked(a) for a in node.args)
        n = node.params[0]
        # pandas' prep_binary: X = left + 0 * right, Y = right + 0 * left (masks NaN pairwise)
        xa = _prep(left + 0 * right)
        ya = _prep(right + 0 * left)
        mean_xy = K.roll_mean(np.ascontiguousarray(xa * ya), n)
        mean_x = K.roll_mean(xa, n)
        mean_y = K.roll_mean(ya, n)
        count = K.roll_count(np.ascontiguousarray(xa + ya), n)
        numerator = (mean_xy - mean_x * mean_y) * (count / (count - 1))
        if node.op == "Cov":
            return numerator
        denominator = (K.roll_var(xa, n, 1) * K.roll_var(ya, n, 1)) ** 0.5
        out = numerator / denominator
        std_l = self.value(Node("Std", (node.args[0],), node.params))
        std_r = self.value(Node("Std", (node.args[1],), node.params))
        out[_near_zero(std_l) | _near_zero(std_r)] = np.nan
        return out


def _shift(x: np.ndarray, n: int) -> np.ndarray:  # noqa: D103
    """pandas ``Series.shift(n)`` down axis 0 (dtype kept; floats fill with NaN)."""
    x = np.asarray(x)
    if x.dtype.kind not in "fc":
        x = x.astype(np.float64)
    out = np.empty_like(x)
    if n > 0:
        out[:n] = np.nan
        out[n:] = x[: len(x) - n] if n < len(x) else x[:0]
    else:
        m = -n
        out[len(x) - m :] = np.nan
        out[: max(len(x) - m, 0)] = x[m:]
    return out


def evaluate(
    panel: Panel,
    nodes: Sequence[Node],
    start_index: int,
    end_index: int,
    sink: Callable[[int, np.ndarray, int], None],
) -> None:
    """Evaluate ``nodes`` over calendar rows ``start_index .. end_index``; call ``sink(k, values, o0)`` for each.

    ``values`` is the result of expression ``k`` over its group's extended range, ``(rows, N)`` in whatever
    dtype the operators gave; rows ``o0 .. o0 + end - start`` are the requested bars, which the sink casts to
    float32 (Qlib's dtype). Expressions
    are evaluated group by group (same extended range), so intermediate arrays of one group are freed before
    the next one starts.
    """
    from .threads import n_threads, run_all

    _kernels()
    cal_len = panel.g0 + panel.length
    groups: dict[tuple[int, int], list[int]] = {}
    for k, node in enumerate(nodes):
        qs, qe = extended_range([node], start_index, end_index, cal_len)
        groups.setdefault((qs, qe), []).append(k)
        for name in sorted(node.fields()):  # added before any thread reads the panel
            if name not in panel.values:
                panel.add_missing(name)

    def run(item: tuple[tuple[int, int], list[int]]) -> None:
        (qs, qe), ks = item
        group = _Group(panel, qs, qe, [nodes[k] for k in ks])
        o0 = start_index - qs
        for k in ks:
            res = group.value(nodes[k])
            if not isinstance(res, np.ndarray) or res.shape != (qe - qs + 1, panel.n):
                raise ExpressionError(
                    f"expression {nodes[k].key} did not give one value per bar and instrument",
                    hint="use engine: qlib for this expression",
                )
            sink(k, res, o0)

    # groups are independent (each has its own cache): the largest start first, and with several threads
    # ``sink`` is called from the threads, one distinct ``k`` per call
    run_all(run, sorted(groups.items(), key=lambda it: -len(it[1])), n_threads())


def empty_block(shape: tuple[int, int]) -> np.ndarray:
    """An uninitialised float32 array for the frame's values. On Linux its pages are faulted in by one
    ``mmap(MAP_POPULATE)`` call instead of one page fault per 4 KiB page while the features are written (much
    faster on virtual machines); elsewhere ``np.empty``."""
    nbytes = int(np.prod(shape)) * 4
    populate = getattr(mmap, "MAP_POPULATE", None)
    if populate is None or nbytes < 1 << 24:
        return np.empty(shape, dtype=np.float32)
    try:
        buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)
    except (OSError, ValueError):
        return np.empty(shape, dtype=np.float32)
    return np.frombuffer(buf, dtype=np.float32).reshape(shape)


def compile_exprs(exprs: Sequence[str]) -> list[Node]:
    """Parse expression strings; the error names the expression and the operator at fault."""
    return [parse(e) for e in exprs]
