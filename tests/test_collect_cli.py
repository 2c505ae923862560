"""``qlib-crypto collect``: bad input, exhausted retries, resume after a killed run, synthetic source."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from okx_sim import to_ms

from qlib_crypto import store
from qlib_crypto.cli import main
from qlib_crypto.sources.collector import collect
from qlib_crypto.sources.okx import OkxSource

NOW = "2024-03-01T12:34:56.789Z"


def digests(root: Path, pattern: str = "*.parquet") -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob(pattern))
        if p.is_file() and "meta" not in p.parts
    }


def okx_args(sim, store_dir, *extra: str) -> list[str]:
    return ["collect", "--source", "okx", "--api-url", sim.url, "--store", str(store_dir), "--quiet", *extra]


def test_help_explains_options():
    result = subprocess.run(
        [sys.executable, "-m", "qlib_crypto", "collect", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    for option in [
        "--source",
        "--instruments",
        "--type",
        "--top",
        "--timeframe",
        "--start",
        "--end",
        "--store",
        "--api-url",
        "--workers",
        "--seed",
        "--quiet",
        "QLIB_CRYPTO_OKX_API_URL",
        "Example",
    ]:
        assert option in result.stdout, option


def test_unknown_timeframe(okx_sim, tmp_path, capsys):
    rc = main(
        okx_args(
            okx_sim,
            tmp_path / "s",
            "--instruments",
            "BTC-USDT",
            "--timeframe",
            "7m",
            "--start",
            "2024-01-01",
            "--end",
            "2024-01-02",
        )
    )
    err = capsys.readouterr().err
    assert rc == 2 and "unknown timeframe '7m'" in err and "\n" not in err.strip()
    assert okx_sim.stats.total_requests == 0


@pytest.mark.parametrize("start,end", [("2024-01-02", "2024-01-02"), ("2024-01-03", "2024-01-02")])
def test_start_not_before_end(okx_sim, tmp_path, capsys, start, end):
    rc = main(
        okx_args(
            okx_sim, tmp_path / "s", "--instruments", "BTC-USDT", "--timeframe", "1h", "--start", start, "--end", end
        )
    )
    assert rc == 2 and "is not before --end" in capsys.readouterr().err
    assert okx_sim.stats.total_requests == 0 and not (tmp_path / "s").exists()


def test_unwritable_store(okx_sim, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    rc = main(
        okx_args(
            okx_sim,
            blocker / "store",
            "--instruments",
            "BTC-USDT",
            "--timeframe",
            "1h",
            "--start",
            "2024-01-01",
            "--end",
            "2024-01-02",
        )
    )
    err = capsys.readouterr().err
    assert rc == 2 and "not writable" in err and str(blocker / "store") in err
    assert blocker.read_text() == "not a directory"


def test_unknown_instrument_lists_close_matches(okx_sim, tmp_path, capsys):
    rc = main(
        okx_args(
            okx_sim,
            tmp_path / "s",
            "--instruments",
            "BTC-USDT,SOL-USDT-SWP",
            "--timeframe",
            "1h",
            "--start",
            "2024-01-01",
            "--end",
            "2024-01-02",
        )
    )
    err = capsys.readouterr().err
    assert rc == 2 and "'SOL-USDT-SWP'" in err and "SOL-USDT-SWAP" in err
    assert okx_sim.stats.requests["market/history-candles"] == 0


def test_exhausted_retries_exit_nonzero_and_nothing_lost(okx_sim, tmp_path, capsys):
    s = tmp_path / "s"
    assert (
        main(
            okx_args(
                okx_sim,
                s,
                "--instruments",
                "BTC-USDT,XRP-USDT",
                "--timeframe",
                "4h",
                "--start",
                "2023-01-01",
                "--end",
                "2023-03-01",
            )
        )
        == 0
    )
    before = digests(s, "*")
    okx_sim.add_fault_rule("503", endpoint=None, inst_id="XRP-USDT")  # maintenance that never ends for XRP
    rc = main(
        okx_args(
            okx_sim,
            s,
            "--instruments",
            "BTC-USDT,XRP-USDT",
            "--timeframe",
            "4h",
            "--start",
            "2023-01-01",
            "--end",
            "2023-06-01",
            "--max-retries",
            "1",
        )
    )
    captured = capsys.readouterr()
    assert rc == 3
    assert "XRP-USDT [2023-03-01T00:00:00Z..2023-06-01T00:00:00Z]" in captured.err
    assert "re-run the same command to resume" in captured.err
    after = digests(s, "*")
    for name, digest in before.items():  # nothing already stored for XRP was altered or lost
        if "XRP-USDT" in name:
            assert after[name] == digest, name
    btc = store.read_bars(s, "BTC-USDT", "4h")
    assert btc.index[-1] == store.read_bars(s, "BTC-USDT", "4h", end="2023-06-01").index[-1]
    assert len(btc) == len(okx_sim.expected_bars("BTC-USDT", "4H", to_ms("2023-01-01"), to_ms("2023-06-01")))


def test_resume_after_kill_gives_identical_files(okx_sim, okx_sim_factory, tmp_path):
    insts = "BTC-USDT,ETH-USDT-SWAP,ADA-USDT"
    common = [
        "--instruments",
        insts,
        "--timeframe",
        "1m",
        "--start",
        "2024-02-24",
        "--end",
        "2024-02-28",
        "--workers",
        "3",
    ]
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "qlib_crypto", *okx_args(okx_sim, killed, *common)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list(killed.glob("bars/1m/*/_coverage.yaml")):
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL  # it was killed mid-way, not finished
    partial = sum(len(store.read_bars(killed, i, "1m")) for i in store.list_instruments(killed, "1m"))
    assert 0 < partial < 3 * 4 * 1440
    covered = {i: store.get_coverage(killed, i, "1m") for i in insts.split(",")}
    assert any(covered.values())
    log_start = len(okx_sim.log)
    assert main(okx_args(okx_sim, killed, *common)) == 0  # resume
    for endpoint, params, _status, _fault in okx_sim.log[log_start:]:  # nothing covered was asked again
        if endpoint.startswith("market/") and "after" in params:
            lo, hi = int(params["before"]) + 1, int(params["after"])
            assert not any(a < hi and lo < b for a, b in covered[params["instId"]]), params
    # uninterrupted run of the same command against an identical simulator with 4x shorter rate windows
    fast_sim = okx_sim_factory(window_scale=0.25)
    with OkxSource(
        api_url=fast_sim.url,
        limits={
            "history-candles": (20, 0.5, None),
            "candles": (40, 0.5, None),
            "funding-rate-history": (10, 0.5, "instId"),
        },
    ) as src:
        collect(src, reference, insts.split(","), "1m", "2024-02-24", "2024-02-28", workers=3, progress=False)
    assert digests(killed) == digests(reference)
    assert len(digests(reference)) == 3 * 1 + 1  # one monthly file per instrument + one funding file


def test_synthetic_source(tmp_path, capsys):
    s = tmp_path / "syn"
    args = [
        "collect",
        "--source",
        "synthetic",
        "--instruments",
        "3",
        "--seed",
        "5",
        "--timeframe",
        "1h",
        "--start",
        "2024-01-01",
        "--end",
        "2024-01-15",
        "--store",
        str(s),
        "--quiet",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "collected 3 instruments (synthetic, 1h" in out and "OK" in out
    first = digests(s)
    assert len(store.list_instruments(s, "1h")) == 3
    assert main(args) == 0
    assert digests(s) == first
