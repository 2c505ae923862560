"""Where the Dask cluster is, and how a worker initialises Qlib.

A cluster is named by a *spec*: the ``dask:`` block of a workflow YAML, the ``--dask`` option, or the ``dask``
argument of the Dask classes. Accepted forms:

- ``None`` / ``False``: no cluster (the serial path, for ``run_walk_forward`` and ``cost_sweep``);
- ``"local"``, ``True`` or ``{}``: a ``distributed.LocalCluster`` on this machine, one single-threaded worker
  process per core (``n_workers``, ``threads_per_worker``, ``memory_limit`` override it; ``malloc_trim:
  false`` makes its workers allocate memory as one process does, see :data:`NO_TRIM_CONFIG`; the
  walk-forward's default, :func:`task_spec`);
- ``"tcp://host:8786"`` or ``{"address": "tcp://host:8786"}``: a running scheduler (``dask scheduler`` and
  ``dask worker`` processes, see docs/scale-out.md).

Workers run Qlib code, so every task first calls :func:`ensure_qlib` with the client's Qlib settings
(:func:`qlib_config`: ``provider_uri`` as absolute paths, the region overrides, the experiment manager); a
worker initialises Qlib once per distinct configuration. The provider directory (and ``mlruns`` for the
walk-forward) must be at the same path on every host: shared storage.
"""

from __future__ import annotations

import atexit
import copy
import importlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from ..errors import ConfigError

logger = logging.getLogger(__name__)

_SPEC_KEYS = ("address", "n_workers", "threads_per_worker", "memory_limit", "timeout", "malloc_trim")
# Dask config for the LocalCluster workers started here: no statistical profiler (a stack sample every 10 ms
# for the dashboard, which these clusters do not serve; a few percent of a walk-forward window's CPU time).
LOCAL_WORKER_CONFIG: dict[str, Any] = {"distributed.worker.profile.enabled": False}
# ... and with ``malloc_trim: false``: Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in every worker it spawns,
# which returns freed memory to the system at once (what Dask's memory manager wants) but also fixes glibc's
# mmap threshold at 128 KiB, so every array above that (a column of bars x instruments) is a fresh mmap whose
# pages fault in again on each use. A 6-window walk-forward (30 instruments x 1 year) on 2 workers took 6.1M
# page faults, 29 s of system time and 240 s of CPU in all; serially 1.35M, 5 s and 169 s; on 2 workers
# without it 1.6M, 12 s and 203 s. Without it the workers allocate as one process does (glibc's defaults; a
# MALLOC_TRIM_THRESHOLD_ exported in this process's environment is still inherited), at the price of a higher
# peak (end-to-end features + DaskLGBModel, 60 instruments x 1 year: workers 1.57-1.65 GiB instead of
# 1.43 GiB), so only whole-task work (``task_spec``) uses it.
NO_TRIM_CONFIG: dict[str, Any] = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
_CLIENTS: dict[str, Any] = {}
_LOCK = threading.RLock()  # Qlib is process-global: one Qlib task at a time per worker process


def require_dask() -> None:
    """Import ``distributed`` or raise a ConfigError saying how to install the extra."""
    try:
        import dask  # noqa: F401
        import distributed  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"Dask is not installed ({exc.name} is missing)",
            hint="install the extra: pip install -c constraints.txt -e '.[dask]'",
        ) from None


def normalize_spec(spec: Any) -> dict[str, Any] | None:
    """A cluster spec as a dict (``{"address": None}`` for a LocalCluster), or None for no cluster."""
    if spec is None or spec is False:
        return None
    if spec is True:
        return {"address": None}
    if isinstance(spec, str):
        text = spec.strip()
        if text.lower() in ("", "local", "localcluster"):
            return {"address": None}
        if "://" not in text and ":" not in text:
            raise ConfigError(
                f"bad Dask scheduler address {spec!r}",
                hint="give tcp://HOST:PORT (what `dask scheduler` prints) or 'local' for a LocalCluster",
            )
        return {"address": text if "://" in text else f"tcp://{text}"}
    if isinstance(spec, Mapping):
        unknown = sorted(str(k) for k in spec if k not in _SPEC_KEYS)
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r} in the dask block", hint=f"use {', '.join(_SPEC_KEYS)}")
        out = {k: spec[k] for k in _SPEC_KEYS if k in spec}
        out.setdefault("address", None)
        if out["address"] is not None:
            addr = normalize_spec(str(out["address"]))
            out["address"] = addr["address"] if addr else None
        if "malloc_trim" in out and not isinstance(out["malloc_trim"], bool):
            raise ConfigError(f"bad dask.malloc_trim {out['malloc_trim']!r}", hint="give true or false")
        for key in ("n_workers", "threads_per_worker"):
            if key in out and (isinstance(out[key], bool) or not isinstance(out[key], int) or out[key] < 1):
                raise ConfigError(f"bad dask.{key} {out[key]!r}", hint="give a whole number >= 1")
        return out
    raise ConfigError(
        f"bad dask setting {spec!r}", hint="give a scheduler address (tcp://HOST:PORT), 'local', or a mapping"
    )


def get_client(spec: Any = "local"):
    """A ``distributed.Client`` for ``spec`` (see the module doc); one per spec and process, reused.

    Inside a Dask task this is never called by the package's classes (they run in-process there)."""
    require_dask()
    from distributed import Client, LocalCluster

    conf = normalize_spec(spec if spec is not None else "local")
    key = json.dumps(conf, sort_keys=True, default=str)
    with _LOCK:
        client = _CLIENTS.get(key)
        if client is not None and client.status == "running":
            return client
        timeout = conf.get("timeout", 60)
        if conf["address"]:
            logger.info("connecting to the Dask scheduler at %s", conf["address"])
            try:
                client = Client(conf["address"], timeout=timeout, set_as_default=False)
            except OSError as exc:
                raise ConfigError(
                    f"cannot reach the Dask scheduler at {conf['address']!r} ({exc})",
                    hint="start it with `dask scheduler` and give the address it prints",
                ) from None
        else:
            n = int(conf.get("n_workers") or os.cpu_count() or 1)
            kwargs: dict[str, Any] = {
                "n_workers": n,
                "threads_per_worker": int(conf.get("threads_per_worker") or 1),
                "processes": True,
                "host": "127.0.0.1",
                "dashboard_address": None,
            }
            if conf.get("memory_limit") is not None:
                kwargs["memory_limit"] = conf["memory_limit"]
            logger.info("starting a LocalCluster with %d workers", n)
            import dask

            config = {**LOCAL_WORKER_CONFIG, **({} if conf.get("malloc_trim", True) else NO_TRIM_CONFIG)}
            with dask.config.set(config):
                # the nannies run in this process and put their pre-spawn variables (OMP_NUM_THREADS=1...)
                # into os.environ before spawning: put this process's values back once the workers run
                keys = [*dask.config.get("distributed.nanny.pre-spawn-environ"), "PYTHONHASHSEED"]
                before = {k: os.environ.get(k) for k in keys}
                try:
                    cluster = LocalCluster(**kwargs)
                finally:
                    for k, v in before.items():
                        if v is None:
                            os.environ.pop(k, None)
                        else:
                            os.environ[k] = v
            client = Client(cluster, set_as_default=False)
        _CLIENTS[key] = client
        return client


def close_clients() -> None:
    """Close the clients (and LocalClusters) this process started."""
    with _LOCK:
        for client in list(_CLIENTS.values()):
            cluster = getattr(client, "cluster", None)
            try:
                client.close()
                if cluster is not None:
                    cluster.close()
            except Exception:  # noqa: BLE001 - best effort at exit
                pass
        _CLIENTS.clear()


atexit.register(close_clients)


def in_worker() -> bool:
    """Whether this code runs inside a Dask task (then the Dask classes compute in-process)."""
    try:
        from distributed import get_worker
    except ImportError:
        return False
    try:
        get_worker()
    except ValueError:
        return False
    return True


def n_workers(client) -> int:
    return max(1, len(client.scheduler_info(n_workers=-1).get("workers", {})))


def _absolute_uri(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _absolute_uri(v) for k, v in sorted(value.items())}
    text = str(value)
    if "://" in text:
        return text
    return str(Path(text).expanduser().absolute())


def qlib_config(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``qlib.init`` keyword arguments reproducing this process's Qlib settings on a worker: ``provider_uri``
    (absolute), ``region`` overrides (``trade_unit``, ``limit_threshold``, ``deal_price``), the caches and the
    experiment manager (a ``file:`` tracking URI made absolute). ``overrides`` replace keys."""
    from qlib.config import C

    conf: dict[str, Any] = {
        "provider_uri": _absolute_uri(C["provider_uri"]),
        "region": C["region"],
        "trade_unit": C["trade_unit"],
        "limit_threshold": C["limit_threshold"],
        "deal_price": C["deal_price"],
        "expression_cache": C["expression_cache"],
        "dataset_cache": C["dataset_cache"],
    }
    exp = copy.deepcopy(C["exp_manager"]) if "exp_manager" in C else None
    if isinstance(exp, dict):
        uri = str((exp.get("kwargs") or {}).get("uri") or "")
        if uri.startswith("file:") and not uri.startswith("file:/"):
            exp["kwargs"]["uri"] = "file:" + str(Path(uri[5:]).absolute())
        conf["exp_manager"] = exp
    conf.update(dict(overrides or {}))
    return conf


_INITIALISED: list[str] = []


def ensure_qlib(conf: Mapping[str, Any]) -> None:
    """``qlib.init(**conf)`` unless this process was last initialised with the same ``conf``."""
    import qlib

    key = json.dumps(conf, sort_keys=True, default=str)
    if _INITIALISED and _INITIALISED[-1] == key:
        return
    qlib.init(**copy.deepcopy(dict(conf)))
    _INITIALISED[:] = [key]


def run_locked(conf: Mapping[str, Any], func, *args, **kwargs):
    """On a worker: initialise Qlib with ``conf`` and call ``func`` holding the process's Qlib lock (Qlib's
    settings and recorder are process-global, so two threads of one worker never run Qlib code at once)."""
    with _LOCK:
        ensure_qlib(conf)
        return func(*args, **kwargs)


def task_spec(spec: Any) -> dict[str, Any] | None:
    """``spec`` for whole-task work (walk-forward windows): a LocalCluster gets ``malloc_trim: false`` unless
    ``spec`` sets it (see :data:`NO_TRIM_CONFIG`); a scheduler address is left as it is."""
    conf = normalize_spec(spec)
    if conf is not None and conf["address"] is None:
        conf.setdefault("malloc_trim", False)
    return conf


def warm_up(modules: Sequence[str]) -> None:
    """On a worker: import ``modules``. An import error is left to the real task, which reports it."""
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the real task raises it with its context
            logger.debug("warm-up: cannot import %s", name, exc_info=True)


def task_modules(task: Any) -> list[str]:
    """The ``module_path`` strings of a Qlib task config (model, dataset, handler, records), once each."""
    found: list[str] = []
    if isinstance(task, Mapping):
        if isinstance(task.get("module_path"), str):
            found.append(task["module_path"])
        for value in task.values():
            found += task_modules(value)
    elif isinstance(task, (list, tuple)):
        for value in task:
            found += task_modules(value)
    return list(dict.fromkeys(found))


def warm_workers(spec: Any, modules: Sequence[str]) -> list:
    """Start (or connect to) the cluster of ``spec`` and have every worker import ``modules`` (one task per
    worker, not waited for), so that the workers' imports (Qlib, MLflow, the model: seconds per process)
    overlap the client's own preparation instead of delaying each worker's first task. Imports only: results
    are unchanged. Keep the returned futures until the real tasks are submitted (a released future is
    cancelled)."""
    client = get_client(spec)
    workers = list(client.scheduler_info(n_workers=-1).get("workers", {}))
    return [
        client.submit(warm_up, list(modules), workers=[w], allow_other_workers=False, pure=False, priority=10**6)
        for w in workers
    ]


def iter_results(client, futures) -> Iterator[tuple[int, Any]]:
    """``(position, result)`` of each future as it completes; errors re-raised with their own type."""
    from distributed import as_completed

    pos = {f.key: i for i, f in enumerate(futures)}
    with client.as_current():
        done = as_completed(futures)
    for fut in done:
        yield pos[fut.key], fut.result()
