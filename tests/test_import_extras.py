"""Import: rows repeated inside a file are counted; funding rates import from files (issue 11)."""

from __future__ import annotations

import chaos
import numpy as np
import pandas as pd

from qlib_crypto.store import read_bars, read_funding, validate_store


def test_repeats_inside_one_file_are_counted(tmp_path):
    bars = chaos.make_bars("2024-01-01", 200, seed=31)
    repeated = pd.concat([bars, bars.iloc[10:110]], ignore_index=True)  # 100 rows given twice
    csv = chaos.write_csv(tmp_path / "rep.csv", repeated)
    code, out = chaos.cli(
        ["import", str(csv), "--instrument", "BTC-USDT", "--timeframe", "1h", "--store", str(tmp_path / "s")]
    )
    assert code == 0, out
    assert "300 rows read, 100 repeated inside a file (kept once), 200 added, 0 identical" in out
    assert len(read_bars(tmp_path / "s", "BTC-USDT", "1h")) == 200


def test_funding_rates_import_from_a_file(tmp_path):
    times = pd.date_range("2024-01-01", periods=30, freq="8h", tz="UTC")
    rates = np.random.default_rng(5).normal(0.0001, 0.0002, 30)
    frame = pd.DataFrame({"fundingTime": (times.asi8 // 1_000_000), "fundingRate": rates})
    frame.loc[30] = frame.loc[3]  # one settlement given twice, identical
    csv = tmp_path / "funding.csv"
    frame.to_csv(csv, index=False, float_format="%r")
    store = tmp_path / "s"
    code, out = chaos.cli(["import", str(csv), "--funding", "--instrument", "btc-usdt-swap", "--store", str(store)])
    assert code == 0, out
    assert "31 rows read, 1 repeated inside a file (kept once), 30 added" in out
    stored = read_funding(store, "BTC-USDT-SWAP")
    assert np.array_equal(stored.index.as_unit("ms").asi8, times.as_unit("ms").asi8)
    assert np.array_equal(stored["funding_rate"].to_numpy(), rates)
    assert stored["realized_rate"].isna().all()
    assert validate_store(store).ok
    # the same file again changes nothing; a spot name is refused with a clear line
    code, out = chaos.cli(["import", str(csv), "--funding", "--instrument", "BTC-USDT-SWAP", "--store", str(store)])
    assert code == 0 and "31 rows read, 1 repeated inside a file (kept once), 0 added, 30 identical" in out
    code, out = chaos.cli(["import", str(csv), "--funding", "--instrument", "BTC-USDT", "--store", str(store)])
    assert code == 2 and "not a perpetual swap" in out
