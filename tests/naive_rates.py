"""Slow, obviously-correct references for the rate estimation (plain numpy and loops)."""

from __future__ import annotations

import itertools
import math

import numpy as np


def check_loss(x, y, a, b, q):
    """sum rho_q(y - a - b x), written out."""
    total = 0.0
    for xi, yi in zip(x, y, strict=True):
        u = yi - a - b * xi
        total += u * (q - 1.0) if u < 0 else u * q
    return total


def brute_force_line(x, y, q):
    """The best check loss over every line through two points with distinct x (an optimal
    quantile-regression line interpolates two such points). Returns (loss, a, b)."""
    best = (math.inf, math.nan, math.nan)
    for i, j in itertools.combinations(range(len(x)), 2):
        if x[i] == x[j]:
            continue
        b = (y[j] - y[i]) / (x[j] - x[i])
        a = y[i] - b * x[i]
        f = check_loss(x, y, a, b, q)
        if f < best[0]:
            best = (f, a, b)
    return best


def bisection_line(x, y, q, lo=-50.0, hi=50.0, tol=1e-10):
    """Quantile-regression slope by bisection on the derivative of the profiled check loss,
    in plain numpy (np.sort, no partition, no kernel). Returns (a, b)."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    N = x.size
    k = math.ceil(q * N) - 1

    def deriv(b):
        r = y - b * x
        order = np.argsort(r, kind="stable")
        a = r[order[k]]
        xk = x[order[k]]
        u = r - a
        psi = np.where(u < 0, q - 1.0, q)
        return float(np.sum(psi * (xk - x))), a

    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        g, _ = deriv(mid)
        if g < 0:
            lo = mid
        else:
            hi = mid
    b = 0.5 * (lo + hi)
    return deriv(b)[1], b


def percentile_ci(draws, level):
    """Percentile interval of bootstrap draws, by sorting (linear interpolation as np.quantile)."""
    s = np.sort(np.asarray(draws, float))
    a = (1 - level) / 2
    out = []
    for p in (a, 1 - a):
        h = (s.size - 1) * p
        lo = int(math.floor(h))
        hi = min(lo + 1, s.size - 1)
        out.append(s[lo] + (h - lo) * (s[hi] - s[lo]))
    return tuple(out)


def stratified_bootstrap_slopes(n, y, q, n_boot, rng):
    """Bootstrap slopes by an explicit loop: per resample, per n, draw that n's replications
    with replacement, refit by :func:`bisection_line`."""
    n = np.asarray(n, float)
    y = np.asarray(y, float)
    levels = np.unique(n)
    out = []
    for _ in range(n_boot):
        xs, ys = [], []
        for v in levels:
            members = np.flatnonzero(n == v)
            pick = members[rng.integers(0, members.size, members.size)]
            xs.append(np.log(n[pick]))
            ys.append(np.log(y[pick]))
        out.append(bisection_line(np.concatenate(xs), np.concatenate(ys), q)[1])
    return np.array(out)
