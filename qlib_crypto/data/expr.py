"""Qlib's expression syntax, parsed for the fast feature engine (:mod:`qlib_crypto.data.engine`).

Qlib turns an expression string into Python source (``$close`` -> ``Feature("close")``, ``Mean(`` ->
``Operators.Mean(``) and ``eval``s it, so operator precedence, associativity and constant folding are
Python's. This module does the same textual step and then reads Python's own syntax tree (``ast``), so
an expression means exactly what it means to Qlib; no Qlib import is needed.

A parsed expression is a tree of :class:`Node` objects: ``Node("$", name=...)`` for a field, and
``Node(op, args, params)`` for an operator, where ``args`` are child nodes or Python numbers (constants)
and ``params`` the operator's integer/float parameters (window ``N``, quantile ``qscore``).
:meth:`Node.extended_window` reproduces Qlib's ``get_extended_window_size`` (how many bars before the
first requested bar, and after the last one, the expression reads).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from typing import Iterable, Union

from ..errors import ConfigError

# Operators of the fast engine, by kind (names as in qlib.data.ops).
ELEMENTWISE_UNARY = ("Abs", "Log", "Sign")
ELEMENTWISE_BINARY = (
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Power",
    "Greater",
    "Less",
    "Gt",
    "Ge",
    "Lt",
    "Le",
    "Eq",
    "Ne",
    "And",
    "Or",
)
ROLLING = (
    "Mean",
    "Sum",
    "Std",
    "Var",
    "Max",
    "Min",
    "IdxMax",
    "IdxMin",
    "Rank",
    "Count",
    "Slope",
    "Rsquare",
    "Resi",
)
SUPPORTED_OPERATORS: tuple[str, ...] = (
    ("Ref", "Delta", "Quantile", "Corr", "Cov", "If") + ELEMENTWISE_UNARY + ELEMENTWISE_BINARY + ROLLING
)
# Qlib 0.9.7 operators the fast engine does not evaluate (an expression using one fails with its name).
QLIB_ONLY_OPERATORS = (
    "ChangeInstrument",
    "Rolling",
    "Skew",
    "Kurt",
    "Med",
    "Mad",
    "EMA",
    "WMA",
    "Not",
    "Mask",
    "TResample",
    "PFeature",
    "P",
    "PRef",
)

_PY_BINOP = {
    ast.Add: "Add",
    ast.Sub: "Sub",
    ast.Mult: "Mul",
    ast.Div: "Div",
    ast.Pow: "Power",
    ast.BitAnd: "And",
    ast.BitOr: "Or",
}
_PY_CMPOP = {ast.Gt: "Gt", ast.GtE: "Ge", ast.Lt: "Lt", ast.LtE: "Le", ast.Eq: "Eq", ast.NotEq: "Ne"}

Number = Union[int, float]
Arg = Union["Node", int, float]


class ExpressionError(ConfigError):
    """An expression the fast engine cannot evaluate (unsupported operator, bad syntax or arguments)."""


@dataclass(frozen=True)
class Node:
    """One node of a parsed expression: a field (``op == "$"``) or an operator applied to ``args``."""

    op: str
    args: tuple = ()
    params: tuple = ()
    name: str = ""  # field name for op == "$"
    key: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", self._make_key())

    def _make_key(self) -> str:
        if self.op == "$":
            return "$" + self.name
        parts = [a.key if isinstance(a, Node) else repr(a) for a in self.args]
        parts += [repr(p) for p in self.params]
        return f"{self.op}({','.join(parts)})"

    def __str__(self) -> str:
        return self.key

    # -- structure ------------------------------------------------------------------------------------
    def children(self) -> list["Node"]:
        return [a for a in self.args if isinstance(a, Node)]

    def fields(self) -> set[str]:
        """Names of the fields (``$name``) this expression reads."""
        if self.op == "$":
            return {self.name}
        out: set[str] = set()
        for c in self.children():
            out |= c.fields()
        return out

    def walk(self) -> Iterable["Node"]:
        """Every node, children before parents (post-order)."""
        for c in self.children():
            yield from c.walk()
        yield self

    # -- Qlib's window arithmetic ---------------------------------------------------------------------
    def extended_window(self) -> tuple[int, int]:
        """``(left, right)``: bars before the first and after the last requested bar that Qlib loads.

        Same rules as Qlib's ``get_extended_window_size``: a rolling window of ``N`` adds ``N - 1`` on the
        left, ``Ref(x, N)`` adds ``N`` on the left (``N > 0``) or ``-N`` on the right (``N < 0``), a pair
        rolling (``Corr``) adds ``N - 1`` to the larger left extension of its two inputs, element-wise
        operators take the larger extension of their inputs, and ``N == 0`` (expanding) adds nothing.
        """
        if self.op == "$":
            return 0, 0
        kids = [c.extended_window() for c in self.children()]
        lft = max((k[0] for k in kids), default=0)
        rgt = max((k[1] for k in kids), default=0)
        if self.op == "Ref":
            n = self.params[0]
            if n == 0:
                return lft, rgt
            return max(lft + n, lft), max(rgt - n, rgt)
        if self.op in ROLLING or self.op in ("Quantile", "Delta", "Corr", "Cov"):
            n = self.params[0]
            if n == 0:
                return lft, rgt
            return max(lft + n - 1, lft), rgt
        return lft, rgt


# -------------------------------------------------------------------------------------------------------
# parsing
# -------------------------------------------------------------------------------------------------------
_CJK = r"\u3001\uff1a\uff08\uff09"  # the Chinese punctuation Qlib's parse_field accepts in names
_FIELD_RE = re.compile(rf"\$([\w{_CJK}]+)")
_PFIELD_RE = re.compile(rf"\$\$([\w{_CJK}]+)")
_CALL_RE = re.compile(r"(\w+\s*)\(")


def _to_python(expr: str) -> tuple[str, dict[str, str]]:
    """Qlib's textual step: ``$name`` -> a placeholder identifier (remembered), operator calls untouched."""
    names: dict[str, str] = {}

    def pfield(m: re.Match) -> str:
        raise ExpressionError(
            f"point-in-time field '$${m.group(1)}' in expression {expr!r} is not supported by the fast feature engine",
            hint="use engine: qlib for point-in-time (PIT) data",
        )

    _PFIELD_RE.sub(pfield, expr)

    def feature(m: re.Match) -> str:
        ident = f"__qcf_{len(names)}"
        names[ident] = m.group(1)
        return ident

    return _FIELD_RE.sub(feature, expr), names


def parse(expr: str) -> Node:
    """Parse one Qlib expression string into a :class:`Node` (raises :class:`ExpressionError`)."""
    if not isinstance(expr, str):
        expr = str(expr)
    source, names = _to_python(expr)
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as err:
        raise ExpressionError(
            f"expression {expr!r} has invalid syntax: {err.msg}",
            hint="check the brackets and operators (Qlib expression syntax)",
        ) from None
    result = _Builder(expr, names).build(tree.body)
    if not isinstance(result, Node):
        raise ExpressionError(
            f"expression {expr!r} is a constant, not a feature",
            hint="an expression must read at least one field such as $close",
        )
    return result


class _Builder:
    def __init__(self, expr: str, names: dict[str, str]) -> None:
        self.expr = expr
        self.names = names

    def fail(
        self, what: str, hint: str = "see docs/research.md for the operators of the fast engine"
    ) -> ExpressionError:
        return ExpressionError(f"{what} in expression {self.expr!r}", hint=hint)

    def build(self, n: ast.AST) -> Arg:
        if isinstance(n, ast.Constant):
            if isinstance(n.value, bool) or not isinstance(n.value, (int, float)):
                raise self.fail(f"constant {n.value!r} is not a number")
            return n.value
        if isinstance(n, ast.Name):
            if n.id in self.names:
                return Node("$", name=self.names[n.id])
            raise self.fail(f"unknown name {n.id!r}", hint="fields are written $name, operators Name(...)")
        if isinstance(n, ast.UnaryOp):
            operand = self.build(n.operand)
            if isinstance(operand, Node):
                raise self.fail(
                    f"unary {type(n.op).__name__} on an expression (Qlib has no such operator)",
                    hint="write 0-x or -1*x",
                )
            if isinstance(n.op, ast.USub):
                return -operand
            if isinstance(n.op, ast.UAdd):
                return +operand
            raise self.fail(f"unary operator {type(n.op).__name__} on a constant")
        if isinstance(n, ast.BinOp):
            left, right = self.build(n.left), self.build(n.right)
            op = _PY_BINOP.get(type(n.op))
            if op is None:
                raise self.fail(f"Python operator {type(n.op).__name__} (Qlib has no such operator)")
            if not isinstance(left, Node) and not isinstance(right, Node):
                return _fold(n.op, left, right, self)  # Python evaluates constant arithmetic before Qlib sees it
            return Node(op, (left, right))
        if isinstance(n, ast.Compare):
            if len(n.ops) != 1:
                raise self.fail("a chained comparison", hint="compare two values at a time, e.g. (a>b)&(b>c)")
            left, right = self.build(n.left), self.build(n.comparators[0])
            if not isinstance(left, Node) and not isinstance(right, Node):
                raise self.fail("a comparison of two constants")
            return Node(_PY_CMPOP[type(n.ops[0])], (left, right))
        if isinstance(n, ast.Call):
            return self.call(n)
        raise self.fail(f"unsupported syntax ({type(n).__name__})")

    def call(self, n: ast.Call) -> Node:
        if not isinstance(n.func, ast.Name):
            raise self.fail("a call of something that is not an operator name")
        op = n.func.id
        if n.keywords:
            raise self.fail(f"keyword arguments to {op}", hint=f"pass the arguments of {op} by position")
        args = [self.build(a) for a in n.args]
        if op not in SUPPORTED_OPERATORS:
            if op in QLIB_ONLY_OPERATORS:
                raise self.fail(
                    f"operator {op!r} is not supported by the fast feature engine",
                    hint="use engine: qlib for this expression, or one of: " + ", ".join(SUPPORTED_OPERATORS),
                )
            raise self.fail(
                f"unknown operator {op!r}", hint="operators of the fast engine: " + ", ".join(SUPPORTED_OPERATORS)
            )
        return _make(op, args, self)


def _fold(op: ast.operator, a: Number, b: Number, b_: "_Builder") -> Number:
    try:
        if isinstance(op, ast.Add):
            return a + b
        if isinstance(op, ast.Sub):
            return a - b
        if isinstance(op, ast.Mult):
            return a * b
        if isinstance(op, ast.Div):
            return a / b
        if isinstance(op, ast.Pow):
            return a**b
    except (ArithmeticError, ValueError) as err:
        raise b_.fail(f"constant arithmetic failed ({err})") from None
    raise b_.fail(f"operator {type(op).__name__} on two constants")


def _want_node(op: str, arg: Arg, what: str, b: _Builder) -> "Node":
    if not isinstance(arg, Node):
        raise b.fail(f"{op} needs an expression as its {what}, got the constant {arg!r}")
    return arg


def _want_int(op: str, value: Arg, what: str, b: _Builder, *, minimum: int | None = 0) -> int:
    if isinstance(value, Node) or isinstance(value, bool) or not isinstance(value, int):
        raise b.fail(f"{op} needs a whole number as its {what}, got {value!r}")
    if minimum is not None and value < minimum:
        raise b.fail(f"{op} needs a {what} >= {minimum}, got {value!r}")
    return int(value)


def _arity(op: str, args: list, n: int, b: _Builder) -> None:
    if len(args) != n:
        raise b.fail(f"{op} takes {n} arguments, got {len(args)}")


def _make(op: str, args: list, b: _Builder) -> Node:
    if op in ELEMENTWISE_UNARY:
        _arity(op, args, 1, b)
        return Node(op, (_want_node(op, args[0], "argument", b),))
    if op in ELEMENTWISE_BINARY:
        _arity(op, args, 2, b)
        if not any(isinstance(a, Node) for a in args):
            raise b.fail(f"{op} needs at least one expression argument")
        return Node(op, tuple(args))
    if op == "If":
        _arity(op, args, 3, b)
        _want_node(op, args[0], "condition", b)
        return Node(op, tuple(args))
    if op == "Ref":
        _arity(op, args, 2, b)
        return Node(
            op, (_want_node(op, args[0], "first argument", b),), (_want_int(op, args[1], "N", b, minimum=None),)
        )
    if op == "Delta":
        _arity(op, args, 2, b)
        return Node(op, (_want_node(op, args[0], "first argument", b),), (_want_int(op, args[1], "N", b),))
    if op in ROLLING:
        _arity(op, args, 2, b)
        feature = _want_node(op, args[0], "first argument", b)
        n = _want_int(op, args[1], "window N", b)
        if n == 0 and op in ("Slope", "Rsquare", "Resi"):
            raise b.fail(
                f"{op} with N=0 (expanding) is not supported by the fast feature engine", hint="use engine: qlib"
            )
        return Node(op, (feature,), (n,))
    if op == "Quantile":
        _arity(op, args, 3, b)
        feature = _want_node(op, args[0], "first argument", b)
        n = _want_int(op, args[1], "window N", b)
        q = args[2]
        if isinstance(q, (Node, bool)) or not isinstance(q, (int, float)) or not 0 <= q <= 1:
            raise b.fail(f"Quantile needs a quantile between 0 and 1 as its third argument, got {q!r}")
        return Node(op, (feature,), (n, q))
    if op in ("Corr", "Cov"):
        _arity(op, args, 3, b)
        left = _want_node(op, args[0], "first argument", b)
        right = _want_node(op, args[1], "second argument", b)
        n = _want_int(op, args[2], "window N", b, minimum=1)
        return Node(op, (left, right), (n,))
    raise b.fail(f"operator {op!r} is not supported by the fast feature engine")  # pragma: no cover
