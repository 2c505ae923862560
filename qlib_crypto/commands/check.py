"""``qlib-crypto check``: validate a ``qrun`` workflow YAML in seconds, before any training."""

from __future__ import annotations

import click


@click.command("check")
@click.argument("workflow", type=click.Path(dir_okay=False))
@click.option("--quiet", is_flag=True, help="Print nothing when the workflow is clean (problems are still printed).")
def command(workflow: str, quiet: bool) -> int:
    """Check a qrun workflow without training: run it before qrun.

    \b
    Checks, from the directory qrun would run in (relative paths resolve against it):
    - the YAML parses (a syntax error names the file and the line);
    - qlib_init: known settings; every provider directory exists and has the calendar of its frequency;
      every frequency the workflow uses (handler, executor, exchange, record) has a directory;
    - every class/module_path resolves, and every kwargs key is an argument of its class
      (typos such as slipage_bps or label_nrom get a "did you mean");
    - the handler's times, the dataset segments and the backtest dates lie inside the calendar;
      the market and the backtest benchmark exist.

    Each problem is one line: FILE:LINE: YAML.PATH: what is wrong. Exit code 0 when clean, 2 when
    problems are found (all of them are printed).

    \b
    Example:
      qlib-crypto check workflow_configs/workflow_config_lightgbm_crypto_60min.yaml && \\
          qrun workflow_configs/workflow_config_lightgbm_crypto_60min.yaml
    """
    from ..errors import ConfigError
    from ..workflow.check import check_workflow

    report = check_workflow(workflow)
    if report.ok:
        if not quiet:
            click.echo(report.summary())
        return 0
    for line in report.lines():
        click.echo(line)
    n = len(report.problems)
    raise ConfigError(
        f"{workflow}: {n} problem{'s' if n != 1 else ''} (listed above)",
        hint=f"fix {'them' if n != 1 else 'it'}, then re-run qlib-crypto check before qrun",
    )
