"""Qlib data loaders: the fast feature engine as a drop-in ``QlibDataLoader``, and the crypto feature sets.

- :class:`FastDataLoader` takes ``QlibDataLoader``'s arguments (``config``, ``filter_pipe``, ``swap_level``,
  ``freq``, ``inst_processors``) plus ``engine``: ``fast`` (default) evaluates the expressions with
  :mod:`qlib_crypto.data.engine` (all instruments at once, same values as Qlib), ``qlib`` uses Qlib's
  expression engine (``D.features``) as ``QlibDataLoader`` does. Use it wherever Qlib takes a ``data_loader``.
- :class:`CryptoAlpha158DL` / :class:`CryptoAlpha360DL` carry the crypto feature sets (like Qlib's
  ``Alpha158DL`` / ``Alpha360DL``).

The fast engine reads the raw fields through Qlib's data API (``FeatureD``: the provider Qlib was
initialised with, one read per field and instrument) and returns the frame ``QlibDataLoader`` returns:
index ``(datetime, instrument)`` sorted, columns ``(group, name)``, float32 values, one contiguous block.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from qlib.data.dataset.loader import QlibDataLoader

from ..errors import ConfigError
from .engine import Panel, _kernels, compile_exprs, empty_block, evaluate, extended_range
from .features import get_feature_config, get_raw_window_config, normalize_freq

logger = logging.getLogger(__name__)

ENGINES = ("fast", "qlib")


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ConfigError(
            f"unknown feature engine {engine!r}",
            hint="use engine: fast (vectorised, the default) or engine: qlib (Qlib's expression engine)",
        )
    return engine


class FastDataLoader(QlibDataLoader):
    """``QlibDataLoader`` whose expressions are evaluated by the fast engine (``engine="fast"``).

    Groups with ``inst_processors`` are loaded through Qlib's expression engine (the processors are Qlib
    per-instrument objects); ``engine="qlib"`` loads everything that way.
    """

    def __init__(
        self,
        config: Any,
        filter_pipe: Any = None,
        swap_level: bool = True,
        freq: str | Mapping[str, str] = "day",
        inst_processors: Any = None,
        engine: str = "fast",
    ) -> None:
        self.engine = check_engine(engine)
        super().__init__(
            config=config, filter_pipe=filter_pipe, swap_level=swap_level, freq=freq, inst_processors=inst_processors
        )
        if self.engine == "fast":  # fail at construction, naming the expression and the operator
            for exprs, _ in self._groups_fields():
                compile_exprs(exprs)

    def _groups_fields(self) -> list[tuple[list, list]]:
        return list(self.fields.values()) if self.is_group else [self.fields]

    def _group_inst_processors(self, gp_name: str | None) -> list:
        if isinstance(self.inst_processors, list):
            return self.inst_processors
        return list(self.inst_processors.get(gp_name, []) or [])

    def _group_freq(self, gp_name: str | None) -> str:
        return self.freq[gp_name] if isinstance(self.freq, dict) else self.freq

    def load(self, instruments=None, start_time=None, end_time=None) -> pd.DataFrame:
        if self.engine == "qlib":
            return super().load(instruments, start_time, end_time)
        groups = list(self.fields.items()) if self.is_group else [(None, self.fields)]
        return self._load_groups(instruments, start_time, end_time, groups)

    def load_groups(self, groups: Sequence[str], instruments=None, start_time=None, end_time=None) -> pd.DataFrame:
        """The columns of ``groups`` only, with the rows of the whole frame (what ``load(...)[groups]`` gives
        without computing the other groups; used to re-load a dropped raw frame's label cheaply)."""
        if self.engine == "qlib" or not self.is_group:
            frame = self.load(instruments, start_time, end_time)
            return frame if not self.is_group else frame[list(groups)]
        picked = [(g, self.fields[g]) for g in groups]
        row_fields = set()
        for exprs, _ in self.fields.values():
            for node in compile_exprs(exprs):
                row_fields |= node.fields()
        return self._load_groups(instruments, start_time, end_time, picked, row_fields=row_fields)

    def _load_groups(
        self, instruments, start_time, end_time, groups: list, row_fields: set | None = None
    ) -> pd.DataFrame:
        fast = [(g, ex, nm) for g, (ex, nm) in groups if not self._group_inst_processors(g)]
        slow = [(g, ex, nm) for g, (ex, nm) in groups if self._group_inst_processors(g)]
        freqs = {self._group_freq(g) for g, _, _ in fast}
        if not slow and len(freqs) == 1:
            return self._load_fast(instruments, start_time, end_time, fast, freqs.pop(), row_fields)
        # mixed case: one frame per group, joined like DLWParser.load
        frames = {}
        for g, ex, nm in groups:
            if (g, ex, nm) in slow:
                frames[g] = self.load_group_df(instruments, ex, nm, start_time, end_time, g)
            else:
                frames[g] = self._load_fast(instruments, start_time, end_time, [(None, ex, nm)], self._group_freq(g))
        if not self.is_group:
            return frames[None]
        return pd.concat(frames, axis=1)

    # -- the fast path ---------------------------------------------------------------------------------
    def _load_fast(
        self, instruments, start_time, end_time, groups: list, freq: str, row_fields: set | None = None
    ) -> pd.DataFrame:
        from qlib.data import D

        if instruments is None:
            instruments = "all"
        if isinstance(instruments, str):
            instruments = D.instruments(instruments, filter_pipe=self.filter_pipe)
        columns = _columns(groups)
        t0 = time.perf_counter()
        frame = load_expressions(
            instruments,
            [e for _, ex, _ in groups for e in ex],
            columns,
            start_time,
            end_time,
            freq,
            swap_level=self.swap_level,
            row_fields=row_fields,
        )
        logger.info(
            "fast feature engine: %d expressions, %d rows in %.2f s",
            frame.shape[1],
            frame.shape[0],
            time.perf_counter() - t0,
        )
        return frame


def _columns(groups: list) -> pd.Index:
    if groups and groups[0][0] is not None:
        return pd.MultiIndex.from_tuples([(g, n) for g, _, names in groups for n in names])
    return pd.Index([n for _, _, names in groups for n in names])


def _empty(columns: pd.Index, swap_level: bool) -> pd.DataFrame:
    names = ["datetime", "instrument"] if swap_level else ["instrument", "datetime"]
    index = pd.MultiIndex.from_arrays([[], []], names=names)
    return pd.DataFrame(np.empty((0, len(columns)), dtype=np.float32), index=index, columns=columns)


def _bin_directory(freq: str):
    """``<provider>/features`` when Qlib reads features from ``.bin`` files (its default provider and storage),
    else None (then the fields are read through ``FeatureD``, whatever the backend)."""
    from qlib.config import C
    from qlib.data.data import FeatureD, LocalFeatureProvider

    provider = getattr(FeatureD, "_provider", None)
    if type(provider) is not LocalFeatureProvider:
        return None
    backend = provider.backend or {}
    if backend.get("class", "FileFeatureStorage") != "FileFeatureStorage" or backend.get("kwargs", {}).get(
        "provider_uri"
    ):
        return None
    try:
        root = C.dpm.get_data_uri(freq) / "features"
    except Exception:  # noqa: BLE001 - a non-local provider URI: use Qlib's API
        return None
    return root if root.is_dir() else None


def read_panel(instruments: Sequence[str], fields: Sequence[str], g0: int, g1: int, freq: str) -> Panel:
    """Read ``fields`` of ``instruments`` over calendar rows ``g0 .. g1`` from the provider Qlib was initialised
    with: its ``.bin`` files directly (float32, first value = start index in the calendar) when it uses Qlib's
    file storage, else through ``FeatureD.feature``."""
    from qlib.data.data import FeatureD
    from qlib.utils import code_to_fname

    panel = Panel(g0=g0, length=g1 - g0 + 1, instruments=list(instruments))
    root = _bin_directory(freq)
    for name in fields:
        panel.add_missing(name)
        values, first, last = panel.values[name], panel.first[name], panel.last[name]
        for j, inst in enumerate(panel.instruments):
            if root is not None:
                path = root / code_to_fname(inst).lower() / f"{name.lower()}.{freq.lower()}.bin"
                if not path.exists():
                    continue
                raw = np.fromfile(path, dtype="<f4")
                if len(raw) < 2:
                    continue
                start = int(raw[0])
                a, b = max(start, g0), min(start + len(raw) - 2, g1)
                if a > b:
                    continue
                data = raw[1 + a - start : 2 + b - start]
            else:
                series = FeatureD.feature(inst, "$" + name, g0, g1, freq)
                if series is None or len(series) == 0:
                    continue
                a, data = int(series.index[0]), series.to_numpy()
            values[a - g0 : a - g0 + len(data), j] = data
            first[j] = a
            last[j] = a + len(data) - 1
    return panel


def load_expressions(
    instruments: Any,
    exprs: Sequence[str],
    columns: pd.Index,
    start_time: Any = None,
    end_time: Any = None,
    freq: str = "day",
    *,
    swap_level: bool = True,
    row_fields: set | None = None,
) -> pd.DataFrame:
    """What ``D.features(instruments, exprs, start_time, end_time, freq)`` returns (columns renamed to
    ``columns``, index swapped to ``(datetime, instrument)`` when ``swap_level``), computed by the fast engine.

    ``instruments`` is a market config (``D.instruments(...)``, its spans limit the rows) or a list of names.
    ``row_fields``: the fields whose stored bars define the rows (default: the fields of ``exprs``).
    """
    from qlib.data.data import Cal, DatasetProvider

    nodes = compile_exprs(exprs)
    cal = Cal.calendar(start_time, end_time, freq=freq)
    if len(cal) == 0:
        return _empty(columns, swap_level)
    _, _, start_index, end_index = Cal.locate_index(cal[0], cal[-1], freq=freq, future=False)
    full_cal = Cal.calendar(freq=freq)
    instruments_d = DatasetProvider.get_instruments_d(instruments, freq)
    names = sorted(instruments_d) if isinstance(instruments_d, dict) else sorted(set(instruments_d))
    if not names:
        return _empty(columns, swap_level)

    g0, g1 = extended_range(nodes, start_index, end_index, len(full_cal))
    fields = sorted(set().union(*(n.fields() for n in nodes), row_fields or set()))
    panel = read_panel(names, fields, g0, g1, freq)

    times = pd.DatetimeIndex(full_cal[start_index : end_index + 1])
    t_out = len(times)
    t_abs = np.arange(start_index, end_index + 1, dtype=np.int64)[:, None]

    n_inst, first_of, last_of = panel.n, panel.first, panel.last  # kept after `del panel` below

    def exist(fset: frozenset) -> np.ndarray:
        mask = np.zeros((t_out, n_inst), dtype=bool)
        for f in fset:
            mask |= (t_abs >= first_of[f][None, :]) & (t_abs <= last_of[f][None, :])
        return mask

    rows = exist(frozenset(fields))
    if isinstance(instruments_d, dict):  # universe spans (e.g. a point-in-time top-N market)
        in_span = np.zeros_like(rows)
        tv = times.values
        for j, inst in enumerate(names):
            for begin, end in instruments_d[inst]:
                in_span[:, j] |= (tv >= np.datetime64(pd.Timestamp(begin))) & (tv <= np.datetime64(pd.Timestamp(end)))
        rows &= in_span
    all_rows = bool(rows.all())
    # positions of the frame's rows in a (T, N) array read in C order (datetime-major), or instrument-major
    flat = np.flatnonzero(rows if swap_level else rows.T)
    n_rows = len(flat)

    out = empty_block((len(nodes), n_rows))  # one block, column-major for pandas
    masks: dict[frozenset, np.ndarray | None] = {}

    kernels = _kernels()
    no_mask = np.zeros((0, 0), dtype=bool)

    def sink(k: int, res: np.ndarray, o0: int) -> None:
        fset = frozenset(nodes[k].fields())
        if fset not in masks:
            valid = exist(fset)
            masks[fset] = None if not (rows & ~valid).any() else ~valid
        invalid = masks[fset]
        if res.dtype == np.float64 and res.flags.c_contiguous:  # what the kernels give: cast, mask, gather at once
            kernels.sink_rows(res, o0, rows, no_mask if invalid is None else invalid, swap_level, out[k])
            return
        values = res[o0 : o0 + t_out].astype(np.float32)
        if invalid is not None:
            values[invalid] = np.nan
        if swap_level:
            out[k] = values.reshape(-1) if all_rows else values[rows]
        else:
            out[k] = values.T[rows.T]

    evaluate(panel, nodes, start_index, end_index, sink)
    panel_n = panel.n
    del panel

    if swap_level:
        t_idx, n_idx = np.divmod(flat, panel_n)
        index = pd.MultiIndex(
            levels=[times, pd.Index(names, dtype=object)],
            codes=[t_idx, n_idx],
            names=["datetime", "instrument"],
            verify_integrity=False,
        )
    else:
        n_idx, t_idx = np.divmod(flat, t_out)
        index = pd.MultiIndex(
            levels=[pd.Index(names, dtype=object), times],
            codes=[n_idx, t_idx],
            names=["instrument", "datetime"],
            verify_integrity=False,
        )
    index = index.remove_unused_levels()
    return pd.DataFrame(out.T, index=index, columns=columns, copy=False)


class CryptoAlpha158DL(FastDataLoader):
    """The CryptoAlpha158 feature set (group ``feature``); ``config`` adds groups (e.g.
    ``{"label": [[expr], ["LABEL0"]]}``); ``engine``: ``fast`` (default) or ``qlib``."""

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        freq: str = "60min",
        feature_config: Mapping[str, Any] | None = None,
        windows: Sequence[int] | None = None,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        freq = normalize_freq(freq)
        full = {"feature": get_feature_config(freq, feature_config, windows=windows, include=include, exclude=exclude)}
        full.update(dict(config or {}))
        super().__init__(config=full, freq=freq, **kwargs)


class CryptoAlpha360DL(FastDataLoader):
    """The raw-window feature set of CryptoAlpha360 (group ``feature``); ``engine``: ``fast`` or ``qlib``."""

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        freq: str = "60min",
        n_bars: int | None = None,
        fields: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        freq = normalize_freq(freq)
        full = {"feature": get_raw_window_config(freq, n_bars, fields)}
        full.update(dict(config or {}))
        super().__init__(config=full, freq=freq, **kwargs)
