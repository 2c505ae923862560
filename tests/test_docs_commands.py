"""Every command shown in README.md and docs/*.md runs.

What is run: the fenced shell blocks (```bash, ```sh, ```shell, ```console, or no language) of README.md and
docs/*.md (notebooks are not parsed). A logical line (``\\`` continues it) is split on ``&&``, ``||`` and ``;``;
``# comments`` are dropped, and in a block with ``$ `` prompts only the prompted lines are commands. Every
``qlib-crypto ...``, ``qrun ...`` and ``python scripts/...`` command is taken (``.venv/bin/``, ``python3``,
``nice -n N`` and ``VAR=value`` prefixes are understood); other programs (pip, mlflow ui, pytest) are not run.

Convention for illustrative blocks: an HTML comment ``<!-- not-run: reason -->`` on the line before the
opening fence (blank lines between are allowed) skips the whole block. Such blocks are listed in
``NOT_RUN`` below, so adding one means saying why here too; keep them few.

Where the commands run: one sandbox directory per test module, laid out as after ``qlib-crypto demo``
(``data/store/synthetic``, ``data/qlib/synthetic/60min`` and ``day``, ``workflow_configs/``, ``./mlruns``
with a 60min run, ``reports/latest/signals_60min.parquet``) but small: 6 synthetic instruments, 2024-02-01 ..
2024-04-07 of hourly bars, and the shipped workflows with dates and model size shrunk (``shrink_workflow``),
so a command naming 2024-06-30 runs on a calendar that ends on 2024-04-07. ``HOME`` is the sandbox's
``home/`` (so ``~/.qlib/...`` stays inside), files the docs import (``btc_1h.csv``...) are made by
``INPUT_FILES`` (or copied from a file of that name under ``tests/fixtures/``), and ``--source okx`` commands
reach the loopback OKX simulator (``tests/okx_sim.py``, as ``tests/test_okx_collect.py`` uses it) through
``QLIB_CRYPTO_OKX_API_URL``, the environment variable ``collect --api-url`` documents; the simulator's clock
is 2024-08-02 and its rate limits are OKX's.

Commands run in document order (README.md, then docs/*.md by name), each distinct command once, in one
helper process (this file run as a script) that keeps Qlib, LightGBM and MLflow imported: each command calls
the same entry point as its console script (``qlib_crypto.cli:main``, Qlib's ``qrun``, the script's
``__main__``), with its output and exit code captured. A command passes when it exits 0 and every path it
names with ``--out``, ``--store``, ``--qlib-dir`` or ``--report`` exists afterwards.

Arguments are rewritten only where running the command as shown is not possible offline in the time budget;
``REWRITES`` lists each one with the reason (a rewrite that no longer matches any command fails the test).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import select
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC_FILES = ["README.md"] + [f"docs/{p.name}" for p in sorted((REPO / "docs").glob("*.md"))]
SHELL_LANGS = {"bash", "sh", "shell", "console", "zsh", "shell-session", ""}
NOT_RUN_RE = re.compile(r"<!--\s*not-run:\s*(.*?)\s*-->")
FENCE_RE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")

#: blocks marked ``<!-- not-run: reason -->``: (doc, reason) -> why running them is not possible
NOT_RUN: dict[tuple[str, str], str] = {
    ("docs/predict.md", "usage synopsis"): "alternatives in brackets and | are syntax, not a command",
    ("docs/backtest-reports.md", "usage synopsis"): "the backtest and sweep synopses: syntax, not commands",
    ("docs/scale-out.md", "needs scheduler and workers on other hosts"): (
        "a multi-host Dask deployment (10.0.0.5); tests/test_dask_scale.py runs `qlib-crypto sweep --dask` and "
        "run_walk_forward(dask=...) against a real scheduler and two workers on 127.0.0.1"
    ),
}
MAX_NOT_RUN_BLOCKS = 6


@dataclasses.dataclass(frozen=True)
class Rewrite:
    pattern: str  # regex searched in the command as one string
    replacement: str  # re.sub replacement
    why: str


#: the only argument rewrites; each says why the command cannot run as shown here
REWRITES: list[Rewrite] = [
    Rewrite(
        r"^qlib-crypto demo\b(.*)$",
        r"qlib-crypto demo\1 --help",
        "the whole demo (20 instruments, 18 months, the full 60min workflow) takes minutes; tests/test_demo.py "
        "runs it end to end, here its options are parsed (click rejects an unknown option before --help)",
    ),
    Rewrite(
        r"--top 20 --timeframe 1m --start 2024-06-01 --end 2024-06-08",
        "--top 2 --timeframe 1m --start 2024-06-01 --end 2024-06-02",
        "a week of 1-minute bars of 20 swaps is 672 requests, 67 s at OKX's rate limit; 2 swaps x 1 day is 10",
    ),
    Rewrite(
        r"^python scripts/bench_features\.py\b(.*)$",
        r"python scripts/bench_features.py\1 --help",
        "a benchmark that starts a fresh Python process (Qlib imports) per measured run; what it measures, the "
        "fast feature engine against Qlib's expressions, is tested in tests/test_fast_features.py",
    ),
    Rewrite(
        r"^python scripts/bench_research\.py\b(.*)$",
        r"python scripts/bench_research.py\1 --help",
        "a benchmark of the 60min workflow's phases on 50 instruments x a year; the workflow itself runs "
        "through qrun in tests/test_workflow_e2e.py and here (the qrun commands)",
    ),
    Rewrite(
        r"^python scripts/bench_scale\.py\b(.*)$",
        r"python scripts/bench_scale.py\1 --help",
        "a benchmark of the Dask scale-out (250 instruments x 2 years, a local cluster; 40 minutes); what it "
        "measures, distributed runs identical to serial ones, is tested in tests/test_dask_scale.py",
    ),
    Rewrite(
        r"^python scripts/check_synthetic_signal\.py$",
        "python scripts/check_synthetic_signal.py --instruments 6 --months 2 --start 2024-01-01",
        "30 instruments x 12 months take a minute; 6 x 2 months run the same code",
    ),
]

SIM_NOW = "2024-08-02T00:00:00Z"
SANDBOX_START, SANDBOX_END = "2024-02-01", "2024-04-08"  # synthetic hourly bars [start, end)

#: the sandbox's setup, the demo's steps 1-4 on the small market (run as commands, like the docs' own)
SETUP = [
    (
        f"qlib-crypto collect --source synthetic --instruments 6 --seed 7 --timeframe 1h --start {SANDBOX_START} "
        f"--end {SANDBOX_END} --store data/store/synthetic --quiet"
    ),
    "qlib-crypto dump --store data/store/synthetic --qlib-dir data/qlib/synthetic/60min --timeframe 1h",
    "qlib-crypto dump --store data/store/synthetic --qlib-dir data/qlib/synthetic/day --timeframe 1d --from-timeframe 1h",
    "qrun workflow_configs/workflow_config_lightgbm_crypto_60min.yaml",
    (
        "qlib-crypto predict --experiment crypto_lightgbm_60min --provider-dir 60min=data/qlib/synthetic/60min "
        "--provider-dir day=data/qlib/synthetic/day --freq 60min --start 2024-04-01 --end '2024-06-30 22:00' "
        "--out reports/latest/signals_60min.parquet"
    ),
]
COMMAND_TIMEOUT_S = 600


# ------------------------------------------------------------------------------------------------------
# parsing the docs
# ------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DocCommand:
    doc: str
    line: int
    text: str  # as shown (one command of a logical line)
    argv: tuple[str, ...]  # normalised: qlib-crypto / qrun / python scripts/...
    env: tuple[tuple[str, str], ...] = ()
    error: str | None = None  # why the line cannot be read as a command
    cwd: str = "."  # after a `cd DIR &&` earlier on the same line, relative to the sandbox

    @property
    def key(self) -> str:
        return shlex.join(self.argv) + ("" if self.cwd == "." else f"  (in {self.cwd})")

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


@dataclasses.dataclass(frozen=True)
class Block:
    doc: str
    line: int  # line of the opening fence
    lang: str
    lines: tuple[tuple[int, str], ...]  # (line number, text)
    not_run: str | None


def blocks(text: str, doc: str) -> list[Block]:
    """The fenced code blocks of a Markdown text, with the not-run reason marked before each."""
    out: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = FENCE_RE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m.group(1), m.group(2).lower(), i
        body = []
        i += 1
        while i < len(lines) and not (lines[i].strip().startswith(fence) and not lines[i].strip().strip(fence[0])):
            body.append((i + 1, lines[i]))
            i += 1
        i += 1  # the closing fence
        j = start - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        mark = NOT_RUN_RE.search(lines[j]) if j >= 0 else None
        out.append(Block(doc, start + 1, lang, tuple(body), mark.group(1) if mark else None))
    return out


def _logical_lines(block: Block) -> list[tuple[int, str]]:
    """Lines joined at trailing backslashes; in a block with ``$ `` prompts, only the prompted commands."""
    prompted = any(t.lstrip().startswith("$ ") for _, t in block.lines)
    out: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, text in block.lines:
        if pending is None:
            if prompted:
                if not text.lstrip().startswith("$ "):
                    continue
                text = text.lstrip()[2:]
            pending = (number, "")
        body = text.rstrip()
        if body.endswith("\\"):
            pending = (pending[0], pending[1] + body[:-1] + " ")
            continue
        out.append((pending[0], pending[1] + body))
        pending = None
    if pending is not None:
        out.append(pending)
    return out


def _normalise(tokens: list[str]) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]] | None:
    """(argv, env) of a command we run, or None for other programs."""
    env = []
    while tokens and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", tokens[0]):
        name, _, value = tokens.pop(0).partition("=")
        env.append((name, value))
    if tokens[:1] == ["nice"]:
        tokens = tokens[1:]
        if tokens[:1] == ["-n"]:
            tokens = tokens[2:]
        elif tokens and re.fullmatch(r"-n?\d+", tokens[0]):
            tokens = tokens[1:]
    if not tokens:
        return None
    program = re.sub(r"^(\./)?\.venv/bin/", "", tokens[0])
    if program in ("python3", "python"):
        program = "python"
    args = tokens[1:]
    if program == "python" and args[:2] == ["-m", "qlib_crypto"]:
        program, args = "qlib-crypto", args[2:]
    if program in ("qlib-crypto", "qrun") or (program == "python" and args and args[0].startswith("scripts/")):
        return (program, *args), tuple(env)
    return None


def commands_of_block(block: Block) -> list[DocCommand]:
    out = []
    for number, text in _logical_lines(block):
        lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        try:
            tokens = list(lexer)
        except ValueError as exc:  # unbalanced quotes
            out.append(DocCommand(block.doc, number, text, (), error=f"not a shell command ({exc})"))
            continue
        if any(tok in ("|", "|&") for tok in tokens) and _normalise(list(tokens)) is not None:
            out.append(DocCommand(block.doc, number, text, (), error="a pipeline (`|`): not supported here"))
            continue
        parts: list[list[str]] = [[]]
        for tok in tokens:
            if tok in ("&&", "||", ";", "&"):
                parts.append([])
            else:
                parts[-1].append(tok)
        cwd = "."
        for part in parts:
            if not part:
                continue
            if part[0] == "cd" and len(part) == 2:  # `cd DIR && command`: the command runs in DIR
                cwd = os.path.normpath(os.path.join(cwd, part[1]))
                continue
            normal = _normalise(list(part))
            if normal is not None:
                out.append(DocCommand(block.doc, number, shlex.join(part), normal[0], normal[1], cwd=cwd))
    return out


def doc_commands(files=DOC_FILES) -> tuple[list[DocCommand], list[Block]]:
    """(commands to run, blocks marked not-run) of the docs, in document order."""
    cmds: list[DocCommand] = []
    skipped: list[Block] = []
    for doc in files:
        for block in blocks((REPO / doc).read_text(encoding="utf-8"), doc):
            if block.lang not in SHELL_LANGS:
                continue
            if block.not_run is not None:
                skipped.append(block)
                continue
            cmds.extend(commands_of_block(block))
    return cmds, skipped


COMMANDS, SKIPPED = doc_commands()


def rewritten(cmd: DocCommand) -> tuple[str, ...]:
    text = shlex.join(cmd.argv)
    for rw in REWRITES:
        text = re.sub(rw.pattern, rw.replacement, text)
    return tuple(shlex.split(text))


def placeholders(argv: tuple[str, ...]) -> list[str]:
    """Tokens that are placeholders rather than values (``...``, ``DIR``, ``<file>``)."""
    names = r"(^|[/=])(DIR|PATH|FILE|FILES|NAME|URL|ID|TS|DATE|N|X|TF|SPEC|COL|LIST)([/=]|$)"
    return [t for t in argv if "..." in t or re.search(names, t) or re.fullmatch(r"<[^>]+>", t)]


# ------------------------------------------------------------------------------------------------------
# the sandbox
# ------------------------------------------------------------------------------------------------------
def shrink_workflow(path: Path) -> None:
    """The shipped workflow with the sandbox's dates (train 2024-02-01 .. 03-10, valid .. 03-24, test 03-25 ..
    04-07) and a small model; everything else (records, backtest config, experiment, paths) unchanged."""
    import yaml

    conf = yaml.safe_load(path.read_text(encoding="utf-8"))
    handler = conf["task"]["dataset"]["kwargs"]["handler"]["kwargs"]
    hourly = handler["freq"] != "day"

    def at(day: str, hour: str) -> str:
        return f"{day} {hour}" if hourly else day

    handler.update(
        start_time="2024-02-01",
        end_time=at("2024-04-07", "23:00:00"),
        fit_start_time="2024-02-01",
        fit_end_time=at("2024-03-10", "23:00:00"),
    )
    if not hourly:
        handler["windows"] = [3, 5, 10]  # 67 days of daily bars
    conf["task"]["dataset"]["kwargs"]["segments"] = {
        "train": ["2024-02-01", at("2024-03-10", "23:00:00")],
        "valid": ["2024-03-11", at("2024-03-24", "23:00:00")],
        "test": ["2024-03-25", at("2024-04-07", "23:00:00")],
    }
    conf["task"]["model"]["kwargs"].update(
        num_boost_round=20, early_stopping_rounds=5, num_leaves=7, min_data_in_leaf=20
    )
    for record in conf["task"]["record"]:
        if record["class"] == "CryptoBacktestRecord":
            record["kwargs"]["config"]["backtest"].update(
                start_time="2024-03-25", end_time=at("2024-04-07", "22:00:00") if hourly else "2024-04-06"
            )
    for anchor in ("data_handler_config", "port_analysis_config"):
        conf.pop(anchor, None)
    path.write_text(yaml.safe_dump(conf, sort_keys=False), encoding="utf-8")


def _ohlcv(n: int, start: str, freq: str, seed: int):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    close = 40_000 * np.exp(np.cumsum(rng.normal(0, 0.004, n)))
    open_ = np.concatenate([[close[0]], close[:-1]])
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.002, n))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.002, n))
    volume = rng.uniform(10, 100, n)
    times = pd.date_range(start, periods=n, freq=freq, tz="UTC")
    return pd.DataFrame({"open": open_, "high": high, "low": low, "close": close, "volume": volume}, index=times)


def _btc_1h_csv(path: Path) -> None:
    """A plain OHLCV export: timestamp,open,high,low,close,volume (no quote volume)."""
    bars = _ohlcv(48, "2024-03-01", "h", 1)
    bars.index = bars.index.strftime("%Y-%m-%dT%H:%M:%SZ")
    bars.rename_axis("timestamp").to_csv(path)


def _klines_parquet(path: Path) -> None:
    """Two instruments in one file: symbol, open_time (epoch ms), OHLC, base_vol, quote_volume."""
    import pandas as pd

    frames = []
    for seed, symbol in enumerate(["BTC/USDT", "ETH/USDT:USDT"]):
        bars = _ohlcv(120, "2024-03-01", "min", seed)
        frame = bars.rename(columns={"volume": "base_vol"})
        frame["quote_volume"] = frame["base_vol"] * frame["close"]
        frame.insert(0, "open_time", (bars.index - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1))
        frame.insert(0, "symbol", symbol)
        frames.append(frame.reset_index(drop=True))
    pd.concat(frames).to_parquet(path, index=False)


def _eth_daily_csv(path: Path) -> None:
    """Daily bars (UTC days) exported in Berlin local time without an offset, no quote volume."""
    bars = _ohlcv(40, "2024-02-20", "D", 2)
    bars.index = bars.index.tz_convert("Europe/Berlin").strftime("%Y-%m-%d %H:%M:%S")
    bars.rename_axis("date").to_csv(path)


def _btc_funding_csv(path: Path) -> None:
    """Funding settlements every 8 hours: funding_time (ISO), funding_rate."""
    import numpy as np
    import pandas as pd

    times = pd.date_range("2023-12-01", periods=30, freq="8h", tz="UTC")
    rates = np.round(np.random.default_rng(3).normal(1e-4, 5e-5, len(times)), 8)
    pd.DataFrame({"funding_time": times.strftime("%Y-%m-%dT%H:%M:%SZ"), "funding_rate": rates}).to_csv(
        path, index=False
    )


#: files the docs' commands read, made in the sandbox's root
INPUT_FILES: dict[str, Callable[[Path], None]] = {
    "btc_1h.csv": _btc_1h_csv,
    "klines.parquet": _klines_parquet,
    "eth_daily.csv": _eth_daily_csv,
    "btc_funding.csv": _btc_funding_csv,
}


@dataclasses.dataclass
class Result:
    argv: tuple[str, ...]
    code: int
    output: str
    seconds: float


class Sandbox:
    """The sandbox directory and the helper process that runs commands in it."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.results: dict[str, Result] = {}
        self.count = 0
        self.log = root.parent / "commands.log"
        self.errors = root.parent / "helper-stderr.txt"
        with open(self.errors, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--serve"],
                cwd=root,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def expand(self, argv: tuple[str, ...]) -> tuple[str, ...]:
        """The shell's tilde expansion, with the sandbox's HOME."""
        home = self.root / "home"
        return tuple(str(home) if a == "~" else str(home / a[2:]) if a.startswith("~/") else a for a in argv)

    def execute(self, argv: tuple[str, ...], env: dict[str, str] | None = None, cwd: str = ".") -> Result:
        argv = self.expand(argv)
        self.count += 1
        out = self.root.parent / f"out-{self.count:03d}.txt"
        if self.proc.poll() is not None:
            raise AssertionError(f"the helper process is gone (exit {self.proc.returncode}):\n{_tail(self.errors)}")
        request = {"argv": list(argv), "env": env or {}, "out": str(out), "cwd": str(self.root / cwd)}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], COMMAND_TIMEOUT_S)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.proc.kill()
            raise AssertionError(
                f"{shlex.join(argv)}: no answer within {COMMAND_TIMEOUT_S} s (helper process "
                f"{'timed out' if not ready else 'died'}); output so far:\n{_tail(out)}\n{_tail(self.errors)}"
            )
        answer = json.loads(line)
        result = Result(argv, answer["code"], _tail(out, 6000), answer["seconds"])
        with open(self.log, "a", encoding="utf-8") as fh:
            fh.write(f"{result.seconds:7.1f} s  exit {result.code}  {shlex.join(argv)}\n")
        return result

    def run(self, key: str, argv: tuple[str, ...], env: dict[str, str] | None = None, cwd: str = ".") -> Result:
        """Run once per key (later calls return the first result)."""
        if key not in self.results:
            self.results[key] = self.execute(argv, env, cwd)
        return self.results[key]


def _tail(path: Path, limit: int = 3000) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return text if len(text) <= limit else "...\n" + text[-limit:]


def _provide_inputs(root: Path) -> None:
    for name, make in INPUT_FILES.items():
        make(root / name)


def _fixture_file(name: str) -> Path | None:
    """A file of this name under tests/fixtures/ (for docs that import files others keep there)."""
    found = sorted(p for p in (REPO / "tests" / "fixtures").rglob(name) if p.is_file())
    return found[0] if found else None


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    sys.path.insert(0, str(Path(__file__).parent))
    from okx_sim import OkxSimulator

    base = tmp_path_factory.mktemp("docs_commands")
    root = base / "work"
    (root / "home").mkdir(parents=True)
    shutil.copytree(REPO / "workflow_configs", root / "workflow_configs")
    for wf in sorted((root / "workflow_configs").glob("*.yaml")):
        shrink_workflow(wf)
    (root / "scripts").symlink_to(REPO / "scripts", target_is_directory=True)
    _provide_inputs(root)
    sim = OkxSimulator(now=SIM_NOW).start()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "QLIB_CRYPTO_")) and k not in ("PYTHONPATH",)
    }
    env.update(
        HOME=str(root / "home"),
        QLIB_CRYPTO_OKX_API_URL=sim.url,
        PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
    )
    box = Sandbox(root, env)
    try:
        for line in SETUP:
            argv = tuple(shlex.split(line))
            result = box.run(shlex.join(argv), argv)
            assert result.code == 0, f"sandbox setup `{line}` exited {result.code}:\n{result.output}"
        yield box
    finally:
        box.close()
        sim.stop()
        print(f"\ncommand times ({box.log}):\n" + _tail(box.log, 20000))


def run_in_order(box: Sandbox, upto: DocCommand) -> Result:
    """Run every doc command up to ``upto`` in document order (each once), so a test selected alone still sees
    the state the commands before it make; return ``upto``'s result."""
    for cmd in COMMANDS:
        if cmd.error is not None:
            continue
        argv = rewritten(cmd)
        if cmd.key not in box.results:
            for name in _missing_inputs(box.root, argv):
                found = _fixture_file(name)
                if found is not None:
                    shutil.copy(found, box.root / name)
            box.run(cmd.key, argv, dict(cmd.env), cmd.cwd)
        if cmd is upto:
            return box.results[cmd.key]
    raise AssertionError(f"{upto.where} is not a doc command")


def _missing_inputs(root: Path, argv: tuple[str, ...]) -> list[str]:
    """Positional file arguments of ``qlib-crypto import`` that the sandbox does not have."""
    if argv[:2] != ("qlib-crypto", "import"):
        return []
    out, skip = [], False
    for tok in argv[2:]:
        if skip:
            skip = False
            continue
        if tok.startswith("-"):
            skip = "=" not in tok and tok not in ("--funding", "--derive-amount", "--overwrite")
            continue
        if not (root / tok).exists():
            out.append(tok)
    return out


def _named_paths(argv: tuple[str, ...]) -> list[str]:
    return [argv[i + 1] for i, tok in enumerate(argv[:-1]) if tok in ("--out", "--store", "--qlib-dir", "--report")]


# ------------------------------------------------------------------------------------------------------
# the tests
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cmd", COMMANDS, ids=[f"{c.where} {' '.join(c.argv[:2])}" for c in COMMANDS])
def test_doc_command_runs(sandbox, cmd):
    assert cmd.error is None, (
        f"{cmd.where}: `{cmd.text}`: {cmd.error}; make it a command that runs, or mark its "
        "block <!-- not-run: reason --> and list it in NOT_RUN"
    )
    argv = rewritten(cmd)
    bad = placeholders(argv)
    assert not bad, (
        f"{cmd.where}: `{cmd.text}` has placeholders {bad}: make it a command that runs, or mark its "
        "block <!-- not-run: reason --> and list it in NOT_RUN"
    )
    result = run_in_order(sandbox, cmd)
    shown = "" if argv == cmd.argv else f" (run as `{shlex.join(argv)}`)"
    assert result.code == 0, f"{cmd.where}: `{cmd.text}`{shown} exited {result.code}:\n{result.output}"
    if "--help" in argv and "--help" not in cmd.argv:  # checked, not run: every option shown must exist
        for option in sorted({t.split("=")[0] for t in cmd.argv if t.startswith("--")}):
            assert re.search(rf"{re.escape(option)}\b", result.output), (
                f"{cmd.where}: `{cmd.text}`: {option} is not an option of {' '.join(cmd.argv[:2])}:\n{result.output}"
            )
    else:
        for path in _named_paths(sandbox.expand(argv)):
            full = Path(path) if Path(path).is_absolute() else sandbox.root / cmd.cwd / path
            assert full.exists(), f"{cmd.where}: `{cmd.text}` exited 0 but wrote no {path}:\n{result.output}"


def test_the_docs_show_the_commands_users_need():
    # a parser that finds nothing would make the test above vacuous
    keys = {c.key for c in COMMANDS}
    assert len(COMMANDS) >= 25
    for expected in (
        "qrun workflow_configs/workflow_config_lightgbm_crypto_60min.yaml",
        "qrun workflow_configs/workflow_config_lightgbm_crypto_day.yaml",
        "qlib-crypto demo",
    ):
        assert expected in keys
    assert {c.argv[1] for c in COMMANDS if c.argv[0] == "qlib-crypto"} >= {
        "collect",
        "import",
        "validate",
        "dump",
        "predict",
        "backtest",
        "sweep",
    }


def test_not_run_blocks_are_few_and_listed():
    found = {(b.doc, b.not_run) for b in SKIPPED}
    assert len(SKIPPED) <= MAX_NOT_RUN_BLOCKS, f"{len(SKIPPED)} blocks are marked not-run: {sorted(found)}"
    for block in SKIPPED:
        assert block.not_run, f"{block.doc}:{block.line}: a not-run mark needs a reason"
    assert found == set(NOT_RUN), f"marked in the docs: {sorted(found)}; listed in NOT_RUN: {sorted(NOT_RUN)}"


def test_a_failing_command_is_reported(sandbox):
    # the harness itself must see failures: an unknown option, a missing workflow file, a bad script argument
    for argv in (
        ("qlib-crypto", "dump", "--no-such-option"),
        ("qrun", "workflow_configs/no_such_workflow.yaml"),
        ("python", "scripts/walk_forward.py", "--step", "not-a-number"),
    ):
        result = sandbox.execute(argv)
        assert result.code != 0, f"{argv} exited 0:\n{result.output}"
        assert result.output.strip(), f"{argv} printed nothing"
    assert "no_such_workflow.yaml" in sandbox.execute(("qrun", "workflow_configs/no_such_workflow.yaml")).output


def test_backtest_reports_shows_the_shipped_workflow_blocks():
    """docs/backtest-reports.md quotes the 60min workflow's backtest blocks: they must be the file's."""
    import yaml

    text = (REPO / "docs" / "backtest-reports.md").read_text(encoding="utf-8")
    intro = text.index("The shipped workflows already use it")
    shown = next(
        b
        for b in blocks(text, "docs/backtest-reports.md")
        if b.lang == "yaml" and sum(len(t) + 1 for t in text.splitlines()[: b.line]) > intro
    )
    body = "\n".join(t for _, t in shown.lines)
    head, _, tail = body.partition("# ...")
    with open(REPO / "workflow_configs" / "workflow_config_lightgbm_crypto_60min.yaml", encoding="utf-8") as fh:
        shipped = yaml.safe_load(fh)
    doc_port = yaml.safe_load(head.replace("&port_analysis_config", "").replace("*benchmark", shipped["benchmark"]))
    assert doc_port["port_analysis_config"] == shipped["port_analysis_config"]
    doc_records = yaml.safe_load(re.sub(r"(?m)^    ", "", tail).replace("*port_analysis_config", "null"))["record"]
    records = shipped["task"]["record"]
    for record in records:
        if record["class"] == "CryptoBacktestRecord":
            record["kwargs"] = dict(record["kwargs"], config=None)
    assert doc_records == records


def test_every_rewrite_is_used():
    for rw in REWRITES:
        assert any(re.search(rw.pattern, shlex.join(c.argv)) for c in COMMANDS), f"stale rewrite {rw.pattern!r}"


MARKDOWN = """\
Intro `qlib-crypto inline` is not a block.

```bash
# a comment
.venv/bin/qlib-crypto dump --store data/store/okx \\
    --qlib-dir ~/.qlib/x --timeframe 1h   # trailing comment
python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/qlib-crypto demo
nice -n 10 python scripts/bench.py --n 3; mlflow ui
QLIB_CRYPTO_LOCK_TIMEOUT=0 qlib-crypto import "my file.csv" --store 's p'
cd sub && qrun ../wf.yaml
```

```
$ qrun workflow.yaml
{'IC': 0.04}
qlib-crypto is not prompted here
```

<!-- not-run: usage synopsis -->

```
qlib-crypto predict (--model PATH | --experiment NAME)
```

```python
import os  # qlib-crypto in Python is not a shell command
```
"""


def test_the_parser_on_a_sample():
    all_blocks = blocks(MARKDOWN, "x.md")
    assert [(b.lang, b.not_run) for b in all_blocks] == [
        ("bash", None),
        ("", None),
        ("", "usage synopsis"),
        ("python", None),
    ]
    cmds = [c for b in all_blocks[:2] for c in commands_of_block(b)]
    assert [(c.line, c.argv, c.env) for c in cmds] == [
        (5, ("qlib-crypto", "dump", "--store", "data/store/okx", "--qlib-dir", "~/.qlib/x", "--timeframe", "1h"), ()),
        (7, ("qlib-crypto", "demo"), ()),
        (8, ("python", "scripts/bench.py", "--n", "3"), ()),
        (9, ("qlib-crypto", "import", "my file.csv", "--store", "s p"), (("QLIB_CRYPTO_LOCK_TIMEOUT", "0"),)),
        (10, ("qrun", "../wf.yaml"), ()),
        (14, ("qrun", "workflow.yaml"), ()),
    ]
    assert [c.cwd for c in cmds] == [".", ".", ".", ".", "sub", "."]
    assert placeholders(("qlib-crypto", "predict", "--model", "PATH")) == ["PATH"]
    assert placeholders(("qlib-crypto", "collect", "...")) == ["..."]
    assert placeholders(("qlib-crypto", "collect", "--instruments", "BTC-USDT")) == []


# ------------------------------------------------------------------------------------------------------
# the helper process: ``python tests/test_docs_commands.py --serve``
# ------------------------------------------------------------------------------------------------------
def _entry_point(name: str):
    from importlib.metadata import entry_points

    (ep,) = [ep for ep in entry_points(group="console_scripts") if ep.name == name]
    if ep.value == "qlib_crypto.cli:console_main":  # main(), then the process ends (qlib_crypto/_exit.py): this
        from qlib_crypto.cli import main  # helper goes on, so it calls main() and keeps the exit code

        return main
    return ep.load()


def _call(argv: list[str]) -> int:
    """Run one command as its console script would, in this process; its exit code."""
    import runpy

    program, args = argv[0], argv[1:]
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    try:
        if program == "python":
            script = args[0]
            sys.argv = [script, *args[1:]]
            sys.path.insert(0, str(Path(script).parent.resolve()))
            runpy.run_path(script, run_name="__main__")
            return 0
        sys.argv = [program, *args]
        rv = _entry_point(program)()
        return rv if isinstance(rv, int) else 0
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except BaseException:  # noqa: BLE001 - report it as the command's failure
        import traceback

        traceback.print_exc()
        return 1
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path


def serve() -> None:
    """Read one JSON request per line on stdin, run it with stdout/stderr into its file, answer on stdout."""
    answer = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    cwd = os.getcwd()
    for line in sys.stdin:
        request = json.loads(line)
        start = time.perf_counter()
        saved_env = dict(os.environ)
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        with open(request["out"], "w", encoding="utf-8") as out:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(out.fileno(), 1)
            os.dup2(out.fileno(), 2)
            try:
                code = _call(request["argv"])
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(devnull, 1)
                os.dup2(devnull, 2)
                os.chdir(cwd)
                os.environ.clear()
                os.environ.update(saved_env)
        answer.write(json.dumps({"code": code, "seconds": round(time.perf_counter() - start, 2)}) + "\n")


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    serve()
