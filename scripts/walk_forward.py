#!/usr/bin/env python
"""Walk-forward retraining of a qrun workflow with Qlib's rolling task generation (steps in bars).

Run from the directory qrun would run in (the repository root after `qlib-crypto demo`):

    python scripts/walk_forward.py --config workflow_configs/workflow_config_lightgbm_crypto_60min.yaml --step 720

Each test window of `--step` bars gets a model trained on everything before it (expanding window; or a
sliding window of constant length with --rtype sliding). The merged out-of-sample predictions and their
evaluation land in the experiment `<workflow experiment>_walk_forward`: the workflow's records re-run on
them (SigAnaRecord: IC metrics; CryptoBacktestRecord: the crypto backtest of the whole predicted range,
`crypto_backtest/`; CryptoRiskRecord: 24/7 metrics; TrainingReportRecord without a model). Records that
need one model (ModelArtifactRecord) are skipped: each window's model is in the models experiment.

On a Dask cluster (the `dask` extra, docs/scale-out.md) every window is a Dask task, with the same results:

    python scripts/walk_forward.py --config ... --step 720 --dask local                 # LocalCluster, all cores
    python scripts/walk_forward.py --config ... --step 720 --dask tcp://10.0.0.5:8786   # a running scheduler

Without --dask the workflow's top-level `dask:` block decides (serial without one); --serial ignores it.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="qrun workflow YAML")
    parser.add_argument("--step", type=int, default=720, help="bars per test window (default 720 = 30 days at 60min)")
    parser.add_argument("--rtype", choices=["expanding", "sliding"], default="expanding", help="train window type")
    parser.add_argument("--experiment", default=None, help="experiment of the merged results")
    parser.add_argument("--no-analysis", action="store_true", help="only merge predictions, skip the analysis records")
    parser.add_argument(
        "--dask",
        metavar="ADDRESS",
        default=None,
        help="train the windows on a Dask cluster: a scheduler address (tcp://HOST:8786) or 'local' "
        "(a LocalCluster with this machine's cores); default: the YAML's dask: block",
    )
    parser.add_argument(
        "--serial", action="store_true", help="train the windows in this process (ignore any dask: block)"
    )
    args = parser.parse_args(argv)

    from qlib_crypto.errors import QlibCryptoError
    from qlib_crypto.workflow.rolling import FROM_CONFIG, run_walk_forward

    if args.serial and args.dask:
        print("error: give --dask or --serial, not both", file=sys.stderr)
        return 2
    dask = None if args.serial else (args.dask or FROM_CONFIG)
    try:
        result = run_walk_forward(
            args.config,
            args.step,
            rtype=args.rtype,
            experiment_name=args.experiment,
            analyse=not args.no_analysis,
            dask=dask,
        )
    except QlibCryptoError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    print(f"walk-forward: {result['n_windows']} windows; models in experiment {result['rolling_experiment']!r}")
    print(f"merged predictions: experiment {result['experiment']!r}, recorder {result['recorder_id']}")
    if result["records"]:
        print("records run on them: " + ", ".join(result["records"]))
    metrics = result["metrics"]
    for key in (
        "IC",
        "ICIR",
        "Rank IC",
        "Rank ICIR",
        "Long-Short Ann Return",
        "backtest.total_return",
        "backtest.annualized_return",
        "backtest.sharpe",
        "backtest.max_drawdown",
        "crypto.60min.excess_return_with_cost.annualized_return_365d",
        "crypto.day.excess_return_with_cost.annualized_return_365d",
    ):
        if key in metrics:
            print(f"{key}: {metrics[key]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
