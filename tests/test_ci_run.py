"""`.ci/run` runs the README's test command (Quickstart, command 2): the same steps, in the same order.

The only step `.ci/run` adds is ``chromium_ready`` right before pytest: it waits for Debian's chromium, which
it installs in the background (when missing) while the Python packages install.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _quickstart_commands() -> dict[str, str]:
    """The Quickstart block's commands, by their comment's number ("1", "2")."""
    text = (REPO / "README.md").read_text()
    block = text.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands, number = {}, None
    for line in block.splitlines():
        m = re.match(r"#\s*(\d+)\.", line.strip())
        if m:
            number = m.group(1)
        elif line.strip() and number is not None:
            commands[number] = line.strip()
            number = None
    return commands


def _steps(command: str) -> list[str]:
    return [step.strip() for step in command.split(" && ")]


def _ci_command() -> str:
    lines = [ln for ln in (REPO / ".ci" / "run").read_text().splitlines() if ln.startswith("python3 -m venv")]
    assert len(lines) == 1, lines
    return lines[0]


def test_ci_runs_the_readmes_test_command_step_by_step():
    readme = _steps(_quickstart_commands()["2"])
    ci = _steps(_ci_command())
    assert "chromium_ready" in ci
    assert ci.index("chromium_ready") == len(ci) - 2, "chromium_ready belongs right before pytest"
    assert [s for s in ci if s != "chromium_ready"] == readme
    assert readme[-1] == ".venv/bin/python -m pytest"


def test_both_quickstart_commands_install_the_same_pinned_set_the_same_way():
    commands = _quickstart_commands()
    assert sorted(commands) == ["1", "2"]
    demo, tests = _steps(commands["1"]), _steps(commands["2"])
    assert demo[0] == tests[0] == "python3 -m venv .venv"
    assert demo[1] == tests[1] and re.fullmatch(r"\.venv/bin/pip install -q uv==[\d.]+", demo[1])
    for install, extra in ((demo[2], "-e ."), (tests[2], "-e '.[dev]'")):
        assert install.startswith(".venv/bin/uv pip install ")
        assert "-c constraints.txt" in install and "--compile-bytecode" in install and install.endswith(extra)
    assert demo[-1] == ".venv/bin/qlib-crypto demo"
