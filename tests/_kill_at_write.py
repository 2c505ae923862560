"""Run one ``qlib-crypto`` command and SIGKILL it at a chosen moment of writing its output directory.

    python tests/_kill_at_write.py MODE NEEDLE COMMAND ARGS...

MODE ``write:K``: kill just before the K-th ``os.replace`` (the rename that puts a written file in place) whose
destination path contains NEEDLE, so K - 1 files were completely written. MODE ``swap``: kill when the staged
directory is about to be swapped in (every file written). MODE ``between-renames``: force the rename fallback of
the swap (no ``renameat2``) and kill between its two renames (``out -> .out.old-*`` done, the staging directory
not yet renamed into place).
"""

import os
import signal
import sys


def _kill() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> int:
    mode, needle, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    if mode.startswith("write:"):
        k = int(mode.split(":", 1)[1])
        count = [0]
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if needle in os.fspath(dst):
                count[0] += 1
                if count[0] == k:
                    _kill()
            return real_replace(src, dst, *args, **kwargs)

        os.replace = replace
    elif mode == "swap":
        from qlib_crypto import _atomic

        def exchange(a, b):
            _kill()

        _atomic._exchange_dirs = exchange
    elif mode == "between-renames":
        from qlib_crypto import _atomic

        _atomic._exchange_dirs = lambda a, b: False
        real_rename = os.rename

        def rename(src, dst, *args, **kwargs):
            if ".staging-" in os.fspath(src) and needle in os.fspath(src):
                _kill()
            return real_rename(src, dst, *args, **kwargs)

        os.rename = rename
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    from qlib_crypto.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
