"""`qlib-crypto check WORKFLOW.yaml`: the shipped workflows are clean; each kind of mistake in a mutated copy is
reported on one line with the YAML path of the key and its line in the file.

The provider is written here (2 instruments, the demo's calendar 2023-01-01 .. 2024-06-30 23:00, hourly and
daily) at `data/qlib/synthetic/...` of a scratch directory, so the shipped workflows' relative paths resolve
from there, as from the repository root after `qlib-crypto demo`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_handlers import daily_bars, synthetic_bars, write_provider  # noqa: E402

from qlib_crypto.workflow.check import _KwargsAnalyzer, check_workflow  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WF_60 = REPO / "workflow_configs" / "workflow_config_lightgbm_crypto_60min.yaml"
WF_DAY = REPO / "workflow_configs" / "workflow_config_lightgbm_crypto_day.yaml"
CAL_START, CAL_END = pd.Timestamp("2023-01-01"), pd.Timestamp("2024-07-01")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A directory laid out like the repository root after the demo (provider only)."""
    tmp = tmp_path_factory.mktemp("check")
    n = int((CAL_END - CAL_START) / pd.Timedelta(hours=1))
    bars = synthetic_bars(["BTC-USDT", "ETH-USDT-SWAP"], n_bars=n, start=str(CAL_START.date()), seed=3)
    write_provider(tmp / "data/qlib/synthetic/60min", bars, "60min")
    write_provider(tmp / "data/qlib/synthetic/day", daily_bars(bars), "day")
    return tmp


def cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`python -m qlib_crypto check ARGS` in a new process started in ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "qlib_crypto", "check", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def cli_here(monkeypatch, capsys):
    """`qlib-crypto check ARGS` through the console script's entry point (``qlib_crypto.cli:main``) in this
    process, from ``cwd``: the same command, exit code and output as :func:`cli` without a new Python importing
    Qlib, MLflow and LightGBM again (test_every_problem_printed_and_exit_code_2 runs a real process)."""
    from qlib_crypto.cli import main

    def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        code = main(["check", *args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["qlib-crypto", "check", *args], code, out, err)

    return run


def mutate(root: Path, source: Path, old: str, new: str, name: str = "wf.yaml") -> tuple[Path, int]:
    """A copy of ``source`` with ``old`` replaced once by ``new``; returns it and the 1-based line of ``new``."""
    text = source.read_text()
    assert text.count(old) == 1, old
    text = text.replace(old, new)
    path = root / name
    path.write_text(text)
    return path, text[: text.index(new)].count("\n") + 1


def only_problem(report, yaml_path: str) -> str:
    lines = [p.format(report.file) for p in report.problems]
    assert len(lines) == 1, lines
    assert f": {yaml_path}: " in lines[0], lines
    return lines[0]


# ------------------------------------------------------------------------------------------------------
# the shipped workflows, through the command line
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("workflow", [WF_60, WF_DAY], ids=["60min", "day"])
def test_shipped_workflows_are_clean(root, workflow, cli_here):
    proc = cli_here([str(workflow)], root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok (" in proc.stdout
    freq = "60min" if "60min" in workflow.name else "day"
    assert f"provider {freq}={root / 'data/qlib/synthetic' / freq}" in proc.stdout


def test_every_problem_printed_and_exit_code_2(root):
    text = WF_60.read_text()
    text = text.replace("slippage_bps: 2.0", "slipage_bps: 2.0").replace("label_norm: rank", "label_nrom: rank")
    (root / "two.yaml").write_text(text)
    proc = cli(["two.yaml"], root)
    assert proc.returncode == 2  # ConfigError's exit code
    out = proc.stdout.splitlines()
    lines = text.splitlines()
    exch = next(i for i, ln in enumerate(lines, 1) if "slipage_bps" in ln)
    label = next(i for i, ln in enumerate(lines, 1) if "label_nrom" in ln)
    assert out == [
        f"two.yaml:{label}: data_handler_config.label_nrom: unknown argument of CryptoAlpha158 "
        "(did you mean label_norm?)",
        f"two.yaml:{exch}: port_analysis_config.backtest.exchange.kwargs.slipage_bps: unknown argument of "
        "CryptoExchange (did you mean slippage_bps?)",
    ]
    assert "2 problems" in proc.stderr


def test_yaml_syntax_error_names_file_and_line(root, cli_here):
    good = WF_60.read_text().splitlines()
    i = next(i for i, ln in enumerate(good) if ln.startswith("experiment_name:"))
    bad = good[:i] + ["  experiment_name: [oops"] + good[i + 1 :]
    (root / "syntax.yaml").write_text("\n".join(bad) + "\n")
    proc = cli_here(["syntax.yaml"], root)
    assert proc.returncode == 2
    first = proc.stdout.splitlines()[0]
    assert first.startswith("syntax.yaml:") and "YAML syntax error" in first
    line = int(first.split(":")[1])
    assert i + 1 <= line <= i + 3  # the broken line or where the parser notices it


def test_relative_provider_from_another_directory(root, cli_here):
    sub = root / "elsewhere"
    sub.mkdir(exist_ok=True)
    proc = cli_here([str(WF_60)], sub)
    assert proc.returncode == 2
    (line,) = proc.stdout.splitlines()
    assert ": qlib_init.provider_uri.60min: provider directory 'data/qlib/synthetic/60min' not found" in line
    assert f"current directory {str(sub)!r}" in line
    # the workflow is in the repository, whose root has no data/: no "exists under" claim
    assert "exists under" not in line


def test_relative_provider_found_under_the_workflow_directory(root):
    wf = root / "wf_here.yaml"
    wf.write_text(WF_60.read_text())
    sub = root / "data"  # started one level too deep
    report = check_workflow(wf, cwd=sub)
    line = only_problem(report, "qlib_init.provider_uri.60min")
    assert f"current directory {str(sub)!r}" in line and f"it exists under {str(root)!r}" in line


# ------------------------------------------------------------------------------------------------------
# one test per kind of problem (in process: the classes are imported once)
# ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "old, new, yaml_path, message",
    [
        (
            "slippage_bps: 2.0",
            "slipage_bps: 2.0",
            "port_analysis_config.backtest.exchange.kwargs.slipage_bps",
            "unknown argument of CryptoExchange (did you mean slippage_bps?)",
        ),
        (
            "label_norm: rank",
            "label_nrom: rank",
            "data_handler_config.label_nrom",
            "unknown argument of CryptoAlpha158 (did you mean label_norm?)",
        ),
        (
            "rebalance_every: 6 ",
            "rebalance_evry: 6 ",
            "port_analysis_config.strategy.kwargs.rebalance_evry",
            "unknown argument of LongShortStrategy (did you mean rebalance_every?)",
        ),
        (
            "max_leverage: 3.0",
            "max_leverag: 3.0",
            "port_analysis_config.executor.kwargs.max_leverag",
            "unknown argument of CryptoExecutor (did you mean max_leverage?)",
        ),
        (
            "ann_scaler: 8760",
            "ann_scalar: 8760",
            "task.record[3].kwargs.ann_scalar",
            "unknown argument of SigAnaRecord (did you mean ann_scaler?)",
        ),
        (
            "out_dir: reports/training_60min",
            "outdir: reports/training_60min",
            "task.record[2].kwargs.outdir",
            "unknown argument of TrainingReportRecord (did you mean out_dir?)",
        ),
        (
            "default_exp_name: crypto",
            "default_exp: crypto",
            "qlib_init.exp_manager.kwargs.default_exp",
            "unknown argument of MLflowExpManager (did you mean default_exp_name?)",
        ),
        (
            "limit_threshold: null",
            "limit_treshold: null",
            "qlib_init.limit_treshold",
            "unknown qlib.init setting (did you mean limit_threshold?)",
        ),
        (
            "        account: 1000000",
            "        acount: 1000000",
            "port_analysis_config.backtest.acount",
            "unknown backtest setting of CryptoBacktestRecord (did you mean account?)",
        ),
        (
            "class: LongShortStrategy",
            "class: LongShortStrategee",
            "port_analysis_config.strategy.class",
            "'LongShortStrategee' not found in module 'qlib_crypto.strategy' (did you mean LongShortStrategy?)",
        ),
        (
            "module_path: qlib.contrib.model.gbdt",
            "module_path: qlib.contrib.model.gbdtx",
            "task.model.module_path",
            "module 'qlib.contrib.model.gbdtx' not found (for LGBModel); check the spelling, or install it",
        ),
        ("    record:\n", "    recrod:\n", "task.recrod", "unknown task key (did you mean record?)"),
    ],
    ids=[
        "exchange",
        "handler",
        "strategy",
        "executor",
        "record",
        "our-record",
        "exp-manager",
        "qlib-init",
        "backtest-key",
        "class",
        "module",
        "task-key",
    ],
)
def test_unknown_names(root, old, new, yaml_path, message):
    wf, line = mutate(root, WF_60, old, new)
    report = check_workflow(wf, cwd=root)
    text = only_problem(report, yaml_path)
    assert text.startswith(f"{wf}:{line}: ")
    assert text.endswith(message)


def test_segment_outside_the_calendar(root):
    wf, line = mutate(root, WF_60, "test: [2024-04-01, 2024-06-30 23:00:00]", "test: [2024-04-01, 2024-07-30 23:00:00]")
    text = only_problem(check_workflow(wf, cwd=root), "task.dataset.kwargs.segments.test[1]")
    assert text.startswith(f"{wf}:{line}: ")
    # the calendar written by the fixture: first and last bar
    assert "2024-07-30 23:00 is outside the 60min calendar (2023-01-01 .. 2024-06-30 23:00)" in text


def test_segment_outside_the_handler_range(root):
    wf, _ = mutate(root, WF_60, "train: [2023-01-01, 2023-12-31 23:00:00]", "train: [2022-12-01, 2023-12-31 23:00:00]")
    report = check_workflow(wf, cwd=root)
    lines = [p.format(report.file) for p in report.problems]
    # before the calendar's first bar, and so also before the handler's start_time
    assert any(
        ": task.dataset.kwargs.segments.train[0]: segment train start 2022-12-01 is outside" in ln for ln in lines
    )
    wf, _ = mutate(
        root,
        WF_60,
        "    end_time: 2024-06-30 23:00:00\n    fit_start_time",
        "    end_time: 2024-05-31 23:00:00\n    fit_start_time",
    )
    text = only_problem(check_workflow(wf, cwd=root), "task.dataset.kwargs.segments.test")
    assert "not inside the handler's start_time .. end_time (2023-01-01 .. 2024-05-31 23:00)" in text


def test_backtest_date_outside_the_calendar(root):
    wf, line = mutate(root, WF_60, "        end_time: 2024-06-30 22:00:00", "        end_time: 2024-08-30 22:00:00")
    text = only_problem(check_workflow(wf, cwd=root), "port_analysis_config.backtest.end_time")
    assert text.startswith(f"{wf}:{line}: ") and "backtest end_time 2024-08-30 22:00 is outside" in text


def test_benchmark_not_in_the_provider(root):
    wf, _ = mutate(root, WF_60, "benchmark: &benchmark BTC-USDT", "benchmark: &benchmark BTC-USD")
    text = only_problem(check_workflow(wf, cwd=root), "port_analysis_config.backtest.benchmark")
    # the alias *benchmark is written in the backtest block; its value comes from the anchor's line
    assert (
        "benchmark 'BTC-USD' is not an instrument of the 60min provider" in text and "(did you mean BTC-USDT?)" in text
    )


def test_frequency_without_provider_directory(root):
    wf, line = mutate(root, WF_60, "    freq: 60min\n    label_norm", "    freq: 15min\n    label_norm")
    report = check_workflow(wf, cwd=root)
    lines = [p.format(report.file) for p in report.problems]
    handler = [ln for ln in lines if ": data_handler_config.freq: " in ln]
    assert handler == [
        f"{wf}:{line}: data_handler_config.freq: the handler's frequency '15min' has no provider "
        "directory (qlib_init.provider_uri provides: 60min); add '15min: <directory dumped at 15min>' "
        "to provider_uri"
    ]


def test_provider_without_the_calendar_of_its_frequency(root):
    wf, _ = mutate(root, WF_60, "60min: data/qlib/synthetic/60min", "60min: data/qlib/synthetic/day")
    text = only_problem(check_workflow(wf, cwd=root), "qlib_init.provider_uri.60min")
    assert "has no calendar for frequency 60min (calendars/60min.txt; it has: day)" in text


def test_missing_market_file(root):
    wf, _ = mutate(root, WF_60, "market: &market all", "market: &market top20")
    text = only_problem(check_workflow(wf, cwd=root), "data_handler_config.instruments")
    assert "market 'top20' has no instruments/top20.txt" in text and "(it has: all)" in text


def test_start_after_end(root):
    wf, _ = mutate(root, WF_60, "        start_time: 2024-04-01 00:00:00", "        start_time: 2024-07-01 00:00:00")
    report = check_workflow(wf, cwd=root)
    lines = [p.format(report.file) for p in report.problems]
    assert any("backtest start_time 2024-07-01 is after end_time 2024-06-30 22:00" in ln for ln in lines), lines


def test_demo_stops_before_training_on_a_bad_workflow(tmp_path):
    """The demo checks the workflow before qrun: a typo stops it with exit code 2, before any MLflow run."""
    (tmp_path / "workflow_configs").mkdir()
    text = WF_60.read_text().replace("slippage_bps: 2.0", "slipage_bps: 2.0")
    (tmp_path / "workflow_configs" / WF_60.name).write_text(text)
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.run(
        [sys.executable, "-m", "qlib_crypto", "demo", "--instruments", "2", "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (
        "port_analysis_config.backtest.exchange.kwargs.slipage_bps: unknown argument of CryptoExchange" in proc.stdout
    )
    assert not (tmp_path / "mlruns").exists()


# ------------------------------------------------------------------------------------------------------
# the keyword analysis on classes written here
# ------------------------------------------------------------------------------------------------------
class Base:
    def __init__(self, a=1, b=2):
        self.a, self.b = a, b


class Child(Base):
    def __init__(self, c=3, **kwargs):
        super().__init__(**kwargs)
        self.c = c


class Popper(Base):
    def __init__(self, **kwargs):
        self.x = kwargs.pop("x", None)
        for key, default in (("y", 0), ("z", 1)):
            kwargs.setdefault(key, default)
            kwargs.pop(key)
        super().__init__(a=0, **kwargs)  # a is set here: not the caller's


class Open:
    def __init__(self, n=1, **kwargs):
        self.params = dict(kwargs)  # anything goes (as LGBModel's LightGBM parameters)


class Ignores:
    def __init__(self, n=1, **kwargs):
        self.n = n  # extra keywords are accepted and ignored


class Builder(Base):
    def __init__(self, d=4, **kwargs):
        self._build(kwargs=kwargs)

    def _build(self, kwargs):
        self.e = kwargs.get("e")
        super().__init__(**kwargs)


def test_kwargs_analysis_follows_super_and_methods():
    kw = _KwargsAnalyzer()
    assert kw.accepted(Base) == {"a", "b"}
    assert kw.accepted(Child) == {"a", "b", "c"}
    assert kw.accepted(Popper) == {"x", "y", "z", "b"}
    assert kw.accepted(Open) is None
    assert kw.accepted(Ignores) == {"n"}
    assert kw.accepted(Builder) == {"a", "b", "d", "e"}


def test_demo_stops_its_waiting_qrun_child_when_a_data_step_fails(tmp_path):
    """The demo starts its qrun child before collecting (the child imports meanwhile). A failing data step
    ends the demo with the step's error; the child, never told to go, ends without an MLflow run and without
    being left behind."""
    (tmp_path / "workflow_configs").mkdir()
    (tmp_path / "workflow_configs" / WF_60.name).write_text(WF_60.read_text())
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "qlib_crypto",
            "demo",
            "--instruments",
            "2",
            "--start",
            "2024-07-01",
            "--end",
            "2024-01-01",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "2024-07-01" in proc.stderr  # the collect step's message names the bad date
    assert not (tmp_path / "mlruns").exists()
    left = []
    for cwd in Path("/proc").glob("[0-9]*/cwd"):
        try:
            if cwd.resolve() == tmp_path.resolve():
                left.append(cwd.parent.name)
        except OSError:
            continue
    assert left == [], f"processes left running in the demo's directory: {left}"


def test_demo_child_preimports_every_module_path_of_the_workflow(tmp_path):
    from qlib_crypto.commands.demo_qrun import _module_paths

    wf = tmp_path / "wf.yaml"
    wf.write_text(
        "a: {class: X, module_path: pkg.b}\n"
        "b: [{class: Y, module_path: pkg.a}, {module_path: pkg.b}, {module_path: ./local_file.py}]\n"
        "c: {d: {e: {module_path: pkg.c}}}\n"
    )
    assert _module_paths(str(wf)) == ["pkg.a", "pkg.b", "pkg.c"]  # sorted, once each; file paths left to qrun
    (tmp_path / "bad.yaml").write_text("a: [unclosed\n")
    assert _module_paths(str(tmp_path / "bad.yaml")) == []  # the check reports the syntax error
