"""The cross-sectional rank kernel gives pandas' groupby rank bits (ties, NaN, +-inf, tiny and empty bars)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qlib_crypto.data.processors import _bar_starts, cross_sectional_transform


def _frame(seed: int, n_bars: int = 60, n_inst: int = 9, n_cols: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    times = pd.date_range("2024-01-01", periods=n_bars, freq="h")
    insts = [f"I{j}" for j in range(n_inst)]
    rows = [(t, i) for t in times for i in insts if rng.random() > 0.2]  # bars with 0 .. n_inst instruments
    index = pd.MultiIndex.from_tuples(rows, names=["datetime", "instrument"])
    # few distinct values so that ties are frequent; NaN, inf and -inf sprinkled in
    values = rng.integers(-3, 4, size=(len(rows), n_cols)).astype(np.float32) / np.float32(3)
    values[rng.random(values.shape) < 0.15] = np.nan
    values[rng.random(values.shape) < 0.03] = np.inf
    values[rng.random(values.shape) < 0.03] = -np.inf
    values[: n_inst // 2, 0] = np.nan  # a bar whose first column is all NaN
    return pd.DataFrame(values, index=index, columns=[f"XRNK{k}" for k in range(n_cols)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rank_is_pandas_groupby_rank(seed):
    frame = _frame(seed)
    assert _bar_starts(frame.index) is not None  # the kernel's path, not pandas'
    expected = frame.groupby(level="datetime", sort=False).rank(pct=True) - 0.5  # pandas itself
    got = cross_sectional_transform(frame, "rank")
    assert got.index.equals(frame.index) and list(got.columns) == list(frame.columns)
    assert got.dtypes.tolist() == expected.dtypes.tolist()
    a, b = got.to_numpy(), expected.to_numpy()
    assert np.array_equal(np.isnan(a), np.isnan(b))
    assert np.array_equal(a.view(np.int64), b.view(np.int64))  # same bits, NaN payloads included


def test_rank_of_a_frame_with_split_bars_falls_back_to_pandas():
    frame = _frame(3)
    shuffled = frame.sample(frac=1.0, random_state=4)  # a bar's rows are no longer contiguous
    assert _bar_starts(shuffled.index) is None
    expected = shuffled.groupby(level="datetime", sort=False).rank(pct=True) - 0.5
    got = cross_sectional_transform(shuffled, "rank")
    pd.testing.assert_frame_equal(got, expected)


def test_rank_by_hand_with_ties():
    index = pd.MultiIndex.from_product([pd.date_range("2024-01-01", periods=1, freq="h"), list("abcde")])
    index = index.set_names(["datetime", "instrument"])
    frame = pd.DataFrame({"XRNK1": np.array([2, 1, 2, np.nan, 5], dtype=np.float32)}, index=index)
    got = cross_sectional_transform(frame, "rank")["XRNK1"].to_numpy()
    # 4 values: 1 -> rank 1, the two 2s -> ranks 2 and 3 (mean 2.5), 5 -> rank 4; divided by 4, minus 0.5
    np.testing.assert_array_equal(got, [2.5 / 4 - 0.5, 1 / 4 - 0.5, 2.5 / 4 - 0.5, np.nan, 4 / 4 - 0.5])
