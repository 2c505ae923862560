"""API keys in the environment are never needed, sent, logged or written (stores, manifests, reports)."""

from __future__ import annotations

import os
import subprocess
import sys

SECRETS = {
    "OKX_API_KEY": "key-5f1e0c7a-SECRET-KEY",
    "OKX_API_SECRET": "SECRET-VALUE-9b8c7d6e",
    "OKX_SECRET": "SECRET-VALUE-2a3b4c5d",
    "OKX_PASSPHRASE": "pass-PHRASE-771",
    "OKX_PASSWORD": "pass-WORD-772",
}


def test_keys_in_environment_are_not_sent_logged_or_written(okx_sim, tmp_path):
    env = {**os.environ, **SECRETS}
    store = tmp_path / "store"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "qlib_crypto",
            "--verbose",
            "collect",
            "--source",
            "okx",
            "--api-url",
            okx_sim.url,
            "--instruments",
            "BTC-USDT,BTC-USDT-SWAP",
            "--timeframe",
            "1h",
            "--start",
            "2024-02-20",
            "--end",
            "2024-02-22",
            "--store",
            str(store),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "DEBUG" in proc.stderr  # verbose logging was on, so a leak would have had its chance
    written = [p for p in store.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in written) and any(p.name.endswith(".manifest.yaml") for p in written)
    for value in SECRETS.values():
        assert value not in proc.stdout and value not in proc.stderr, value
        for path in written:
            assert value.encode() not in path.read_bytes(), (value, path)
        for name, header_value in okx_sim.seen_headers:
            assert value not in header_value, (value, name)
    header_names = {name for name, _ in okx_sim.seen_headers}
    assert not header_names & {"ok-access-key", "ok-access-sign", "ok-access-passphrase"}
