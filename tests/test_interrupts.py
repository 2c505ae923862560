"""Ctrl-C (SIGINT) or SIGTERM during `qrun` on our workflow, or during `qlib-crypto demo`, ends the MLflow run
KILLED (not RUNNING forever, nor FINISHED), also when stdout is a pipe whose reader is gone
(`qrun x.yaml | tee log`, then Ctrl-C kills tee too); a re-run afterwards works.

Each test starts a real process on a small provider, waits until LightGBM prints its first evaluation line
(training is under way), sends the signal and reads the run's final status from MLflow. Every process is
bounded by timeouts and killed in the end.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from test_handlers import daily_bars, synthetic_bars, write_provider  # noqa: E402
from test_workflow_e2e import CONFIG, INSTRUMENTS, QRUN, small_workflow  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

#: Run the command with SIGINT at its default, as a terminal starts it. A process started in the background of
#: a non-interactive shell (`bash .ci/run &`, `nohup`-style CI runners) ignores SIGINT, and an ignored signal
#: stays ignored across fork and exec: without this, pytest's children here would ignore the Ctrl-C under test.
AS_FROM_A_TERMINAL = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])",
]
MARKER = b"train's l2"  # LightGBM's evaluation log, printed every 20 rounds while it trains
EXPERIMENT = "crypto_lightgbm_60min"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("interrupts")
    bars = synthetic_bars(INSTRUMENTS, n_bars=60 * 24, seed=11)
    write_provider(tmp / "qlib" / "60min", bars, "60min")
    write_provider(tmp / "qlib" / "day", daily_bars(bars), "day")
    with open(CONFIG) as fh:
        conf = small_workflow(yaml.safe_load(fh))
    conf["task"]["dataset"]["kwargs"]["handler"]["kwargs"]["windows"] = [3]
    conf["task"]["record"] = [r for r in conf["task"]["record"] if r["class"] == "SignalRecord"]
    short = yaml.safe_load(yaml.safe_dump(conf))
    short["task"]["model"]["kwargs"].update(num_boost_round=5, early_stopping_rounds=5)
    (tmp / "short.yaml").write_text(yaml.safe_dump(short, sort_keys=False))
    # a model that trains for minutes: a tiny learning rate and no early stop
    conf["task"]["model"]["kwargs"].update(
        num_boost_round=1_000_000, early_stopping_rounds=1_000_000, learning_rate=1e-5
    )
    (tmp / "long.yaml").write_text(yaml.safe_dump(conf, sort_keys=False))
    return tmp


def statuses(mlruns: Path) -> dict[str, tuple[str, dict]]:
    """run id -> (status, tags) of every run of the workflow's experiment."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"file:{mlruns}")
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return {}
    return {r.info.run_id: (r.info.status, r.data.tags) for r in client.search_runs([exp.experiment_id])}


def wait_for_marker(proc: subprocess.Popen, timeout: float = 400) -> bytes:
    """Read the process's stdout until LightGBM's evaluation line appears (training under way)."""
    fd, seen, deadline = proc.stdout.fileno(), b"", time.monotonic() + timeout
    while MARKER not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no training output within {timeout} s: {seen[-2000:]!r}"
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, f"the process ended before training: {seen[-3000:]!r}"
            seen += chunk
    return seen


def drain_until_exit(proc: subprocess.Popen, timeout: float = 120) -> int:
    """Keep reading stdout (as a terminal would) until the process exits; its exit code."""
    fd, deadline = proc.stdout.fileno(), time.monotonic() + timeout
    while proc.poll() is None:
        assert time.monotonic() < deadline, "the process did not exit after the signal"
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            os.read(fd, 65536)
    return proc.wait()


def signal_state(pid: int) -> str:
    """The signal masks of a process and of each of its threads (/proc), for failure messages: a signal the
    process ignores (SigIgn) or blocks in every thread (SigBlk) never reaches its handler."""
    lines = []
    for status in [Path(f"/proc/{pid}/status"), *sorted(Path(f"/proc/{pid}/task").glob("*/status"))]:
        try:
            fields = dict(ln.split(":", 1) for ln in status.read_text().splitlines() if ln.startswith("Sig"))
        except OSError:
            continue
        lines.append(f"{status.parent.name}: " + " ".join(f"{k}={v.strip()}" for k, v in sorted(fields.items())))
    return "\n".join(lines)


def interrupt_qrun(workdir: Path, sig: int, *, close_pipe: bool) -> tuple[int, str, dict]:
    """Start qrun on long.yaml, signal it during training; (exit code, final status, tags) of the new run."""
    before = set(statuses(workdir / "mlruns"))
    err = workdir / f"qrun-{sig.name}-{'dead-pipe' if close_pipe else 'pipe'}.stderr"
    with open(err, "wb") as fh:
        proc = subprocess.Popen(
            [*AS_FROM_A_TERMINAL, str(QRUN), "long.yaml"], cwd=workdir, stdout=subprocess.PIPE, stderr=fh
        )
    state = ""
    try:
        wait_for_marker(proc)
        if close_pipe:  # the pipe's reader (tee) is gone before the process sees the signal
            proc.stdout.close()
        state = signal_state(proc.pid)
        proc.send_signal(sig)
        try:
            code = proc.wait(timeout=120) if close_pipe else drain_until_exit(proc)
        except (AssertionError, subprocess.TimeoutExpired) as exc:
            raise AssertionError(f"{exc}\nsignal masks before the signal:\n{state}\n{tail(err)}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    new = {k: v for k, v in statuses(workdir / "mlruns").items() if k not in before}
    assert len(new) == 1, new
    ((status, tags),) = new.values()
    if status != "KILLED":  # what the process did instead, for the failure message
        print(f"signal masks before the signal:\n{state}\n{tail(err)}")
    return code, status, tags


def tail(path: Path, n: int = 4000) -> str:
    try:
        return f"{path.name} (tail):\n" + path.read_bytes()[-n:].decode("utf-8", "replace")
    except OSError:
        return ""


def test_sigint_during_training_marks_the_run_killed(workdir):
    code, status, tags = interrupt_qrun(workdir, signal.SIGINT, close_pipe=False)
    assert status == "KILLED"
    assert tags.get("qlib_crypto.stopped_by") == "SIGINT"
    assert code == -signal.SIGINT  # Python's exit on an unhandled KeyboardInterrupt


def test_sigint_with_a_dead_pipe_marks_the_run_killed(workdir):
    """`qrun x.yaml | tee log` and Ctrl-C: tee dies too, so every print of qrun fails with a broken pipe."""
    code, status, tags = interrupt_qrun(workdir, signal.SIGINT, close_pipe=True)
    assert status == "KILLED"
    assert tags.get("qlib_crypto.stopped_by") == "SIGINT"
    assert code != 0


def test_sigterm_during_training_marks_the_run_killed_and_a_rerun_works(workdir):
    code, status, tags = interrupt_qrun(workdir, signal.SIGTERM, close_pipe=False)
    assert status == "KILLED"
    assert tags.get("qlib_crypto.stopped_by") == "SIGTERM"
    assert code == 128 + signal.SIGTERM
    # the same directory (./mlruns, Qlib's experiment lock inside it) runs a workflow to the end afterwards
    before = set(statuses(workdir / "mlruns"))
    proc = subprocess.run([str(QRUN), "short.yaml"], cwd=workdir, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    new = {k: v for k, v in statuses(workdir / "mlruns").items() if k not in before}
    assert [s for s, _ in new.values()] == ["FINISHED"]


def start_demo(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """`qlib-crypto demo ARGS` in ``tmp_path`` (the shipped workflows copied there unless already there), as from
    a terminal, leading its own process group; stdout piped, stderr in ``tmp_path/demo.stderr``."""
    (tmp_path / "workflow_configs").mkdir(exist_ok=True)
    for wf in (REPO / "workflow_configs").glob("*.yaml"):
        if not (tmp_path / "workflow_configs" / wf.name).exists():
            (tmp_path / "workflow_configs" / wf.name).write_text(wf.read_text())
    return subprocess.Popen(
        [*AS_FROM_A_TERMINAL, sys.executable, "-m", "qlib_crypto", "demo", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "demo.stderr", "wb"),  # noqa: SIM115 (the child holds it; closed with the test)
        start_new_session=True,
        env=env,
    )


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def _interrupt(proc: subprocess.Popen, how: str) -> None:
    """SIGTERM to the demo, or a terminal's Ctrl-C: SIGINT to its whole process group (it leads one here)."""
    if how == "sigterm-to-demo":
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGINT)


def _kill_all(proc: subprocess.Popen, pids: list[int]) -> None:
    """Never leave a process behind: the demo and its children, killed if still there, the demo reaped."""
    for pid in [proc.pid, *pids]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads child processes from /proc (Linux)")
@pytest.mark.parametrize("how", ["sigterm-to-demo", "ctrl-c-to-group"])
def test_interrupting_the_demo_during_qrun_marks_the_run_killed(tmp_path, how):
    """`qlib-crypto demo` runs qrun as a child. SIGTERM to the demo is passed on to qrun; a terminal's Ctrl-C
    (SIGINT to the whole process group) reaches both. Either way qrun's run ends KILLED, and the demo exits
    after it (143, or 130 as on any Ctrl-C) leaving no process behind."""
    proc = start_demo(tmp_path, "--instruments", "3")
    children: list[int] = []
    sig = signal.SIGTERM if how == "sigterm-to-demo" else signal.SIGINT
    try:
        wait_for_marker(proc, timeout=500)
        children = _children(proc.pid)
        assert children, "qrun should be running as the demo's child"
        state = "\n".join(signal_state(pid) for pid in [proc.pid, *children])
        _interrupt(proc, how)
        try:
            code = drain_until_exit(proc, timeout=180)
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\nsignal masks before the signal:\n{state}\n{tail(tmp_path / 'demo.stderr')}"
            ) from None
        alive = [pid for pid in children if Path(f"/proc/{pid}").exists()]  # before the clean-up below
    finally:
        _kill_all(proc, children)
    assert code == (128 + signal.SIGTERM if sig == signal.SIGTERM else 130)
    assert alive == []  # qrun ended and was reaped by the demo
    runs = statuses(tmp_path / "mlruns")
    assert [s for s, _ in runs.values()] == ["KILLED"], runs
    assert [t.get("qlib_crypto.stopped_by") for _, t in runs.values()] == [sig.name]


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads child processes from /proc (Linux)")
@pytest.mark.parametrize("how", ["sigterm-to-demo", "ctrl-c-to-group"])
def test_interrupting_the_demo_before_training_leaves_nothing_behind(tmp_path, how):
    """The demo starts its qrun child before the data steps (the child imports meanwhile, then waits to be told
    to go). Interrupted while it collects, the demo exits (130 on Ctrl-C; SIGTERM's default ends it at once) and
    its waiting child ends too: no process is left and no MLflow run was started."""
    proc = start_demo(tmp_path, "--instruments", "200")  # 200 instruments: a collect step of several seconds
    children: list[int] = []
    try:
        fd, seen, deadline = proc.stdout.fileno(), b"", time.monotonic() + 120
        while b"== 1/6 collect" not in seen or not children:
            assert time.monotonic() < deadline, f"the demo did not start collecting: {seen[-2000:]!r}"
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                chunk = os.read(fd, 65536)
                assert chunk, f"the demo ended early: {seen[-2000:]!r}{tail(tmp_path / 'demo.stderr')}"
                seen += chunk
            children = _children(proc.pid)
        _interrupt(proc, how)
        code = drain_until_exit(proc, timeout=60)
        deadline = time.monotonic() + 60  # the child may be finishing an import before it reads its stdin
        while any(Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid) for pid in children):
            assert time.monotonic() < deadline, f"the demo's qrun child outlived it: {children}"
            time.sleep(0.2)
    finally:
        _kill_all(proc, children)
    assert code == (-signal.SIGTERM if how == "sigterm-to-demo" else 130), tail(tmp_path / "demo.stderr")
    assert not (tmp_path / "mlruns").exists()
    assert "Traceback" not in (tmp_path / "demo.stderr").read_text()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:", 1)[1].split("\n", 1)[0].lower()
    except (OSError, IndexError):
        return "gone"


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads child processes from /proc (Linux)")
@pytest.mark.parametrize("how", ["sigterm-to-demo", "ctrl-c-to-group"])
def test_interrupting_the_demo_beside_qruns_records_marks_the_run_killed(tmp_path, how):
    """Once qrun has saved the model, the demo predicts, backtests and starts the sweep (a fork) while qrun
    writes its other records. Interrupted then (here qrun's next record takes minutes: tests/_slow_record.py),
    the demo passes the signal on, stops after its current step, ends the sweep, waits for qrun to end its run
    KILLED, and exits 143 or 130, leaving no process behind and no complete report set."""
    wf = REPO / "workflow_configs" / "workflow_config_lightgbm_crypto_60min.yaml"
    conf = yaml.safe_load(wf.read_text())
    records = conf["task"]["record"]
    at = [r["class"] for r in records].index("ModelArtifactRecord") + 1
    records.insert(at, {"class": "SlowRecord", "module_path": "_slow_record", "kwargs": {"seconds": 600}})
    (tmp_path / "workflow_configs").mkdir()
    (tmp_path / "workflow_configs" / wf.name).write_text(yaml.safe_dump(conf, sort_keys=False))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    proc = start_demo(tmp_path, "--instruments", "3", env=env)
    sig = signal.SIGTERM if how == "sigterm-to-demo" else signal.SIGINT
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 400
        while not list((tmp_path / "reports").glob("*.partial/signals_60min.parquet")):  # predict is done
            assert proc.poll() is None, f"the demo ended early:{tail(tmp_path / 'demo.stderr')}"
            assert time.monotonic() < deadline, "predict did not run beside qrun's records"
            time.sleep(0.05)
        while len(children := _children(proc.pid)) < 2:  # the sweep is forked right after predict
            assert time.monotonic() < deadline, "qrun and the forked sweep should be running"
            time.sleep(0.01)
        pids = [*children, *(g for c in children for g in _children(c))]
        _interrupt(proc, how)
        code = drain_until_exit(proc, timeout=180)
        alive = [pid for pid in pids if Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid)]
    finally:
        _kill_all(proc, pids)
    assert code == (128 + signal.SIGTERM if sig == signal.SIGTERM else 130), tail(tmp_path / "demo.stderr")
    assert alive == []
    runs = statuses(tmp_path / "mlruns")
    assert [s for s, _ in runs.values()] == ["KILLED"], runs
    assert [t.get("qlib_crypto.stopped_by") for _, t in runs.values()] == [sig.name]
    reports = tmp_path / "reports"
    assert not (reports / "latest").exists()
    assert [p.name.endswith(".partial") for p in reports.iterdir()] == [True]
