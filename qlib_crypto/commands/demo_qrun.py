"""The demo's ``qrun`` child: Qlib's own ``qrun`` entry point, started early so its imports overlap the data steps.

``qlib-crypto demo`` starts this child before it collects (``python -c QRUN_CHILD WORKFLOW``). The child
installs our quiet console, imports Qlib's workflow machinery (``qlib.cli.run``, MLflow) and every module the
workflow names (LightGBM, the handler, the records), then waits for one line on its standard input: the demo
writes ``go`` once the provider is written. The child then checks the workflow (``qlib-crypto check``: the
check's own imports are already done) and, when it is clean, prints :data:`CHECK_OK` and runs ``qrun
WORKFLOW`` through ``qlib.cli.run.run``, in this process; once the workflow's ``ModelArtifactRecord`` has
saved the model it prints :data:`MODEL_SAVED` with the run id (the demo then predicts, backtests and sweeps
while qrun writes its other records). Anything else on its standard input (the demo
stopped, or failed before the provider was written: end of file) ends the child at once, with code
:data:`CANCELLED`, before any MLflow run exists.

Exit codes: 0 qrun finished; 2 the check found problems (printed on standard output, before any training);
:data:`CANCELLED` no ``go``; 130 interrupted before ``go``; otherwise qrun's own.
"""

from __future__ import annotations

import importlib
import sys
import warnings

GO = "go"
#: printed by the child once the workflow checked clean, just before qrun starts
CHECK_OK = "qlib-crypto demo: workflow checked clean; qrun starts"
#: printed by the child, with the MLflow run id, once the workflow's ModelArtifactRecord has saved the model
MODEL_SAVED = "qlib-crypto demo: model saved in run"
CANCELLED = 3


def _module_paths(workflow: str) -> list[str]:
    """Every ``module_path`` string of the workflow YAML (sorted, without repeats); none when it does not parse
    (the check will say why)."""
    try:
        from ruamel.yaml import YAML

        with open(workflow, encoding="utf-8") as fh:
            data = YAML(typ="safe", pure=True).load(fh)
    except Exception:  # noqa: BLE001 (reported by the check, with the file and line)
        return []
    found: set[str] = set()
    stack = [data]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            path = node.get("module_path")
            if isinstance(path, str) and path and not path.endswith(".py"):
                found.add(path)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return sorted(found)


def preimport(workflow: str) -> None:
    """Import what ``qrun WORKFLOW`` will import: Qlib's workflow entry point and the workflow's modules.

    A module that fails to import is skipped here: the check reports it, as a problem of the YAML."""
    import qlib.cli.run  # noqa: F401 (Qlib, MLflow, the recorder)

    from ..workflow import check  # noqa: F401

    for path in _module_paths(workflow):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importlib.import_module(path)
        except Exception:  # noqa: BLE001,S112 (the check names the bad module_path, with its YAML line)
            continue


def main(argv: list[str]) -> int:
    """The child's body (see the module docstring); ``argv`` is ``[WORKFLOW]``."""
    (workflow,) = argv
    try:
        preimport(workflow)
        line = sys.stdin.readline()
    except KeyboardInterrupt:  # Ctrl-C while the demo was still collecting: nothing to clean up
        return 130
    if line.strip() != GO:
        return CANCELLED
    from ..cli import main as cli_main

    code = cli_main(["check", workflow, "--quiet"])
    if code != 0:
        return code
    print(CHECK_OK, flush=True)
    from qlib.cli.run import run

    from ..workflow.report_record import MODEL_SAVED_HOOKS

    MODEL_SAVED_HOOKS.append(lambda run_id: print(f"{MODEL_SAVED} {run_id}", flush=True))

    sys.argv = ["qrun", workflow]
    run()
    return 0
