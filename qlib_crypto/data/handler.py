"""Crypto data handlers: ``CryptoAlpha158`` (engineered features) and ``CryptoAlpha360`` (raw windows).

Both are Qlib ``DataHandlerLP`` subclasses wired the way Qlib's own ``Alpha158`` is: a data loader with a
feature set that is data (see :mod:`qlib_crypto.data.features`) plus processors, every part addressable from
a ``qrun`` YAML file as ``class`` + ``module_path`` + ``kwargs``. The loader is
:class:`qlib_crypto.data.loader.FastDataLoader`: the fast feature engine by default (``engine: fast``), Qlib's
expression engine with ``engine: qlib``; both give the same values (docs/research.md).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from qlib.contrib.data.handler import check_transform_proc
from qlib.data.dataset.handler import DataHandlerLP

from ..errors import ConfigError
from .features import MARKET_FAMILIES, get_feature_config, get_label_config, get_raw_window_config, normalize_freq
from .loader import check_engine

logger = logging.getLogger(__name__)

_MODULE = "qlib_crypto.data.processors"
CROSS_SECTIONAL_PROCESSOR: dict[str, Any] = {
    "class": "CrossSectionalFeatures",
    "module_path": _MODULE,
    "kwargs": {"fields_group": "feature"},
}


def default_infer_processors(fit: bool = True) -> list[dict[str, Any]]:
    """Default inference processors: inf -> NaN, robust z-score fit on the train window (clip to +/-3), fill 0.

    Without a fit window (``fit=False``) the robust z-score is left out.
    """
    procs: list[dict[str, Any]] = [{"class": "InfToNaN", "module_path": _MODULE, "kwargs": {"fields_group": "feature"}}]
    if fit:
        procs.append({"class": "RobustZScoreNorm", "kwargs": {"fields_group": "feature", "clip_outlier": True}})
    procs.append({"class": "Fillna", "kwargs": {"fields_group": "feature"}})
    return procs


def default_learn_processors(label_norm: str = "zscore") -> list[dict[str, Any]]:
    """Default learning processors: drop rows without a label, normalise the label across instruments per bar.

    ``label_norm``: ``zscore`` (mean 0, std 1 per bar) or ``rank`` (Qlib's ``CSRankNorm``: percentile rank,
    robust to fat-tailed returns).
    """
    if label_norm == "zscore":
        norm: dict[str, Any] = {"class": "CSZScoreLabel", "module_path": _MODULE, "kwargs": {"fields_group": "label"}}
    elif label_norm == "rank":
        norm = {"class": "CSRankNorm", "kwargs": {"fields_group": "label"}}
    else:
        raise ConfigError(f"bad label_norm {label_norm!r}", hint="use zscore or rank")
    return [{"class": "DropnaLabel"}, norm]


def _proc_class_name(p: Any) -> str:
    if isinstance(p, Mapping):
        return str(p.get("class", ""))
    if isinstance(p, str):
        return p
    return type(p).__name__


def _keep_rows(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``values[:, keep]`` into a new block, copied run by run of kept rows (memcpy speed, no index array)."""
    from .engine import empty_block

    out = empty_block((values.shape[0], int(keep.sum())))
    edges = np.flatnonzero(np.diff(np.concatenate(([False], keep, [False])).astype(np.int8)))
    o = 0
    for a, b in zip(edges[::2], edges[1::2]):
        out[:, o : o + b - a] = values[:, a:b]
        o += b - a
    return out


def _label_config(label: Any, horizon: int, price: str) -> tuple[list[str], list[str]]:
    if label is None:
        return get_label_config(horizon, price)
    if isinstance(label, str):
        return [label], ["LABEL0"]
    if isinstance(label, (list, tuple)) and len(label) == 2 and isinstance(label[0], (list, tuple)):
        return list(label[0]), list(label[1])
    exprs = list(label)
    return exprs, [f"LABEL{i}" for i in range(len(exprs))]


class _CryptoHandlerBase(DataHandlerLP):
    """Shared wiring: loader config, label, default processors, copy-free processing and fetching."""

    # -- processing without full-size copies ---------------------------------------------------------------
    def process_data(self, with_fit: bool = False):
        """Qlib's ``process_data`` (same frames, same fitted processors) with one new block per frame.

        Qlib copies the raw frame before the inference processors, each of its normalising processors makes
        full-size temporaries, and the learn frame is copied again before ``DropnaLabel`` copies it once more.
        Here the inference frame is the raw block processed in place (the same float32 arithmetic) when the
        raw frame is not needed afterwards (``process_type="append"``, Qlib's default, or ``drop_raw=True``; the
        raw frame is then re-loaded if anyone asks for it), else one copy of it; and the learn frame is the rows
        ``DropnaLabel`` keeps, copied once, with the label processors applied to the label columns. Processors other than the crypto defaults (and Qlib's
        ``RobustZScoreNorm``, ``Fillna``, ``DropnaLabel``, ``CSRankNorm``) fall back to Qlib's method.
        """
        if not self._process_blocks(with_fit):
            super().process_data(with_fit=with_fit)

    def _process_blocks(self, with_fit: bool) -> bool:
        from .engine import empty_block
        from .processors import Block, apply_narrow, apply_wide, block_kind, fit_rows

        raw = getattr(self, "_data", None)
        infer_l, learn_l = list(self.infer_processors), list(self.learn_processors)
        if (
            not isinstance(raw, pd.DataFrame)
            or raw.empty
            or self.shared_processors
            or self.process_type not in (DataHandlerLP.PTYPE_A, DataHandlerLP.PTYPE_I)
            or not isinstance(raw.index, pd.MultiIndex)
            or not (raw.dtypes == np.float32).all()
            or any(block_kind(p) is None for p in infer_l + learn_l)
            or any(block_kind(p) == "dropna" for p in infer_l)
        ):
            return False
        for p in infer_l:
            if not p.is_for_infer():
                raise TypeError("Only processors usable for inference can be used in `infer_processors` ")
        values = raw.to_numpy()  # (rows, columns); a view of the raw block when the frame is one block
        base = values.T
        in_place = self.drop_raw or self.process_type == DataHandlerLP.PTYPE_A
        if in_place and np.may_share_memory(values, raw.to_numpy()):
            # the raw frame is not needed after this (PTYPE_A: the learn frame comes from the inference frame;
            # drop_raw: no raw frame at all) and is released below: process its block in place
            arr = base
        else:
            arr = empty_block(base.shape)
            np.copyto(arr, base)
        infer = Block(arr, raw.index, raw.columns)
        try:
            self._run_block(infer, infer_l, with_fit)
        except BaseException:
            if arr is base:  # the raw block is half processed: never hand it out as raw data
                self._release_raw()
            raise
        self._infer = infer.frame()

        if self.process_type == DataHandlerLP.PTYPE_A:
            source = infer
            del values, base, raw
            self._release_raw()  # not needed any more: free it before the learn frame is made
        else:
            source = Block(base, raw.index, raw.columns)
        learn, private = source, False
        label_frame = None
        for p in learn_l:
            kind = block_kind(p)
            if kind == "dropna":
                pos = learn.positions(p.fields_group)
                keep = ~np.isnan(learn.values[pos]).any(axis=0)
                if label_frame is not None:
                    keep &= ~label_frame.isna().any(axis=1).to_numpy()
                if not keep.all():
                    learn, private = Block(_keep_rows(learn.values, keep), learn.index[keep], learn.columns), True
                    if label_frame is not None:
                        label_frame = label_frame[keep]
                continue
            if not private:
                out = empty_block(learn.values.shape)
                np.copyto(out, learn.values)
                learn, private = Block(out, learn.index, learn.columns), True
            if kind == "wide":
                apply_wide(
                    p, learn, with_fit, fit_rows(p, learn.index) if with_fit and hasattr(p, "fit_start_time") else None
                )
                continue
            # label processors may change the dtype (Qlib's CSRankNorm gives float64): keep their columns aside
            result = self._run_narrow_keep_dtype(p, learn, with_fit, label_frame)
            if result is None:
                apply_narrow(p, learn, with_fit)
            elif (result.dtypes == np.float32).all() and list(result.columns) == list(
                learn.columns[learn.positions("label")]
            ):
                learn.values[learn.positions("label")] = result.to_numpy().T  # same dtype: back into the block
                label_frame = None
            else:
                label_frame = result
        self._learn = self._learn_frame(learn, label_frame)
        self._release_raw()
        return True

    def _release_raw(self) -> None:
        if self.drop_raw:
            self.__dict__.pop("_raw", None)
            self.__dict__["_raw_dropped"] = False
        else:  # not needed by the handler any more: re-loaded by the data loader if someone asks for it
            self.__dict__.pop("_raw", None)
            self.__dict__["_raw_dropped"] = True

    # The raw frame is kept only until the processed frames exist; ``fetch(data_key="raw")`` (or any use of
    # ``_data``) re-loads it through the data loader. ``drop_raw=True`` keeps Qlib's meaning (no raw at all).
    @property
    def _data(self):
        df = self.__dict__.get("_raw")
        if df is None and self.__dict__.get("_raw_dropped"):
            from qlib.utils import lazy_sort_index

            logger.info("%s: re-loading the raw frame", type(self).__name__)
            df = lazy_sort_index(self.data_loader.load(self.instruments, self.start_time, self.end_time))
            self.__dict__["_raw"] = df
            self.__dict__["_raw_dropped"] = False
        if df is None:
            raise AttributeError("_data")
        return df

    @_data.setter
    def _data(self, df) -> None:
        self.__dict__["_raw"] = df
        self.__dict__["_raw_dropped"] = False

    @_data.deleter
    def _data(self) -> None:
        self.__dict__.pop("_raw", None)
        self.__dict__["_raw_dropped"] = False

    def _run_block(self, block, procs, with_fit: bool) -> None:
        from .processors import apply_narrow, apply_wide, block_kind, fit_rows

        for p in procs:
            if block_kind(p) == "wide":
                rows = fit_rows(p, block.index) if with_fit and hasattr(p, "fit_start_time") else None
                apply_wide(p, block, with_fit, rows)
            else:
                apply_narrow(p, block, with_fit)

    @staticmethod
    def _run_narrow_keep_dtype(p, block, with_fit: bool, label_frame):
        """Label processors run on a frame of the label columns that keeps whatever dtype they produce;
        returns that frame (None when ``p`` is not a label-group processor)."""
        if getattr(p, "fields_group", None) != "label" or "label" not in block.columns.get_level_values(0):
            return None
        sub = label_frame if label_frame is not None else block.sub_frame(block.positions("label"))
        if with_fit:
            p.fit(sub)
        return p(sub)

    @staticmethod
    def _learn_frame(block, label_frame) -> pd.DataFrame:
        frame = block.frame()
        if label_frame is None:
            return frame
        pos = block.positions("label")
        n = len(block.columns)
        if len(pos) and pos[-1] == n - 1 and np.array_equal(pos, np.arange(n - len(pos), n)):
            head = pd.DataFrame(
                block.values[: n - len(pos)].T, index=block.index, columns=block.columns[: n - len(pos)], copy=False
            )
            return pd.concat([head, label_frame], axis=1, copy=False)
        frame = frame.copy()
        frame[label_frame.columns] = label_frame
        return frame

    def fetch(
        self,
        selector=slice(None, None),
        level="datetime",
        col_set=DataHandlerLP.CS_ALL,
        data_key=DataHandlerLP.DK_I,
        squeeze=False,
        proc_func=None,
    ):
        """Qlib's ``fetch``, without copies where the answer is the stored frame itself: ``col_set`` naming every
        column group in order is the whole frame, ``__all`` is the frame with its group level dropped, and a
        datetime range of a datetime-major frame is a row range (returned as a view, as Qlib returns the
        stored frame itself for the full range)."""
        if data_key == DataHandlerLP.DK_R and self.__dict__.get("_raw_dropped") and not self.drop_raw:
            groups = (
                [col_set] if isinstance(col_set, str) else list(col_set) if isinstance(col_set, (list, tuple)) else []
            )
            loader = self.data_loader
            if (
                groups
                and hasattr(loader, "load_groups")
                and getattr(loader, "is_group", False)
                and all(g in loader.fields for g in groups)
            ):
                # only the asked column groups of the dropped raw frame (e.g. SignalRecord's raw label)
                from qlib.utils import lazy_sort_index

                part = lazy_sort_index(loader.load_groups(groups, self.instruments, self.start_time, self.end_time))
                return self._fetch_data(
                    data_storage=part,
                    selector=selector,
                    level=level,
                    col_set=col_set,
                    squeeze=squeeze,
                    proc_func=proc_func,
                )
        df = self._get_df_by_key(data_key)
        if (
            proc_func is None
            and not squeeze
            and isinstance(df, pd.DataFrame)
            and isinstance(df.columns, pd.MultiIndex)
            and isinstance(df.index, pd.MultiIndex)
            and df.index.names[0] == "datetime"
            and level == "datetime"
        ):
            if isinstance(col_set, (list, tuple)) and list(col_set) == list(
                dict.fromkeys(df.columns.get_level_values(0))
            ):
                col_set = DataHandlerLP.CS_RAW
            sel = selector
            if isinstance(sel, (tuple, list)):
                try:
                    sel = slice(*sel)
                except (TypeError, ValueError):
                    sel = None
            if isinstance(sel, slice) and sel.step is None and col_set in (DataHandlerLP.CS_RAW, DataHandlerLP.CS_ALL):
                out = None
                if sel == slice(None, None):
                    out = df
                else:
                    # the rows Qlib's fetch_df_by_index picks (MultiIndex.get_locs on the same label slice): a
                    # contiguous range of a datetime-major frame, returned as a row slice
                    locs = np.asarray(df.index.get_locs((sel, slice(None))))
                    if len(locs) == 0 or locs[-1] - locs[0] + 1 == len(locs):
                        out = df.iloc[int(locs[0]) : int(locs[-1]) + 1] if len(locs) else df.iloc[:0]
                if out is not None:
                    if col_set == DataHandlerLP.CS_ALL:  # Qlib's droplevel, without copying the values
                        out = out.set_axis(out.columns.droplevel(0), axis=1, copy=False)
                    return out
        return super().fetch(
            selector=selector, level=level, col_set=col_set, data_key=data_key, squeeze=squeeze, proc_func=proc_func
        )

    def _build(
        self,
        *,
        features: tuple[list[str], list[str]],
        instruments: Any,
        start_time: Any,
        end_time: Any,
        freq: str,
        infer_processors: Sequence | None,
        learn_processors: Sequence | None,
        fit_start_time: Any,
        fit_end_time: Any,
        process_type: str,
        filter_pipe: Any,
        inst_processors: Any,
        horizon: int,
        label: Any,
        label_price: str,
        label_norm: str,
        cross_sectional: bool,
        engine: str,
        kwargs: dict,
    ) -> None:
        from .._run_guard import guard_active_run

        guard_active_run()  # inside qrun: name the MLflow run, end it KILLED on Ctrl-C/SIGTERM (qlib_crypto/_run_guard.py)
        fit = fit_start_time is not None and fit_end_time is not None
        if infer_processors is None:
            if not fit:
                logger.warning(
                    "%s without fit_start_time/fit_end_time: features are not normalised "
                    "(pass the train segment as the fit window to enable RobustZScoreNorm)",
                    type(self).__name__,
                )
            infer_processors = default_infer_processors(fit)
        else:
            infer_processors = list(infer_processors)
        if learn_processors is None:
            learn_processors = default_learn_processors(label_norm)
        shared = kwargs.get("shared_processors") or []
        if cross_sectional and not any(
            _proc_class_name(p) == "CrossSectionalFeatures" for p in [*infer_processors, *shared]
        ):
            infer_processors = [dict(CROSS_SECTIONAL_PROCESSOR), *infer_processors]
        infer_processors = check_transform_proc(infer_processors, fit_start_time, fit_end_time)
        learn_processors = check_transform_proc(learn_processors, fit_start_time, fit_end_time)

        self.feature_names = list(features[1])
        self.label_config = _label_config(label, horizon, label_price)
        self.engine = check_engine(engine)
        data_loader = {
            "class": "FastDataLoader",
            "module_path": "qlib_crypto.data.loader",
            "kwargs": {
                "config": {"feature": features, "label": self.label_config},
                "filter_pipe": filter_pipe,
                "freq": freq,
                "inst_processors": inst_processors,
                "engine": self.engine,
            },
        }
        super().__init__(
            instruments=instruments,
            start_time=start_time,
            end_time=end_time,
            data_loader=data_loader,
            infer_processors=infer_processors,
            learn_processors=learn_processors,
            process_type=process_type,
            **kwargs,
        )


class CryptoAlpha158(_CryptoHandlerBase):
    """Alpha158's feature families with windows in bars, plus quote-volume, market-relative and funding features.

    Parameters beyond Qlib's ``Alpha158``:

    - ``feature_config``: a full feature configuration (see :mod:`qlib_crypto.data.features`);
    - ``windows``: windows (bars) for the rolling, amount and market groups (default per ``freq``);
    - ``include`` / ``exclude``: family names to keep / drop (``ROC``, ``MA``, ``KBAR``, ``FUND``...);
    - ``horizon``: label horizon in bars (label ``Ref($close, -(1+h))/Ref($close, -1) - 1``);
    - ``label``: a label expression (or ``[exprs, names]``) replacing the default one;
    - ``label_norm``: ``zscore`` or ``rank``, the cross-sectional label normalisation of the default
      learn processors;
    - ``infer_processors`` / ``learn_processors``: ``None`` means the crypto defaults;
    - ``engine``: ``fast`` (the vectorised feature engine, default) or ``qlib`` (Qlib's expression engine).
    """

    def __init__(
        self,
        instruments: Any = "all",
        start_time: Any = None,
        end_time: Any = None,
        freq: str = "60min",
        infer_processors: Sequence | None = None,
        learn_processors: Sequence | None = None,
        fit_start_time: Any = None,
        fit_end_time: Any = None,
        process_type: str = DataHandlerLP.PTYPE_A,
        filter_pipe: Any = None,
        inst_processors: Any = None,
        feature_config: Mapping[str, Any] | None = None,
        windows: Sequence[int] | None = None,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        horizon: int = 1,
        label: Any = None,
        label_price: str = "close",
        label_norm: str = "zscore",
        engine: str = "fast",
        **kwargs: Any,
    ) -> None:
        freq = normalize_freq(freq)
        features = get_feature_config(freq, feature_config, windows=windows, include=include, exclude=exclude)
        market_prefixes = tuple(MARKET_FAMILIES)
        cross_sectional = any(n.rstrip("0123456789") in market_prefixes for n in features[1])
        self._build(
            features=features,
            instruments=instruments,
            start_time=start_time,
            end_time=end_time,
            freq=freq,
            infer_processors=infer_processors,
            learn_processors=learn_processors,
            fit_start_time=fit_start_time,
            fit_end_time=fit_end_time,
            process_type=process_type,
            filter_pipe=filter_pipe,
            inst_processors=inst_processors,
            horizon=horizon,
            label=label,
            label_price=label_price,
            label_norm=label_norm,
            cross_sectional=cross_sectional,
            engine=engine,
            kwargs=kwargs,
        )


class CryptoAlpha360(_CryptoHandlerBase):
    """Raw-window handler: the last ``n_bars`` bars of open/high/low/close/vwap (divided by the latest close),
    volume (by the latest volume) and amount (by the latest amount), for models that learn their own features.
    ``engine``: ``fast`` (default) or ``qlib``, as for :class:`CryptoAlpha158`.
    """

    def __init__(
        self,
        instruments: Any = "all",
        start_time: Any = None,
        end_time: Any = None,
        freq: str = "60min",
        infer_processors: Sequence | None = None,
        learn_processors: Sequence | None = None,
        fit_start_time: Any = None,
        fit_end_time: Any = None,
        process_type: str = DataHandlerLP.PTYPE_A,
        filter_pipe: Any = None,
        inst_processors: Any = None,
        n_bars: int | None = None,
        fields: Sequence[str] | None = None,
        horizon: int = 1,
        label: Any = None,
        label_price: str = "close",
        label_norm: str = "zscore",
        engine: str = "fast",
        **kwargs: Any,
    ) -> None:
        freq = normalize_freq(freq)
        features = get_raw_window_config(freq, n_bars, fields)
        self._build(
            features=features,
            instruments=instruments,
            start_time=start_time,
            end_time=end_time,
            freq=freq,
            infer_processors=infer_processors,
            learn_processors=learn_processors,
            fit_start_time=fit_start_time,
            fit_end_time=fit_end_time,
            process_type=process_type,
            filter_pipe=filter_pipe,
            inst_processors=inst_processors,
            horizon=horizon,
            label=label,
            label_price=label_price,
            label_norm=label_norm,
            cross_sectional=False,
            engine=engine,
            kwargs=kwargs,
        )
