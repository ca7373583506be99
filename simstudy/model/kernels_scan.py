"""Numba kernels of exact line scans over the piecewise-smooth log-likelihood.

Along a line ``theta(t) = theta + t * delta`` the score of expert i at x_n is linear in t,
``s_i(t) = s_i + t u_i`` with ``u_i = dbeta1_i . x_n``, so a point's top-K set S_n(t) changes
only at the t where two scores cross. Between such breakpoints the log-likelihood is smooth
(analytic) in t; at a breakpoint it jumps by the change of that point's log-density. The
kernels here give the pieces needed to scan such a line exactly:

* :func:`line_breaks`: every point's selection changes ("events") on ``[t_lo, t_hi]``: the
  time, the point, and the selection before and after (bit masks), moving away from t = 0 on
  each side (events with t < 0 are met going left);
* :func:`line_nodes`: the sum over all points of ``l_n(t; S_n(0)) - l_n(0; S_n(0))`` at given
  nodes, the selection held at t = 0 (an analytic function of t, interpolated by the caller);
* :func:`line_events`: for each event, ``l_n(t; after) - l_n(t; before)`` at the nodes;
* :func:`boundary_pairs`: the points that lie on a region boundary (the active linear
  constraints of the current selection piece).

Selections are bit masks (expert i selected <=> bit i set), so k <= 62. The tie rule is the
model's: equal scores go to the lower index. Conventions of the arrays are those of
:mod:`simstudy.model.kernels`; the direction is given per parameter block (``dbeta0`` (k,),
``dbeta1`` (k, d), ``da`` (k, d), ``db`` (k,), ``dlogv`` (k,), log-variance scale).

Kernels are plain Python under ``NUMBA_DISABLE_JIT=1`` (coverage runs them that way).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from simstudy.model.kernels import LOG_2PI

__all__ = ["MAX_EXPERTS", "selection_mask", "line_breaks", "line_nodes", "line_events",
           "line_logdensity", "boundary_pairs"]

#: selections are int64 bit masks
MAX_EXPERTS = 62


@njit(cache=True, nogil=True)
def selection_mask(s, K):
    """Bit mask of the K largest entries of ``s`` (ties to the lower index)."""
    k = s.shape[0]
    if K >= k:
        return (np.int64(1) << k) - 1
    mask = np.int64(0)
    for i in range(k):
        beaten = 0
        si = s[i]
        for j in range(k):
            if s[j] > si or (s[j] == si and j < i):
                beaten += 1
        if beaten < K:
            mask |= np.int64(1) << i
    return mask


@njit(cache=True, nogil=True)
def _point_line(X, nn, yv, beta0, beta1, a, b, v, dbeta0, dbeta1, da, db, s, u, eta, deta,
                e, dmu):
    """Per-expert line coefficients of point ``nn``: scores and their slopes, logits and
    their slopes, residuals and the slopes of the means."""
    k, d = beta1.shape
    for i in range(k):
        si = 0.0
        ui = 0.0
        mi = b[i]
        dmi = db[i]
        for t in range(d):
            xt = X[nn, t]
            si += beta1[i, t] * xt
            ui += dbeta1[i, t] * xt
            mi += a[i, t] * xt
            dmi += da[i, t] * xt
        s[i] = si
        u[i] = ui
        eta[i] = si + beta0[i]
        deta[i] = ui + dbeta0[i]
        e[i] = yv - mi
        dmu[i] = dmi


@njit(cache=True, nogil=True)
def _line_lp(t, mask, eta, deta, e, dmu, lv, dlv):
    """log p_n(t) with the selection ``mask`` held: log-sum-exp of the joints minus that of
    the logits, both over the selected experts."""
    k = eta.shape[0]
    m1 = -np.inf
    m2 = -np.inf
    for i in range(k):
        if (mask >> i) & 1:
            et = eta[i] + t * deta[i]
            lvt = lv[i] + t * dlv[i]
            r = e[i] - t * dmu[i]
            lj = et - 0.5 * (LOG_2PI + lvt + r * r * math.exp(-lvt))
            if et > m1:
                m1 = et
            if lj > m2:
                m2 = lj
    s1 = 0.0
    s2 = 0.0
    for i in range(k):
        if (mask >> i) & 1:
            et = eta[i] + t * deta[i]
            lvt = lv[i] + t * dlv[i]
            r = e[i] - t * dmu[i]
            lj = et - 0.5 * (LOG_2PI + lvt + r * r * math.exp(-lvt))
            s1 += math.exp(et - m1)
            s2 += math.exp(lj - m2)
    return (m2 + math.log(s2)) - (m1 + math.log(s1))


@njit(cache=True, nogil=True)
def _mask_at(s, u, t, K, tmp):
    k = s.shape[0]
    for i in range(k):
        tmp[i] = s[i] + t * u[i]
    return selection_mask(tmp, K)


@njit(cache=True, nogil=True)
def _sort_inplace(vals, m):
    for i in range(1, m):
        x = vals[i]
        j = i - 1
        while j >= 0 and vals[j] > x:
            vals[j + 1] = vals[j]
            j -= 1
        vals[j + 1] = x


@njit(cache=True, nogil=True)
def _side_events(nn, s, u, K, sign, t_end, cross, tmp, mask0, ev_pt, ev_t, ev_side, ev_before,
                 ev_after, count, cap):
    """Events of one point on one side (sign +1: t in [0, t_end); -1: t in (t_end, 0]).

    Crossing times are sorted by their distance from 0; the selection after a crossing is
    read at the midpoint to the next distinct crossing (or to the end), so that coincident
    crossings make one event and the selections are those of the open pieces."""
    k = s.shape[0]
    m = 0
    umax = 0.0
    for i in range(k):
        umax = max(umax, abs(u[i]))
    # scores moving in parallel up to rounding (a point kept on an active face) never cross
    par = 1e-12 * umax
    for i in range(k):
        for j in range(i + 1, k):
            du = u[i] - u[j]
            if abs(du) > par:
                tc = (s[j] - s[i]) / du
                if sign * tc >= 0.0 and sign * tc < sign * t_end:
                    cross[m] = sign * tc  # distances from 0, sorted ascending below
                    m += 1
    if m == 0:
        return count
    _sort_inplace(cross, m)
    prev = mask0
    dist_end = sign * t_end
    r = 0
    while r < m:
        c = cross[r]
        q = r + 1
        while q < m and cross[q] == c:
            q += 1
        nxt = cross[q] if q < m else dist_end
        cur = _mask_at(s, u, sign * 0.5 * (c + nxt), K, tmp)
        if cur != prev:
            if count < cap:
                ev_pt[count] = nn
                ev_t[count] = sign * c
                ev_side[count] = np.int8(1) if sign > 0 else np.int8(-1)
                ev_before[count] = prev
                ev_after[count] = cur
            count += 1
            prev = cur
        r = q
    return count


@njit(cache=True, nogil=True)
def line_breaks(X, beta1, dbeta1, K, t_lo, t_hi, ev_pt, ev_t, ev_side, ev_before, ev_after):
    """Selection changes of every point on ``(t_lo, t_hi)`` (``t_lo <= 0 <= t_hi``).

    Each event is (point ``ev_pt``, time ``ev_t``, side ``ev_side`` (+1: met moving right
    from 0, -1: moving left), selection ``ev_before`` on the side nearer to t = 0, selection
    ``ev_after`` beyond it). An event at exactly t = 0 (a point on a boundary) can occur on
    both sides. The selection at t = 0 itself is the model's (ties to the lower index).
    Fills at most ``len(ev_pt)`` events and returns the total number found (call again with
    larger arrays when it exceeds the capacity).
    """
    n, d = X.shape
    k = beta1.shape[0]
    cap = ev_pt.shape[0]
    s = np.empty(k)
    u = np.empty(k)
    tmp = np.empty(k)
    cross = np.empty(k * (k - 1) // 2 + 1)
    count = 0
    for nn in range(n):
        for i in range(k):
            si = 0.0
            ui = 0.0
            for t in range(d):
                si += beta1[i, t] * X[nn, t]
                ui += dbeta1[i, t] * X[nn, t]
            s[i] = si
            u[i] = ui
        mask0 = selection_mask(s, K)
        if t_hi > 0.0:
            count = _side_events(nn, s, u, K, 1.0, t_hi, cross, tmp, mask0, ev_pt, ev_t,
                                 ev_side, ev_before, ev_after, count, cap)
        if t_lo < 0.0:
            count = _side_events(nn, s, u, K, -1.0, t_lo, cross, tmp, mask0, ev_pt, ev_t,
                                 ev_side, ev_before, ev_after, count, cap)
    return count


@njit(cache=True, nogil=True)
def line_nodes(X, y, beta0, beta1, a, b, v, K, dbeta0, dbeta1, da, db, dlogv, nodes, out):
    """``out[m] = sum_n l_n(nodes[m]; S_n(0)) - l_n(0; S_n(0))`` (selections held at t = 0).

    ``out`` (len(nodes),) is zeroed first. Returns the log-likelihood at t = 0.
    """
    n = X.shape[0]
    k = beta0.shape[0]
    nm = nodes.shape[0]
    out[:] = 0.0
    lv = np.log(v)
    s = np.empty(k)
    u = np.empty(k)
    eta = np.empty(k)
    deta = np.empty(k)
    e = np.empty(k)
    dmu = np.empty(k)
    total = 0.0
    for nn in range(n):
        _point_line(X, nn, y[nn], beta0, beta1, a, b, v, dbeta0, dbeta1, da, db, s, u, eta,
                    deta, e, dmu)
        mask = selection_mask(s, K)
        l0 = _line_lp(0.0, mask, eta, deta, e, dmu, lv, dlogv)
        total += l0
        for m in range(nm):
            out[m] += _line_lp(nodes[m], mask, eta, deta, e, dmu, lv, dlogv) - l0
    return total


@njit(cache=True, nogil=True)
def line_events(X, y, beta0, beta1, a, b, v, dbeta0, dbeta1, da, db, dlogv, nodes, ev_pt,
                ev_before, ev_after, out):
    """``out[e, m] = l_n(nodes[m]; after_e) - l_n(nodes[m]; before_e)`` for each event e
    (n = ``ev_pt[e]``): the change an event makes to the log-likelihood, as a function of t."""
    k = beta0.shape[0]
    nm = nodes.shape[0]
    ne = ev_pt.shape[0]
    lv = np.log(v)
    s = np.empty(k)
    u = np.empty(k)
    eta = np.empty(k)
    deta = np.empty(k)
    e = np.empty(k)
    dmu = np.empty(k)
    for q in range(ne):
        nn = ev_pt[q]
        _point_line(X, nn, y[nn], beta0, beta1, a, b, v, dbeta0, dbeta1, da, db, s, u, eta,
                    deta, e, dmu)
        for m in range(nm):
            t = nodes[m]
            out[q, m] = (_line_lp(t, ev_after[q], eta, deta, e, dmu, lv, dlogv)
                         - _line_lp(t, ev_before[q], eta, deta, e, dmu, lv, dlogv))


@njit(cache=True, nogil=True)
def line_logdensity(X, y, beta0, beta1, a, b, v, dbeta0, dbeta1, da, db, dlogv, t, nn, mask):
    """log p(y_n | x_n) at ``theta + t delta`` with the selection ``mask`` held (tests)."""
    k = beta0.shape[0]
    s = np.empty(k)
    u = np.empty(k)
    eta = np.empty(k)
    deta = np.empty(k)
    e = np.empty(k)
    dmu = np.empty(k)
    _point_line(X, nn, y[nn], beta0, beta1, a, b, v, dbeta0, dbeta1, da, db, s, u, eta, deta,
                e, dmu)
    return _line_lp(t, mask, eta, deta, e, dmu, np.log(v), dlogv)


@njit(cache=True, nogil=True)
def boundary_pairs(X, beta1, K, atol, out_pt, out_i, out_j):
    """Points lying on a region boundary: selected i, unselected j with s_i - s_j <= atol.

    Each such (point, i, j) is a linear constraint (beta1_i - beta1_j) . x_n >= 0 of the
    current selection piece that is active (or nearly so). Fills at most ``len(out_pt)``
    triples and returns the number found. With K = k nothing is ever unselected.
    """
    n, d = X.shape
    k = beta1.shape[0]
    cap = out_pt.shape[0]
    s = np.empty(k)
    count = 0
    if K >= k:
        return 0
    for nn in range(n):
        for i in range(k):
            acc = 0.0
            for t in range(d):
                acc += beta1[i, t] * X[nn, t]
            s[i] = acc
        mask = selection_mask(s, K)
        for i in range(k):
            if not (mask >> i) & 1:
                continue
            for j in range(k):
                if (mask >> j) & 1:
                    continue
                if s[i] - s[j] <= atol:
                    if count < cap:
                        out_pt[count] = nn
                        out_i[count] = i
                        out_j[count] = j
                    count += 1
    return count
