"""MLflow runs of our workflows: meaningful run names, and a KILLED status when the process is interrupted.

Qlib names every recorder ``mlflow_recorder``, and ends a run only on an ``Exception`` (``R.start``) or through
its ``sys.excepthook`` / ``atexit`` hooks: Ctrl-C (``KeyboardInterrupt`` is not an ``Exception``) ends the run
FAILED, or FINISHED when stdout is a closed pipe (``qrun x.yaml | tee log``: Qlib's excepthook dies on
``print``, then its ``atexit`` hook ends the run FINISHED); SIGTERM kills the process with the run RUNNING
forever.

:func:`guard_active_run` is called by our workflow components (the crypto handlers, which ``qrun`` builds
before training, and our record templates) while a Qlib recorder is active. It

- names the run ``<workflow> | <freq> | test <start>..<end>`` (tag ``mlflow.runName``, what the MLflow UI
  shows), unless the run already has a name other than Qlib's default;
- once per process (main thread only), installs handlers for SIGINT and SIGTERM that note which run was
  active and then behave as before (SIGINT raises ``KeyboardInterrupt``; SIGTERM raises ``SystemExit(143)``
  instead of killing the process outright, so the stack unwinds), and an ``atexit`` hook, run before
  Qlib's and MLflow's, that ends that run through Qlib (``R.end_exp``) and marks it KILLED in MLflow, with the
  tag ``qlib_crypto.stopped_by`` = ``SIGINT``/``SIGTERM``. A run that finished anyway stays FINISHED.

:class:`SignalForwarder` passes SIGINT/SIGTERM on to a child process (the demo's ``qrun``) while the parent
waits for it or works beside it, and waits for the child to end its run before the parent exits.
"""

from __future__ import annotations

import atexit
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

QLIB_DEFAULT_RUN_NAME = "mlflow_recorder"
RUN_NAME_TAG = "mlflow.runName"
STOPPED_BY_TAG = "qlib_crypto.stopped_by"
SIGNALS = ("SIGINT", "SIGTERM")

_lock = threading.Lock()
_installed: dict[int, Any] = {}  # signum -> previous handler
_hit: dict[str, Any] = {}  # the run active when the first signal arrived: signum, uri, run_id, experiment
_named: set[str] = set()  # run ids named by this process


# ------------------------------------------------------------------------------------------------------
# names
# ------------------------------------------------------------------------------------------------------
def _short(value: Any) -> str:
    """``2024-04-01`` or ``2024-04-01 05:00``; empty for an open end (None)."""
    import pandas as pd

    if value is None:
        return ""
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        return str(value)
    if ts is pd.NaT:
        return str(value)
    return ts.strftime("%Y-%m-%d") if ts == ts.normalize() else ts.strftime("%Y-%m-%d %H:%M")


def workflow_name(argv: Sequence[str] | None = None, fallback: str | None = None) -> str | None:
    """The workflow's name from the command line: the first ``*.yaml``/``*.yml`` argument's file name
    without ``workflow_config_`` (``lightgbm_crypto_60min``); ``fallback`` when there is none."""
    for arg in (sys.argv if argv is None else argv)[1:]:
        if arg.endswith((".yaml", ".yml")):
            stem = Path(arg).stem
            return stem[len("workflow_config_") :] if stem.startswith("workflow_config_") else stem
    return fallback


def run_name(
    task: Any, workflow: str | None = None, *, freq: str | None = None, test: Any = None, kind: str = "test"
) -> str | None:
    """``<workflow> | <freq> | test <start>..<end>`` from a qrun task (``dataset.kwargs.segments.test`` and the
    handler's ``freq``), or from ``freq``/``test`` given directly; None when nothing is known."""
    if isinstance(task, dict):
        dataset = task.get("dataset")
        dkw = dataset.get("kwargs", {}) if isinstance(dataset, dict) else {}
        dkw = dkw if isinstance(dkw, dict) else {}
        handler = dkw.get("handler")
        hkw = handler.get("kwargs", {}) if isinstance(handler, dict) else {}
        if freq is None and isinstance(hkw, dict) and hkw.get("freq") is not None:
            freq = str(hkw["freq"])
        segments = dkw.get("segments")
        if test is None and isinstance(segments, dict):
            test = segments.get("test")
    parts = [p for p in (workflow, freq) if p]
    if isinstance(test, (list, tuple)) and len(test) == 2:
        parts.append(f"{kind} {_short(test[0])}..{_short(test[1])}")
    return " | ".join(parts) if parts else None


def name_run(recorder: Any, name: str | None) -> bool:
    """Give ``recorder``'s MLflow run the name ``name`` if it still has Qlib's default name. True if named."""
    if not name or recorder is None:
        return False
    current = getattr(recorder, "name", None)
    if current not in (None, QLIB_DEFAULT_RUN_NAME) and current != name:
        return False
    client, run_id = getattr(recorder, "client", None), getattr(recorder, "id", None)
    if client is None or run_id is None:
        return False
    try:
        client.set_tag(run_id, RUN_NAME_TAG, name)
    except Exception:  # a read-only or remote store: the name is a convenience, never a failure
        return False
    recorder.name = name
    _named.add(run_id)
    return True


def _task_of(recorder: Any) -> Any:
    try:
        return recorder.load_object("task")
    except Exception:  # not a qrun/TrainerR recorder
        return None


def name_recorder(recorder: Any) -> bool:
    """Name a recorder of one of our workflows from what it holds (see :func:`run_name`): the ``task`` that
    ``qrun``/``TrainerR`` save, or, for the merged walk-forward recorder, its ``freq``/``step_bars`` params
    and the range of its ``pred.pkl``."""
    if recorder is None or getattr(recorder, "id", None) in _named:
        return False
    if getattr(recorder, "name", None) not in (None, QLIB_DEFAULT_RUN_NAME):
        return False
    workflow = workflow_name(fallback=_experiment_name(recorder))
    task = _task_of(recorder)
    if isinstance(task, dict):
        return name_run(recorder, run_name(task, workflow))
    try:
        params = recorder.list_params()
    except Exception:
        return False
    if "step_bars" not in params:
        return False
    try:
        pred = recorder.load_object("pred.pkl")
        times = pred.index.get_level_values("datetime")
        test = (times.min(), times.max())
    except Exception:
        test = None
    return name_run(recorder, run_name(None, workflow, freq=params.get("freq"), test=test, kind="walk-forward test"))


def _experiment_name(recorder: Any) -> str | None:
    try:
        return recorder.client.get_experiment(recorder.experiment_id).name
    except Exception:
        return None


# ------------------------------------------------------------------------------------------------------
# interrupts
# ------------------------------------------------------------------------------------------------------
def _active_recorder() -> Any:
    if "qlib.workflow" not in sys.modules:
        return None
    try:
        from qlib.workflow import R

        exp = R.exp_manager.active_experiment
        return getattr(exp, "active_recorder", None) if exp is not None else None
    except Exception:  # Qlib not initialised
        return None


def _on_signal(signum: int, frame: Any) -> None:
    if not _hit:
        rec = _active_recorder()
        if rec is not None and getattr(rec, "id", None) is not None:
            _hit.update(signum=signum, uri=getattr(rec, "uri", None), run_id=rec.id)
    previous = _installed.get(signum)
    if callable(previous):
        previous(signum, frame)
        return
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def _finish() -> None:
    """atexit: end the run a signal interrupted (KILLED), unless it finished anyway."""
    if not _hit:
        return
    for name in SIGNALS:  # a second Ctrl-C must not cut this short
        try:
            signal.signal(getattr(signal, name), signal.SIG_IGN)
        except (ValueError, OSError):
            pass
    run_id, uri, signum = _hit.get("run_id"), _hit.get("uri"), _hit.get("signum")
    rec = _active_recorder()
    if rec is not None and getattr(rec, "id", None) == run_id:
        try:
            from qlib.workflow import R
            from qlib.workflow.recorder import Recorder

            R.end_exp(recorder_status=Recorder.STATUS_FA)  # Qlib's own path: pending logs, mlflow.end_run
        except Exception:
            pass
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        if client.get_run(run_id).info.status == "FINISHED":
            return  # the interrupt was handled and the run completed
        client.set_terminated(run_id, "KILLED")
        client.set_tag(run_id, STOPPED_BY_TAG, signal.Signals(signum).name)
    except Exception:
        return
    try:
        print(
            f"qlib-crypto: {signal.Signals(signum).name}: MLflow run {run_id} marked KILLED",
            file=sys.stderr,
            flush=True,
        )
    except (OSError, ValueError):  # stderr closed (a dead pipe)
        pass


def install_signal_handlers() -> bool:
    """Install the SIGINT/SIGTERM handlers and the atexit hook (main thread only; signals set to be ignored
    stay ignored). True when installed."""
    if threading.current_thread() is not threading.main_thread():
        return False
    with _lock:
        for name in SIGNALS:
            signum = getattr(signal, name)
            if signum in _installed:
                continue
            previous = signal.getsignal(signum)
            if previous in (signal.SIG_IGN, None) or previous is _on_signal:
                continue
            try:
                signal.signal(signum, _on_signal)
            except (ValueError, OSError):
                continue
            _installed[signum] = previous
        # (re-)register last, so it runs before the hooks Qlib's init and MLflow registered
        atexit.unregister(_finish)
        atexit.register(_finish)
    return bool(_installed)


def guard_active_run() -> None:
    """Called by our workflow components: when a Qlib recorder is active, name its run and make sure an
    interrupt ends it KILLED. Does nothing outside a recorder."""
    rec = _active_recorder()
    if rec is None:
        return
    install_signal_handlers()
    try:
        name_recorder(rec)
    except Exception:
        pass


def guard_recorder(recorder: Any) -> None:
    """Called by our record templates with their recorder (active or not, e.g. the merged walk-forward one)."""
    if _active_recorder() is not None:
        install_signal_handlers()
    try:
        name_recorder(recorder)
    except Exception:
        pass


# ------------------------------------------------------------------------------------------------------
# a child process that ends cleanly on SIGINT / SIGTERM
# ------------------------------------------------------------------------------------------------------
class SignalForwarder:
    """While this process waits for, or works beside, ``proc`` (a child that must end its MLflow run on an
    interrupt: the demo's ``qrun``), SIGINT and SIGTERM to this process are noted and passed on to the child.

    SIGTERM is passed on at once; SIGINT (which a terminal's Ctrl-C also sends to the child, in the same process
    group) after ``grace`` seconds if the child still runs. The child then gets up to ``wait`` seconds to finish
    its cleanup before it is killed. Nothing is raised in the middle of this process's work: work done beside
    the child checks :attr:`received` between its steps. On leaving the ``with`` block the child is waited for
    (on an exception of our own it is sent SIGTERM first: its run ends KILLED, never RUNNING), the handlers are
    restored, and a received signal is raised: ``KeyboardInterrupt`` (SIGINT) or ``SystemExit(143)`` (SIGTERM).
    """

    def __init__(self, proc: subprocess.Popen, *, grace: float = 5.0, wait: float = 120.0) -> None:
        self.proc, self.grace, self.wait_limit = proc, grace, wait
        self.received: list[int] = []
        self._first: float | None = None
        self._forwarded_int = False
        self._previous: dict[int, Any] = {}

    def _note(self, signum: int, frame: Any) -> None:
        self.received.append(signum)
        if self._first is None:
            self._first = time.monotonic()
        if signum != signal.SIGINT:
            self._send(signum)

    def _send(self, signum: int) -> None:
        try:
            self.proc.send_signal(signum)
        except ProcessLookupError:
            pass

    def __enter__(self) -> SignalForwarder:
        if threading.current_thread() is threading.main_thread():
            for name in SIGNALS:
                signum = getattr(signal, name)
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._note)
        return self

    def wait(self, until: threading.Event | None = None) -> int | None:
        """The child's exit code once it has ended; or None as soon as ``until`` is set (no signal received)."""
        while True:
            try:
                return int(self.proc.wait(timeout=0.2))
            except subprocess.TimeoutExpired:
                pass
            if self._first is None:
                if until is not None and until.is_set():
                    return None
                continue
            waited = time.monotonic() - self._first
            if signal.SIGINT in self.received and not self._forwarded_int and waited > self.grace:
                self._forwarded_int = True
                self._send(signal.SIGINT)
            if waited > self.grace + self.wait_limit:
                self.proc.kill()
                return int(self.proc.wait())

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if self.proc.poll() is None:
                if exc_type is not None and not self.received:  # an error of our own: the child's run ends KILLED
                    self._first = time.monotonic()
                    self._send(signal.SIGTERM)
                self.wait()
        finally:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
            if self.proc.poll() is None:  # never leave the child behind
                self.proc.kill()
                self.proc.wait()
        if self.received and exc_type is None:
            if self.received[0] == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + self.received[0])


__all__ = [
    "SignalForwarder",
    "guard_active_run",
    "guard_recorder",
    "install_signal_handlers",
    "name_recorder",
    "name_run",
    "run_name",
    "workflow_name",
]
