"""docs/config-defaults.md cannot drift from the code.

Every row of the table names where its default is set (a module constant, a dataclass field, a parameter
default, a function value, a ``qlib-crypto`` option or a key of a shipped workflow); this test looks each
one up in the code and checks that the value the doc shows is the code's value. It also checks that the table
is complete for the two kinds of default that are easiest to add without noticing: module-level
``DEFAULT_*`` constants and ``qlib-crypto`` options with a default.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "config-defaults.md"
HEADER = "| area | setting | default | where it is set |"

# DEFAULT_* constants that are not defaults a user sets (and where they are documented instead)
NOT_IN_TABLE = {
    "qlib_crypto.sources.files:DEFAULT_ALIASES": "column-name aliases recognised by import, listed in docs/import.md",
}


def table_rows() -> list[tuple[int, str, list[str], list[str]]]:
    """(line number, setting, default literals, references) per row of the table."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = lines.index(HEADER)
    rows = []
    for number, line in enumerate(lines[start + 2 :], start=start + 3):
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        assert len(cells) == 4, f"docs/config-defaults.md:{number}: expected 4 cells, got {cells}"
        values = re.findall(r"`([^`]*)`", cells[2])
        refs = re.findall(r"`([^`]*)`", cells[3])
        rows.append((number, cells[1], values, refs))
    return rows


ROWS = table_rows()


def _literal(node: ast.AST) -> Any:
    if isinstance(node, ast.Slice):
        return slice(*(None if n is None else ast.literal_eval(n) for n in (node.lower, node.upper, node.step)))
    return ast.literal_eval(node)


def _eval(node: ast.AST, module: Any) -> Any:
    """A reference expression: NAME, .attr, [const], [a:b], f(const...) (the value) or f(param) (its default)."""
    if isinstance(node, ast.Name):
        return getattr(module, node.id)
    if isinstance(node, ast.Attribute):
        return getattr(_eval(node.value, module), node.attr)
    if isinstance(node, ast.Subscript):
        return _eval(node.value, module)[_literal(node.slice)]
    if isinstance(node, ast.Call):
        func = _eval(node.func, module)
        if len(node.args) == 1 and isinstance(node.args[0], ast.Name) and not node.keywords:
            default = inspect.signature(func).parameters[node.args[0].id].default
            assert default is not inspect.Parameter.empty, f"{node.args[0].id} of {func} has no default"
            return default
        return func(*(ast.literal_eval(a) for a in node.args))
    raise AssertionError(f"unsupported reference syntax: {ast.dump(node)}")


def click_option(command: str, option: str):
    from qlib_crypto.cli import cli

    cmd = cli.get_command(None, command)
    assert cmd is not None, f"no command qlib-crypto {command}"
    for param in cmd.params:
        if option in getattr(param, "opts", ()):
            return param
    raise AssertionError(f"qlib-crypto {command} has no option {option}")


def _yaml_path(data: Any, path: str) -> Any:
    for part in path.split("."):
        m = re.fullmatch(r"(\w+)\[(\w+)=(\w+)\]", part)
        if m:
            key, field, wanted = m.groups()
            matches = [item for item in data[key] if isinstance(item, dict) and item.get(field) == wanted]
            assert len(matches) == 1, f"{part}: {len(matches)} entries"
            data = matches[0]
        else:
            data = data[part]
    return data


def resolve(ref: str) -> Any:
    """The code's value of one reference of the table's last column."""
    if ref.startswith("qlib-crypto "):
        _, command, option = ref.split()
        return click_option(command, option).default
    if ref.startswith("workflow_configs/"):
        file, _, path = ref.partition(":")
        with open(REPO / file, encoding="utf-8") as fh:
            return _yaml_path(yaml.safe_load(fh), path)
    module_name, sep, expr = ref.partition(":")
    assert sep and module_name.startswith("qlib_crypto"), f"unknown reference {ref!r}"
    module = importlib.import_module(module_name)
    return _eval(ast.parse(expr, mode="eval").body, module)


def same(doc: str, value: Any) -> bool:
    """True when the literal the doc shows is ``value``."""
    if isinstance(value, bool):
        return doc in ("true", "false") and (doc == "true") == value
    if value is None:
        return doc == "null"
    if isinstance(value, (int, float)):
        try:
            return math.isclose(float(doc), float(value), rel_tol=0, abs_tol=0)
        except ValueError:
            return False
    if isinstance(value, str):
        return doc == value
    return yaml.safe_load(doc) == (list(value) if isinstance(value, tuple) else value)


def test_the_table_is_there_and_every_row_names_where_it_is_set():
    assert len(ROWS) >= 80
    for number, setting, values, refs in ROWS:
        assert values, f"docs/config-defaults.md:{number} ({setting}): no value in backticks"
        assert refs, f"docs/config-defaults.md:{number} ({setting}): no reference in backticks"


@pytest.mark.parametrize("number,setting,values,refs", ROWS, ids=[f"line{r[0]}" for r in ROWS])
def test_documented_default_equals_the_code(number, setting, values, refs):
    where = f"docs/config-defaults.md:{number} ({setting})"
    if len(refs) == 1 and len(values) > 1:  # e.g. `20` per `2.0` s for OKX_LIMITS[...][:2]
        code = resolve(refs[0])
        assert len(code) == len(values), f"{where}: {refs[0]} is {code!r}, the doc shows {values}"
        pairs = list(zip(values, code))
    else:
        assert len(values) == len(refs), f"{where}: {len(values)} values for {len(refs)} references"
        pairs = [(v, resolve(r)) for v, r in zip(values, refs)]
    for (doc, code), ref in zip(pairs, refs * len(pairs)):
        assert same(doc, code), f"{where}: the doc says {doc!r}, {ref} is {code!r}"


def test_same_compares_numbers_strings_and_lists_strictly():
    # the comparison the whole doc check rests on: it must fail on near misses
    assert same("0.1", 0.1) and not same("0.1", 0.10000001) and not same("3600", 360)
    assert same("null", None) and not same("null", 0) and not same("0", None)
    assert same("true", True) and not same("false", True) and not same("1", True)
    assert same("[10, 20]", (10, 20)) and not same("[10, 20]", (20, 10))
    assert same("2009-01-03", "2009-01-03") and not same("close", "open")


def test_resolve_reads_each_kind_of_reference():
    # values known independently of the code under test
    assert resolve("qlib-crypto collect --timeout") == 10.0
    assert resolve("workflow_configs/workflow_config_lightgbm_crypto_day.yaml:experiment_name") == "crypto_lightgbm_day"
    assert resolve('qlib_crypto.settings:bars_per_year("60min")') == 24 * 365
    assert resolve("qlib_crypto.sources.okx:RetryPolicy.max_retries") == resolve("qlib-crypto collect --max-retries")
    with pytest.raises(AttributeError):
        resolve("qlib_crypto.settings:NO_SUCH_CONSTANT")


def test_the_fee_date_matches_the_code():
    source = inspect.getsource(importlib.import_module("qlib_crypto.backtest.exchange"))
    m = re.search(r"read on (\d{4}-\d{2}-\d{2})[^\n]*\n\s*DEFAULT_FEES\b", source)
    assert m, "exchange.py no longer dates DEFAULT_FEES in the comment above it"
    for doc in ("config-defaults.md", "backtest.md"):
        dates = re.findall(r"read on \**(\d{4}-\d{2}-\d{2})", (REPO / "docs" / doc).read_text(encoding="utf-8"))
        assert dates and set(dates) == {m.group(1)}, f"docs/{doc}: fee dates {dates}, code {m.group(1)}"


def _referenced() -> set[str]:
    return {ref for _, _, _, refs in ROWS for ref in refs}


def test_every_default_constant_is_in_the_table():
    refs = _referenced()
    named = {re.match(r"([\w.]+:\w+)", r).group(1) for r in refs if r.startswith("qlib_crypto")}
    missing = []
    for path in sorted((REPO / "qlib_crypto").rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AnnAssign)
                else []
            )
            for t in targets:
                if isinstance(t, ast.Name) and t.id.startswith("DEFAULT_"):
                    key = f"{module}:{t.id}"
                    if key not in named and key not in NOT_IN_TABLE:
                        missing.append(key)
    assert not missing, f"defaults missing from docs/config-defaults.md: {missing}"


def test_every_option_with_a_default_is_in_the_table():
    from qlib_crypto.cli import COMMANDS, cli

    documented: dict[tuple[str, str], str] = {}  # (command, option) -> the value the doc shows
    for _, _, vals, refs in ROWS:
        for value, ref in zip(vals, refs):
            if ref.startswith("qlib-crypto "):
                _, command, option = ref.split()
                documented[(command, option)] = value
    missing = []
    for command in sorted(COMMANDS):
        for param in cli.get_command(None, command).params:
            if param.default in (None, False, ()):
                continue
            option = max(param.opts, key=len)
            # the same option of another command (backtest and sweep share theirs) covers it when equal
            shown = documented.get((command, option))
            if shown is None:
                shown = next(
                    (v for (c, o), v in sorted(documented.items()) if o == option and same(v, param.default)), None
                )
            if shown is None:
                missing.append(f"qlib-crypto {command} {option} (default {param.default!r})")
            else:
                assert same(shown, param.default), (
                    f"qlib-crypto {command} {option}: doc {shown!r}, code {param.default!r}"
                )
    assert not missing, f"options missing from docs/config-defaults.md: {missing}"
