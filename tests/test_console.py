"""A quiet console (qlib_crypto/_quiet.py): with output piped (not a terminal), our commands and a qrun workflow
print none of Qlib's known noise and no tqdm bar, while our own warnings (qlib_crypto.* loggers) still show."""

from __future__ import annotations

import copy
import logging
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

#: what the noise looks like (searched in stdout + stderr)
NOISE = {
    "Gym banner": re.compile(r"Gym has been unmaintained|Please upgrade to Gymnasium"),
    "ModuleNotFoundError prints": re.compile(r"ModuleNotFoundError\.\s"),
    "Qlib INFO logs": re.compile(r"\bINFO\b"),
    "SettingWithCopyWarning": re.compile(r"SettingWithCopyWarning|A value is trying to be set on a copy"),
    "MLflow param truncated": re.compile(r"Param value .* is truncated"),
    "<PRED> placeholder": re.compile(r"lookes like a placeholder"),
    "common_infra": re.compile(r"common_infra` is not set"),
    "Mean of empty slice": re.compile(r"Mean of empty slice"),
    "tqdm bar": re.compile(r"\r|it/s\]|backtest loop:|Downloading artifacts:"),
}
#: printed by a plain `qrun` before any of our code runs (template rendering, recorder start, building the model
#: class): Qlib offers no hook there (the demo, which runs the workflow in-process, silences them too)
BEFORE_OUR_IMPORT = {"ModuleNotFoundError prints", "MLflow param truncated", "Qlib INFO logs"}
QRUN_FIRST_INFO = re.compile(
    r"INFO - qlib\.qrun - .*Render the template|"
    r"INFO - qlib\.workflow - .*(Experiment|Recorder) \w+ starts running"
)
OUR_WARNING = re.compile(
    r"WARNING.*qlib_crypto\.backtest\.exchange.*CryptoExchange ignores trade_unit=100|"
    r"CryptoExchange ignores trade_unit=100"
)


def noise_in(text: str, skip: set[str] = frozenset()) -> dict[str, list[str]]:
    found = {}
    for name, pattern in NOISE.items():
        if name in skip:
            continue
        hits = [line for line in text.split("\n") if pattern.search(line)]
        if hits:
            found[name] = hits[:3]
    return found


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """5 synthetic instruments, 2024-01 .. 2024-02 hourly, dumped; a tiny copy of the shipped 60min workflow."""
    from qlib_crypto.cli import main

    root = tmp_path_factory.mktemp("console")
    subprocess.run(["git", "init", "-q", str(root)], check=True)  # as in a clone: Qlib's recorder runs git there
    store, prov = root / "store", root / "qlib" / "60min"
    assert (
        main(
            [
                "collect",
                "--source",
                "synthetic",
                "--instruments",
                "5",
                "--seed",
                "3",
                "--timeframe",
                "1h",
                "--start",
                "2024-01-01",
                "--end",
                "2024-03-01",
                "--store",
                str(store),
                "--quiet",
            ]
        )
        == 0
    )
    assert main(["dump", "--store", str(store), "--qlib-dir", str(prov), "--timeframe", "1h"]) == 0
    conf = yaml.safe_load((REPO / "workflow_configs" / "workflow_config_lightgbm_crypto_60min.yaml").read_text())
    conf = copy.deepcopy(conf)
    conf["qlib_init"]["provider_uri"] = {"60min": str(prov)}
    conf["qlib_init"]["exp_manager"]["kwargs"]["uri"] = "file:" + str(root / "mlruns")
    task = conf["task"]
    task["model"]["kwargs"].update(num_boost_round=15, early_stopping_rounds=5, min_data_in_leaf=50)
    hkw = task["dataset"]["kwargs"]["handler"]["kwargs"]
    hkw.update(
        start_time="2024-01-01",
        end_time="2024-02-29 23:00:00",
        fit_start_time="2024-01-01",
        fit_end_time="2024-01-31 23:00:00",
    )
    task["dataset"]["kwargs"]["segments"] = {
        "train": ["2024-01-01", "2024-01-31 23:00:00"],
        "valid": ["2024-02-01", "2024-02-14 23:00:00"],
        "test": ["2024-02-15", "2024-02-29 23:00:00"],
    }
    for rec in task["record"]:
        if rec["class"] == "TrainingReportRecord":
            rec["kwargs"]["out_dir"] = str(root / "training")
        if rec["class"] == "CryptoBacktestRecord":
            bt = rec["kwargs"]["config"]["backtest"]
            bt.update(start_time="2024-02-15 00:00:00", end_time="2024-02-29 22:00:00")
            bt["exchange"]["kwargs"]["trade_unit"] = 100  # provokes our own warning (crypto ignores it)
    wf = root / "tiny_workflow.yaml"
    wf.write_text(yaml.safe_dump(conf, sort_keys=False))
    return {"root": root, "prov": prov, "workflow": wf}


@pytest.fixture(scope="module")
def qrun_output(tiny):
    proc = subprocess.run(
        [str(BIN / "qrun"), str(tiny["workflow"])],
        cwd=tiny["root"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = [p for p in (tiny["root"] / "mlruns").glob("*/*") if (p / "artifacts" / "pred.pkl").exists()]
    assert len(runs) == 1
    return proc, runs[0]


def test_qrun_workflow_is_quiet_but_keeps_our_warnings(qrun_output):
    proc, run = qrun_output
    out = proc.stdout + proc.stderr
    assert noise_in(out, skip=BEFORE_OUR_IMPORT) == {}
    # Qlib's INFO logs are gone (logging_level: WARNING in the YAML, our filters) but for the lines qrun logs
    # before any of our code runs (rendering the YAML, starting the experiment and recorder)
    info = [line for line in out.splitlines() if NOISE["Qlib INFO logs"].search(line)]
    assert all(QRUN_FIRST_INFO.search(line) for line in info), info
    assert OUR_WARNING.search(proc.stderr), proc.stderr[-2000:]
    # the run did its work: the backtest record's report exists
    assert (run / "artifacts" / "crypto_backtest" / "report.html").is_file()


def test_cli_commands_are_quiet_but_keep_our_warnings(tiny, qrun_output):
    _, run = qrun_output
    root = tiny["root"]
    predict = subprocess.run(
        [
            str(BIN / "qlib-crypto"),
            "predict",
            "--experiment",
            "crypto_lightgbm_60min",
            "--run-id",
            run.name,
            "--tracking-uri",
            "file:" + str(root / "mlruns"),
            "--provider-dir",
            str(tiny["prov"]),
            "--start",
            "2024-02-15",
            "--end",
            "2024-02-29 22:00",
            "--out",
            str(root / "signals.parquet"),
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert predict.returncode == 0, predict.stdout[-3000:] + predict.stderr[-3000:]
    assert noise_in(predict.stdout + predict.stderr) == {}
    assert predict.stdout.startswith("wrote ")

    cfg = root / "exchange.yaml"
    cfg.write_text("trade_unit: 100\n")  # CryptoExchange ignores it, and says so: our warning must show
    bt = subprocess.run(
        [
            str(BIN / "qlib-crypto"),
            "backtest",
            "--signals",
            str(root / "signals.parquet"),
            "--provider-dir",
            str(tiny["prov"]),
            "--freq",
            "60min",
            "--config",
            str(cfg),
            "--out",
            str(root / "bt"),
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert bt.returncode == 0, bt.stdout[-3000:] + bt.stderr[-3000:]
    assert noise_in(bt.stdout + bt.stderr) == {}
    assert OUR_WARNING.search(bt.stderr), bt.stderr[-2000:]
    assert (root / "bt" / "report.html").is_file()


def test_verbose_shows_qlib_logs_again(tiny, qrun_output):
    """--verbose turns the filters off: Qlib's prints, INFO logs and MLflow's download bar are back (so the
    filters, not luck, made the same command quiet above)."""
    _, run = qrun_output
    root = tiny["root"]
    proc = subprocess.run(
        [
            str(BIN / "qlib-crypto"),
            "--verbose",
            "predict",
            "--experiment",
            "crypto_lightgbm_60min",
            "--run-id",
            run.name,
            "--tracking-uri",
            "file:" + str(root / "mlruns"),
            "--provider-dir",
            str(tiny["prov"]),
            "--out",
            str(root / "signals_latest.parquet"),
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = noise_in(proc.stdout + proc.stderr)
    assert {"ModuleNotFoundError prints", "Qlib INFO logs", "tqdm bar"} <= set(found), found


def test_quiet_filters_are_targeted():
    """In-process: the filters drop the listed Qlib messages and keep everything else, ours included."""
    import warnings

    from qlib_crypto import _quiet

    _quiet.install()
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append((record.name, record.getMessage()))

    handler = Keep()
    names = ["qlib.timer", "qlib.BaseExecutor", "qlib.workflow", "mlflow.utils.validation", "qlib_crypto.backtest.x"]
    for name in names:
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        logging.getLogger("qlib.timer").info("Time cost: 1.0s | Loading data Done")
        logging.getLogger("qlib.BaseExecutor").warning("`common_infra` is not set for <executor>")
        logging.getLogger("qlib.BaseExecutor").warning("something else went wrong")
        logging.getLogger("qlib.workflow").warning("No valid experiment found. Create a new experiment with name x.")
        logging.getLogger("mlflow.utils.validation").warning(
            "Param value 'abc' (1664 characters) is truncated to 1000 characters"
        )
        logging.getLogger("mlflow.utils.validation").warning("another MLflow warning")
        logging.getLogger("qlib_crypto.backtest.x").info("our info")
        logging.getLogger("qlib_crypto.backtest.x").warning("our warning")
    finally:
        for name in names:
            logging.getLogger(name).removeHandler(handler)
    assert records == [
        ("qlib.BaseExecutor", "something else went wrong"),
        ("mlflow.utils.validation", "another MLflow warning"),
        ("qlib_crypto.backtest.x", "our info"),
        ("qlib_crypto.backtest.x", "our warning"),
    ]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        _quiet._installed = False  # catch_warnings reset the filters: install them again inside the block
        _quiet.install()
        for module in ("qlib.utils.index_data", "qlib_crypto.x"):  # as if raised there
            warnings.warn_explicit("Mean of empty slice", RuntimeWarning, "x.py", 1, module=module, registry={})
    assert [str(w.message) for w in caught] == ["Mean of empty slice"]  # only the one raised outside Qlib


def test_import_hook_passes_other_lines(capsys):
    """The import hook drops only the known lines of what a noisy import prints."""
    from qlib_crypto._quiet import PRINT_NOISE, _drop_lines

    _, patterns = PRINT_NOISE["qlib.contrib.model"]
    text = (
        "ModuleNotFoundError. CatBoostModel are skipped. (optional: maybe installing CatBoostModel can fix it.)\n"
        "something the user must see\n"
        "ModuleNotFoundError.  PyTorch models are skipped (optional: maybe installing pytorch can fix it).\n"
    )
    assert _drop_lines(text, patterns) == "something the user must see\n"
    assert _drop_lines("nothing to drop\n\nkept\n", patterns) == "nothing to drop\n\nkept\n"


def test_a_noisy_import_in_a_thread_captures_only_that_threads_output(tmp_path):
    """The import hook captures what the importing thread prints, not what other threads print meanwhile (the
    demo imports Qlib in a background thread while its main thread reports): their lines reach the real stream
    at once, and the stream is the real one again afterwards."""
    (tmp_path / "slow_noisy.py").write_text(
        "import _sync\n"
        "print('ModuleNotFoundError. SlowModel is skipped (noise)')\n"
        "print('a line of the import the user must see')\n"
        "_sync.importing.set()\n"
        "assert _sync.main_printed.wait(20)\n"
    )
    code = textwrap.dedent(
        f"""
        import sys, threading, types
        sys.path.insert(0, {str(tmp_path)!r})
        from qlib_crypto import _quiet
        _quiet.PRINT_NOISE["slow_noisy"] = ("stdout", (r"^ModuleNotFoundError\\.\\s+.*skipped",))
        _quiet.install()

        class Recorder:
            def __init__(self): self.lines = []
            def write(self, text): self.lines.append(text); return len(text)
            def flush(self): pass

        real = Recorder()
        sys.stdout = real
        sync = sys.modules["_sync"] = types.ModuleType("_sync")
        sync.importing, sync.main_printed = threading.Event(), threading.Event()
        worker = threading.Thread(target=__import__, args=("slow_noisy",))
        worker.start()
        assert sync.importing.wait(20)
        print("main thread, during the import")
        seen_during = list(real.lines)
        sync.main_printed.set()
        worker.join(20)
        restored = sys.stdout is real
        sys.stdout = sys.__stdout__
        print(repr((seen_during, real.lines, restored)))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    seen_during, lines, restored = eval(proc.stdout.strip().splitlines()[-1])  # noqa: S307 (our own repr)
    assert "".join(seen_during) == "main thread, during the import\n"
    assert "".join(lines) == "main thread, during the import\na line of the import the user must see\n"
    assert restored
