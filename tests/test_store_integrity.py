"""Issue 8, parts 1-2: the store under concurrent writers, crashes, full disks, bad values, times and names.

Expected data is made here (numpy bars written to CSV) or by an uninterrupted run of the same command; the
crash machinery is in tests/chaos.py (also run by scripts/chaos_store.py).
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import chaos
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from qlib_crypto.errors import StoreError
from qlib_crypto.store import read_bars, store_lock, validate_store, write_bars
from qlib_crypto.store.lock import LOCK_FILE

TRIALS = 4  # scripts/chaos_store.py runs more (--trials)


# --- 1. one writer at a time -----------------------------------------------------------------------------


# The two writers of a trial are two processes forked from this one (chaos.cli_forked): they start within
# milliseconds of each other, without a new Python importing the package each (test_second_writer_waits_with_a_message
# runs a writer as `python -m qlib_crypto`). "waiting" is the message of a writer that found the store locked.


def test_concurrent_collects_store_the_union(tmp_path):
    """Two collects of Jan-Jun and Jul-Dec into one store at once: every trial stores the union exactly."""
    waited = 0
    for trial in range(TRIALS):
        codes, got, ref, text = chaos.concurrent_collect(tmp_path, trial, n_inst=16, fork=True)
        equal, lost = chaos.same_data(got, ref)
        assert codes == [0, 0], text
        assert lost == 0 and equal, f"trial {trial}: {lost} bars lost"
        waited += "waiting" in text
    assert waited > 0  # the writers did overlap


def test_concurrent_imports_store_the_union(tmp_path):
    waited = 0
    for trial in range(TRIALS):
        codes, got, expected, text = chaos.concurrent_import(tmp_path, trial, n_inst=16, fork=True)
        assert codes == [0, 0], text
        for name, bars in expected.items():
            assert chaos.bars_equal(chaos.stored_bars(got, name), bars), f"trial {trial}: {name} differs"
        waited += "waiting" in text
    assert waited > 0  # the writers did overlap


def _hold_lock(store: Path) -> subprocess.Popen:
    """A process holding the store's lock until its stdin is closed."""
    code = (
        "import sys\n"
        "from qlib_crypto.store import store_lock\n"
        "with store_lock(sys.argv[1], command='test holder'):\n"
        "    print('locked', flush=True)\n"
        "    sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(store)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_refuses_cleanly_after_lock_timeout(tmp_path):
    store = tmp_path / "store"
    csv = chaos.write_csv(tmp_path / "b.csv", chaos.make_bars("2024-01-01", 48, seed=1))
    holder = _hold_lock(store)
    try:
        code, out = chaos.cli(
            [
                "import",
                str(csv),
                "--instrument",
                "BTC-USDT",
                "--timeframe",
                "1h",
                "--store",
                str(store),
                "--lock-timeout",
                "0",
            ]
        )
    finally:
        holder.kill()  # dies holding the lock: the kernel releases it
        holder.wait()
    assert code == 5
    assert f"pid {holder.pid}" in out and "test holder" in out and "nothing was written" in out
    assert not (store / "bars").exists()
    code, out = chaos.cli(
        [
            "import",
            str(csv),
            "--instrument",
            "BTC-USDT",
            "--timeframe",
            "1h",
            "--store",
            str(store),
            "--lock-timeout",
            "0",
        ]
    )
    assert code == 0, out
    assert len(read_bars(store, "BTC-USDT", "1h")) == 48


def test_second_writer_waits_with_a_message(tmp_path):
    store = tmp_path / "store"
    csv = chaos.write_csv(tmp_path / "b.csv", chaos.make_bars("2024-01-01", 24, seed=2))
    holder = _hold_lock(store)
    proc = chaos.cli_subprocess(
        ["import", str(csv), "--instrument", "ETH-USDT", "--timeframe", "1h", "--store", str(store)]
    )
    try:
        first = proc.stderr.readline()  # blocks until the waiting writer speaks
        assert "is being written by" in first and "test holder" in first and "waiting" in first
        assert proc.poll() is None and not (store / "bars").exists()
    finally:
        holder.stdin.close()
        holder.wait()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert len(read_bars(store, "ETH-USDT", "1h")) == 24


def test_lock_is_reentrant_in_process_and_exclusive_across(tmp_path):
    with store_lock(tmp_path, command="outer"):
        with store_lock(tmp_path, command="inner"):  # library calls inside a command do not deadlock
            write_bars(tmp_path, "BTC-USDT", "1h", chaos.make_bars("2024-01-01", 5, seed=3), "t")
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys\nfrom qlib_crypto.store import store_lock\n"
                "from qlib_crypto.errors import StoreLocked\n"
                "try:\n    with store_lock(sys.argv[1], timeout=0, notify=lambda m: None): print('got')\n"
                "except StoreLocked: print('refused')",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert probe.stdout.strip() == "refused"
    assert (tmp_path / LOCK_FILE).exists()
    with store_lock(tmp_path, timeout=0):
        pass


# --- 2. data file and manifest never out of step ----------------------------------------------------------


@pytest.mark.parametrize("scenario", ["import", "import --overwrite", "collect"])
@pytest.mark.parametrize("mode", ["kill", "enospc"])
def test_every_crash_point_is_healed_by_a_rerun(tmp_path, scenario, mode):
    points, results = chaos.crash_matrix(chaos.SCENARIOS[scenario], mode, tmp_path)
    assert points >= 8  # two instruments x two period files, each a data file and a manifest
    assert len(results) == points
    failed = [r for r in results if not r.healed]
    assert not failed, failed[:3]
    if mode == "enospc":  # a full disk is a clean error, never an internal one or a success
        codes = {r.exit_code for r in results}  # 0 only when no write point came after k
        assert codes <= {0, 2} and 2 in codes, [(r.k, r.exit_code) for r in results]


def test_manifest_missing_after_rename_is_rebuilt_by_the_same_import(tmp_path):
    """The issue's reproduction: the data file renamed, its manifest not (kill between the two renames)."""
    store = tmp_path / "store"
    csv = chaos.write_csv(tmp_path / "b.csv", chaos.make_bars("2024-03-01", 100, seed=4))
    args = ["import", str(csv), "--instrument", "BTC-USDT", "--timeframe", "1h", "--store", str(store)]
    # points: 1 data file's temporary file, 2 its rename, 3 the manifest's temporary file, 4 its rename
    run = chaos.run_with_fault(args, store, "kill", 3)
    assert run.exit_code is None
    data = store / "bars/1h/BTC-USDT/2024.parquet"
    assert data.exists() and not Path(str(data) + ".manifest.yaml").exists()
    report = validate_store(store)
    assert [p["kind"] for p in report.problems] == ["manifest_missing"] and report.problems[0]["repairable"]
    code, out = chaos.cli(args)
    assert code == 0, out
    assert validate_store(store).ok
    manifest = yaml.safe_load(Path(str(data) + ".manifest.yaml").read_text())
    assert (
        manifest["row_count"] == 100
        and manifest["sha256"] == __import__("hashlib").sha256(data.read_bytes()).hexdigest()
    )


def test_validate_repair_rebuilds_stale_manifest_and_removes_temp_files(tmp_path):
    store = tmp_path / "store"
    write_bars(store, "BTC-USDT", "1h", chaos.make_bars("2024-01-01", 30, seed=5), "t")
    data = store / "bars/1h/BTC-USDT/2024.parquet"
    side = Path(str(data) + ".manifest.yaml")
    old_manifest = side.read_text()
    write_bars(store, "BTC-USDT", "1h", chaos.make_bars("2024-02-01", 30, seed=6), "t")
    side.write_text(old_manifest)  # as if the second manifest's rename never happened
    (data.parent / ".2024.parquet.abc.tmp").write_bytes(b"partial")
    code, out = chaos.cli(["validate", "--store", str(store)])
    assert code == 4 and "hash_mismatch" in out
    code, out = chaos.cli(["validate", "--store", str(store), "--repair"])
    assert code == 0, out
    assert "repaired 2" in out
    assert not (data.parent / ".2024.parquet.abc.tmp").exists()
    assert yaml.safe_load(side.read_text())["row_count"] == 60
    assert validate_store(store).ok


def test_a_changed_data_file_is_never_given_a_new_manifest(tmp_path):
    """--repair rebuilds only what the file proves: rows that no longer match the embedded manifest stay a problem."""
    store = tmp_path / "store"
    write_bars(store, "BTC-USDT", "1h", chaos.make_bars("2024-01-01", 30, seed=7), "t")
    data = store / "bars/1h/BTC-USDT/2024.parquet"
    table = pq.read_table(data)
    close = table.column("close").to_numpy().copy()
    close[3] *= 1.5
    tampered = table.set_column(table.schema.get_field_index("close"), "close", pa.array(close))
    pq.write_table(tampered, data)  # keeps the embedded manifest (schema metadata) but not the rows
    code, out = chaos.cli(["validate", "--store", str(store), "--repair"])
    assert code == 4 and "hash_mismatch" in out
    with pytest.raises(StoreError, match="corrupt"):
        write_bars(store, "BTC-USDT", "1h", chaos.make_bars("2024-03-01", 3, seed=8), "t")


# --- 5. validate never aborts on one bad file -------------------------------------------------------------


def test_validate_lists_every_bad_file_and_goes_on(tmp_path):
    store = tmp_path / "store"
    for name in ("BTC-USDT", "ETH-USDT", "SOL-USDT"):
        write_bars(store, name, "1h", chaos.make_bars("2024-01-01", 24, seed=len(name)), "t")
    (store / "bars/1h/BTC-USDT/2024.parquet.manifest.yaml").write_text("sha256: [unclosed\n")
    (store / "bars/1h/ETH-USDT/_coverage.yaml").write_text("ranges: [[1, 'x']]\n")
    (store / "bars/7x").mkdir()
    (store / "bars/1h/SOL-USDT/_coverage.yaml").write_bytes(b"\xff\xfe\x00garbage")
    code, out = chaos.cli(["validate", "--store", str(store), "--report", str(tmp_path / "r.json")])
    assert code == 4, out
    report = json.loads((tmp_path / "r.json").read_text())
    kinds = sorted(
        (p["kind"], Path(p["file"]).name if p["kind"] != "unknown_directory" else "7x") for p in report["problems"]
    )
    assert kinds == [
        ("coverage_invalid", "_coverage.yaml"),
        ("coverage_invalid", "_coverage.yaml"),
        ("manifest_invalid", "2024.parquet"),
        ("unknown_directory", "7x"),
    ]
    assert report["rows_checked"] == 72  # the other files were still checked


def test_corrupt_coverage_makes_collect_fail_cleanly(tmp_path):
    store = tmp_path / "store"
    args = [
        "collect",
        "--source",
        "synthetic",
        "--instruments",
        "BTC-USDT",
        "--timeframe",
        "1h",
        "--start",
        "2024-01-01",
        "--end",
        "2024-01-03",
        "--quiet",
        "--store",
        str(store),
    ]
    assert chaos.cli(args)[0] == 0
    (store / "bars/1h/BTC-USDT/_coverage.yaml").write_text("- not a mapping\n")
    code, out = chaos.cli(args)
    assert code == 2 and "coverage file" in out and "_coverage.yaml" in out and "internal error" not in out


def test_validate_unknown_instrument_and_read_only_report(tmp_path, monkeypatch):
    store = tmp_path / "store"
    write_bars(store, "BTC-USDT", "1h", chaos.make_bars("2024-01-01", 24, seed=9), "t")
    code, out = chaos.cli(["validate", "--store", str(store), "--instruments", "NOPE-USDT"])
    assert code == 2 and "NOPE-USDT" in out
    import qlib_crypto.store.validate as v

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(v, "atomic_write_text", read_only)
    code, out = chaos.cli(["validate", "--store", str(store)])
    assert code == 0 and "OK; 1 files, 1 series, 24 rows checked" in out and "not written" in out


# --- 6-7. non-finite values, out-of-range values and impossible times -------------------------------------


def test_non_finite_and_huge_values_are_quarantined_at_import(tmp_path):
    store = tmp_path / "store"
    bars = chaos.make_bars("2024-01-01", 10, seed=11)
    csv = chaos.write_csv(tmp_path / "b.csv", bars)
    lines = csv.read_text().splitlines()
    cells = [line.split(",") for line in lines]
    cells[2][2] = "inf"  # row 1 high
    cells[3][2] = "Infinity"  # row 2 high
    cells[4][4] = "1e400"  # row 3 close -> inf
    cells[5][5] = "1e39"  # row 4 volume: finite in float64, inf in float32
    csv.write_text("\n".join(",".join(c) for c in cells) + "\n")
    code, out = chaos.cli(["import", str(csv), "--instrument", "BTC-USDT", "--timeframe", "1h", "--store", str(store)])
    assert code == 0, out
    assert "non_finite_value 3" in out and "beyond_float32_range 1" in out
    stored = read_bars(store, "BTC-USDT", "1h")
    assert len(stored) == 6 and np.isfinite(stored.to_numpy()).all()
    assert validate_store(store).ok


def test_impossible_times_are_quarantined(tmp_path):
    store = tmp_path / "store"
    now_hour = pd.Timestamp.now(tz="UTC").floor("h")
    good = chaos.make_bars("2024-01-01", 5, seed=12)
    future = chaos.make_bars("2262-04-01", 10, seed=13)
    soon = chaos.make_bars(str(now_hour + pd.Timedelta(hours=3)), 1, seed=14)
    early = chaos.make_bars("2008-12-31", 2, seed=15)
    res = write_bars(store, "BTC-USDT", "1h", pd.concat([good, future, soon, early]), "t")
    assert res.quarantine_reasons == {"time_in_future": 11, "time_before_2009": 2}
    assert res.rows_added == 5
    assert len(res.quarantined_ts) == 13
    assert sorted(p.name for p in (store / "bars/1h/BTC-USDT").glob("*.parquet")) == ["2024.parquet"]


def test_dump_refuses_a_non_finite_price_written_by_an_older_version(tmp_path):
    store = tmp_path / "store"
    write_bars(store, "BTC-USDT", "1h", chaos.make_bars("2024-01-01", 24, seed=16), "t")
    data = store / "bars/1h/BTC-USDT/2024.parquet"
    table = pq.read_table(data)
    high = table.column("high").to_numpy().copy()
    high[5] = np.inf
    pq.write_table(table.set_column(2, "high", pa.array(high)).replace_schema_metadata(None), data)
    manifest = yaml.safe_load(Path(str(data) + ".manifest.yaml").read_text())
    manifest["sha256"] = __import__("hashlib").sha256(data.read_bytes()).hexdigest()
    Path(str(data) + ".manifest.yaml").write_text(yaml.safe_dump(manifest))  # a consistent legacy store
    qdir = tmp_path / "qlib"
    code, out = chaos.cli(["dump", "--store", str(store), "--qlib-dir", str(qdir), "--timeframe", "1h"])
    assert code == 2 and "high" in out and "inf" in out
    assert not (qdir / "features").exists()
    assert not validate_store(store).ok  # and validate names the bad row


# --- 8. one instrument, one name --------------------------------------------------------------------------


def test_import_normalises_instrument_case(tmp_path):
    store = tmp_path / "store"
    a = chaos.make_bars("2024-01-01", 24, seed=17)
    b = chaos.make_bars("2024-01-02", 24, seed=17)
    b.loc[:, chaos.COLS] = a.loc[:, chaos.COLS].to_numpy()  # other days, other values
    for name, frame in (("BTC-USDT", a), ("btc-usdt", b)):
        csv = chaos.write_csv(tmp_path / f"{name}.csv", frame)
        code, out = chaos.cli(["import", str(csv), "--instrument", name, "--timeframe", "1h", "--store", str(store)])
        assert code == 0, out
    assert sorted(p.name for p in (store / "bars/1h").iterdir()) == ["BTC-USDT"]
    assert len(read_bars(store, "BTC-USDT", "1h")) == 48
    with pytest.raises(StoreError, match="collides"):
        write_bars(store, "Btc-Usdt", "1h", a, "t")


def test_dump_refuses_two_series_for_one_provider_directory(tmp_path):
    store = tmp_path / "store"
    write_bars(store, "BTC-USDT", "1h", chaos.make_bars("2024-01-01", 24, seed=18), "t")
    import shutil

    shutil.copytree(store / "bars/1h/BTC-USDT", store / "bars/1h/btc-usdt")  # as an older version allowed
    qdir = tmp_path / "qlib"
    code, out = chaos.cli(["dump", "--store", str(store), "--qlib-dir", str(qdir), "--timeframe", "1h"])
    assert code == 2 and "BTC-USDT and btc-usdt" in out
    assert not qdir.exists() or not any(qdir.iterdir())
    code, out = chaos.cli(["validate", "--store", str(store)])
    assert code == 4 and "case_collision" in out
