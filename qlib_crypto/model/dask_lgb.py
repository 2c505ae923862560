"""``DaskLGBModel``: Qlib's ``LGBModel`` trained on a Dask cluster with LightGBM's own distributed interface.

Use it in a ``qrun`` YAML in place of ``qlib.contrib.model.gbdt.LGBModel`` (same kwargs, plus ``dask``)::

    model:
        class: DaskLGBModel
        module_path: qlib_crypto.model
        kwargs: {loss: mse, learning_rate: 0.03, num_leaves: 15, num_boost_round: 300,
                 early_stopping_rounds: 30, dask: tcp://scheduler:8786}

Training: the train segment is cut into one block per worker (every n-th row, so each worker sees the whole
period and universe), each block is placed on its worker, and ``lightgbm.dask.DaskLGBMRegressor`` trains
data-parallel (each worker builds histograms of its rows; LightGBM's network sums them). Early stopping on
the valid segment: LightGBM evaluates metrics on each worker's *local* eval data and its Dask interface does
not support early stopping (workers stopping at different rounds hang its collective calls, lightgbm issues
#3712, #6197). Here every worker holds the whole valid segment as its eval set, so every worker computes the
same valid loss and stops at the same round; the booster keeps the best round, like ``LGBModel``.

Prediction is ``LGBModel.predict`` (the trained booster on the test segment's features): a ``pd.Series`` on
the ``(datetime, instrument)`` index, what ``SignalRecord`` saves as ``pred.pkl``. Loss curves are logged as
``LGBModel`` logs them (``l2.valid``). Inside a Dask task (a walk-forward window on a worker) it trains
in-process exactly as ``LGBModel``.

Not bit-identical to ``LGBModel``: each worker finds the bin boundaries of its share of the features from its
own rows (LightGBM's distributed bin finding), and histograms are summed in another order, so splits can
differ slightly; docs/scale-out.md gives the measured IC difference.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from qlib.contrib.model.gbdt import LGBModel
from qlib.data.dataset.handler import DataHandlerLP

from ..errors import ConfigError, ModelError
from ..scale.cluster import get_client, in_worker, normalize_spec, require_dask

logger = logging.getLogger(__name__)


def _frame_xy(dataset, segment: str) -> tuple[np.ndarray, np.ndarray] | None:
    if segment not in dataset.segments:
        return None
    df = dataset.prepare(segment, col_set=["feature", "label"], data_key=DataHandlerLP.DK_L)
    if df.empty:
        raise ModelError(
            f"the {segment} segment holds no rows", hint="check the dataset's segments and the handler's time range"
        )
    y = df["label"].to_numpy()
    if y.ndim != 2 or y.shape[1] != 1:
        raise ModelError(
            f"DaskLGBModel needs one label column, got {y.shape[1] if y.ndim == 2 else y.ndim}",
            hint="give the handler a single label expression",
        )
    # a view of the handler's block where it is one (no full-size copy here: the parts are copied one by one)
    return df["feature"].to_numpy(dtype=np.float32, copy=False), y[:, 0].astype(np.float64)


class DaskLGBModel(LGBModel):
    """``LGBModel`` trained with ``lightgbm.dask`` on a Dask cluster (see the module doc).

    ``dask``: where the cluster is (a scheduler address ``tcp://host:8786``, ``local``, or a mapping; see
    :mod:`qlib_crypto.scale.cluster`); default a LocalCluster with the machine's cores. Other kwargs are
    ``LGBModel``'s. ``num_threads`` is decided by the workers (their thread count), as in ``lightgbm.dask``.
    """

    def __init__(
        self,
        loss: str = "mse",
        early_stopping_rounds: int = 50,
        num_boost_round: int = 1000,
        dask: Any = "local",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            loss=loss, early_stopping_rounds=early_stopping_rounds, num_boost_round=num_boost_round, **kwargs
        )
        self.dask = normalize_spec(dask if dask is not None else "local")
        self.best_iteration: int | None = None

    def fit(
        self,
        dataset,
        num_boost_round=None,
        early_stopping_rounds=None,
        verbose_eval=20,
        evals_result=None,
        reweighter=None,
        **kwargs,
    ):
        if in_worker():  # a task on a worker (e.g. a walk-forward window): train in-process, as LGBModel
            return super().fit(
                dataset,
                num_boost_round=num_boost_round,
                early_stopping_rounds=early_stopping_rounds,
                verbose_eval=verbose_eval,
                evals_result=evals_result,
                reweighter=reweighter,
                **kwargs,
            )
        if reweighter is not None:
            raise ConfigError("DaskLGBModel does not take a reweighter", hint="use LGBModel for reweighted training")
        require_dask()
        from qlib.workflow import R

        if evals_result is None:
            evals_result = {}
        train = _frame_xy(dataset, "train")
        if train is None:
            raise ConfigError("the dataset has no train segment", hint="add segments.train to the dataset config")
        valid = _frame_xy(dataset, "valid")
        client = get_client(self.dask)
        est = self._fit_distributed(
            client,
            train,
            valid,
            self.num_boost_round if num_boost_round is None else num_boost_round,
            self.early_stopping_rounds if early_stopping_rounds is None else early_stopping_rounds,
            **kwargs,
        )
        self.model = est.booster_
        self.best_iteration = int(est.booster_.best_iteration or est.booster_.current_iteration())
        evals_result.update({k: {m: list(v) for m, v in d.items()} for k, d in (est.evals_result_ or {}).items()})
        for k, metrics in evals_result.items():
            for key, val in metrics.items():
                name = f"{key}.{k}"
                for epoch, m in enumerate(val):
                    R.log_metrics(**{name.replace("@", "_"): m}, step=epoch)

    def _fit_distributed(self, client, train, valid, num_boost_round: int, early_stopping_rounds: int, **kwargs):
        import dask.array as da
        import lightgbm as lgb
        from lightgbm.dask import DaskLGBMRegressor

        workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
        if not workers:
            raise ConfigError("the Dask cluster has no workers", hint="start `dask worker` processes for the scheduler")
        x, y = train
        n = min(len(workers), len(y))
        xs, ys = [], []
        for i in range(n):  # every n-th row on worker i: each worker sees the whole period and universe
            part = np.ascontiguousarray(x[i::n])  # one part's copy at a time on the client
            xf = client.scatter(part, workers=[workers[i]], direct=True)
            yf = client.scatter(np.ascontiguousarray(y[i::n]), workers=[workers[i]], direct=True)
            rows = len(part)
            del part
            xs.append(da.from_delayed(xf, shape=(rows, x.shape[1]), dtype=np.float32))
            ys.append(da.from_delayed(yf, shape=(rows,), dtype=np.float64))
        fit_kwargs: dict[str, Any] = dict(kwargs)
        if valid is not None:
            vx, vy = valid
            vx = np.ascontiguousarray(vx)
            vxf = client.scatter(vx, broadcast=True, direct=True)  # the whole valid segment on every worker
            vyf = client.scatter(vy, broadcast=True, direct=True)
            fit_kwargs["eval_set"] = [
                (
                    da.concatenate([da.from_delayed(vxf, shape=vx.shape, dtype=np.float32) for _ in range(n)]),
                    da.concatenate([da.from_delayed(vyf, shape=vy.shape, dtype=np.float64) for _ in range(n)]),
                )
            ]
            fit_kwargs["eval_names"] = ["valid"]
            fit_kwargs["callbacks"] = [lgb.early_stopping(early_stopping_rounds, verbose=False)]
        params = {k: v for k, v in self.params.items() if k not in ("num_threads", "nthread", "n_jobs", "num_thread")}
        est = DaskLGBMRegressor(client=client, n_estimators=int(num_boost_round), **params)
        with client.as_current():  # lightgbm.dask waits on futures through the current client
            est.fit(da.concatenate(xs), da.concatenate(ys), **fit_kwargs)
        logger.info("DaskLGBModel: %d workers, best iteration %s", n, est.booster_.best_iteration)
        return est

    def finetune(self, dataset, num_boost_round=10, verbose_eval=20, reweighter=None):
        raise ModelError("DaskLGBModel does not finetune", hint="retrain with DaskLGBModel.fit, or use LGBModel")

    def predict(self, dataset, segment="test") -> pd.Series:
        return super().predict(dataset, segment)
