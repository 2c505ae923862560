"""A first-order recursive filter for the synthetic market, without importing ``scipy.signal``.

``scipy.signal`` takes about a second to import, longer than the whole synthetic collection of the demo's
20 instruments spends filtering. :func:`ar1_filter` gives the bits of ``scipy.signal.lfilter([b0], [1.0, -phi],
x)``: the same direct form II transposed recursion, in the same order of operations (tests/test_synthetic.py
compares the two on random inputs with NaN, signed zeros and extreme coefficients).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, fastmath=False, error_model="numpy")
def _ar1(b0: float, a1: float, x: np.ndarray) -> np.ndarray:  # pragma: no cover (compiled)
    out = np.empty(x.shape[0], dtype=np.float64)
    z = 0.0
    for n in range(x.shape[0]):
        xn = x[n]
        y = z + b0 * xn
        z = 0.0 * xn - a1 * y  # lfilter's last delay: b[1] * x[n] - a[1] * y[n], with b[1] = 0
        out[n] = y
    return out


def ar1_filter(b0: float, phi: float, x: np.ndarray) -> np.ndarray:
    """``y[n] = b0 * x[n] + phi * y[n-1]`` from a zero state, as ``lfilter([b0], [1.0, -phi], x)`` computes it."""
    return _ar1(float(b0), -float(phi), np.ascontiguousarray(x, dtype=np.float64))
