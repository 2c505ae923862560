"""qlib_crypto._exit.exit_now: a process ended without the interpreter's teardown still does what a normal exit
does that matters (threads joined, atexit handlers run, buffered output flushed) and exits with its code."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_exit_now_joins_threads_runs_atexit_flushes_and_keeps_the_code(tmp_path):
    marker = tmp_path / "thread-done"
    code = textwrap.dedent(
        f"""
        import atexit, sys, threading, time
        from concurrent.futures import ThreadPoolExecutor
        from qlib_crypto._exit import exit_now

        def late_write():
            time.sleep(0.3)
            open({str(marker)!r}, "w").write("written")

        threading.Thread(target=late_write).start()  # non-daemon: a normal exit waits for it
        pool = ThreadPoolExecutor(2)  # left open, as MLflow leaves its artifact uploaders: its idle workers
        pool.submit(time.sleep, 0.01).result()  # (non-daemon threads) are told to stop, never waited for forever
        atexit.register(lambda: print("atexit ran", flush=False))
        sys.stdout.write("buffered, no newline")  # stdout is a pipe: block-buffered until flushed
        sys.stderr.write("err line\\n")
        exit_now(7)
        print("never printed")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 7
    assert proc.stdout == "buffered, no newlineatexit ran\n"
    assert proc.stderr == "err line\n"
    assert marker.read_text() == "written"


def test_the_console_entry_point_exits_with_the_commands_code(tmp_path):
    """``python -m qlib_crypto`` goes through console_main: a bad store path is exit code 2 with its message."""
    proc = subprocess.run(
        [sys.executable, "-m", "qlib_crypto", "validate", "--store", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert str(tmp_path / "nowhere") in proc.stderr
