"""Model persistence outside the recorder: a pickled model plus a YAML metadata file, written atomically.

Files for ``save_model(model, "models/lgb.pkl", ...)``:

- ``models/lgb.pkl``: the pickled model (e.g. Qlib's ``LGBModel``);
- ``models/lgb.pkl.dataset.pkl`` (optional): the fitted ``DatasetH`` without data (its processors' learned
  state, e.g. normalisation statistics), as Qlib itself stores it in the recorder;
- ``models/lgb.pkl.meta.yaml``: feature names, handler/dataset config, training window, frequency,
  label expression, library versions, sha256 of the model (and dataset) file, ``created_at``.

The model file is written first and the metadata last, so a crash in between leaves a pair whose hash does
not match: :func:`load_model` refuses it.

Trust model: a model file (like any pickle) runs code when it is loaded, so load only models from a trusted
source. Before anything in the metadata is used and before anything is unpickled, :func:`verify_model` checks
that the metadata is unchanged (its last line, ``metadata_sha256``, is the sha256 of the lines above it), that
the model (and dataset) file has the sha256 the metadata records, and that every ``module_path`` (and dotted
``class``) in the handler/dataset config names an installed, importable module: never a file path, which Qlib
would execute, and never a ``file:`` reference, which Qlib would unpickle.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import pickle
import platform
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from .._atomic import atomic_write_bytes
from ..errors import ConfigError, ModelError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: metadata_sha256 (digest of the metadata itself) as the last line
META_SUFFIX = ".meta.yaml"
DATASET_SUFFIX = ".dataset.pkl"
RECORDER_ARTIFACT_DIR = "model"  # artifact folder written by ModelArtifactRecord
RECORDER_MODEL_NAME = "model.pkl"


def metadata_path(model_path: str | os.PathLike) -> Path:
    """Path of the metadata file that belongs to ``model_path``."""
    p = Path(model_path)
    return p.with_name(p.name + META_SUFFIX)


def dataset_path(model_path: str | os.PathLike) -> Path:
    p = Path(model_path)
    return p.with_name(p.name + DATASET_SUFFIX)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    """Versions of the libraries a pickled model depends on."""
    versions = {"python": platform.python_version()}
    for name in ("qlib", "lightgbm", "pandas", "numpy", "qlib_crypto"):
        try:
            module = __import__(name)
            versions[name] = str(getattr(module, "__version__", "unknown"))
        except Exception:  # a library that is not installed is simply recorded as absent
            versions[name] = "absent"
    return versions


def _to_plain(obj: Any) -> Any:
    """Make a config YAML-safe: tuples -> lists, timestamps -> ISO strings, other objects -> repr."""
    import numpy as np
    import pandas as pd

    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    if isinstance(obj, (pd.Timestamp, _dt.datetime, _dt.date)):
        return pd.Timestamp(obj).isoformat()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


def handler_config_of(dataset_config: Mapping | None, handler_config: Mapping | None) -> dict | None:
    """The handler config: given directly, or taken from a ``DatasetH`` config's ``kwargs.handler``."""
    if handler_config is not None:
        return dict(handler_config)
    if dataset_config is not None:
        handler = dict(dataset_config.get("kwargs", {})).get("handler")
        if isinstance(handler, Mapping):
            return dict(handler)
    return None


def freq_of(handler_config: Mapping | None) -> str | None:
    """Frequency named in a handler config (``kwargs.freq`` or ``kwargs.data_loader.kwargs.freq``)."""
    if not handler_config:
        return None
    kwargs = dict(handler_config.get("kwargs", {}) or {})
    if kwargs.get("freq"):
        return str(kwargs["freq"])
    loader = kwargs.get("data_loader")
    if isinstance(loader, Mapping):
        freq = dict(loader.get("kwargs", {}) or {}).get("freq")
        if freq:
            return str(freq)
    try:  # the handler class's own default (Qlib's handlers: day; qlib_crypto's: 60min)
        import importlib
        import inspect

        klass = getattr(
            importlib.import_module(handler_config.get("module_path", "qlib.contrib.data.handler")),
            handler_config["class"],
        )
        default = inspect.signature(klass.__init__).parameters.get("freq")
        if default is not None and isinstance(default.default, str):
            return default.default
    except Exception:
        pass
    return None


def label_of(handler_config: Mapping | None) -> list | None:
    """Label expression(s) of a handler config, or of the handler class's ``get_label_config``."""
    if not handler_config:
        return None
    kwargs = dict(handler_config.get("kwargs", {}) or {})
    if kwargs.get("label") is not None:
        return _to_plain(kwargs["label"])
    loader = kwargs.get("data_loader")
    if isinstance(loader, Mapping):
        config = dict(loader.get("kwargs", {}) or {}).get("config")
        if isinstance(config, Mapping) and config.get("label") is not None:
            return _to_plain(config["label"])
    try:  # handlers such as Alpha158 define the label in a method that needs no data
        import importlib

        module = importlib.import_module(handler_config.get("module_path", "qlib.contrib.data.handler"))
        klass = getattr(module, handler_config["class"])
        instance = object.__new__(klass)
        for key, value in kwargs.items():  # some handlers read e.g. a horizon attribute
            setattr(instance, key, value)
        return _to_plain(klass.get_label_config(instance))
    except Exception:
        return None


def _window(train_window: Any) -> dict[str, str | None]:
    import pandas as pd

    if isinstance(train_window, Mapping):
        start, end = train_window.get("start"), train_window.get("end")
    elif isinstance(train_window, (list, tuple)) and len(train_window) == 2:
        start, end = train_window
    else:
        raise ConfigError(
            f"train_window={train_window!r} is not a (start, end) pair",
            hint="pass the training segment, e.g. ('2023-01-01', '2023-12-31')",
        )
    return {k: (None if v is None else pd.Timestamp(v).isoformat()) for k, v in (("start", start), ("end", end))}


def save_model(
    model: Any,
    path: str | os.PathLike,
    *,
    feature_names: Sequence[str],
    train_window: Any,
    dataset_config: Mapping | None = None,
    handler_config: Mapping | None = None,
    dataset: Any = None,
    freq: str | None = None,
    label: Any = None,
    extra: Mapping | None = None,
) -> dict:
    """Pickle ``model`` to ``path`` and write ``<path>.meta.yaml`` beside it, both atomically.

    ``dataset`` (optional) is the fitted ``DatasetH``: it is stored without its data in
    ``<path>.dataset.pkl`` so predictions reuse the fitted processors. Returns the metadata dict.
    """
    import yaml

    path = Path(path)
    if not feature_names:
        raise ConfigError("feature_names is empty", hint="pass the model's input column names in order")
    hcfg = handler_config_of(dataset_config, handler_config)
    if hcfg is None and dataset is None:
        raise ConfigError(
            "neither handler_config nor dataset_config was given",
            hint="pass the handler config used for training so predict can rebuild the features",
        )
    # a config that names a file (not an installed module) could never be loaded again: refuse it now
    check_config_modules(hcfg, "handler_config", error=ConfigError)
    check_config_modules(dataset_config, "dataset_config", error=ConfigError)
    try:
        model_bytes = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise ModelError(
            f"model of type {type(model).__name__} cannot be pickled: {exc}",
            hint="save a fitted Qlib model such as LGBModel",
        ) from exc
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "model_file": path.name,
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "sha256": hashlib.sha256(model_bytes).hexdigest(),
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "freq": freq or freq_of(hcfg),
        "label": _to_plain(label) if label is not None else label_of(hcfg),
        "feature_names": [str(n) for n in feature_names],
        "n_features": len(feature_names),
        "train_window": _window(train_window),
        "handler_config": _to_plain(hcfg),
        "dataset_config": _to_plain(dataset_config),
        "versions": library_versions(),
        "dataset_file": None,
        "dataset_sha256": None,
        "extra": _to_plain(dict(extra or {})),
    }
    if meta["label"] is None and dataset is not None:  # e.g. a handler that builds its label in __init__
        fields = getattr(getattr(getattr(dataset, "handler", None), "data_loader", None), "fields", None)
        if isinstance(fields, Mapping) and fields.get("label") is not None:
            meta["label"] = _to_plain(fields["label"])
    dataset_bytes = None
    if dataset is not None:
        if hasattr(dataset, "config"):
            dataset.config(dump_all=False, recursive=True)  # keep the fitted state, drop the data
        dataset_bytes = pickle.dumps(dataset, protocol=pickle.HIGHEST_PROTOCOL)
        meta["dataset_file"] = dataset_path(path).name
        meta["dataset_sha256"] = hashlib.sha256(dataset_bytes).hexdigest()
    atomic_write_bytes(path, model_bytes)
    if dataset_bytes is not None:
        atomic_write_bytes(dataset_path(path), dataset_bytes)
    body = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).encode("utf-8")
    meta["metadata_sha256"] = hashlib.sha256(body).hexdigest()
    atomic_write_bytes(metadata_path(path), body + f"{METADATA_DIGEST_KEY}: {meta['metadata_sha256']}\n".encode())
    logger.info("saved model %s (%d features, sha256 %s)", path, len(feature_names), meta["sha256"][:12])
    return meta


METADATA_DIGEST_KEY = "metadata_sha256"
_DIGEST_LINE = re.compile(rb"%s: ([0-9a-f]{64})\n?\Z" % METADATA_DIGEST_KEY.encode())


def read_metadata(path: str | os.PathLike) -> dict:
    """Read the metadata of the model at ``path``, checking that it is unchanged since it was saved (its last
    line ``metadata_sha256`` is the sha256 of the lines above it); the model file's hash is not checked here
    (see :func:`verify_model`)."""
    import yaml

    mpath = metadata_path(_resolve_model_path(path))
    if not mpath.is_file():
        raise ModelError(
            f"model metadata {str(mpath)!r} is missing",
            hint="save models with qlib_crypto.workflow.model_io.save_model, which writes it",
        )
    data = mpath.read_bytes()
    cut = data.rstrip(b"\n").rfind(b"\n") + 1
    match = _DIGEST_LINE.match(data, cut)
    if match is None:
        raise ModelError(
            f"model metadata {str(mpath)!r} has no {METADATA_DIGEST_KEY} line: it was edited, or "
            f"written by a qlib-crypto older than metadata format {FORMAT_VERSION}",
            hint="re-save the model (save_model, or re-run the workflow) from a trusted source",
        )
    actual = hashlib.sha256(data[:cut]).hexdigest()
    if actual != match.group(1).decode():
        raise ModelError(
            f"model metadata {str(mpath)!r} has sha256 {actual[:16]}..., its {METADATA_DIGEST_KEY} line "
            f"says {match.group(1).decode()[:16]}...",
            hint="the metadata was changed after saving: restore it or re-save the model",
        )
    try:
        meta = yaml.safe_load(data.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ModelError(
            f"model metadata {str(mpath)!r} is not valid YAML: {' '.join(str(exc).split())}", hint="re-save the model"
        ) from None
    if not isinstance(meta, dict) or "sha256" not in meta or "feature_names" not in meta:
        raise ModelError(f"model metadata {str(mpath)!r} lacks sha256/feature_names", hint="re-save the model")
    return meta


_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")


def check_module_name(name: Any, where: str, *, error: type = ModelError) -> str:
    """``name`` if it is an installed, importable module name (``qlib.contrib.data.handler``); a file path,
    a name ending in ``.py`` (Qlib executes those as files) or a module that cannot be found is refused."""
    hint = (
        "model metadata may only name installed modules (e.g. qlib_crypto.data or qlib.contrib.data.handler), "
        "never files; install your handler as a package, name its module, and re-save the model"
    )
    text = name if isinstance(name, str) else None
    if text is None or text.endswith(".py") or not _MODULE_NAME.match(text):
        raise error(
            f"{where} {name!r} is not a module name (file paths are refused: Qlib would execute them)", hint=hint
        )
    import importlib.util

    try:
        spec = importlib.util.find_spec(text)
    except Exception:  # a parent package that cannot be imported
        spec = None
    if spec is None:
        raise error(f"{where} {name!r} is not an importable module", hint=hint)
    return text


def check_config_modules(config: Any, where: str, *, error: type = ModelError) -> None:
    """Walk a Qlib config (handler, dataset, loader, processors...) and refuse what Qlib would run from a file:
    a ``module_path`` or dotted ``class``/``func`` that is not an installed module name, or a ``file:`` value
    (Qlib unpickles those)."""

    def walk(node: Any, at: str) -> None:
        if isinstance(node, Mapping):
            if node.get("module_path") is not None:
                check_module_name(node["module_path"], f"{where}: {at}module_path", error=error)
            for key in ("class", "func"):
                value = node.get(key)
                if isinstance(value, str) and "." in value:  # "a.b.ClassName": Qlib imports "a.b"
                    check_module_name(value.rsplit(".", 1)[0], f"{where}: module of {at}{key} {value!r}:", error=error)
            for key, value in node.items():
                walk(value, f"{at}{key}.")
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                walk(value, f"{at}{i}.")
        elif isinstance(node, str) and node.strip().lower().startswith("file:"):
            raise error(
                f"{where}: {at.rstrip('.') or 'the config'} is the file reference {node!r}, which Qlib would unpickle",
                hint="model metadata may only hold installed module names and plain "
                "values: re-save the model with the handler config itself",
            )

    walk(config, "")


def _resolve_model_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_dir():  # a directory holding one model (e.g. a downloaded recorder artifact)
        metas = sorted(p.glob("*" + META_SUFFIX))
        if len(metas) != 1:
            raise ModelError(
                f"directory {str(p)!r} holds {len(metas)} model metadata files",
                hint="pass the path of the model .pkl file itself",
            )
        p = metas[0].with_name(metas[0].name[: -len(META_SUFFIX)])
    if not p.is_file():
        raise ModelError(
            f"model file {str(p)!r} does not exist",
            hint="check the path, or train and save a model first (save_model / ModelArtifactRecord)",
        )
    return p


def _check_hash(path: Path, expected: str | None, what: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise ModelError(
            f"{what} {str(path)!r} has sha256 {actual[:16]}..., its metadata says {str(expected)[:16]}...",
            hint="the file was changed or replaced after saving: restore it or re-save the model",
        )


def _unpickle(path: Path, what: str) -> Any:
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh)
    except Exception as exc:
        raise ModelError(
            f"{what} {str(path)!r} cannot be unpickled: {type(exc).__name__}: {exc}",
            hint="load it with the library versions listed in its metadata",
        ) from exc


def verify_model(path: str | os.PathLike) -> tuple[Path, dict]:
    """Check a saved model without loading it: returns ``(model file, metadata)``.

    In this order, before anything in the metadata is used: the metadata is unchanged since saving
    (``metadata_sha256``), the model file (and the dataset file, if one was saved) has the sha256 the
    metadata records, and every module the handler/dataset config names is an installed module (see
    :func:`check_config_modules`). Anything else is a :class:`ModelError`; nothing is unpickled.
    """
    p = _resolve_model_path(path)
    meta = read_metadata(p)
    _check_hash(p, meta.get("sha256"), "model file")
    if meta.get("dataset_file"):
        if meta["dataset_file"] != dataset_path(p).name:
            raise ModelError(
                f"the metadata of {str(p)!r} names the dataset file {meta['dataset_file']!r}, "
                f"not {dataset_path(p).name!r}",
                hint="restore the metadata or re-save the model",
            )
        dpath = dataset_path(p)
        if not dpath.is_file():
            raise ModelError(
                f"dataset file {str(dpath)!r} named in the model metadata is missing",
                hint="copy it together with the model, or re-save the model",
            )
        _check_hash(dpath, meta.get("dataset_sha256"), "dataset file")
    mpath = metadata_path(p)
    check_config_modules(meta.get("handler_config"), f"model metadata {str(mpath)!r} handler_config")
    check_config_modules(meta.get("dataset_config"), f"model metadata {str(mpath)!r} dataset_config")
    return p, meta


def load_model(path: str | os.PathLike, *, feature_names: Sequence[str] | None = None) -> tuple[Any, dict]:
    """Load a model saved by :func:`save_model` after :func:`verify_model`; returns ``(model, metadata)``.

    The model file is a pickle, which runs code when loaded: load only models from a trusted source.
    With ``feature_names`` (the data's columns), a mismatch raises :class:`ModelError` (see
    :func:`check_features`). The metadata gets ``model_path`` (absolute) added.
    """
    p, meta = verify_model(path)
    model = _unpickle(p, "model file")
    meta["model_path"] = str(p.resolve())
    if feature_names is not None:
        check_features(meta["feature_names"], feature_names, model_name=str(p))
    return model, meta


def load_dataset(model_path: str | os.PathLike, metadata: Mapping) -> Any | None:
    """The fitted dataset stored beside a model (hash-checked), or None when none was saved."""
    if not metadata.get("dataset_file"):
        return None
    p = dataset_path(model_path)
    if metadata["dataset_file"] != p.name:
        raise ModelError(
            f"the model metadata names the dataset file {metadata['dataset_file']!r}, not {p.name!r}",
            hint="restore the metadata or re-save the model",
        )
    if not p.is_file():
        raise ModelError(
            f"dataset file {str(p)!r} named in the model metadata is missing",
            hint="copy it together with the model, or re-save the model",
        )
    _check_hash(p, metadata.get("dataset_sha256"), "dataset file")
    return _unpickle(p, "dataset file")


def check_features(expected: Sequence[str], actual: Sequence[str], *, model_name: str = "model") -> None:
    """Raise :class:`ModelError` unless ``actual`` equals ``expected`` (same names, same order)."""
    expected, actual = [str(x) for x in expected], [str(x) for x in actual]
    if expected == actual:
        return
    pos = next((i for i, (a, b) in enumerate(zip(expected, actual)) if a != b), min(len(expected), len(actual)))
    want = expected[pos] if pos < len(expected) else "<end>"
    got = actual[pos] if pos < len(actual) else "<end>"
    missing = [n for n in expected if n not in set(actual)][:3]
    unexpected = [n for n in actual if n not in set(expected)][:3]
    detail = f"first difference at position {pos}: model expects {want!r}, data has {got!r}"
    if missing:
        detail += f"; missing from data: {', '.join(missing)}"
    if unexpected:
        detail += f"; not known to the model: {', '.join(unexpected)}"
    raise ModelError(
        f"features of {model_name} ({len(expected)}) do not match the data's ({len(actual)}): {detail}",
        hint="build the features with the handler config stored in the model metadata, or retrain the model",
    )


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else the ``./mlruns`` file store that ``qrun`` uses."""
    return os.environ.get("MLFLOW_TRACKING_URI") or "file:" + str(Path("mlruns").resolve())


def tracking_store_path(uri: str) -> Path | None:
    """The local directory (file store) or database file (sqlite) of an MLflow tracking URI; None for a
    remote store (http, databricks...)."""
    from urllib.parse import unquote, urlparse

    text = str(uri).strip()
    if text.lower().startswith("sqlite:///"):
        path = text[len("sqlite:///") :]
        return None if not path or path == ":memory:" else Path(unquote(path))
    parsed = urlparse(text)
    if parsed.scheme == "file":
        path = unquote(parsed.path)
        if parsed.netloc not in ("", "localhost"):
            path = parsed.netloc + path
        return Path(path)
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):  # a plain path (or C:\...)
        return Path(text)
    return None


def check_tracking_uri(uri: str, *, option: str = "--tracking-uri") -> None:
    """Refuse a local tracking store that does not exist: MLflow would silently create an empty one."""
    path = tracking_store_path(uri)
    if path is None:
        return
    hint = (
        f"pass {option} with the store qrun wrote (e.g. {option} ./mlruns; default $MLFLOW_TRACKING_URI, "
        "else ./mlruns); an empty store is not created"
    )
    if not path.exists():
        raise ConfigError(f"MLflow tracking store {str(path)!r} (tracking URI {uri!r}) does not exist", hint=hint)
    if not str(uri).strip().lower().startswith("sqlite:") and not path.is_dir():
        raise ConfigError(f"MLflow tracking store {str(path)!r} (tracking URI {uri!r}) is not a directory", hint=hint)


def _find_run(experiment: str, run_id: str, uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise ModelError(
            f"experiment {experiment!r} not found in tracking store {uri!r}",
            hint=f"known experiments: {', '.join(names) or 'none'}; pass --tracking-uri if elsewhere",
        )
    if run_id in (None, "", "latest"):
        runs = client.search_runs(
            [exp.experiment_id],
            filter_string="attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not runs:
            raise ModelError(f"experiment {experiment!r} has no finished run", hint="run qrun first")
        return client, runs[0].info.run_id
    try:
        run = client.get_run(run_id)
    except Exception:
        raise ModelError(
            f"run {run_id!r} not found in experiment {experiment!r}",
            hint="list runs with `mlflow ui` or pass --run-id latest",
        ) from None
    if run.info.experiment_id != exp.experiment_id:
        raise ModelError(f"run {run_id!r} is not in experiment {experiment!r}", hint="check --experiment")
    return client, run_id


def load_model_from_recorder(
    experiment: str, run_id: str = "latest", uri: str | None = None, *, with_dataset: bool = False
) -> tuple[Any, dict] | tuple[Any, dict, Any]:
    """Load a model from a recorder (MLflow) run: ``run_id`` or the latest finished run of ``experiment``.

    Uses the ``model/`` artifact written by ``ModelArtifactRecord`` (hash-checked); otherwise falls back
    to Qlib's own ``params.pkl`` + ``task`` (+ ``dataset``) artifacts, with feature names then unknown.
    Returns ``(model, metadata)``, plus the fitted dataset (or None) with ``with_dataset=True``.
    """
    uri = uri or default_tracking_uri()
    check_tracking_uri(uri)
    client, rid = _find_run(experiment, run_id, uri)
    tmp = Path(tempfile.mkdtemp(prefix="qlib_crypto_model_"))
    try:
        names = {a.path for a in client.list_artifacts(rid)}
        if RECORDER_ARTIFACT_DIR in names:
            local = Path(client.download_artifacts(rid, RECORDER_ARTIFACT_DIR, str(tmp)))
            model, meta = load_model(local / RECORDER_MODEL_NAME)
            dataset = load_dataset(local / RECORDER_MODEL_NAME, meta) if with_dataset else None
        elif "params.pkl" in names:
            model = _unpickle(Path(client.download_artifacts(rid, "params.pkl", str(tmp))), "recorder model")
            task = (
                _unpickle(Path(client.download_artifacts(rid, "task", str(tmp))), "recorder task")
                if "task" in names
                else {}
            )
            dcfg = dict(task.get("dataset", {}) or {})
            check_config_modules(dcfg, f"run {rid!r} task dataset config")
            hcfg = handler_config_of(dcfg, None)
            segments = dict(dcfg.get("kwargs", {}).get("segments", {}) or {})
            train = segments.get("train") or (None, None)
            meta = {
                "format_version": FORMAT_VERSION,
                "model_class": f"{type(model).__module__}.{type(model).__name__}",
                "feature_names": None,
                "freq": freq_of(hcfg),
                "label": label_of(hcfg),
                "train_window": _window(train),
                "handler_config": _to_plain(hcfg),
                "dataset_config": _to_plain(dcfg),
                "versions": None,
                "extra": {},
            }
            dataset = None
            if with_dataset and "dataset" in names:
                dataset = _unpickle(Path(client.download_artifacts(rid, "dataset", str(tmp))), "recorder dataset")
            logger.warning("run %s has no %s/ artifact: feature names are not checked", rid, RECORDER_ARTIFACT_DIR)
        else:
            raise ModelError(
                f"run {rid!r} of experiment {experiment!r} holds no model artifact",
                hint="add ModelArtifactRecord (or SignalRecord via qrun) to the workflow's records",
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    meta.pop("model_path", None)  # the download directory is gone
    meta["source"] = {"tracking_uri": uri, "experiment": experiment, "run_id": rid}
    return (model, meta, dataset) if with_dataset else (model, meta)
