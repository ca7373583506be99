"""Slow, obviously-correct references for the line-scan kernels (simstudy/model/kernels_scan.py).

Selections come from :func:`tests.naive.active` (sorting with key (-score, index)); the
log-likelihood along a line from :func:`tests.naive.loglik` at the moved parameters. Nothing
here is shared with the kernels.
"""

from __future__ import annotations

import numpy as np

from tests import naive


def mask_bits(row) -> int:
    return int(sum(1 << i for i, on in enumerate(row) if on))


def selection_at(x, beta1, K):
    """Bit mask of the top-K set of one point."""
    return mask_bits(naive.active(x[None, :], beta1, K)[0])


def events(X, beta1, dbeta1, K, t_lo, t_hi):
    """All selection changes as a set of (point, side, rounded t, before, after).

    Per point: every pairwise crossing time in the interval, sorted by distance from 0; the
    selection of each open piece read by sorting the scores at its midpoint.
    """
    out = set()
    k = beta1.shape[0]
    for nn, x in enumerate(X):
        s0 = beta1 @ x
        u = dbeta1 @ x
        umax = np.max(np.abs(u))
        prev0 = selection_at(x, beta1, K)
        for side, t_end in ((1.0, t_hi), (-1.0, t_lo)):
            if side * t_end <= 0:
                continue
            times = []
            for i in range(k):
                for j in range(i + 1, k):
                    du = u[i] - u[j]
                    if abs(du) > 1e-12 * umax:
                        tc = (s0[j] - s0[i]) / du
                        if 0 <= side * tc < side * t_end:
                            times.append(side * tc)
            times = sorted(set(times))
            prev = prev0
            for q, c in enumerate(times):
                nxt = times[q + 1] if q + 1 < len(times) else side * t_end
                mid = side * 0.5 * (c + nxt)
                cur = selection_at(x, beta1 + mid * dbeta1, K)
                if cur != prev:
                    out.add((nn, int(side), round(side * c, 9), prev, cur))
                    prev = cur
    return out


def mask_array(bits, n, k):
    return np.array([[(bits >> i) & 1 for i in range(k)] for _ in range(n)], dtype=bool)


def line_loglik(X, y, params, dbeta0, dbeta1, t, K, mask=None):
    """l(theta + t delta) for a gating-only direction, selection recomputed or held."""
    beta0, beta1, a, b, v = params
    return naive.loglik(X, y, beta0 + t * dbeta0, beta1 + t * dbeta1, a, b, v, K, mask)


def line_loglik_many(X, y, params, dbeta0, dbeta1, ts, K):
    """l(theta + t delta) for many t at once (numpy broadcasting; selection by a stable sort
    of the negated scores, so ties go to the lower index)."""
    from scipy.special import logsumexp

    beta0, beta1, a, b, v = params
    ts = np.asarray(ts, dtype=float)[:, None, None]
    s = X @ beta1.T + ts * (X @ dbeta1.T)  # (T, n, k)
    k = s.shape[2]
    order = np.argsort(-s, axis=2, kind="stable")
    mask = np.zeros(s.shape, dtype=bool)
    np.put_along_axis(mask, order[:, :, :K], True, axis=2)
    eta = np.where(mask, s + beta0 + ts * dbeta0, -np.inf)
    logn = -0.5 * (np.log(2 * np.pi * v) + (y[:, None] - (X @ a.T + b)) ** 2 / v)
    lp = logsumexp(eta + logn, axis=2) - logsumexp(eta, axis=2)
    assert k == beta1.shape[0]
    return lp.sum(axis=1)


def brute_force_max(X, y, params, dbeta0, dbeta1, K, t_lo, t_hi, m=4001):
    """max of l(t) - l(0) over a fine grid and both sides of every breakpoint."""
    beta1 = params[1]
    l0 = line_loglik(X, y, params, dbeta0, dbeta1, 0.0, K)
    ts = list(np.linspace(t_lo, t_hi, m))
    for _, _, t, _, _ in events(X, beta1, dbeta1, K, t_lo, t_hi):
        for eps in (-1e-9, 1e-9):
            if t_lo <= t + eps <= t_hi:
                ts.append(t + eps)
    vals = line_loglik_many(X, y, params, dbeta0, dbeta1, ts, K) - l0
    q = int(np.argmax(vals))
    return float(vals[q]), float(ts[q])


def smooth_loglik(X, y, beta0, beta1, a, b, v, K, tau):
    """The smoothed-selection log-likelihood: membership sigmoid((s_i - c) / tau), c the
    midpoint of the K-th and (K+1)-th largest scores (no smoothing when K = k)."""
    from scipy.special import log_expit, logsumexp

    s = X @ beta1.T
    k = s.shape[1]
    lm = 0.0
    if K < k:
        srt = np.sort(s, axis=1)
        c = 0.5 * (srt[:, k - K] + srt[:, k - K - 1])
        lm = log_expit((s - c[:, None]) / tau)
    eta = s + beta0 + lm
    logn = -0.5 * (np.log(2 * np.pi * v) + (y[:, None] - (X @ a.T + b)) ** 2 / v)
    return float((logsumexp(eta + logn, axis=1) - logsumexp(eta, axis=1)).sum())
