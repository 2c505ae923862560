"""Rolling-window kernels of the fast feature engine, compiled with numba.

Every kernel takes a ``(T, N)`` float64 array (time x instrument, C order) and works down each column, so
one call covers all instruments. The kernels reproduce the arithmetic of the code Qlib's operators call,
step by step, so that results are the same bits and not merely close:

- ``roll_sum`` / ``roll_mean`` / ``roll_var``: pandas' rolling sum, mean and variance with
  ``min_periods=1`` (Kahan-compensated online sums, Welford's variance with its compensation, a window of
  identical values giving exactly that value / zero variance, mean clamped to 0 when its sign contradicts
  every value's sign). NaN values are skipped.
- ``roll_max`` / ``roll_min``: the largest / smallest non-NaN value of the window (exact).
- ``roll_quantile``: pandas' rolling quantile, linear interpolation between the sorted window values.
- ``roll_rank``: pandas' rolling ``rank(pct=True)``: average rank of the newest value among the window's
  non-NaN values divided by their count; NaN when the newest value is NaN.
- ``roll_argmax`` / ``roll_argmin``: Qlib's ``IdxMax`` / ``IdxMin`` (``rolling.apply(argmax + 1)``):
  1-based position of the first maximum, or of the first NaN when the window has one (numpy's argmax
  rule), NaN when the window has no finite value. The window never reaches back past ``first[j]``, the
  row at which column ``j``'s series starts (Qlib evaluates each instrument on its own series).
- ``roll_slope`` / ``roll_rsquare`` / ``roll_resi``: Qlib's own rolling regression on the bar index (the
  running sums of ``qlib/data/_libs/rolling.pyx`` updated in the same order).
- ``roll_count``: number of non-NaN values in the window.

Inputs are prepared by the engine the way pandas prepares them (float64, +-inf as NaN) where the Qlib
operator goes through pandas; ``roll_slope`` & co. see the raw values, as Qlib's Cython code does.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

_JIT = dict(cache=True, nogil=True, fastmath=False, error_model="numpy")


@njit(**_JIT)
def roll_sum(x, w):
    T, N = x.shape
    out = np.empty((T, N))
    for j in range(N):
        nobs = 0
        sum_x = 0.0
        comp_add = 0.0
        comp_rem = 0.0
        same = 0
        prev = x[0, j] if T > 0 else 0.0
        for i in range(T):
            if i >= w:
                v = x[i - w, j]
                if v == v:
                    nobs -= 1
                    y = -v - comp_rem
                    t = sum_x + y
                    comp_rem = t - sum_x - y
                    sum_x = t
            v = x[i, j]
            if v == v:
                nobs += 1
                if v == prev:
                    same += 1
                else:
                    same = 1
                prev = v
                y = v - comp_add
                t = sum_x + y
                comp_add = t - sum_x - y
                sum_x = t
            if nobs >= 1:
                if same >= nobs:
                    out[i, j] = prev * nobs
                else:
                    out[i, j] = sum_x
            else:
                out[i, j] = np.nan
    return out


@njit(**_JIT)
def roll_mean(x, w):
    T, N = x.shape
    out = np.empty((T, N))
    for j in range(N):
        nobs = 0
        neg = 0
        sum_x = 0.0
        comp_add = 0.0
        comp_rem = 0.0
        same = 0
        prev = x[0, j] if T > 0 else 0.0
        for i in range(T):
            if i >= w:
                v = x[i - w, j]
                if v == v:
                    nobs -= 1
                    y = -v - comp_rem
                    t = sum_x + y
                    comp_rem = t - sum_x - y
                    sum_x = t
                    if math.copysign(1.0, v) < 0:
                        neg -= 1
            v = x[i, j]
            if v == v:
                nobs += 1
                if v == prev:
                    same += 1
                else:
                    same = 1
                prev = v
                y = v - comp_add
                t = sum_x + y
                comp_add = t - sum_x - y
                sum_x = t
                if math.copysign(1.0, v) < 0:
                    neg += 1
            if nobs >= 1:
                r = sum_x / nobs
                if same >= nobs:
                    r = prev
                elif neg == 0 and r < 0:
                    r = 0.0
                elif neg == nobs and r > 0:
                    r = 0.0
                out[i, j] = r
            else:
                out[i, j] = np.nan
    return out


@njit(**_JIT)
def roll_var(x, w, ddof):
    T, N = x.shape
    out = np.empty((T, N))
    for j in range(N):
        nobs = 0.0
        mean_x = 0.0
        ssqdm = 0.0
        comp_add = 0.0
        comp_rem = 0.0
        same = 0
        prev = x[0, j] if T > 0 else 0.0
        for i in range(T):
            if i >= w:
                v = x[i - w, j]
                if v == v:
                    nobs -= 1
                    if nobs:
                        prev_mean = mean_x - comp_rem
                        y = v - comp_rem
                        t = y - mean_x
                        comp_rem = t + mean_x - y
                        mean_x = mean_x - t / nobs
                        ssqdm = ssqdm - (v - prev_mean) * (v - mean_x)
                    else:
                        mean_x = 0.0
                        ssqdm = 0.0
            v = x[i, j]
            if v == v:
                nobs += 1
                if v == prev:
                    same += 1
                else:
                    same = 1
                prev = v
                prev_mean = mean_x - comp_add
                y = v - comp_add
                t = y - mean_x
                comp_add = t + mean_x - y
                if nobs:
                    mean_x = mean_x + t / nobs
                else:
                    mean_x = 0.0
                ssqdm = ssqdm + (v - prev_mean) * (v - mean_x)
            if nobs >= 1 and nobs > ddof:
                if nobs == 1 or same >= nobs:
                    out[i, j] = 0.0
                else:
                    out[i, j] = ssqdm / (nobs - ddof)
            else:
                out[i, j] = np.nan
    return out


@njit(**_JIT)
def roll_count(x, w):
    T, N = x.shape
    out = np.empty((T, N))
    for j in range(N):
        nobs = 0
        for i in range(T):
            if i >= w and x[i - w, j] == x[i - w, j]:
                nobs -= 1
            if x[i, j] == x[i, j]:
                nobs += 1
            out[i, j] = nobs
    return out


@njit(**_JIT)
def _roll_extreme(x, w, is_max):
    # monotonic deque of row indices per column: O(1) amortised per row
    T, N = x.shape
    out = np.empty((T, N))
    q = np.empty(max(T, 1), dtype=np.int64)
    for j in range(N):
        head = 0
        tail = 0
        for i in range(T):
            while head < tail and q[head] <= i - w:
                head += 1
            v = x[i, j]
            if v == v:
                if is_max:
                    while head < tail and x[q[tail - 1], j] <= v:
                        tail -= 1
                else:
                    while head < tail and x[q[tail - 1], j] >= v:
                        tail -= 1
                q[tail] = i
                tail += 1
            if head < tail:
                out[i, j] = x[q[head], j]
            else:
                out[i, j] = np.nan
    return out


@njit(**_JIT)
def roll_max(x, w):
    return _roll_extreme(x, w, True)


@njit(**_JIT)
def roll_min(x, w):
    return _roll_extreme(x, w, False)


@njit(**_JIT)
def _roll_argext(x, w, first, is_max):
    T, N = x.shape
    out = np.empty((T, N))
    for j in range(N):
        f = first[j]
        for i in range(T):
            s = i - w + 1
            if s < f:
                s = f
            if i < s:
                out[i, j] = np.nan
                continue
            best = -1
            nan_at = -1
            for k in range(s, i + 1):
                v = x[k, j]
                if v != v:
                    nan_at = k
                    break
                if best < 0:
                    best = k
                elif is_max:
                    if v > x[best, j]:
                        best = k
                elif v < x[best, j]:
                    best = k
            if nan_at >= 0:
                # numpy's argmax/argmin return the first NaN; pandas applies only with >= 1 finite value
                finite = best >= 0
                if not finite:
                    for k in range(nan_at + 1, i + 1):
                        if x[k, j] == x[k, j]:
                            finite = True
                            break
                out[i, j] = nan_at - s + 1 if finite else np.nan
            else:
                out[i, j] = best - s + 1
    return out


@njit(**_JIT)
def roll_argmax(x, w, first):
    return _roll_argext(x, w, first, True)


@njit(**_JIT)
def roll_argmin(x, w, first):
    return _roll_argext(x, w, first, False)


@njit(**_JIT)
def _bisect_right(buf, n, v):
    lo = 0
    hi = n
    while lo < hi:
        mid = (lo + hi) >> 1
        if v < buf[mid]:
            hi = mid
        else:
            lo = mid + 1
    return lo


@njit(**_JIT)
def _bisect_left(buf, n, v):
    lo = 0
    hi = n
    while lo < hi:
        mid = (lo + hi) >> 1
        if buf[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(**_JIT)
def _insert(buf, n, v):
    k = _bisect_right(buf, n, v)
    for m in range(n, k, -1):
        buf[m] = buf[m - 1]
    buf[k] = v
    return k


@njit(**_JIT)
def _remove(buf, n, v):
    k = _bisect_left(buf, n, v)
    for m in range(k, n - 1):
        buf[m] = buf[m + 1]


@njit(**_JIT)
def roll_quantile(x, w, q):
    T, N = x.shape
    out = np.empty((T, N))
    buf = np.empty(max(min(w, T), 1))
    for j in range(N):
        n = 0
        for i in range(T):
            if i >= w:
                v = x[i - w, j]
                if v == v:
                    _remove(buf, n, v)
                    n -= 1
            v = x[i, j]
            if v == v:
                _insert(buf, n, v)
                n += 1
            if n == 0:
                out[i, j] = np.nan
            elif n == 1:
                out[i, j] = buf[0]
            else:
                frac_idx = q * (n - 1)
                idx = int(frac_idx)
                if frac_idx == idx:
                    out[i, j] = buf[idx]
                else:
                    lo = buf[idx]
                    hi = buf[idx + 1]
                    out[i, j] = lo + (hi - lo) * (frac_idx - idx)
    return out


@njit(**_JIT)
def roll_rank(x, w):
    T, N = x.shape
    out = np.empty((T, N))
    buf = np.empty(max(min(w, T), 1))
    for j in range(N):
        n = 0
        for i in range(T):
            if i >= w:
                v = x[i - w, j]
                if v == v:
                    _remove(buf, n, v)
                    n -= 1
            v = x[i, j]
            rank = np.nan
            if v == v:
                k = _insert(buf, n, v)
                n += 1
                hi = float(k + 1)  # rank of the inserted value (after its equals)
                lo = float(_bisect_left(buf, n, v) + 1)  # lowest rank among its equals
                rank = ((hi * (hi + 1) / 2) - ((lo - 1) * lo / 2)) / (hi - lo + 1)
            if n >= 1:
                out[i, j] = rank / n
            else:
                out[i, j] = np.nan
    return out


# ---- Qlib's rolling regression on the bar index (x = 1..window within the window) ----------------------
@njit(**_JIT)
def _roll_regression(a, window, kind):
    # kind 0: slope, 1: rsquare, 2: residual of the newest value
    T, N = a.shape
    out = np.empty((T, N))
    ring = np.empty(max(window, 1))
    for j in range(N):
        for k in range(window):
            ring[k] = np.nan
        pos = 0  # index of the oldest value in the ring (the deque's front)
        na_count = window
        i_sum = 0.0
        x_sum = 0.0
        x2_sum = 0.0
        y_sum = 0.0
        y2_sum = 0.0
        xy_sum = 0.0
        for i in range(T):
            val = a[i, j]
            xy_sum = xy_sum - y_sum
            x2_sum = x2_sum + i_sum - 2 * x_sum
            x_sum = x_sum - i_sum
            front = ring[pos]
            if not math.isnan(front):
                i_sum -= 1
                y_sum -= front
                if kind == 1:
                    y2_sum -= front * front
            else:
                na_count -= 1
            ring[pos] = val
            pos += 1
            if pos == window:
                pos = 0
            if math.isnan(val):
                na_count += 1
            else:
                i_sum += 1
                x_sum += window
                x2_sum += window * window
                y_sum += val
                if kind == 1:
                    y2_sum += val * val
                xy_sum += window * val
            n = window - na_count
            if kind == 0:
                out[i, j] = (n * xy_sum - x_sum * y_sum) / (n * x2_sum - x_sum * x_sum)
            elif kind == 1:
                r = (n * xy_sum - x_sum * y_sum) / math.sqrt((n * x2_sum - x_sum * x_sum) * (n * y2_sum - y_sum * y_sum))
                out[i, j] = r * r
            else:
                slope = (n * xy_sum - x_sum * y_sum) / (n * x2_sum - x_sum * x_sum)
                x_mean = x_sum / n
                y_mean = y_sum / n
                interp = y_mean - slope * x_mean
                out[i, j] = val - (slope * window + interp)
    return out


@njit(**_JIT)
def roll_slope(a, window):
    return _roll_regression(a, window, 0)


@njit(**_JIT)
def roll_rsquare(a, window):
    return _roll_regression(a, window, 1)


@njit(**_JIT)
def roll_resi(a, window):
    return _roll_regression(a, window, 2)
