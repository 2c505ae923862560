"""Research workflow parts: record templates (24/7 annualisation), walk-forward retraining, predictions.

Kept import-light: import the submodules you need (``qlib_crypto.workflow.records``,
``qlib_crypto.workflow.rolling``); they import Qlib.
"""
