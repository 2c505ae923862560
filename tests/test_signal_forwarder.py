"""qlib_crypto._run_guard.SignalForwarder: the demo's way of waiting for, and working beside, its qrun child.

Each case runs in a fresh Python (signal handlers are per process): a parent with a child that records the
signals it gets in a file, then exits."""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    import signal, sys, time
    log = sys.argv[1]
    def note(signum, frame):
        open(log, "a").write(signal.Signals(signum).name + "\\n")
        sys.exit(0)
    signal.signal(signal.SIGTERM, note)
    signal.signal(signal.SIGINT, note)
    print("ready", flush=True)
    time.sleep(60)
    """
)


def _parent(tmp_path, body: str) -> subprocess.CompletedProcess:
    code = textwrap.dedent(
        f"""
        import os, signal, subprocess, sys, threading, time
        from qlib_crypto._run_guard import SignalForwarder
        # SIGINT as a terminal starts a process (a background job of a non-interactive shell, as CI may be,
        # ignores it, and SignalForwarder leaves an ignored signal ignored)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        log = {str(tmp_path / "child.log")!r}
        child = subprocess.Popen([sys.executable, "-c", {CHILD!r}, log], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        """
    ) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_sigterm_is_passed_on_at_once_and_raised_after_the_child_ended(tmp_path):
    proc = _parent(
        tmp_path,
        """
        with SignalForwarder(child, grace=30) as f:
            os.kill(os.getpid(), signal.SIGTERM)  # noted, not raised here: the work goes on
            print("work went on", f.received == [signal.SIGTERM], flush=True)
            print("child code", f.wait(), flush=True)
        print("never here")
        """,
    )
    assert proc.returncode == 143, proc.stderr
    assert proc.stdout.splitlines() == ["work went on True", "child code 0"]
    assert (tmp_path / "child.log").read_text() == "SIGTERM\n"


def test_sigint_reaches_the_child_after_the_grace_and_raises_keyboardinterrupt(tmp_path):
    proc = _parent(
        tmp_path,
        """
        t0 = time.monotonic()
        try:
            with SignalForwarder(child, grace=0.5) as f:
                os.kill(os.getpid(), signal.SIGINT)
                f.wait()
        except KeyboardInterrupt:
            print("KeyboardInterrupt, after the grace:", time.monotonic() - t0 >= 0.5)
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "KeyboardInterrupt, after the grace: True"
    assert (tmp_path / "child.log").read_text() == "SIGINT\n"


def test_wait_returns_none_once_the_event_is_set_and_the_code_at_exit(tmp_path):
    proc = _parent(
        tmp_path,
        """
        event = threading.Event()
        threading.Timer(0.3, event.set).start()
        with SignalForwarder(child) as f:
            print("until", f.wait(until=event), child.poll() is None, flush=True)
            child.terminate()
            print("exit", f.wait(), flush=True)
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["until None True", "exit 0"]


def test_an_error_of_our_own_ends_the_child_with_sigterm_and_propagates(tmp_path):
    proc = _parent(
        tmp_path,
        """
        try:
            with SignalForwarder(child):
                raise ValueError("our own bug")
        except ValueError as exc:
            print("raised", exc, "child code", child.returncode, flush=True)
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "raised our own bug child code 0"
    assert (tmp_path / "child.log").read_text() == "SIGTERM\n"
