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
def _pdf_slope(y, coef, mu, isd, i):
    """Mixture density at y and its derivative: terms exp(coef - z^2 / 2), z = (y - mu) isd."""
    s = 0.0
    ds = 0.0
    for c in range(coef.shape[1]):
        z = (y - mu[i, c]) * isd[i, c]
        e = math.exp(coef[i, c] - 0.5 * z * z)
        s += e
        ds -= e * z * isd[i, c]
    return s, ds


@njit(cache=True)
def _diff(y, i, coef_p, mu_p, isd_p, coef_q, mu_q, isd_q):
    """(p - q)(y) and its derivative."""
    p, dp = _pdf_slope(y, coef_p, mu_p, isd_p, i)
    q, dq = _pdf_slope(y, coef_q, mu_q, isd_q, i)
    return p - q, dp - dq


@njit(cache=True)
def _cdf(y, w, mu, isd, i):
    """sum_c w[i, c] Phi((y - mu[i, c]) isd[i, c])."""
    s = 0.0
    for c in range(w.shape[1]):
        s += w[i, c] * 0.5 * math.erfc(-(y - mu[i, c]) * isd[i, c] * _INV_SQRT2)
    return s


@njit(cache=True)
def _root(a, b, fa, fb, deriv, i, coef_p, mu_p, isd_p, coef_q, mu_q, isd_q):
    """Zero in [a, b] of p - q (deriv False) or of its derivative (deriv True).

    ``fa`` is non-zero and ``fb`` is zero or of the other sign. Bisection, then one secant step
    inside the final bracket.
    """
    for _ in range(_BISECT_STEPS):
        c = 0.5 * (a + b)
        f, df = _diff(c, i, coef_p, mu_p, isd_p, coef_q, mu_q, isd_q)
        fc = df if deriv else f
        if (fc > 0.0) == (fa > 0.0) and fc != 0.0:
            a, fa = c, fc
        else:
            b, fb = c, fc
    r = a - fa * (b - a) / (fb - fa)  # fb - fa != 0: fa != 0, fb is 0 or of the other sign
    return min(max(r, a), b)


@njit(cache=True)
def distances_kernel(
    px, left, width, t, gw, coef_p, mu_p, isd_p, w_p, coef_q, mu_q, isd_q, w_q, h2, tv
):
    """Accumulate ``int (sqrt p - sqrt q)^2`` into ``h2`` and ``int |p - q|`` into ``tv``.

    Panels ``(px, left, width)`` are sorted by x index ``px`` then by y. Per x, the crossings
    ``r_1 < ... < r_R`` of ``p - q`` split the line into segments, and
    ``int |p - q| = sum_s |D(r_{s+1}) - D(r_s)|`` with ``D = F_p - F_q`` and
    ``D(-inf) = D(inf) = 0``. A crossing is a sign change between successive non-zero node
    values; between two nodes of equal sign where ``|p - q|`` falls then rises (from the
    derivatives), the minimum is located and, if ``p - q`` changes sign there, the pair of
    close crossings is added. The caller halves both outputs.
    """
    cur = -1
    d_prev = 0.0
    prev_y = 0.0
    prev_f = 0.0
    prev_df = 0.0
    have_prev = False
    args = (coef_p, mu_p, isd_p, coef_q, mu_q, isd_q)
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
            p, dp = _pdf_slope(y, coef_p, mu_p, isd_p, i)
            q, dq = _pdf_slope(y, coef_q, mu_q, isd_q, i)
            e = math.sqrt(p) - math.sqrt(q)
            acc += gw[n] * e * e
            f = p - q
            df = dp - dq
            # zeros (both densities underflowed) carry no sign: skipping them keeps a crossing
            # through an underflow gap between separated components bracketed
            if f == 0.0:
                continue
            if have_prev:
                if (f > 0.0) != (prev_f > 0.0):
                    r = _root(prev_y, y, prev_f, f, False, i, *args)
                    d = _cdf(r, w_p, mu_p, isd_p, i) - _cdf(r, w_q, mu_q, isd_q, i)
                    tv[i] += abs(d - d_prev)
                    d_prev = d
                elif prev_f * prev_df < 0.0 and f * df > 0.0:
                    c = _root(prev_y, y, prev_df, df, True, i, *args)
                    fc, _ = _diff(c, i, *args)
                    if fc != 0.0 and (fc > 0.0) != (f > 0.0):
                        for lo, hi, flo, fhi in ((prev_y, c, prev_f, fc), (c, y, fc, f)):
                            r = _root(lo, hi, flo, fhi, False, i, *args)
                            d = _cdf(r, w_p, mu_p, isd_p, i) - _cdf(r, w_q, mu_q, isd_q, i)
                            tv[i] += abs(d - d_prev)
                            d_prev = d
            prev_y = y
            prev_f = f
            prev_df = df
            have_prev = True
        h2[i] += width[k] * acc
    if cur >= 0:
        tv[cur] += abs(d_prev)
