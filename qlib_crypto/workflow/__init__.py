"""Research workflow parts: record templates (24/7 annualisation), walk-forward retraining, predictions.

Kept import-light: import the submodules you need (``qlib_crypto.workflow.records``,
``qlib_crypto.workflow.rolling``); they import Qlib.
"""

# qrun imports this package when it builds our handlers and records: from then on Qlib's known console noise
# is filtered (targeted; our own qlib_crypto.* warnings stay). Cheap: imports nothing heavy. See _quiet.py.
from .._quiet import install as _install_quiet

_install_quiet()
