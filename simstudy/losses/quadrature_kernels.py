"""Numba kernel of the density distances: one fused pass over the quadrature panels.

Fusing the pdf evaluations, the Hellinger sum and the crossing search of ``p - q`` avoids the
large temporaries of the vectorised form. Valid plain Python under ``NUMBA_DISABLE_JIT=1``.
"""

from __future__ import annotations

import math

from numba import njit

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_BISECT_STEPS = 12


@njit(cache=True)
def _pdf(y, coef, mu, isd, i):
    """sum_c exp(coef[i, c] - z^2 / 2), z = (y - mu[i, c]) isd[i, c]."""
    s = 0.0
    for c in range(coef.shape[1]):
        z = (y - mu[i, c]) * isd[i, c]
        s += math.exp(coef[i, c] - 0.5 * z * z)
    return s


@njit(cache=True)
def _cdf(y, w, mu, isd, i):
    """sum_c w[i, c] Phi((y - mu[i, c]) isd[i, c])."""
    s = 0.0
    for c in range(w.shape[1]):
        s += w[i, c] * 0.5 * math.erfc(-(y - mu[i, c]) * isd[i, c] * _INV_SQRT2)
    return s


@njit(cache=True)
def _crossing(a, b, fa, fb, i, coef_p, mu_p, isd_p, coef_q, mu_q, isd_q):
    """Root of p - q in [a, b] (fa, fb of opposite signs): bisection, then one secant step."""
    for _ in range(_BISECT_STEPS):
        c = 0.5 * (a + b)
        fc = _pdf(c, coef_p, mu_p, isd_p, i) - _pdf(c, coef_q, mu_q, isd_q, i)
        if (fc > 0.0) == (fa > 0.0) and fc != 0.0:
            a, fa = c, fc
        else:
            b, fb = c, fc
    # fa != 0 always and fb is 0 or of the other sign, so fb - fa != 0
    r = a - fa * (b - a) / (fb - fa)
    return min(max(r, a), b)


@njit(cache=True)
def distances_kernel(
    px, left, width, t, gw, coef_p, mu_p, isd_p, w_p, coef_q, mu_q, isd_q, w_q, h2, tv
):
    """Accumulate ``int (sqrt p - sqrt q)^2`` into ``h2`` and ``int |p - q|`` into ``tv``.

    Panels ``(px, left, width)`` are sorted by x index ``px`` then by y. Per x, the crossings
    ``r_1 < ... < r_R`` of ``p - q`` (sign changes between successive non-zero node values)
    split the line into segments, and ``int |p - q| = sum_s |D(r_{s+1}) - D(r_s)|`` with
    ``D = F_p - F_q`` and ``D(-inf) = D(inf) = 0``. The caller halves both outputs.
    """
    cur = -1
    d_prev = 0.0
    prev_y = 0.0
    prev_f = 0.0
    have_prev = False
    for k in range(px.shape[0]):
        i = px[k]
        if i != cur:
            if cur >= 0:
                tv[cur] += abs(d_prev)
            cur = i
            d_prev = 0.0
            have_prev = False
        acc = 0.0
        for n in range(t.shape[0]):
            y = left[k] + width[k] * t[n]
            p = _pdf(y, coef_p, mu_p, isd_p, i)
            q = _pdf(y, coef_q, mu_q, isd_q, i)
            e = math.sqrt(p) - math.sqrt(q)
            acc += gw[n] * e * e
            f = p - q
            # zeros (both densities underflowed) carry no sign: skipping them keeps a crossing
            # through an underflow gap between separated components bracketed
            if f != 0.0:
                if have_prev and (f > 0.0) != (prev_f > 0.0):
                    r = _crossing(prev_y, y, prev_f, f, i, coef_p, mu_p, isd_p, coef_q, mu_q, isd_q)
                    d = _cdf(r, w_p, mu_p, isd_p, i) - _cdf(r, w_q, mu_q, isd_q, i)
                    tv[i] += abs(d - d_prev)
                    d_prev = d
                prev_y = y
                prev_f = f
                have_prev = True
        h2[i] += width[k] * acc
    if cur >= 0:
        tv[cur] += abs(d_prev)
