"""Numba kernels of exact line scans over the piecewise-smooth log-likelihood.

Along a line ``theta(t) = theta + t * delta`` that moves only the gating parameters
(``dbeta0``, ``dbeta1``; the expert parameters fixed) the score of expert i at x_n is linear in t,
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
``dbeta1`` (k, d)); the scans are along gating-only lines (the expert parameters fixed),
which are the lines the certificates need.

Kernels are plain Python under ``NUMBA_DISABLE_JIT=1`` (coverage runs them that way).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from simstudy.model.kernels import LOG_2PI, _gating_blocks, vexp, vlog

__all__ = ["MAX_EXPERTS", "selection_mask", "line_breaks", "line_nodes", "line_events",
           "line_logdensity", "boundary_pairs", "smooth_loglik_grad", "warm_up"]

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
def _point_line(X, nn, yv, beta0, beta1, a, b, v, dbeta0, dbeta1, s, u, eta, deta, logd):
    """Per-expert line coefficients of point ``nn``: scores s and their slopes u, logits eta
    and their slopes deta, and the log expert densities ``logd``."""
    k, d = beta1.shape
    for i in range(k):
        si = 0.0
        ui = 0.0
        mi = b[i]
        for t in range(d):
            xt = X[nn, t]
            si += beta1[i, t] * xt
            ui += dbeta1[i, t] * xt
            mi += a[i, t] * xt
        s[i] = si
        u[i] = ui
        eta[i] = si + beta0[i]
        deta[i] = ui + dbeta0[i]
        r = yv - mi
        logd[i] = -0.5 * (LOG_2PI + math.log(v[i]) + r * r / v[i])


@njit(cache=True, nogil=True)
def _line_lp(t, mask, eta, deta, logd):
    """log p_n(t) with the selection ``mask`` held, along a gating-only line:
    log sum_S w_i(t) N_i, with w(t) the softmax of eta + t deta over S; a log-sum-exp in
    full when the weighted densities underflow."""
    k = eta.shape[0]
    m = -np.inf
    md = -np.inf
    for i in range(k):
        if (mask >> i) & 1:
            et = eta[i] + t * deta[i]
            if et > m:
                m = et
            if logd[i] > md:
                md = logd[i]
    num = 0.0
    den = 0.0
    for i in range(k):
        if (mask >> i) & 1:
            w = math.exp(eta[i] + t * deta[i] - m)
            num += w * math.exp(logd[i] - md)
            den += w
    if num > 0.0:
        return md + math.log(num / den)
    m2 = -np.inf
    for i in range(k):
        if (mask >> i) & 1:
            lj = eta[i] + t * deta[i] - m + logd[i]
            if lj > m2:
                m2 = lj
    acc = 0.0
    for i in range(k):
        if (mask >> i) & 1:
            acc += math.exp(eta[i] + t * deta[i] - m + logd[i] - m2)
    return m2 + math.log(acc) - math.log(den)


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
        # the first selection change on a side is a crossing of a selected and an unselected
        # score: without one in reach the point has no event on that side
        umax = 0.0
        for i in range(k):
            umax = max(umax, abs(u[i]))
        par = 1e-12 * umax
        right = False
        left = False
        for i in range(k):
            if not (mask0 >> i) & 1:
                continue
            for j in range(k):
                if (mask0 >> j) & 1:
                    continue
                du = u[j] - u[i]  # the unselected j gains du per unit t on the selected i
                gap = s[i] - s[j]  # >= 0
                if du > par and gap < t_hi * du:
                    right = True
                elif du < -par and gap < t_lo * du:
                    left = True
        if right:
            count = _side_events(nn, s, u, K, 1.0, t_hi, cross, tmp, mask0, ev_pt, ev_t,
                                 ev_side, ev_before, ev_after, count, cap)
        if left:
            count = _side_events(nn, s, u, K, -1.0, t_lo, cross, tmp, mask0, ev_pt, ev_t,
                                 ev_side, ev_before, ev_after, count, cap)
    return count


#: points per block of the blocked node pass
BLOCK = 256
#: exponent argument that vexp maps to exactly 0 (an unselected expert)
_OFF = -1000.0


@njit(cache=True, nogil=True, error_model="numpy")
def line_nodes(X, y, beta0, beta1, a, b, v, K, dbeta0, dbeta1, nodes, out):
    """``out[m] = sum_n l_n(nodes[m]; S_n(0)) - l_n(0; S_n(0))`` (selections held at t = 0)
    along the gating-only line (dbeta0, dbeta1). ``out`` is zeroed first; returns l(0).

    Blocked: per block of points the selections and expert densities are computed once, then
    every node costs k vectorised exponentials and one logarithm per point
    (:func:`simstudy.model.kernels.vexp`); a point whose weighted densities all underflow takes the
    scalar log-sum-exp path.
    """
    n, d = X.shape
    k = beta0.shape[0]
    nm = nodes.shape[0]
    out[:] = 0.0
    s = np.empty(k)
    u = np.empty(k)
    eta = np.empty((k, BLOCK))
    deta = np.empty((k, BLOCK))
    dens = np.empty((k, BLOCK))
    logd = np.empty((k, BLOCK))
    sel = np.empty((k, BLOCK), dtype=np.bool_)
    lmax = np.empty(BLOCK)
    l0 = np.empty(BLOCK)
    ex = np.empty((k, BLOCK))
    num = np.empty(BLOCK)
    den = np.empty(BLOCK)
    mx = np.empty(BLOCK)
    e1 = np.empty(k)
    e2 = np.empty(k)
    e3 = np.empty(k)
    total = 0.0
    for n0 in range(0, n, BLOCK):
        nb = min(BLOCK, n - n0)
        for j in range(nb):
            nn = n0 + j
            lm = -np.inf
            _point_line(X, nn, y[nn], beta0, beta1, a, b, v, dbeta0, dbeta1, s, u, e1, e2, e3)
            for i in range(k):
                eta[i, j] = e1[i]
                deta[i, j] = e2[i]
                logd[i, j] = e3[i]
            mask = selection_mask(s, K)
            for i in range(k):
                on = (mask >> i) & 1
                sel[i, j] = on
                if on and logd[i, j] > lm:
                    lm = logd[i, j]
            lmax[j] = lm
            # densities relative to the best selected one (the largest is exactly 1)
            for i in range(k):
                dens[i, j] = logd[i, j] - lm if sel[i, j] else _OFF
        for i in range(k):
            vexp(dens[i], nb)
        for m in range(-1, nm):
            t = 0.0 if m < 0 else nodes[m]
            for j in range(nb):
                mx[j] = -np.inf
            for i in range(k):
                for j in range(nb):
                    et = eta[i, j] + t * deta[i, j]
                    ex[i, j] = et
                    if sel[i, j] and et > mx[j]:
                        mx[j] = et
            for i in range(k):
                for j in range(nb):
                    ex[i, j] = ex[i, j] - mx[j] if sel[i, j] else _OFF
                vexp(ex[i], nb)
            for j in range(nb):
                num[j] = 0.0
                den[j] = 0.0
            for i in range(k):
                for j in range(nb):
                    num[j] += ex[i, j] * dens[i, j]
                    den[j] += ex[i, j]
            for j in range(nb):
                if num[j] > 0.0:
                    num[j] = num[j] / den[j]
                else:
                    num[j] = 1.0
            vlog(num, nb)
            for j in range(nb):
                if ex_underflow(ex, dens, sel, j, k):
                    for i in range(k):
                        e1[i] = eta[i, j]
                        e2[i] = deta[i, j]
                        e3[i] = logd[i, j]
                    num[j] = _line_lp(t, _mask_of(sel, j, k), e1, e2, e3)
                else:
                    num[j] += lmax[j]
            if m < 0:
                for j in range(nb):
                    l0[j] = num[j]
                    total += num[j]
            else:
                acc = 0.0
                for j in range(nb):
                    acc += num[j] - l0[j]
                out[m] += acc
    return total


@njit(cache=True, nogil=True)
def ex_underflow(ex, dens, sel, j, k):
    """True when every selected expert's weighted density of point j underflowed to 0."""
    for i in range(k):
        if sel[i, j] and ex[i, j] * dens[i, j] > 0.0:
            return False
    return True


@njit(cache=True, nogil=True)
def _mask_of(sel, j, k):
    mask = np.int64(0)
    for i in range(k):
        if sel[i, j]:
            mask |= np.int64(1) << i
    return mask


@njit(cache=True, nogil=True)
def line_events(X, y, beta0, beta1, a, b, v, dbeta0, dbeta1, nodes, ev_pt, ev_before,
                ev_after, out):
    """``out[e, m] = l_n(nodes[m]; after_e) - l_n(nodes[m]; before_e)`` for each event e
    (n = ``ev_pt[e]``): the change an event makes to the log-likelihood, as a function of t."""
    k = beta0.shape[0]
    nm = nodes.shape[0]
    ne = ev_pt.shape[0]
    s = np.empty(k)
    u = np.empty(k)
    eta = np.empty(k)
    deta = np.empty(k)
    logd = np.empty(k)
    for q in range(ne):
        nn = ev_pt[q]
        _point_line(X, nn, y[nn], beta0, beta1, a, b, v, dbeta0, dbeta1, s, u, eta, deta,
                    logd)
        for m in range(nm):
            t = nodes[m]
            out[q, m] = (_line_lp(t, ev_after[q], eta, deta, logd)
                         - _line_lp(t, ev_before[q], eta, deta, logd))


@njit(cache=True, nogil=True)
def line_logdensity(X, y, beta0, beta1, a, b, v, dbeta0, dbeta1, t, nn, mask):
    """log p(y_n | x_n) at ``(beta0 + t dbeta0, beta1 + t dbeta1)`` with the selection
    ``mask`` held (tests)."""
    k = beta0.shape[0]
    s = np.empty(k)
    u = np.empty(k)
    eta = np.empty(k)
    deta = np.empty(k)
    logd = np.empty(k)
    _point_line(X, nn, y[nn], beta0, beta1, a, b, v, dbeta0, dbeta1, s, u, eta, deta, logd)
    return _line_lp(t, mask, eta, deta, logd)


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


@njit(cache=True, nogil=True)
def _log_sigmoid(z):
    if z >= 0.0:
        return -math.log1p(math.exp(-z))
    return z - math.log1p(math.exp(z))


@njit(cache=True, nogil=True)
def smooth_loglik_grad(X, y, beta0, beta1, a, b, v, K, ref, tau, grad):
    """Smoothed-selection log-likelihood and its gradient in the free parameters.

    The hard top-K membership is replaced by m_i(x) = sigmoid((s_i - c(x)) / tau) with c(x)
    the midpoint of the K-th and (K+1)-th largest scores: every expert enters the softmax with
    logit eta_i = s_i + beta0_i + log m_i, and l_n = LSE(eta + log N) - LSE(eta). As tau -> 0
    this tends to the top-K likelihood; at tau > 0 it is smooth in the slopes and its gradient
    carries the "boundary force" that the held-active-set gradient misses. ``grad`` (n_free,
    kernels order) is zeroed first; with K = k the membership is 1 (the dense likelihood).
    """
    n, d = X.shape
    k = beta0.shape[0]
    p = d + 1
    ng = (k - 1) * p
    grad[:] = 0.0
    logv = np.log(v)
    s = np.empty(k)
    srt = np.empty(k)
    eta = np.empty(k)
    lj = np.empty(k)
    res = np.empty(k)
    sg = np.empty(k)
    blk = _gating_blocks(k, p, ref)
    total = 0.0
    for nn in range(n):
        for i in range(k):
            acc = 0.0
            for t in range(d):
                acc += beta1[i, t] * X[nn, t]
            s[i] = acc
            srt[i] = acc
        ia = -1
        ib = -1
        c = 0.0
        if K < k:
            _sort_inplace(srt, k)  # ascending: the K-th largest is srt[k - K]
            c = 0.5 * (srt[k - K] + srt[k - K - 1])
            # the experts whose scores make the midpoint (first match of each value)
            for i in range(k):
                if ia < 0 and s[i] == srt[k - K]:
                    ia = i
            for i in range(k):
                if ib < 0 and i != ia and s[i] == srt[k - K - 1]:
                    ib = i
        m1 = -np.inf
        m2 = -np.inf
        for i in range(k):
            e = s[i] + beta0[i]
            if K < k:
                z = (s[i] - c) / tau
                e += _log_sigmoid(z)
                sg[i] = 1.0 / (1.0 + math.exp(z)) / tau  # d log m_i / d s_i = sigmoid(-z) / tau
            mu = b[i]
            for t in range(d):
                mu += a[i, t] * X[nn, t]
            r = y[nn] - mu
            res[i] = r
            eta[i] = e
            lj[i] = e - 0.5 * (LOG_2PI + logv[i] + r * r / v[i])
            if e > m1:
                m1 = e
            if lj[i] > m2:
                m2 = lj[i]
        sw = 0.0
        sr = 0.0
        for i in range(k):
            eta[i] = math.exp(eta[i] - m1)
            lj[i] = math.exp(lj[i] - m2)
            sw += eta[i]
            sr += lj[i]
        total += (m2 + math.log(sr)) - (m1 + math.log(sw))
        # dl / d eta_i = r_i - w_i; the midpoint c moves with the scores of ia and ib
        dc = 0.0
        for i in range(k):
            ri = lj[i] / sr
            wi = eta[i] / sw
            lj[i] = ri
            eta[i] = ri - wi  # now dl / d eta_i
            if K < k:
                dc -= eta[i] * sg[i]
        for i in range(k):
            ds = eta[i]
            if K < k:
                ds += eta[i] * sg[i]
                if i == ia or i == ib:
                    ds += 0.5 * dc
            bj = blk[i]
            if bj >= 0:
                for t in range(d):
                    grad[bj + t] += ds * X[nn, t]
                grad[bj + d] += eta[i]
            ri = lj[i]
            ce = ri * res[i] / v[i]
            gb = ng + i * p
            for t in range(d):
                grad[gb + t] += ce * X[nn, t]
            grad[gb + d] += ce
            grad[ng + k * p + i] += 0.5 * ri * (res[i] * res[i] / v[i] - 1.0)
    return total


def warm_up(d=1, k=3, K=2):
    """Compile (or load from the numba cache) every kernel of this module on tiny inputs."""
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (8, d))
    y = rng.normal(size=8)
    beta0, beta1 = np.zeros(k), rng.normal(size=(k, d))
    beta1[0] = 0.0
    a, b, v = rng.normal(size=(k, d)), np.zeros(k), np.ones(k)
    db0, db1 = np.zeros(k), rng.normal(size=(k, d))
    ev = (np.empty(64, dtype=np.int64), np.empty(64), np.empty(64, dtype=np.int8),
          np.empty(64, dtype=np.int64), np.empty(64, dtype=np.int64))
    count = min(line_breaks(X, beta1, db1, K, -1.0, 1.0, *ev), 64)
    nodes = np.array([-0.5, 0.5])
    line_nodes(X, y, beta0, beta1, a, b, v, K, db0, db1, nodes, np.empty(2))
    line_events(X, y, beta0, beta1, a, b, v, db0, db1, nodes, ev[0][:count], ev[3][:count],
                ev[4][:count], np.empty((count, 2)))
    out = [np.empty(8, dtype=np.int64) for _ in range(3)]
    boundary_pairs(X, beta1, K, 1e-9, *out)
    grad = np.empty((k - 1) * (d + 1) + k * (d + 1) + k)
    smooth_loglik_grad(X, y, beta0, beta1, a, b, v, K, 0, 0.1, grad)
