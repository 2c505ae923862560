"""Trust model for files that carry code (docs/predict.md "Trust model", docs/backtest-reports.md).

Model files and Qlib prediction pickles run code when loaded: the help says so. Their metadata is data: it
is verified (its own ``metadata_sha256`` line, the model file's ``sha256``) before anything in it is used or
anything is unpickled, and a ``module_path`` that is a file (which Qlib would execute) or not an installed
module is refused without importing it. Signals files are data: a pickle is refused, never unpickled.

Canaries prove what did not run: the model is an object whose unpickling creates a marker file, and the
"handler" named by a tampered metadata is a Python file that creates a marker when executed.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import pytest
import yaml

from qlib_crypto.cli import main
from qlib_crypto.errors import ConfigError, ModelError
from qlib_crypto.workflow.model_io import load_model, metadata_path, save_model, verify_model

FEATURES = ["CLOSE", "RET1"]
HANDLER = {
    "class": "DataHandlerLP",
    "module_path": "qlib.data.dataset.handler",
    "kwargs": {
        "instruments": "all",
        "data_loader": {
            "class": "QlibDataLoader",
            "kwargs": {
                "freq": "60min",
                "config": {
                    "feature": [["$close", "$close/Ref($close,1)-1"], FEATURES],
                    "label": [["Ref($close,-2)/Ref($close,-1)-1"], ["LABEL0"]],
                },
            },
        },
    },
}


class Canary:
    """Unpickling it creates ``marker`` (``Path.touch``), so a test can tell whether a file was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = Path(marker)

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def saved(tmp_path):
    """A model whose unpickling touches ``unpickled.marker``, saved with its metadata; an 'evil' handler file."""
    marker = tmp_path / "unpickled.marker"
    path = tmp_path / "models" / "m.pkl"
    save_model(
        Canary(marker),
        path,
        feature_names=FEATURES,
        train_window=("2024-01-01", "2024-01-10 23:00"),
        handler_config=HANDLER,
    )
    evil = tmp_path / "evil_handler.py"
    evil.write_text(f"from pathlib import Path\nPath({str(tmp_path / 'executed.marker')!r}).touch()\n")
    return {"path": path, "marker": marker, "executed": tmp_path / "executed.marker", "evil": evil, "root": tmp_path}


def split_metadata(path: Path) -> tuple[bytes, str]:
    """(body, digest) of a metadata file: the digest line is the last one (documented format)."""
    data = metadata_path(path).read_bytes()
    body, _, last = data.rstrip(b"\n").rpartition(b"\n")
    key, _, digest = last.decode().partition(": ")
    assert key == "metadata_sha256"
    return body + b"\n", digest


def rewrite_metadata(path: Path, mutate, *, reseal: bool) -> None:
    """Edit the metadata; with ``reseal`` recompute its digest line (as someone who forges both would)."""
    body, digest = split_metadata(path)
    meta = yaml.safe_load(body)
    mutate(meta)
    new_body = yaml.safe_dump(meta, sort_keys=False).encode()
    seal = hashlib.sha256(new_body).hexdigest() if reseal else digest
    metadata_path(path).write_bytes(new_body + f"metadata_sha256: {seal}\n".encode())


def test_saved_metadata_is_sealed_and_loads(saved):
    body, digest = split_metadata(saved["path"])
    assert digest == hashlib.sha256(body).hexdigest()
    meta = yaml.safe_load(body)
    assert meta["sha256"] == hashlib.sha256(saved["path"].read_bytes()).hexdigest()
    assert meta["format_version"] == 2
    _, verified = verify_model(saved["path"])
    assert verified["feature_names"] == FEATURES
    assert not saved["marker"].exists()  # verifying unpickles nothing
    load_model(saved["path"])
    assert saved["marker"].exists()  # the canary works: loading a trusted model does unpickle it


def test_tampered_metadata_is_refused_before_use(saved):
    # an edit that keeps the old digest line: the metadata no longer matches it
    rewrite_metadata(saved["path"], lambda m: m["handler_config"].update(module_path=str(saved["evil"])), reseal=False)
    with pytest.raises(ModelError, match=r"metadata .*m\.pkl\.meta\.yaml' has sha256 .*metadata_sha256 line") as err:
        load_model(saved["path"])
    assert "changed after saving" in str(err.value)
    assert not saved["marker"].exists() and not saved["executed"].exists()


def test_metadata_without_digest_is_refused(saved):
    body, _ = split_metadata(saved["path"])
    metadata_path(saved["path"]).write_bytes(body)
    with pytest.raises(ModelError, match="no metadata_sha256 line"):
        load_model(saved["path"])
    assert not saved["marker"].exists()


def test_tampered_model_file_is_refused_before_unpickling(saved):
    other = saved["root"] / "other.marker"
    saved["path"].write_bytes(pickle.dumps(Canary(other)))  # a different pickle, the metadata unchanged
    with pytest.raises(ModelError, match=r"model file .*m\.pkl' has sha256 .*its metadata says"):
        load_model(saved["path"])
    assert not other.exists() and not saved["marker"].exists()


@pytest.mark.parametrize(
    "where, value, message",
    [
        ("module_path", "{evil}", "is not a module name"),  # a file path Qlib would execute
        ("module_path", "evil_handler.py", "is not a module name"),  # a name ending in .py
        ("module_path", "no_such_package_qc.handlers", "is not an importable module"),
        ("class", "{evil}.Handler", "is not a module name"),  # "path/evil_handler.py.Handler"
        ("processor", "file://{evil}", "file reference"),  # Qlib would unpickle this file
    ],
)
def test_metadata_naming_a_file_is_refused_even_when_resealed(saved, where, value, message):
    value = value.replace("{evil}", str(saved["evil"]))

    def mutate(meta):
        if where == "module_path":
            meta["handler_config"]["module_path"] = value
        elif where == "class":
            meta["handler_config"]["class"] = value
        else:
            meta["handler_config"]["kwargs"]["infer_processors"] = [value]

    rewrite_metadata(saved["path"], mutate, reseal=True)  # digest consistent: the module check must catch it
    with pytest.raises(ModelError, match=message) as err:
        load_model(saved["path"])
    assert value in str(err.value) or repr(value) in str(err.value) or "file reference" in str(err.value)
    assert not saved["executed"].exists() and not saved["marker"].exists()


def test_save_model_refuses_a_file_module_path(tmp_path):
    evil = tmp_path / "h.py"
    evil.write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    handler = dict(HANDLER, module_path=str(evil))
    with pytest.raises(ConfigError, match="is not a module name"):
        save_model(
            {"w": 1},
            tmp_path / "m.pkl",
            feature_names=FEATURES,
            train_window=("2024-01-01", "2024-01-02"),
            handler_config=handler,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.py"]  # no model written, the file not run


def _run(args, capsys):
    code = main([str(a) for a in args])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, err


def test_cli_predict_refuses_a_tampered_model(saved, capsys):
    rewrite_metadata(saved["path"], lambda m: m["handler_config"].update(module_path=str(saved["evil"])), reseal=True)
    out = saved["root"] / "signals.parquet"
    code, err = _run(["predict", "--model", saved["path"], "--provider-dir", saved["root"], "--out", out], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ")
    assert str(saved["evil"]) in err[0] and "module_path" in err[0]
    assert not out.exists() and not saved["executed"].exists() and not saved["marker"].exists()


def test_cli_signals_pickle_is_refused(tmp_path, capsys):
    marker = tmp_path / "unpickled.marker"
    (tmp_path / "signals.pkl").write_bytes(pickle.dumps(Canary(marker)))
    code, err = _run(
        ["backtest", "--signals", tmp_path / "signals.pkl", "--provider-dir", tmp_path, "--out", tmp_path / "out"],
        capsys,
    )
    assert code == 2 and len(err) == 1 and "pickle" in err[0] and "Parquet or CSV" in err[0]
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("command, option", [("predict", "--model"), ("backtest", "--pred"), ("sweep", "--pred")])
def test_help_says_pickles_run_code(command, option, capsys):
    assert main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert option in text and "trusted source" in text
    assert "runs code when" in text
    if command != "predict":
        assert "pickles are refused" in text  # --signals


def test_signal_strategy_never_unpickles_signals(tmp_path):
    """From Python or a YAML too (not only the CLI): a signals pickle is refused before it is read."""
    from qlib_crypto.strategy.targets import signals_frame

    marker = tmp_path / "unpickled.marker"
    (tmp_path / "signals.pkl").write_bytes(pickle.dumps(Canary(marker)))
    with pytest.raises(ConfigError, match="Parquet or CSV"):
        signals_frame(tmp_path / "signals.pkl")
    assert not marker.exists()
