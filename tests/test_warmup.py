"""The first run after an install: ``qlib-crypto demo`` compiles the feature kernels ahead of qrun
(qlib_crypto/data/warmup.py). Checked with numba's own compile events, in a fresh process on an empty cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WF_60 = REPO / "workflow_configs" / "workflow_config_lightgbm_crypto_60min.yaml"

SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[3])
    from numba.core import event
    from qlib_crypto.data.warmup import _handler_config, kernels_cached, main
    out = {"cached_before": kernels_cached()}
    out["code"] = main([sys.argv[1]])
    out["cached_after"] = kernels_cached()

    # the workflow's handler on another provider (other instruments, dates and values): nothing left to compile
    from test_handlers import synthetic_bars, write_provider
    import qlib_crypto
    from qlib.utils import init_instance_by_config
    write_provider(sys.argv[2], synthetic_bars(n_bars=24 * 30, start="2023-03-01", seed=5), "60min")
    qlib_crypto.init({"60min": sys.argv[2]})
    handler = _handler_config(sys.argv[1])
    handler["kwargs"].update(start_time="2023-03-01", end_time="2023-03-30 23:00:00",
                             fit_start_time="2023-03-01", fit_end_time="2023-03-20 23:00:00")
    compiled = []
    class Listener(event.Listener):
        def on_start(self, ev):
            compiled.append(str(ev.data.get("dispatcher")))
        def on_end(self, ev):
            pass
    event.register("numba:compile", Listener())
    h = init_instance_by_config(handler)
    out["rows"] = int(len(h.fetch()))
    out["compiled_after_warmup"] = compiled
    print("RESULT" + json.dumps(out))
    """
)


def test_warm_up_compiles_every_kernel_the_workflows_handler_needs(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba_cache"))  # empty: as after an install
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(WF_60), str(tmp_path / "provider"), str(REPO / "tests")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1][6:])
    assert out["cached_before"] is False and out["code"] == 0 and out["cached_after"] is True
    assert out["rows"] > 1000  # the handler did build its features
    assert out["compiled_after_warmup"] == []
    assert any((tmp_path / "numba_cache").rglob("*.nbc"))
