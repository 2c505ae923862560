"""Full dump into Qlib's binary format: golden byte identity, read-back through Qlib, missing bars, late
listings, funding placement, coarser frequencies, market universes, bad inputs, settings."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qlib_crypto.errors import ConfigError, ProviderError, QlibCryptoError
from qlib_crypto.provider import dump
from qlib_crypto.store import write_bars, write_funding

GOLDEN = Path(__file__).parent / "fixtures" / "qlib-dump-golden"
PY = sys.executable


def bars_frame(start: str, n: int, seed: int, p0: float = 100.0, drop=(), freq="h") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    idx = pd.date_range(start, periods=n, freq=freq, tz="UTC")
    close = p0 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = np.r_[p0, close[:-1]]
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.01, n))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.01, n))
    vol = rng.uniform(1, 100, n)
    df = pd.DataFrame(
        {"datetime": idx, "open": open_, "high": high, "low": low, "close": close, "volume": vol, "amount": vol * close}
    )
    return df.drop(index=list(drop)).reset_index(drop=True)


def read_bin(path: Path) -> tuple[int, np.ndarray]:
    raw = np.fromfile(path, dtype="<f4")
    return int(raw[0]), raw[1:]


def load_golden_store(store: Path) -> dict[str, pd.DataFrame]:
    frames = {}
    for p in sorted((GOLDEN / "csv" / "60min").glob("*.csv")):
        df = pd.read_csv(p)
        df["datetime"] = pd.to_datetime(df["date"], utc=True)
        frames[p.stem] = df
        write_bars(store, p.stem, "1h", df[["datetime", "open", "high", "low", "close", "volume", "amount"]], "test")
    return frames


def test_golden_byte_identity(tmp_path):
    load_golden_store(tmp_path / "store")
    out = tmp_path / "qlib" / "60min"
    res = dump(tmp_path / "store", out, "1h")
    golden = GOLDEN / "qlib_60min"
    files = sorted(p.relative_to(golden) for p in golden.rglob("*") if p.is_file())
    assert len(files) == 1 + 1 + 3 * 8
    for rel in files:
        assert (out / rel).read_bytes() == (golden / rel).read_bytes(), rel
    assert res.instruments == 3 and res.calendar_bars == 72 and res.bars_written == 72 + 70 + 48


def test_missing_bars_late_listing_and_derived_fields(tmp_path):
    store, out = tmp_path / "store", tmp_path / "q60"
    a = bars_frame("2024-01-01", 30, 1, drop=(5, 6))
    b = bars_frame("2024-01-01 10:00", 17, 2, p0=5.0)  # listed at hour 10, ends at hour 26 (before A)
    write_bars(store, "AAA-USDT", "1h", a, "t")
    write_bars(store, "BBB-USDT-SWAP", "1h", b, "t")
    fund = pd.DataFrame(
        {
            "funding_time": pd.to_datetime(
                ["2024-01-01 08:00", "2024-01-01 16:00", "2024-01-02 00:30", "2024-01-03 08:00"], utc=True
            ),
            "funding_rate": [0.5e-4, 1e-4, -2e-4, 3e-4],
        }
    )
    write_funding(store, "BBB-USDT-SWAP", fund, "t")
    dump(store, out, "1h")

    cal = pd.to_datetime((out / "calendars" / "60min.txt").read_text().split("\n")[:-1], utc=True)
    assert list(cal) == list(pd.date_range("2024-01-01", periods=30, freq="h", tz="UTC"))
    fut = (out / "calendars" / "60min_future.txt").read_text().split("\n")[:-1]
    assert len(fut) == 30 + 24 and fut[-1] == "2024-01-03 05:00:00"

    for name, df, start in (("AAA-USDT", a, 0), ("BBB-USDT-SWAP", b, 10)):
        full = df.set_index("datetime").reindex(cal[start:])
        d = out / "features" / name.lower()
        for field in ("open", "high", "low", "close", "volume", "amount"):
            s, v = read_bin(d / f"{field}.60min.bin")
            assert s == start
            np.testing.assert_array_equal(v, full[field].to_numpy(np.float32))
        _, vwap = read_bin(d / "vwap.60min.bin")
        np.testing.assert_array_equal(vwap, (full["amount"] / full["volume"]).to_numpy(np.float32))
        present = df.set_index("datetime")["close"]
        expected_change = (present / present.shift(1) - 1).reindex(cal[start:])
        _, change = read_bin(d / "change.60min.bin")
        np.testing.assert_array_equal(change, expected_change.to_numpy(np.float32))
        _, factor = read_bin(d / "factor.60min.bin")
        np.testing.assert_array_equal(factor, np.where(full["close"].isna(), np.nan, 1.0).astype(np.float32))
    assert not (out / "features" / "aaa-usdt" / "funding_rate.60min.bin").exists()
    assert not (out / "features" / "aaa-usdt" / "bars.60min.bin").exists()
    # B's bars end at hour 26: NaN up to the calendar end (hour 29); the hour-8 settlement is before its listing
    s, fr = read_bin(out / "features" / "bbb-usdt-swap" / "funding_rate.60min.bin")
    expected = np.full(20, np.nan, np.float32)
    expected[16 - 10] = 1e-4
    expected[24 - 10] = -2e-4  # 00:30 settles within the 00:00 bar
    np.testing.assert_array_equal(fr, expected)
    assert (out / "instruments" / "all.txt").read_text() == (
        "AAA-USDT\t2024-01-01 00:00:00\t2024-01-02 05:00:00\nBBB-USDT-SWAP\t2024-01-01 10:00:00\t2024-01-02 02:00:00\n"
    )
    assert (out / "instruments" / "okx_spot.txt").read_text().startswith("AAA-USDT\t")
    assert (out / "instruments" / "okx_swap.txt").read_text().splitlines() == [
        "BBB-USDT-SWAP\t2024-01-01 10:00:00\t2024-01-02 02:00:00"
    ]


def test_day_from_hourly_marks_incomplete_days(tmp_path):
    store, out = tmp_path / "store", tmp_path / "qday"
    a = bars_frame("2024-01-01 00:00", 24 * 3 + 5, 3, drop=(30, 31, 40))  # day 2 misses 3 hours, day 4 partial
    b = bars_frame("2024-01-02 07:00", 20, 4, p0=3.0)  # listed mid-day 2
    write_bars(store, "AAA-USDT", "1h", a, "t")
    write_bars(store, "BBB-USDT-SWAP", "1h", b, "t")
    write_funding(
        store,
        "BBB-USDT-SWAP",
        pd.DataFrame(
            {
                "funding_time": pd.to_datetime(["2024-01-02 08:00", "2024-01-02 16:00", "2024-01-03 00:00"], utc=True),
                "funding_rate": [1e-4, 2e-4, 4e-4],
            }
        ),
        "t",
    )
    res = dump(store, out, "day", source_timeframe="1h")
    assert (out / "calendars" / "day.txt").read_text() == "2024-01-01\n2024-01-02\n2024-01-03\n2024-01-04\n"
    assert (out / "calendars" / "day_future.txt").read_text().splitlines()[-1] == "2024-01-05"
    assert res.calendar_bars == 4
    for name, df, start in (("AAA-USDT", a, 0), ("BBB-USDT-SWAP", b, 1)):
        g = df.set_index("datetime").resample("1D")
        exp = pd.DataFrame(
            {
                "open": g["open"].first(),
                "high": g["high"].max(),
                "low": g["low"].min(),
                "close": g["close"].last(),
                "volume": g["volume"].sum(),
                "amount": g["amount"].sum(),
                "bars": g["close"].count(),
            }
        )
        exp = exp.reindex(pd.date_range("2024-01-01", periods=4, freq="D", tz="UTC")[start:])
        d = out / "features" / name.lower()
        for field in ("open", "high", "low", "close", "bars"):
            s, v = read_bin(d / f"{field}.day.bin")
            assert s == start
            np.testing.assert_array_equal(v, exp[field].to_numpy(np.float32))
        for field in ("volume", "amount"):
            np.testing.assert_allclose(read_bin(d / f"{field}.day.bin")[1], exp[field].to_numpy(), rtol=1e-6)
    _, bars = read_bin(out / "features" / "aaa-usdt" / "bars.day.bin")
    assert list(bars) == [24, 21, 24, 5]
    _, fr = read_bin(out / "features" / "bbb-usdt-swap" / "funding_rate.day.bin")
    np.testing.assert_allclose(fr[:2], [3e-4, 4e-4], rtol=1e-6)  # two settlements on 01-02 are summed
    assert (out / "instruments" / "all.txt").read_text() == (
        "AAA-USDT\t2024-01-01\t2024-01-04\nBBB-USDT-SWAP\t2024-01-02\t2024-01-03\n"
    )


READBACK = textwrap.dedent("""
    import pickle, sys
    import qlib_crypto
    from qlib.data import D
    d60, dday, out = sys.argv[1:4]
    qlib_crypto.init({"60min": d60, "day": dday}, kernels=1)
    res = {}
    for freq in ("60min", "day"):
        res["cal_" + freq] = [str(t) for t in D.calendar(freq=freq)]
        res["inst_" + freq] = D.list_instruments(D.instruments("all"), freq=freq, as_list=True)
        res["feat_" + freq] = D.features(D.instruments("all"), ["$open", "$high", "$low", "$close", "$volume",
                                         "$amount", "$factor"], freq=freq)
    res["fut"] = [str(t) for t in D.calendar(freq="60min", future=True)][-1]
    res["extra"] = D.features(["ETH-USDT", "SOL-USDT-SWAP"], ["$bars", "$funding_rate", "$change"], freq="day")
    pickle.dump(res, open(out, "wb"))
""")


def test_readback_through_qlib(tmp_path):
    frames = load_golden_store(tmp_path / "store")
    d60, dday = tmp_path / "q" / "60min", tmp_path / "q" / "day"
    dump(tmp_path / "store", d60, "60min")
    dump(tmp_path / "store", dday, "1d", source_timeframe="1h")
    out = tmp_path / "res.pkl"
    script = tmp_path / "readback.py"
    script.write_text(READBACK)
    subprocess.run([PY, str(script), str(d60), str(dday), str(out)], check=True, capture_output=True, timeout=300)
    res = pickle.loads(out.read_bytes())
    hours = pd.date_range("2024-03-01", periods=72, freq="h")
    assert res["cal_60min"] == [str(t) for t in hours]
    assert res["cal_day"] == ["2024-03-01 00:00:00", "2024-03-02 00:00:00", "2024-03-03 00:00:00"]
    assert res["fut"] == "2024-03-04 23:00:00"
    assert sorted(res["inst_60min"]) == sorted(frames) == sorted(res["inst_day"])
    extra = res["extra"]
    assert list(extra.xs("ETH-USDT", level="instrument")["$bars"]) == [24, 22, 24]  # hours 30, 31 missing
    sol = extra.xs("SOL-USDT-SWAP", level="instrument")
    assert list(sol["$bars"]) == [24, 24] and sol["$funding_rate"].isna().all()
    sol_close = frames["SOL-USDT-SWAP"]["close"]
    assert sol["$change"].iloc[1] == np.float32(sol_close.iloc[47] / sol_close.iloc[23] - 1)
    f60 = res["feat_60min"]
    for name, df in frames.items():
        got = f60.xs(name, level="instrument")
        got = got[got["$close"].notna()]
        assert list(got.index) == list(pd.to_datetime(df["date"]))
        for col in ("open", "high", "low", "close", "volume", "amount"):
            np.testing.assert_array_equal(got[f"${col}"].to_numpy(), df[col].to_numpy(np.float32))
        assert (got["$factor"] == 1.0).all()
        # day bars: independent aggregation of the same rows
        g = df.assign(day=pd.to_datetime(df["date"]).dt.floor("D")).groupby("day")
        day = res["feat_day"].xs(name, level="instrument")
        np.testing.assert_array_equal(day["$open"].to_numpy(), g["open"].first().to_numpy(np.float32))
        np.testing.assert_array_equal(day["$high"].to_numpy(), g["high"].max().to_numpy(np.float32))
        np.testing.assert_array_equal(day["$close"].to_numpy(), g["close"].last().to_numpy(np.float32))
        np.testing.assert_allclose(day["$volume"].to_numpy(), g["volume"].sum().to_numpy(), rtol=1e-6)


# ------------------------------------------------------------------------------------ universes


def test_point_in_time_liquidity_universe(tmp_path):
    """Daily decisions at 00:00 UTC on the trailing 2 days of quote volume (hand-computed spans)."""
    store = tmp_path / "store"
    days = pd.date_range("2024-01-01", periods=5, freq="D", tz="UTC")
    # quote volume per day (amount = volume * close with close = 1 -> amount = volume)
    daily = {"AAA-USDT": [10, 10, 1, 1, 1], "BBB-USDT": [1, 1, 10, 10, 10], "CCC-USDT": [5, 5, 5, 5, 0]}
    for name, vols in daily.items():
        df = pd.DataFrame(
            {
                "datetime": days,
                "open": 1.0,
                "high": 1.0,
                "low": 1.0,
                "close": 1.0,
                "volume": np.array(vols, float),
                "amount": np.array(vols, float),
            }
        )
        df = df[df["volume"] > 0]
        write_bars(store, name, "1d", df, "t")
    out = tmp_path / "q"
    dump(store, out, "1d", top=[1, 2], window_days=2)
    # decision 01-02 uses 01-01 only: A10 C5 B1; 01-03: A20 C10 B2; 01-04 (01-02,01-03): A11 B11 C10 -> tie, name
    # order -> A; 01-05 (01-03,01-04): B20 C10 A2
    assert (out / "instruments" / "top1.txt").read_text() == (
        "AAA-USDT\t2024-01-02\t2024-01-04\nBBB-USDT\t2024-01-05\t2024-01-05\n"
    )
    assert (out / "instruments" / "top2.txt").read_text() == (
        "AAA-USDT\t2024-01-02\t2024-01-04\nBBB-USDT\t2024-01-04\t2024-01-05\n"
        "CCC-USDT\t2024-01-02\t2024-01-03\nCCC-USDT\t2024-01-05\t2024-01-05\n"
    )


def test_liquidity_universe_hourly_spans_end_before_next_decision(tmp_path):
    store = tmp_path / "store"
    idx = pd.date_range("2024-01-01 12:00", periods=60, freq="h", tz="UTC")  # to 2024-01-03 23:00
    for name, vol in (("AAA-USDT", lambda t: 5.0 if t.day == 1 else 1.0), ("BBB-USDT", lambda t: 2.0)):
        v = np.array([vol(t) for t in idx])
        df = pd.DataFrame(
            {"datetime": idx, "open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0, "volume": v, "amount": v}
        )
        write_bars(store, name, "1h", df, "t")
    out = tmp_path / "q"
    dump(store, out, "1h", top=[1], window_days=1)
    # 01-02 00:00: A 60 vs B 24 -> A until 01-02 23:00; 01-03 00:00: A 24 vs B 48 -> B until the last bar
    assert (out / "instruments" / "top1.txt").read_text() == (
        "AAA-USDT\t2024-01-02 00:00:00\t2024-01-02 23:00:00\nBBB-USDT\t2024-01-03 00:00:00\t2024-01-03 23:00:00\n"
    )


# ------------------------------------------------------------------------------------ bad input


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_bad_inputs_leave_existing_data_alone(tmp_path):
    store = tmp_path / "store"
    write_bars(store, "AAA-USDT", "1h", bars_frame("2024-01-01", 10, 5), "t")
    out = tmp_path / "okx" / "60min"
    dump(store, out, "1h")
    before = snapshot(out)

    with pytest.raises(ConfigError, match="7min"):
        dump(store, out, "7min")
    with pytest.raises(ConfigError, match="cannot build"):
        dump(store, out, "1h", source_timeframe="1d")
    (tmp_path / "empty-store").mkdir()
    with pytest.raises(ProviderError, match="no 1h bars"):
        dump(tmp_path / "empty-store", out, "1h")
    with pytest.raises(ProviderError, match="does not exist"):
        dump(tmp_path / "nope", out, "1h")
    with pytest.raises(ProviderError, match="ZZZ-USDT"):
        dump(store, out, "1h", instruments=["ZZZ-USDT"])
    with pytest.raises(ProviderError, match="holds 60min data, not day"):
        dump(store, out, "1d", source_timeframe="1h")
    with pytest.raises(ProviderError, match="pass --from-timeframe"):
        dump(store, tmp_path / "okx" / "day", "1d")
    # a store that fails validation: a file whose bytes no longer match its manifest
    bad_store = tmp_path / "bad"
    write_bars(bad_store, "AAA-USDT", "1h", bars_frame("2024-01-01", 10, 6), "t")
    pq_file = next((bad_store / "bars" / "1h" / "AAA-USDT").glob("*.parquet"))
    pq_file.write_bytes(pq_file.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ProviderError, match="does not match its manifest"):
        dump(bad_store, out, "1h")
    # a directory that is not a provider directory is not replaced
    other = tmp_path / "home"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ProviderError, match="not a Qlib provider directory"):
        dump(store, other, "1h")
    assert (other / "notes.txt").read_text() == "keep me"
    # update of a directory without a dump
    with pytest.raises(ProviderError, match="run a full dump first"):
        dump(store, tmp_path / "fresh", "1h", update=True)
    assert snapshot(out) == before


def test_cli_dump_and_errors(tmp_path, capsys):
    from qlib_crypto.cli import main

    store = tmp_path / "store"
    write_bars(store, "AAA-USDT", "1h", bars_frame("2024-01-01", 48, 7), "t")
    out = tmp_path / "q" / "day"
    rc = main(
        [
            "dump",
            "--store",
            str(store),
            "--qlib-dir",
            str(out),
            "--timeframe",
            "day",
            "--from-timeframe",
            "1h",
            "--top",
            "1",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "2 calendar bars" in printed and str(out) in printed
    assert (out / "instruments" / "top1.txt").exists() and not (out / "instruments" / "top10.txt").exists()
    assert main(["dump", "--store", str(store), "--qlib-dir", str(out), "--timeframe", "1h"]) == 2
    assert "holds day data" in capsys.readouterr().err
    assert main(["dump", "--store", str(store), "--qlib-dir", str(out), "--timeframe", "day", "--top", "x"]) == 2
    assert (
        main(
            [
                "dump",
                "--store",
                str(store),
                "--qlib-dir",
                str(out),
                "--timeframe",
                "day",
                "--from-timeframe",
                "1h",
                "--top",
                "",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (out / "instruments").iterdir()) == ["all.txt", "okx_spot.txt", "okx_swap.txt"]


# ------------------------------------------------------------------------------------ settings


def test_settings_and_init_config(tmp_path):
    from qlib_crypto import settings

    assert settings.QLIB_INIT_KWARGS == {
        "region": "us",
        "trade_unit": None,
        "limit_threshold": None,
        "deal_price": "close",
    }
    assert settings.DAYS_PER_YEAR == 365
    assert settings.bars_per_year("60min") == 24 * 365
    assert settings.bars_per_year("1h") == 24 * 365
    assert settings.bars_per_year("day") == 365
    assert settings.bars_per_year("1min") == 1440 * 365
    assert settings.bars_per_year("240min") == 6 * 365
    with pytest.raises(QlibCryptoError):
        settings.bars_per_year("1h30")
    store = tmp_path / "store"
    write_bars(store, "AAA-USDT", "1h", bars_frame("2024-01-01", 30, 8), "t")
    dump(store, tmp_path / "okx" / "60min", "1h")
    dump(store, tmp_path / "okx" / "day", "day", source_timeframe="1h")
    cfg = settings.qlib_init_config(tmp_path / "okx")
    assert cfg["provider_uri"] == {"60min": str(tmp_path / "okx" / "60min"), "day": str(tmp_path / "okx" / "day")}
    assert cfg["region"] == "us" and cfg["trade_unit"] is None
    assert settings.qlib_init_config(tmp_path / "okx" / "day", kernels=1)["provider_uri"] == {
        "day": str(tmp_path / "okx" / "day")
    }
    assert settings.qlib_init_config({"60min": "x"}, kernels=1)["kernels"] == 1
    json.dumps(cfg)  # YAML/JSON-serialisable
    with pytest.raises(ConfigError):
        settings.qlib_init_config(tmp_path / "store")


def test_package_import_and_cli_dump_are_light(tmp_path):
    code = "import sys, qlib_crypto, qlib_crypto.settings; print(sorted(m for m in ('pandas', 'qlib') if m in sys.modules))"
    out = subprocess.run([PY, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    assert out == "[]"
    store = tmp_path / "store"
    write_bars(store, "AAA-USDT-SWAP", "1h", bars_frame("2024-01-01", 30, 9), "t")
    write_funding(
        store,
        "AAA-USDT-SWAP",
        pd.DataFrame({"funding_time": pd.to_datetime(["2024-01-01 08:00"], utc=True), "funding_rate": [1e-4]}),
        "t",
    )
    code = (
        "import sys; from qlib_crypto.cli import main; "
        f"rc = main(['dump', '--store', {str(store)!r}, '--qlib-dir', {str(tmp_path / 'q')!r}, '--timeframe', '1h']); "
        "print(rc, sorted(m for m in ('pandas', 'qlib') if m in sys.modules))"
    )
    out = subprocess.run([PY, "-c", code], check=True, capture_output=True, text=True).stdout.strip()
    assert out.endswith("0 []")
    assert (tmp_path / "q" / "features" / "aaa-usdt-swap" / "funding_rate.60min.bin").exists()


def test_misaligned_bars_in_a_hand_written_store_file_are_refused(tmp_path):
    """The store quarantines misaligned bars; a file written behind its back is still refused."""
    from qlib_crypto.store.manifest import build_manifest, write_manifest
    from qlib_crypto.store.tables import write_table

    path = tmp_path / "store" / "bars" / "1h" / "AAA-USDT" / "2024.parquet"
    path.parent.mkdir(parents=True)
    ts = np.array([1704067200000, 1704067200000 + 5_400_000], dtype=np.int64)  # 00:00 and 01:30
    write_table(path, ts, np.ones((2, 6)), ["open", "high", "low", "close", "volume", "amount"])
    write_manifest(
        path,
        build_manifest(
            path,
            kind="bars",
            instrument="AAA-USDT",
            timeframe="1h",
            start_ms=int(ts[0]),
            end_ms=int(ts[1]),
            row_count=2,
            source="hand",
        ),
    )
    with pytest.raises(ProviderError, match="01:30:00"):
        dump(tmp_path / "store", tmp_path / "q", "1h")
    assert not (tmp_path / "q").exists()


def test_manifest_reader_matches_pyyaml(tmp_path):
    import yaml

    from qlib_crypto.provider.storeread import series_files

    store = tmp_path / "store"
    write_bars(store, "AAA-USDT", "1h", bars_frame("2024-01-01", 10, 10), "t")
    (f,) = series_files(store / "bars" / "1h" / "AAA-USDT")
    full = yaml.safe_load((f.path.parent / (f.path.name + ".manifest.yaml")).read_text())
    assert {k: f.manifest[k] for k in ("sha256", "start_ts", "end_ts", "row_count")} == {
        k: full[k] for k in ("sha256", "start_ts", "end_ts", "row_count")
    }
    assert full["row_count"] == 10 and full["start_ts"] == "2024-01-01T00:00:00Z"
    # a manifest written by hand in another YAML style is read by PyYAML
    mpath = f.path.parent / (f.path.name + ".manifest.yaml")
    mpath.write_text(
        "{sha256: %s, start_ts: '2024-01-01T00:00:00Z', end_ts: '2024-01-01T09:00:00Z', "
        "row_count: 10}\n" % full["sha256"]
    )
    (g,) = series_files(store / "bars" / "1h" / "AAA-USDT")
    assert g.manifest["sha256"] == full["sha256"] and g.manifest["row_count"] == 10
    assert dump(store, tmp_path / "q", "1h").bars_written == 10
