"""Numba kernel of :func:`simstudy.reports.quantreg.qr_line`: bisection on the derivative of
the profiled check loss, one row (one bootstrap resample) at a time.

Every function has a plain-Python meaning (``NUMBA_DISABLE_JIT=1`` runs it as written); the
numpy formulation in :mod:`simstudy.reports.quantreg` and the brute-force reference in
``tests/test_quantreg.py`` check it.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["qr_rows"]


@njit(cache=True, nogil=True)
def _select(buf, k):
    """The k-th smallest entry (0-based) of ``buf``, reordering ``buf`` in place (quickselect)."""
    lo = 0
    hi = buf.shape[0] - 1
    while hi > lo:
        mid = (lo + hi) // 2
        # median of three as the pivot, guarding sorted inputs
        a, b, c = buf[lo], buf[mid], buf[hi]
        if a < b:
            pivot = b if b < c else (c if a < c else a)
        else:
            pivot = a if a < c else (c if b < c else b)
        i, j = lo, hi
        while i <= j:
            while buf[i] < pivot:
                i += 1
            while buf[j] > pivot:
                j -= 1
            if i <= j:
                t = buf[i]
                buf[i] = buf[j]
                buf[j] = t
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            return buf[k]
    return buf[k]


@njit(cache=True, nogil=True)
def _derivative(x, y, b, q, k, xbar, r, buf):
    """(f'(b), optimal intercept) of the check loss of one row, see the quantreg module."""
    n = x.shape[0]
    for i in range(n):
        r[i] = y[i] - b * x[i]
        buf[i] = r[i]
    a = _select(buf, k)
    c = 0.0
    s = 0.0
    for i in range(n):
        neg = 1.0 if r[i] < a else 0.0  # branch-free: about half the points are below
        c += neg
        s += neg * x[i]
    xk = 0.0
    for i in range(n):
        if r[i] == a:
            xk = x[i]
            break
    # sum_i (q - 1{u_i < 0}) (x_k - x_i)
    g = q * n * (xk - xbar) - (c * xk - s)
    return g, a


@njit(cache=True, nogil=True)
def _objective(x, y, a, b, q):
    f = 0.0
    for i in range(x.shape[0]):
        u = y[i] - a - b * x[i]
        f += u * (q - 1.0) if u < 0.0 else u * q
    return f


@njit(cache=True, nogil=True)
def _snap(x, y, b, q, k, xbar, r, buf):
    """The vertex next to slope ``b``: the line through the quantile point and the point
    closest to the line (with another abscissa). An optimal line interpolates two points with
    distinct abscissae; returns (a, b) of the vertex when it is no worse, else of ``b``."""
    _, a = _derivative(x, y, b, q, k, xbar, r, buf)
    ik = -1
    best = np.inf
    jbest = -1
    for i in range(x.shape[0]):
        if ik < 0 and r[i] == a:
            ik = i
    for i in range(x.shape[0]):
        if x[i] != x[ik]:
            d = abs(r[i] - a)
            if d < best:
                best = d
                jbest = i
    if jbest < 0:
        return a, b
    b2 = (y[jbest] - y[ik]) / (x[jbest] - x[ik])
    _, a2 = _derivative(x, y, b2, q, k, xbar, r, buf)
    if _objective(x, y, a2, b2, q) <= _objective(x, y, a, b, q):
        return a2, b2
    return a, b


@njit(cache=True, nogil=True)
def qr_rows(x, Y, q, k, start, width, tol, max_steps, out_a, out_b):
    """Solve every row of ``Y``; returns the number of rows that hit ``max_steps`` (0 if all
    converged). ``start`` is each row's first guess of the slope, ``width`` the first bracket
    half-width."""
    B, n = Y.shape
    r = np.empty(n)
    buf = np.empty(n)
    xbar = 0.0
    for i in range(n):
        xbar += x[i]
    xbar /= n
    failed = 0
    for row in range(B):
        y = Y[row]
        steps = 0
        lo = start[row] - width
        step = width
        g, _ = _derivative(x, y, lo, q, k, xbar, r, buf)
        while g > 0.0 and steps < max_steps:
            lo -= step
            step *= 2.0
            steps += 1
            g, _ = _derivative(x, y, lo, q, k, xbar, r, buf)
        hi = start[row] + width
        step = width
        g, _ = _derivative(x, y, hi, q, k, xbar, r, buf)
        while g < 0.0 and steps < max_steps:
            hi += step
            step *= 2.0
            steps += 1
            g, _ = _derivative(x, y, hi, q, k, xbar, r, buf)
        while hi - lo > tol and steps < max_steps:
            mid = 0.5 * (lo + hi)
            g, _ = _derivative(x, y, mid, q, k, xbar, r, buf)
            if g < 0.0:
                lo = mid
            elif g > 0.0:
                hi = mid
            else:
                lo = mid
                hi = mid
            steps += 1
        if steps >= max_steps:
            failed += 1
        a, b = _snap(x, y, 0.5 * (lo + hi), q, k, xbar, r, buf)
        out_a[row] = a
        out_b[row] = b
    return failed
