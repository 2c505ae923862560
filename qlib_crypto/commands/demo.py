"""``qlib-crypto demo``: the README's main job, offline on the embedded synthetic market.

synthetic market -> raw store (validated) -> Qlib provider (60min and day) -> LightGBM through the qrun
workflow (recorded in ./mlruns) -> BUY/SELL/HOLD signals -> crypto backtest report.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import click

WORKFLOW_60MIN = Path("workflow_configs") / "workflow_config_lightgbm_crypto_60min.yaml"
EXPERIMENT_60MIN = "crypto_lightgbm_60min"
#: Qlib's recorder logs every ``_QLIB_*`` environment variable as a run parameter: the demo's run stamp goes
#: there, so the demo finds the run its own qrun made (never "the latest run" of the experiment).
STAMP_PARAM = "_QLIB_CRYPTO_DEMO_RUN"
LATEST = "latest"
TEST_START, TEST_END = "2024-04-01", "2024-06-30 22:00"


def _step(title: str, quiet: bool) -> float:
    if not quiet:
        click.secho(f"\n== {title}", bold=True)
    return time.perf_counter()


def _done(seconds: float, quiet: bool) -> None:
    """A step's closing line: how long it took."""
    if not quiet:
        click.echo(f"   done in {seconds:.1f} s")


def _show(text: str, quiet: bool, keep: Callable[[str], bool]) -> None:
    """Print the lines of a step's output that ``keep`` selects (indented), unless quiet."""
    if quiet:
        return
    for line in text.splitlines():
        if keep(line):
            click.echo(f"   {line}")


def _run(argv: list[str], log: TextIO | None = None) -> str:
    """Run one qlib-crypto command in-process; its stdout goes to ``log`` (the run's demo.log) and is returned
    (the step prints a digest). A non-zero exit stops the demo, with the command's output shown."""
    return _finish_run(argv, *_call(_with_verbose(argv)), log)


def _call(argv: list[str]) -> tuple[int, str]:
    """``qlib-crypto ARGV`` in this process: its exit code and what it printed on stdout."""
    from ..cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(argv)
    return code, buf.getvalue()


def _with_verbose(argv: list[str]) -> list[str]:
    """``argv`` with ``--verbose`` in front when the demo itself was started with it."""
    root = click.get_current_context(silent=True)
    verbose = bool(root is not None and (root.find_root().obj or {}).get("verbose"))
    return ["--verbose", *argv] if verbose else list(argv)


def _finish_run(argv: list[str], code: int, text: str, log: TextIO | None) -> str:
    """Log a finished command's output; raise (the output shown) when it failed; else return the output."""
    from ..errors import QlibCryptoError

    if log is not None:
        log.write(f"$ qlib-crypto {' '.join(argv)}\n{text}\n")
        log.flush()
    if code == 130:  # the command was interrupted (Ctrl-C): so is the demo
        raise KeyboardInterrupt
    if code != 0:
        click.echo(text, nl=False)
        raise QlibCryptoError(
            f"demo step 'qlib-crypto {' '.join(argv)}' exited with code {code}",
            hint="see the message above; re-run the demo once fixed: finished steps are skipped or repeated cheaply",
        )
    return text


class _Forked:
    """One qlib-crypto command in a forked copy of this process (modules, Qlib's state and data caches are
    shared copy-on-write, so it starts at once), run alongside this process's next step. :meth:`wait` returns
    its exit code and stdout; :meth:`stop` ends it if it still runs (the demo was interrupted or failed). The
    child dies with this process (Linux: ``PR_SET_PDEATHSIG``); where ``fork`` is missing the command runs at
    :meth:`wait`, in this process."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = _with_verbose(argv)
        self.pid = 0
        self.fd = -1
        if not hasattr(os, "fork"):
            return
        sys.stdout.flush()
        sys.stderr.flush()
        read_fd, write_fd = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os.close(read_fd)
            _default_signals()  # not the parent's handlers (the demo's SignalForwarder): stop() ends it
            _die_with_parent(parent)
            code = 1
            try:
                code, text = _call(self.argv)
                with os.fdopen(write_fd, "wb") as fh:
                    fh.write(text.encode("utf-8"))
            except KeyboardInterrupt:
                code = 130
            except BaseException:  # noqa: BLE001 (reported; the parent sees the exit code)
                import traceback

                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        os.close(write_fd)
        self.pid, self.fd = pid, read_fd

    def wait(self) -> tuple[int, str]:
        """Its exit code and its stdout, once it has finished."""
        if not self.pid:  # no fork here: run it now
            return _call(self.argv)
        with os.fdopen(self.fd, "rb") as fh:
            self.fd = -1
            data = fh.read()
        _, status = os.waitpid(self.pid, 0)
        self.pid = 0
        return os.waitstatus_to_exitcode(status), data.decode("utf-8", errors="replace")

    def stop(self) -> None:
        """End the child if it still runs (after an error or an interrupt of this process) and reap it."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.pid:
            import signal

            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            os.waitpid(self.pid, 0)
            self.pid = 0


def _default_signals() -> None:
    """In a forked child: SIGTERM ends it, SIGINT raises KeyboardInterrupt (unless ignored, as in the parent)."""
    import signal

    for signum, handler in ((signal.SIGTERM, signal.SIG_DFL), (signal.SIGINT, signal.default_int_handler)):
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, handler)


def _die_with_parent(parent: int) -> None:
    """In a forked child: be sent SIGTERM when the parent dies (Linux), and end now if it already has."""
    import signal

    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(143)


def _tracking_uri(workflow: Path) -> str:
    """The MLflow tracking URI the workflow's qlib_init sets (a relative ``file:`` URI made absolute)."""
    from ruamel.yaml import YAML

    with open(workflow) as fh:
        config = YAML(typ="safe", pure=True).load(fh) or {}
    uri = str(((config.get("qlib_init") or {}).get("exp_manager") or {}).get("kwargs", {}).get("uri") or "file:mlruns")
    if uri.startswith("file:") and not uri.startswith("file:/"):
        uri = "file:" + str(Path(uri[len("file:") :]).resolve())
    return uri


#: qrun's own lines the demo shows while it trains (LightGBM's evaluation every 20 rounds, early stopping)
QRUN_SHOWN = re.compile(r"^(\[\d+\]\s|Training until |Early stopping|Did not meet early stopping)")

#: the child (qlib_crypto/commands/demo_qrun.py): our quiet console installed before Qlib's first import, then
#: Qlib's qrun entry point once the demo says go (the process then ends without the interpreter's teardown)
QRUN_CHILD = (
    "import sys\n"
    "try:\n"
    "    from qlib_crypto._quiet import install; install()\n"
    "    from qlib_crypto.commands.demo_qrun import main\n"
    "except KeyboardInterrupt:\n"
    "    raise SystemExit(130)\n"
    "from qlib_crypto._exit import exit_now\n"
    "sys.argv[0] = 'qrun'; exit_now(main(sys.argv[1:]))"
)


#: the warm-up process (qlib_crypto/data/warmup.py)
WARMUP_CHILD = (
    "import sys\n"
    "try:\n"
    "    from qlib_crypto.data.warmup import main\n"
    "except KeyboardInterrupt:\n"
    "    raise SystemExit(130)\n"
    "raise SystemExit(main(sys.argv[1:]))"
)


def _start_warmup(workflow: Path, quiet: bool) -> Any:
    """On numba's empty cache (the first run after an install), start compiling the feature kernels in a separate
    process (qlib_crypto/data/warmup.py), beside the data steps; None when they are cached already."""
    import subprocess

    from ..data.warmup import kernels_cached

    if kernels_cached():
        return None
    if not quiet:
        click.echo("numba's cache is empty (the first run after the install): the feature kernels compile now,")
        click.echo("beside steps 1-2, once; later runs load them from the cache")
    return subprocess.Popen(
        [sys.executable, "-c", WARMUP_CHILD, str(workflow)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


class _QrunChild:
    """``qrun WORKFLOW`` as a child process (Qlib's own entry point; qlib_crypto/commands/demo_qrun.py).

    Started before the data steps, so that its imports (Qlib, MLflow, LightGBM: several seconds) run on the
    other core while this process collects; it waits for :meth:`go`, then checks the workflow and trains. Its
    stdout is copied to ``log`` and, unless quiet, its training progress lines to the console; the check's
    lines are kept and shown if the check fails; stderr (warnings) passes through. The demo's stamp goes to the
    child's environment, where Qlib's recorder logs it as a run parameter. After :meth:`go`, SIGINT/SIGTERM are
    passed on to the child, which ends its MLflow run KILLED before the demo exits (qlib_crypto/_run_guard.py).
    """

    def __init__(self, workflow: Path, stamp: str, log: TextIO | None, quiet: bool) -> None:
        import subprocess

        self.workflow, self.log, self.quiet = workflow, log, quiet
        self.checked = threading.Event()  # the child printed demo_qrun.CHECK_OK
        self.saved = threading.Event()  # the child printed demo_qrun.MODEL_SAVED (or ended)
        self.model_run: str | None = None  # the MLflow run id it printed with MODEL_SAVED
        self.ended_at: float | None = None  # perf_counter() when its output ended
        self.started = threading.Event()  # go was sent: from then on the child's lines go to the log at once
        self.held: list[str] = []  # the child's lines before go, and the check's (shown when the check fails)
        self._lock = threading.Lock()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env[STAMP_PARAM] = stamp
        # LightGBM's OpenMP threads sleep when idle instead of spinning: on a 2-core machine with other load,
        # spinning threads made training many times slower; the wait policy changes no result (a user's own
        # setting is kept)
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        read_fd, write_fd = os.pipe()  # the child's stdout; drained by a thread while it runs (no pipe stall)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", QRUN_CHILD, str(workflow)], stdin=subprocess.PIPE, stdout=write_fd, env=env
            )
        finally:
            os.close(write_fd)  # the child holds its end: end of file when it exits
        self.reader = threading.Thread(
            target=self._tee, args=(os.fdopen(read_fd, encoding="utf-8", errors="replace"),), daemon=True
        )
        self.reader.start()

    def _tee(self, stream: Any) -> None:
        from .demo_qrun import CHECK_OK, MODEL_SAVED

        for line in stream:
            with self._lock:
                if not self.started.is_set() or not self.checked.is_set():
                    self.held.append(line)
                if line.rstrip("\n") == CHECK_OK:
                    self.checked.set()
                    continue
                if line.startswith(MODEL_SAVED + " "):
                    self.model_run = line[len(MODEL_SAVED) :].strip()
                    self.saved.set()
                    continue
                if self.started.is_set() and self.log is not None:
                    self.log.write(line)
            if self.checked.is_set() and not self.quiet and QRUN_SHOWN.match(line):
                click.echo("   " + line.rstrip("\n"))
        stream.close()
        self.ended_at = time.perf_counter()  # end of its output: the child has exited (or is about to)
        self.saved.set()  # the child ended: nobody waits for a model any more

    def go(self) -> None:
        """Let the child check the workflow and run it (the caller then waits, passing signals on)."""
        from .demo_qrun import GO

        with self._lock:
            if self.log is not None:
                self.log.write(f"$ qlib-crypto check {self.workflow} --quiet && qrun {self.workflow}\n")
                self.log.writelines(self.held)
                self.log.flush()
            self.started.set()
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(f"{GO}\n".encode())
            self.proc.stdin.close()
        except BrokenPipeError:
            pass  # the child has already ended: its exit code says why

    def ended(self) -> None:
        """After the child's exit: its output read to the end and logged."""
        self.reader.join(timeout=30)
        with self._lock:
            if self.log is not None:
                self.log.flush()

    def close(self) -> None:
        """Never leave the child behind: without go it ends on end of file; if it lingers, it is killed."""
        import subprocess

        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(timeout=5)


def _check_qrun(child: _QrunChild, code: int) -> None:
    """Raise (with what the child printed) unless the child's check and qrun succeeded (exit code 0)."""
    from ..errors import QlibCryptoError

    if code == 0:
        return
    workflow = child.workflow
    if not child.checked.is_set():  # the check failed (or the child could not start): show what it printed
        click.echo("".join(child.held), nl=False)
        raise QlibCryptoError(
            f"demo step 'qlib-crypto check {workflow} --quiet' exited with code {code}",
            hint="see the message above; re-run the demo once fixed: finished steps are skipped or repeated cheaply",
        )
    raise QlibCryptoError(
        f"qrun {workflow} exited with code {code}",
        hint="its output is in the run's demo.log; or run it by hand: .venv/bin/qrun " + str(workflow),
    )


#: what steps 4-6 import (mostly inside functions): imported while qrun computes features, in a thread of this process
LATER_MODULES = (
    "mlflow.tracking",
    "qlib.data",
    "qlib.workflow",
    "qlib.backtest",
    "qlib.contrib.model.gbdt",
    "qlib_crypto.data.handler",
    "qlib_crypto.workflow.predict",
    "qlib_crypto.workflow.backtest_record",
    "qlib_crypto.workflow.backtest_report",
    "qlib_crypto.strategy",
    "qlib_crypto.backtest",
    "qlib_crypto.commands.predict",
    "qlib_crypto.commands.backtest",
    "qlib_crypto.commands.sweep",
)


def _preimport_later_steps(start: threading.Event) -> None:
    """Import the modules of steps 4-6 (predict, backtest, sweep) ahead of them; nothing else. Waits for
    ``start`` (go sent to the qrun child): until LightGBM trains on both cores, the child uses one."""
    import importlib

    start.wait()

    for name in LATER_MODULES:
        with contextlib.suppress(Exception):  # a real problem shows when the step itself imports it
            importlib.import_module(name)


def _preloaded(preload: threading.Thread) -> None:
    """Wait for the preload thread; then set up this thread as importing Qlib here would have."""
    preload.join()
    _as_if_imported_here()


def _as_if_imported_here() -> None:
    """What importing Qlib does to the importing thread, for this one after the preload thread imported it.

    ``qlib.data.ops`` calls ``np.seterr(invalid="ignore")`` at import, and numpy's error state is per thread:
    imported in the preload thread, Qlib's setting would not reach this thread, where steps 4-6 run (and
    Qlib's indicators would print "invalid value encountered" warnings they never print otherwise)."""
    if "qlib.data.ops" in sys.modules:
        import numpy as np

        np.seterr(invalid="ignore")


class _LaterSteps:
    """Steps 4-6 for the model of one MLflow run: predict (signals of the test quarter), the backtest of those
    signals, and the cost sweep (in a forked copy of this process, beside the backtest).

    :meth:`run` runs them while qrun still writes its records (after its ``ModelArtifactRecord`` saved the
    model), keeping each command's output; :meth:`show` then prints and logs each step in order, running what
    has not run yet (all of it when the workflow saves no model artifact before its other records)."""

    def __init__(
        self, uri: str, qlib_60: Path, qlib_day: Path, partial: Path, run_dir: Path, log: TextIO | None
    ) -> None:
        """Outputs go to ``partial`` (the run's directory until it is complete, then ``run_dir``, the name shown)."""
        self.uri, self.qlib_60, self.qlib_day, self.log = uri, qlib_60, qlib_day, log
        self.partial, self.run_dir = partial, run_dir
        self.model_run: str | None = None  # the run whose model steps 4-6 ran with, ahead of step 3's end
        self.results: dict[str, tuple[int, str, float]] = {}  # step -> exit code, stdout, seconds
        self.sweep: _Forked | None = None
        self.t_sweep = 0.0

    def argv(self, step: str, rid: str) -> list[str]:
        signals = str(self.partial / "signals_60min.parquet")
        if step == "predict":
            return [
                "predict",
                "--experiment",
                EXPERIMENT_60MIN,
                "--run-id",
                rid,
                "--tracking-uri",
                self.uri,
                "--provider-dir",
                f"60min={self.qlib_60}",
                "--provider-dir",
                f"day={self.qlib_day}",
                "--freq",
                "60min",
                "--start",
                TEST_START,
                "--end",
                TEST_END,
                "--out",
                signals,
            ]
        # the backtest and the sweep read the same signals, provider and test period, for the same model run
        same = ["--signals", signals, "--provider-dir", str(self.qlib_60), "--freq", "60min"]
        same += ["--start", TEST_START, "--end", TEST_END, "--model-run", rid]
        if step == "backtest":
            return ["backtest", *same, "--slippage-bps", "2", "--out", str(self.partial / "backtest_60min")]
        return [
            "sweep",
            *same,
            "--fee-multipliers",
            "0,1",
            "--slippage-bps",
            "0,2",
            "--out",
            str(self.partial / "sweep_60min"),
        ]

    def _call(self, step: str, rid: str) -> int:
        t0 = time.perf_counter()
        code, text = _call(_with_verbose(self.argv(step, rid)))
        self.results[step] = (code, text, time.perf_counter() - t0)
        return code

    def _start_sweep(self, rid: str) -> None:
        self.t_sweep = time.perf_counter()
        self.sweep = _Forked(self.argv("sweep", rid))

    def run(self, rid: str, stop: Callable[[], bool]) -> None:
        """Predict, then start the sweep and backtest, for run ``rid``; stops after a failed step, or when
        ``stop()`` (an interrupt was received) says so."""
        self.model_run = rid
        if self._call("predict", rid) != 0 or stop():
            return
        self._start_sweep(rid)
        if not stop():
            self._call("backtest", rid)

    def _shown(self, step: str, rid: str, quiet: bool, keep: Callable[[str], bool], times: dict) -> None:
        if step not in self.results:
            self._call(step, rid)
        code, text, seconds = self.results[step]
        _show(_finish_run(self.argv(step, rid), code, text, self.log), quiet, keep)
        times[step] = seconds
        _done(seconds, quiet)

    def show(self, rid: str, quiet: bool, times: dict[str, float]) -> None:
        """Print steps 4-6 (running what has not run), log each command's output; raise on a failed step."""
        ahead = " (started while qrun wrote its records)" if "predict" in self.results else ""
        signals = self.run_dir / "signals_60min.parquet"
        _step(f"4/6 predict: test-period signals from run {rid} -> {signals}{ahead}", quiet)
        self._shown("predict", rid, quiet, lambda line: line.startswith("wrote "), times)
        if self.sweep is None:
            self._start_sweep(rid)
        _step(
            "5/6 backtest: the signals with CryptoExchange + CryptoExecutor -> "
            f"{self.run_dir / 'backtest_60min'}{ahead}",
            quiet,
        )
        self._shown("backtest", rid, quiet, lambda line: line.startswith(("backtest ", "{")), times)
        _step(
            f"6/6 sweep: the same backtest over fee and slippage levels -> {self.run_dir / 'sweep_60min'} "
            "(started with step 5)",
            quiet,
        )
        assert self.sweep is not None
        out = _finish_run(self.argv("sweep", rid), *self.sweep.wait(), self.log)
        _show(out, quiet, lambda line: line.startswith("["))
        times["sweep"] = time.perf_counter() - self.t_sweep
        _done(times["sweep"], quiet)

    def stop(self) -> None:
        """End the forked sweep if it still runs (the demo failed or was interrupted)."""
        if self.sweep is not None:
            self.sweep.stop()


def _find_run(uri: str, experiment: str, stamp: str) -> Any:
    """The finished MLflow run of ``experiment`` whose ``_QLIB_CRYPTO_DEMO_RUN`` parameter is ``stamp``."""
    from mlflow.tracking import MlflowClient

    from ..errors import QlibCryptoError

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = (
        []
        if exp is None
        else client.search_runs(
            [exp.experiment_id], filter_string=f"params.{STAMP_PARAM} = '{stamp}' and attributes.status = 'FINISHED'"
        )
    )
    if len(runs) != 1:
        raise QlibCryptoError(
            f"found {len(runs)} finished runs of experiment {experiment!r} with {STAMP_PARAM}={stamp} in {uri}",
            hint="the workflow did not record its run there; check its qlib_init.exp_manager",
        )
    return runs[0]


def _copy_artifacts(run: Any, artifact: str, dest: Path) -> bool:
    """Copy a local run's artifact directory to ``dest``; False when the artifacts are not on this machine."""
    import shutil
    from urllib.parse import unquote, urlparse

    parsed = urlparse(run.info.artifact_uri)
    if parsed.scheme not in ("", "file"):
        return False
    src = Path(unquote(parsed.path)) / artifact
    if not src.is_dir():
        return False
    shutil.copytree(src, dest)
    return True


def _point_latest(reports: Path, stamp: str) -> Path:
    """``REPORTS/latest`` -> ``REPORTS/<stamp>`` (a relative symlink, replaced atomically); where symlinks are
    not allowed, ``REPORTS/latest.txt`` names the run directory instead."""
    link = reports / LATEST
    tmp = reports / f".{LATEST}.{os.getpid()}"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(stamp, tmp, target_is_directory=True)
        os.replace(tmp, link)
        return link
    except OSError:
        from .._atomic import atomic_write_text

        atomic_write_text(reports / f"{LATEST}.txt", stamp + "\n")
        return reports / stamp


def _stamp() -> str:
    """``YYYYMMDD-HHMMSS-<pid>`` (UTC): sorts by time; two demos started in the same second differ."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{os.getpid()}"


@click.command("demo")
@click.option(
    "--instruments",
    default=20,
    show_default=True,
    type=click.IntRange(2, 200),
    help="Number of synthetic instruments (BTC-USDT first, then a mix of spot and -SWAP swaps).",
)
@click.option("--seed", default=7, show_default=True, help="Seed of the synthetic market.")
@click.option("--start", default="2023-01-01", show_default=True, help="First bar (UTC, inclusive).")
@click.option("--end", default="2024-07-01", show_default=True, help="End (UTC, exclusive).")
@click.option(
    "--data-dir",
    default="data",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the store and the Qlib provider go (the workflow files expect the default).",
)
@click.option(
    "--reports-dir",
    default="reports",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the reports go: one REPORTS/<stamp>/ directory per run, REPORTS/latest points to the newest.",
)
@click.option("--skip-research", is_flag=True, help="Stop after the Qlib provider (no model, signals or backtest).")
@click.option("--quiet", is_flag=True, help="Print only the final summary.")
def command(
    instruments: int, seed: int, start: str, end: str, data_dir: str, reports_dir: str, skip_research: bool, quiet: bool
) -> int:
    """Run the whole chain offline on the synthetic market (run it from the repository root).

    \b
    1. collect   synthetic 1h bars, funding and metadata -> DATA/store/synthetic (validated)
    2. dump      Qlib provider DATA/qlib/synthetic/60min and .../day (day built from the 1h bars)
    3. qrun      workflow_configs/workflow_config_lightgbm_crypto_60min.yaml (LightGBM on CryptoAlpha158,
                 IC analysis, crypto backtest, 24/7 risk figures), recorded in ./mlruns
    4. predict   signals for the test period from the model that step 3 trained (its MLflow run, checked by the
                 run stamp) -> REPORTS/<stamp>/signals_60min.parquet
    5. backtest  those signals with CryptoExchange + CryptoExecutor -> REPORTS/<stamp>/backtest_60min/report.html
    6. sweep     the same backtest without and with fees (x0, x1) and slippage (0, 2 bps): what each cost
                 takes from the gross return -> REPORTS/<stamp>/sweep_60min (run alongside step 5)

    Steps 4-6 start as soon as qrun has saved the model, while it writes its other records; their output is
    shown after step 3's.

    Each run writes its reports under REPORTS/<stamp>/ (<stamp> = UTC start time and process id): the three
    above, training_60min/ (the run's training report), demo.log (every step's full output) and run.json
    (the MLflow run id of the model, the files). The directory is named <stamp>.partial until the run is
    complete; REPORTS/latest then points to it. Runs never share or overwrite each other's reports.

    Re-running is cheap for the data steps: the collector fetches only what is missing.

    \b
    Example:
      qlib-crypto demo
      qlib-crypto demo --instruments 10 --skip-research
    """
    data = Path(data_dir)
    reports = Path(reports_dir)
    store = data / "store" / "synthetic"
    qlib_60 = data / "qlib" / "synthetic" / "60min"
    qlib_day = data / "qlib" / "synthetic" / "day"
    t_all = time.perf_counter()
    times: dict[str, float] = {}
    stamp = _stamp()
    run_dir = reports / stamp
    partial = reports / f"{stamp}.partial"
    log: TextIO | None = None
    if not skip_research:
        if not WORKFLOW_60MIN.exists():
            from ..errors import ConfigError

            raise ConfigError(
                f"workflow file {str(WORKFLOW_60MIN)!r} not found in {str(Path.cwd())!r}",
                hint="run the demo from the repository root, or pass --skip-research",
            )
        partial.mkdir(parents=True)
        log = open(partial / "demo.log", "w", encoding="utf-8")  # noqa: SIM115  # closed in the finally below
    child: _QrunChild | None = None
    warmup: Any = None
    try:
        if not skip_research:
            # the qrun child first: its imports (about 6 s) are what the data steps must not wait for
            child = _QrunChild(WORKFLOW_60MIN, stamp, log, quiet)  # imports while the data steps run; waits for go
            warmup = _start_warmup(WORKFLOW_60MIN, quiet)  # the first run after an install: compile the kernels
        t0 = _step(f"1/6 collect: {instruments} synthetic instruments, 1h bars, {start} .. {end} -> {store}", quiet)
        out = _run(
            [
                "collect",
                "--source",
                "synthetic",
                "--instruments",
                str(instruments),
                "--seed",
                str(seed),
                "--timeframe",
                "1h",
                "--start",
                start,
                "--end",
                end,
                "--store",
                str(store),
                "--quiet",
            ],
            log,
        )
        _show(out, quiet, lambda line: line.startswith(("collected ", "store ")))
        times["collect"] = time.perf_counter() - t0
        _done(time.perf_counter() - t0, quiet)

        t0 = _step(f"2/6 dump: Qlib provider -> {qlib_60} and {qlib_day}", quiet)
        out = _run(["dump", "--store", str(store), "--qlib-dir", str(qlib_60), "--timeframe", "1h"], log)
        out += _run(
            ["dump", "--store", str(store), "--qlib-dir", str(qlib_day), "--timeframe", "1d", "--from-timeframe", "1h"],
            log,
        )
        _show(out, quiet, lambda line: not line.startswith(" "))
        times["dump"] = time.perf_counter() - t0
        _done(time.perf_counter() - t0, quiet)

        if not skip_research:
            assert child is not None
            t0 = _step(f"3/6 qrun {WORKFLOW_60MIN} (features, LightGBM, IC, backtest; recorded in ./mlruns)", quiet)
            uri = _tracking_uri(WORKFLOW_60MIN)
            # while the child checks the workflow and computes the features (one core), this process imports
            # what steps 4-6 need (MLflow, Qlib...: about 4 s) on the other
            preload = threading.Thread(target=_preimport_later_steps, args=(child.started,), daemon=True)
            preload.start()
            if warmup is not None:
                warmup.wait()  # its kernels compiled and cached: qrun loads them instead of compiling them again
            later = _LaterSteps(uri, qlib_60, qlib_day, partial, run_dir, log)
            from .._run_guard import SignalForwarder

            try:
                # SIGINT/SIGTERM reach the child, which ends its MLflow run KILLED; this process stops after it
                with SignalForwarder(child.proc) as forwarder:
                    child.go()  # the check (paths, dates, classes and arguments) before training, then qrun
                    code = forwarder.wait(until=child.saved)
                    if code is None and child.model_run:
                        # the model is saved; while qrun writes its other records (one core), steps 4-5 run
                        # here and the sweep in a fork: their output is shown after step 3's
                        _preloaded(preload)
                        later.run(child.model_run, stop=lambda: bool(forwarder.received))
                    if code is None:
                        code = forwarder.wait()
                child.ended()
                _check_qrun(child, code)
                _preloaded(preload)
                run = _find_run(uri, EXPERIMENT_60MIN, stamp)
                rid = run.info.run_id
                m = run.data.metrics
                if not quiet:
                    click.echo(
                        f"   MLflow run {rid} ({run.data.tags.get('mlflow.runName', '')}) in experiment "
                        f"{EXPERIMENT_60MIN}"
                    )
                    click.echo(
                        f"   test quarter: IC {m.get('IC', float('nan')):.4f}, rank IC "
                        f"{m.get('Rank IC', float('nan')):.4f}; long/short backtest total return "
                        f"{m.get('backtest.total_return', float('nan')):+.2%} after costs"
                    )
                _copy_artifacts(run, "training_report", partial / "training_60min")
                times["qrun"] = (child.ended_at or time.perf_counter()) - t0
                _done(times["qrun"], quiet)
                if later.model_run not in (None, rid):
                    from ..errors import QlibCryptoError

                    raise QlibCryptoError(
                        f"qrun saved its model in run {later.model_run}, but run {rid} has this demo's stamp",
                        hint="re-run the demo",
                    )
                later.show(rid, quiet, times)
            finally:
                later.stop()

            from .._atomic import atomic_write_text

            manifest = {
                "stamp": stamp,
                "experiment": EXPERIMENT_60MIN,
                "recorder_id": rid,
                "run_name": run.data.tags.get("mlflow.runName"),
                "tracking_uri": uri,
                "workflow": str(WORKFLOW_60MIN),
                "provider": {"60min": str(qlib_60), "day": str(qlib_day)},
                "store": str(store),
                "test": [TEST_START, TEST_END],
                "seconds": {k: round(v, 1) for k, v in times.items()},
                "files": sorted(str(p.relative_to(partial)) for p in partial.rglob("*") if p.is_file()) + ["run.json"],
            }
            atomic_write_text(partial / "run.json", json.dumps(manifest, indent=2) + "\n")
    finally:
        if warmup is not None and warmup.poll() is None:
            warmup.kill()
            warmup.wait()
        if child is not None:
            child.close()
        if log is not None:
            log.close()
    latest = None
    if not skip_research:
        os.replace(partial, run_dir)  # complete: only now under its final name
        latest = _point_latest(reports, stamp)

    click.secho(f"\nqlib-crypto demo finished in {time.perf_counter() - t_all:.0f} s", bold=True)
    if times and not quiet:
        click.echo("  step times       " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
    click.echo(f"  raw store        {store}   (qlib-crypto validate --store {store})")
    click.echo(f"  Qlib provider    {qlib_60}  and  {qlib_day}")
    click.echo(
        "  load it          import qlib_crypto; qlib_crypto.init({'60min': '%s', 'day': '%s'})" % (qlib_60, qlib_day)
    )
    click.echo("                   from qlib.data import D; D.features(['BTC-USDT'], ['$close'], freq='60min')")
    if not skip_research:
        click.echo(f"  workflows        qrun {WORKFLOW_60MIN}   (and ..._day.yaml)")
        click.echo(
            f"  recorder         MLflow run {rid} of experiment {EXPERIMENT_60MIN}: "
            "mlflow ui --backend-store-uri ./mlruns --host 127.0.0.1"
        )
        click.echo(f"  this run         {run_dir}/   ({latest} points to it; run.json names the model's run)")
        click.echo(f"  signals          {run_dir / 'signals_60min.parquet'}")
        click.echo(f"  backtest report  {run_dir / 'backtest_60min' / 'report.html'}")
        click.echo(f"  cost sweep       {run_dir / 'sweep_60min' / 'sweep.html'}")
        click.echo(f"  training report  {run_dir / 'training_60min'}/   (all steps' output: {run_dir / 'demo.log'})")
    return 0
