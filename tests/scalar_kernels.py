"""The scalar numba kernels the vectorised ones replaced: references for tests and benchmarks.

These are the one-point-at-a-time passes of ``simstudy.model.kernels`` before the blocked
rewrite (issue 9), kept verbatim so the new kernels can be compared with them to round-off
(log-likelihood, statistics, gradient, Hessian) and so the benchmark can time them in the same
process. The file is self-contained (its own copies of the per-point helpers, which the
package's remaining scalar kernels ``e_step``, ``expert_stats``, ... also use): numba's cache
of a function is invalidated only by changes to its own file.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

LOG_2PI = math.log(2.0 * math.pi)

__all__ = ["log_density_points", "loglik", "em_pass", "obs_grad", "obs_hess"]


@njit(cache=True)
def select_topk(s, K, active):
    """Mark in ``active`` (k,) the K largest entries of ``s`` (ties to the lower index).

    Expert i is selected when fewer than K experts beat it, where j beats i if
    ``s_j > s_i`` or (``s_j == s_i`` and ``j < i``). O(k^2), which is cheap for small k.
    """
    k = s.shape[0]
    if K >= k:
        for i in range(k):
            active[i] = True
        return
    for i in range(k):
        beaten = 0
        si = s[i]
        for j in range(k):
            if s[j] > si or (s[j] == si and j < i):
                beaten += 1
        active[i] = beaten < K


@njit(cache=True)
def _point(X, nn, yv, beta0, beta1, a, b, logv, invv, K, s, active, ew, ej, res):
    """Everything one point needs, with two max-shifted log-sum-exps (2K exp, 2 log).

    Fills the active set, ``ew_i = exp(eta_i - max eta)`` (gating, 0 off the active set),
    ``ej_i = exp(lj_i - max lj)`` with ``lj_i = eta_i + log N(y; a_i.x + b_i, v_i)`` and the
    residuals ``res_i``. Returns ``(log p(y | x), sum ew, sum ej)``, so that the gating
    weights are ``ew / sum ew`` and the responsibilities ``ej / sum ej``.
    """
    k, d = beta1.shape
    for i in range(k):
        acc = 0.0
        for t in range(d):
            acc += beta1[i, t] * X[nn, t]
        s[i] = acc
    select_topk(s, K, active)
    m1 = -np.inf
    m2 = -np.inf
    for i in range(k):
        if active[i]:
            eta = s[i] + beta0[i]
            mu = b[i]
            for t in range(d):
                mu += a[i, t] * X[nn, t]
            e = yv - mu
            res[i] = e
            lj = eta - 0.5 * (LOG_2PI + logv[i] + e * e * invv[i])
            ew[i] = eta  # logits and log joints are kept until the shifts are known
            ej[i] = lj
            if eta > m1:
                m1 = eta
            if lj > m2:
                m2 = lj
    totw = 0.0
    totj = 0.0
    for i in range(k):
        if active[i]:
            ew[i] = math.exp(ew[i] - m1)
            ej[i] = math.exp(ej[i] - m2)
            totw += ew[i]
            totj += ej[i]
        else:
            ew[i] = 0.0
            ej[i] = 0.0
            res[i] = 0.0
    lp = (m2 + math.log(totj)) - (m1 + math.log(totw))
    return lp, totw, totj


@njit(cache=True)
def _scratch(k):
    return (
        np.empty(k),
        np.empty(k, dtype=np.bool_),
        np.empty(k),
        np.empty(k),
        np.empty(k),
    )


@njit(cache=True)
def _symmetrize_expert(XtX):
    k, p, _ = XtX.shape
    for i in range(k):
        for u in range(p):
            for w in range(u):
                XtX[i, u, w] = XtX[i, w, u]


@njit(cache=True)
def _symmetrize(H):
    m = H.shape[0]
    for u in range(m):
        for w in range(u):
            H[u, w] = H[w, u]


@njit(cache=True)
def log_density_points(X, y, beta0, beta1, a, b, v, K, out):
    """Fill ``out`` (n,) with log p(y_n | x_n)."""
    n = X.shape[0]
    k = beta0.shape[0]
    logv = np.log(v)
    invv = 1.0 / v
    s, active, ew, ej, res = _scratch(k)
    for nn in range(n):
        out[nn] = _point(X, nn, y[nn], beta0, beta1, a, b, logv, invv, K, s, active, ew, ej, res)[0]


@njit(cache=True)
def loglik(X, y, beta0, beta1, a, b, v, K):
    """Observed log-likelihood sum_n log p(y_n | x_n) (selection recomputed)."""
    n = X.shape[0]
    k = beta0.shape[0]
    logv = np.log(v)
    invv = 1.0 / v
    s, active, ew, ej, res = _scratch(k)
    total = 0.0
    for nn in range(n):
        total += _point(X, nn, y[nn], beta0, beta1, a, b, logv, invv, K, s, active, ew, ej, res)[0]
    return total


@njit(cache=True)
def _accumulate_expert_grad(X, nn, ri, e, i, invv, ng, grad):
    d = X.shape[1]
    p = d + 1
    k = invv.shape[0]
    c = ri * e * invv[i]
    base = ng + i * p
    for u in range(d):
        grad[base + u] += c * X[nn, u]
    grad[base + d] += c
    grad[ng + k * p + i] += 0.5 * ri * (e * e * invv[i] - 1.0)


@njit(cache=True)
def em_pass(X, y, beta0, beta1, a, b, v, K, ref, XtX, Xty, sr, syy, g, H, grad):
    """One fused pass: E-step and the statistics of both M-steps, responsibilities not stored.

    At the current parameters computes, per point, the responsibilities (top-K selection,
    log-sum-exp over the active set) and accumulates: the expert sufficient statistics
    (see :func:`expert_stats`), the gradient ``g`` and Hessian ``H`` of the gating Q with the
    active sets held (see :func:`gating_grad_hess`), and ``grad``, the gradient of the observed
    log-likelihood in all free parameters (see :func:`obs_grad`). All outputs are zeroed first.
    Returns the observed log-likelihood. The accumulations are written out per active expert
    (regressor z built once per point), which is about 1.7x faster than the generic helpers.
    """
    n, d = X.shape
    k = beta0.shape[0]
    p = d + 1
    ng = (k - 1) * p
    XtX[:] = 0.0
    Xty[:] = 0.0
    sr[:] = 0.0
    syy[:] = 0.0
    g[:] = 0.0
    H[:] = 0.0
    grad[:] = 0.0
    logv = np.log(v)
    invv = 1.0 / v
    s, active, ew, ej, res = _scratch(k)
    z = np.ones(p)
    # block index of every expert in the free gating parameters (-1 for the reference)
    blk = np.empty(k, dtype=np.int64)
    c0 = 0
    for i in range(k):
        if i == ref:
            blk[i] = -1
        else:
            blk[i] = c0 * p
            c0 += 1
    total = 0.0
    for nn in range(n):
        yv = y[nn]
        lp, totw, totj = _point(
            X, nn, yv, beta0, beta1, a, b, logv, invv, K, s, active, ew, ej, res
        )
        total += lp
        for t in range(d):
            z[t] = X[nn, t]
        iw = 1.0 / totw
        ij = 1.0 / totj
        for i in range(k):
            if not active[i]:
                continue
            wi = ew[i] * iw
            ri = ej[i] * ij
            # expert statistics and expert/variance gradient
            ei = res[i]
            ce = ri * ei * invv[i]
            gb = ng + i * p
            for u in range(p):
                rz = ri * z[u]
                Xty[i, u] += rz * yv
                grad[gb + u] += ce * z[u]
                for w in range(u, p):
                    XtX[i, u, w] += rz * z[w]
            sr[i] += ri
            syy[i] += ri * yv * yv
            grad[ng + k * p + i] += 0.5 * ri * (ei * ei * invv[i] - 1.0)
            # gating gradient and Hessian (upper triangle)
            bj = blk[i]
            if bj < 0:
                continue
            cj = ri - wi
            for u in range(p):
                g[bj + u] += cj * z[u]
            cd = wi * wi - wi
            for u in range(p):
                czu = cd * z[u]
                for q in range(u, p):
                    H[bj + u, bj + q] += czu * z[q]
            for l in range(i + 1, k):
                bl = blk[l]
                if bl < 0 or not active[l]:
                    continue
                c = wi * ew[l] * iw
                for u in range(p):
                    czu = c * z[u]
                    for q in range(p):
                        H[bj + u, bl + q] += czu * z[q]
    _symmetrize_expert(XtX)
    _symmetrize(H)
    for u in range(ng):
        grad[u] = g[u]
    return total


@njit(cache=True)
def obs_grad(X, y, beta0, beta1, a, b, v, K, ref, grad):
    """Gradient of the observed log-likelihood in the free parameters, active sets held.

    By Fisher's identity: gating block j: sum_n (r_nj - w_nj) z_n; expert block i:
    sum_n r_ni e_ni / v_i z_n with e = y - a_i.x - b_i; log-variance i:
    sum_n r_ni (e_ni^2 / v_i - 1) / 2. ``grad`` (n_free,) is zeroed first. Returns log-lik.
    """
    n, d = X.shape
    k = beta0.shape[0]
    p = d + 1
    ng = (k - 1) * p
    grad[:] = 0.0
    logv = np.log(v)
    invv = 1.0 / v
    s, active, ew, ej, res = _scratch(k)
    total = 0.0
    for nn in range(n):
        lp, totw, totj = _point(
            X, nn, y[nn], beta0, beta1, a, b, logv, invv, K, s, active, ew, ej, res
        )
        total += lp
        bj = 0
        for i in range(k):
            ri = ej[i] / totj
            if i != ref:
                if active[i]:
                    cj = ri - ew[i] / totw
                    for u in range(d):
                        grad[bj * p + u] += cj * X[nn, u]
                    grad[bj * p + d] += cj
                bj += 1
            if ri != 0.0:
                _accumulate_expert_grad(X, nn, ri, res[i], i, invv, ng, grad)
    return total


@njit(cache=True)
def obs_hess(X, y, beta0, beta1, a, b, v, K, ref, grad, H):
    """Gradient and exact Hessian of the observed log-likelihood, every active set held.

    Per point l = LSE_i(lj_i) - LSE_i(eta_i) over the active set, with eta_i the gating logit
    and lj_i = eta_i + log N(y; a_i.x + b_i, v_i). Each lj_i depends only on its own blocks
    (gating theta_i, expert phi_i, tau_i = log v_i), with gradient
    G_i = (z, (e_i / v_i) z, h_i), h_i = (e_i^2 / v_i - 1) / 2, and second derivatives
    d2/dphi2 = -z z' / v_i, d2/dphi dtau = -(e_i / v_i) z, d2/dtau2 = -e_i^2 / (2 v_i). So

        Hess l = sum_i r_i (Hess lj_i + G_i G_i') - Gbar Gbar' - sum_i w_i g_i g_i' + gbar gbar'

    with Gbar = sum_i r_i G_i and gbar = sum_i w_i g_i, g_i = (z, 0, 0). Fills ``grad``
    (n_free,) and ``H`` (n_free, n_free) in the order of :func:`obs_grad` (zeroed first) and
    returns the log-likelihood.
    """
    n, d = X.shape
    k = beta0.shape[0]
    p = d + 1
    ng = (k - 1) * p
    nf = ng + k * p + k
    grad[:] = 0.0
    H[:] = 0.0
    logv = np.log(v)
    invv = 1.0 / v
    s, active, ew, ej, res = _scratch(k)
    z = np.ones(p)
    U = np.zeros(nf)  # Gbar
    W = np.zeros(ng)  # gbar
    blk = np.empty(k, dtype=np.int64)
    c0 = 0
    for i in range(k):
        if i == ref:
            blk[i] = -1
        else:
            blk[i] = c0 * p
            c0 += 1
    total = 0.0
    for nn in range(n):
        lp, totw, totj = _point(
            X, nn, y[nn], beta0, beta1, a, b, logv, invv, K, s, active, ew, ej, res
        )
        total += lp
        for t in range(d):
            z[t] = X[nn, t]
        U[:] = 0.0
        W[:] = 0.0
        for i in range(k):
            if not active[i]:
                continue
            ri = ej[i] / totj
            wi = ew[i] / totw
            ev = res[i] * invv[i]
            hi = 0.5 * (res[i] * ev - 1.0)
            xb = ng + i * p
            ti = ng + k * p + i
            gb = blk[i]
            for u in range(p):
                U[xb + u] = ri * ev * z[u]
            U[ti] = ri * hi
            # the block-diagonal part r_i (Hess lj_i + G_i G_i') - w_i g_i g_i'
            cxx = ri * (ev * ev - invv[i])
            cxt = ri * ev * (hi - 1.0)
            for u in range(p):
                for q in range(u, p):
                    H[xb + u, xb + q] += cxx * z[u] * z[q]
                H[xb + u, ti] += cxt * z[u]
            H[ti, ti] += ri * (hi * hi - 0.5 * res[i] * ev)
            if gb < 0:
                continue
            for u in range(p):
                U[gb + u] = ri * z[u]
                W[gb + u] = wi * z[u]
            cgg = ri - wi
            cgx = ri * ev
            for u in range(p):
                for q in range(p):
                    if q >= u:
                        H[gb + u, gb + q] += cgg * z[u] * z[q]
                    H[gb + u, xb + q] += cgx * z[u] * z[q]
                H[gb + u, ti] += ri * hi * z[u]
        # the rank-two part -Gbar Gbar' + gbar gbar' (upper triangle)
        for u in range(nf):
            cu = U[u]
            wu = W[u] if u < ng else 0.0
            if cu == 0.0 and wu == 0.0:
                continue
            for q in range(u, nf):
                H[u, q] -= cu * U[q]
            if wu != 0.0:
                for q in range(u, ng):
                    H[u, q] += wu * W[q]
        for u in range(ng):
            grad[u] += U[u] - W[u]
        for u in range(ng, nf):
            grad[u] += U[u]
    _symmetrize(H)
    return total
