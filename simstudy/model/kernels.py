"""Numba kernels of the top-K sparse softmax gating Gaussian MoE (the EM hot loops).

Every kernel makes one pass over the data and keeps O(k) scratch memory per point (plus the
O(k^2 p^2) accumulators of the gating Hessian), so no (n, k, p) temporaries are built.

Conventions shared by all kernels
---------------------------------
* ``X`` (n, d) C-contiguous float64, ``y`` (n,), model arrays ``beta0`` (k,), ``beta1`` (k, d),
  ``a`` (k, d), ``b`` (k,), ``v`` (k,) variances, ``K`` the number of selected experts.
* Top-K selection uses ``s_i = beta1_i . x`` only; ties go to the lower index.
* The regressor of both the gating and the expert regressions is ``z = (x_1, ..., x_d, 1)``,
  so a gating block is ``(beta1_j, beta0_j)`` and an expert block is ``(a_i, b_i)``.
* Free parameters (for gradients): the gating blocks of every expert but ``ref`` in index
  order, then the expert blocks ``(a_i, b_i)`` of every expert, then ``log v_i`` of every
  expert. The variance enters on the log scale so the gradient is scale free.

Kernels are plain Python under ``NUMBA_DISABLE_JIT=1`` (coverage runs them that way).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = [
    "LOG_2PI",
    "n_gating_free",
    "n_free",
    "select_topk",
    "topk_mask",
    "log_density_points",
    "loglik",
    "e_step",
    "expert_stats",
    "gating_grad_hess",
    "em_pass",
    "obs_grad",
]

LOG_2PI = math.log(2.0 * math.pi)


@njit(cache=True)
def n_gating_free(k, d):
    """Number of free gating parameters: (k - 1) blocks of (beta1, beta0)."""
    return (k - 1) * (d + 1)


@njit(cache=True)
def n_free(k, d):
    """Number of free parameters: gating blocks, expert blocks (a, b), log variances."""
    return (k - 1) * (d + 1) + k * (d + 1) + k


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
def _gating_point(x, beta0, beta1, K, s, active, eta):
    """Fill scores ``s``, the active set and the logits ``eta``; return log-sum-exp of eta."""
    k, d = beta1.shape
    for i in range(k):
        acc = 0.0
        for t in range(d):
            acc += beta1[i, t] * x[t]
        s[i] = acc
        eta[i] = acc + beta0[i]
    select_topk(s, K, active)
    m = -np.inf
    for i in range(k):
        if active[i] and eta[i] > m:
            m = eta[i]
    acc = 0.0
    for i in range(k):
        if active[i]:
            acc += math.exp(eta[i] - m)
    return m + math.log(acc)


@njit(cache=True)
def _joint_point(x, yv, beta0, beta1, a, b, v, K, s, active, eta, lj, res):
    """Per-point log joint ``lj_i = log w_i + log N_i`` (active only) and residuals.

    Returns log p(y | x). ``res_i = y - a_i.x - b_i`` is filled for active experts.
    """
    k, d = a.shape
    lse = _gating_point(x, beta0, beta1, K, s, active, eta)
    m = -np.inf
    for i in range(k):
        if active[i]:
            mu = b[i]
            for t in range(d):
                mu += a[i, t] * x[t]
            e = yv - mu
            res[i] = e
            lj[i] = eta[i] - lse - 0.5 * (LOG_2PI + math.log(v[i]) + e * e / v[i])
            if lj[i] > m:
                m = lj[i]
        else:
            lj[i] = -np.inf
            res[i] = 0.0
    acc = 0.0
    for i in range(k):
        if active[i]:
            acc += math.exp(lj[i] - m)
    return m + math.log(acc)


@njit(cache=True)
def topk_mask(X, beta1, K, mask):
    """Fill the boolean ``mask`` (n, k) with the top-K active sets of ``beta1 @ x``."""
    n, d = X.shape
    k = beta1.shape[0]
    s = np.empty(k)
    active = np.empty(k, dtype=np.bool_)
    for nn in range(n):
        for i in range(k):
            acc = 0.0
            for t in range(d):
                acc += beta1[i, t] * X[nn, t]
            s[i] = acc
        select_topk(s, K, active)
        for i in range(k):
            mask[nn, i] = active[i]


@njit(cache=True)
def log_density_points(X, y, beta0, beta1, a, b, v, K, out):
    """Fill ``out`` (n,) with log p(y_n | x_n)."""
    n = X.shape[0]
    k = beta0.shape[0]
    s = np.empty(k)
    eta = np.empty(k)
    lj = np.empty(k)
    res = np.empty(k)
    active = np.empty(k, dtype=np.bool_)
    for nn in range(n):
        out[nn] = _joint_point(X[nn], y[nn], beta0, beta1, a, b, v, K, s, active, eta, lj, res)


@njit(cache=True)
def loglik(X, y, beta0, beta1, a, b, v, K):
    """Observed log-likelihood sum_n log p(y_n | x_n) (selection recomputed)."""
    n = X.shape[0]
    k = beta0.shape[0]
    s = np.empty(k)
    eta = np.empty(k)
    lj = np.empty(k)
    res = np.empty(k)
    active = np.empty(k, dtype=np.bool_)
    total = 0.0
    for nn in range(n):
        total += _joint_point(X[nn], y[nn], beta0, beta1, a, b, v, K, s, active, eta, lj, res)
    return total


@njit(cache=True)
def e_step(X, y, beta0, beta1, a, b, v, K, R, mask):
    """E-step: fill responsibilities ``R`` (n, k) and active sets ``mask``; return log-lik."""
    n = X.shape[0]
    k = beta0.shape[0]
    s = np.empty(k)
    eta = np.empty(k)
    lj = np.empty(k)
    res = np.empty(k)
    active = np.empty(k, dtype=np.bool_)
    total = 0.0
    for nn in range(n):
        lp = _joint_point(X[nn], y[nn], beta0, beta1, a, b, v, K, s, active, eta, lj, res)
        total += lp
        for i in range(k):
            mask[nn, i] = active[i]
            R[nn, i] = math.exp(lj[i] - lp) if active[i] else 0.0
    return total


@njit(cache=True)
def _accumulate_expert(x, yv, r, i, XtX, Xty, sr, syy):
    d = x.shape[0]
    for u in range(d + 1):
        zu = x[u] if u < d else 1.0
        Xty[i, u] += r * zu * yv
        for w in range(u, d + 1):
            zw = x[w] if w < d else 1.0
            XtX[i, u, w] += r * zu * zw
    sr[i] += r
    syy[i] += r * yv * yv


@njit(cache=True)
def _symmetrize_expert(XtX):
    k, p, _ = XtX.shape
    for i in range(k):
        for u in range(p):
            for w in range(u):
                XtX[i, u, w] = XtX[i, w, u]


@njit(cache=True)
def expert_stats(X, y, R, XtX, Xty, sr, syy):
    """Weighted sufficient statistics of the expert step, from responsibilities ``R``.

    Fills (zeroing first) ``XtX`` (k, p, p) = sum_n r_ni z z', ``Xty`` (k, p) = sum r z y,
    ``sr`` (k,) = sum r, ``syy`` (k,) = sum r y^2, with z = (x, 1) and p = d + 1.
    """
    n = X.shape[0]
    k = R.shape[1]
    XtX[:] = 0.0
    Xty[:] = 0.0
    sr[:] = 0.0
    syy[:] = 0.0
    for nn in range(n):
        for i in range(k):
            r = R[nn, i]
            if r != 0.0:
                _accumulate_expert(X[nn], y[nn], r, i, XtX, Xty, sr, syy)
    _symmetrize_expert(XtX)


@njit(cache=True)
def _accumulate_gating(x, r, w, active, ref, g, H):
    """Add one point to the gradient and Hessian of Q(beta) in the free gating parameters.

    Q_n = sum_i r_i log w_i with the point's active set held; dQ/dbeta_j = (r_j - w_j) z and
    d2Q/dbeta_j dbeta_l' = -(w_j 1[j=l] - w_j w_l) z z'. Only the upper triangle of H is
    accumulated (symmetrised afterwards).
    """
    k = w.shape[0]
    d = x.shape[0]
    p = d + 1
    bj = 0
    for j in range(k):
        if j == ref:
            continue
        if active[j]:
            cj = r[j] - w[j]
            for u in range(p):
                zu = x[u] if u < d else 1.0
                g[bj * p + u] += cj * zu
            bl = bj
            for l in range(j, k):
                if l == ref:
                    continue
                if active[l]:
                    c = w[j] * w[l]
                    if l == j:
                        c -= w[j]
                    for u in range(p):
                        zu = x[u] if u < d else 1.0
                        w0 = u if l == j else 0
                        for q in range(w0, p):
                            zq = x[q] if q < d else 1.0
                            H[bj * p + u, bl * p + q] += c * zu * zq
                bl += 1
        bj += 1


@njit(cache=True)
def _symmetrize(H):
    m = H.shape[0]
    for u in range(m):
        for w in range(u):
            H[u, w] = H[w, u]


@njit(cache=True)
def gating_grad_hess(X, R, mask, beta0, beta1, ref, g, H):
    """Gradient ``g`` and Hessian ``H`` of Q(beta) = sum_n sum_i r_ni log w_i(x_n; beta).

    Active sets are held at ``mask``; the free parameters are the (beta1_j, beta0_j) blocks
    of every expert but ``ref``. ``g`` and ``H`` are zeroed first. Returns Q.
    """
    n, d = X.shape
    k = beta0.shape[0]
    g[:] = 0.0
    H[:] = 0.0
    eta = np.empty(k)
    w = np.empty(k)
    active = np.empty(k, dtype=np.bool_)
    Q = 0.0
    for nn in range(n):
        m = -np.inf
        for i in range(k):
            active[i] = mask[nn, i]
            acc = beta0[i]
            for t in range(d):
                acc += beta1[i, t] * X[nn, t]
            eta[i] = acc
            if active[i] and acc > m:
                m = acc
        tot = 0.0
        for i in range(k):
            if active[i]:
                tot += math.exp(eta[i] - m)
        lse = m + math.log(tot)
        for i in range(k):
            if active[i]:
                w[i] = math.exp(eta[i] - lse)
                if R[nn, i] != 0.0:
                    Q += R[nn, i] * (eta[i] - lse)
            else:
                w[i] = 0.0
        _accumulate_gating(X[nn], R[nn], w, active, ref, g, H)
    _symmetrize(H)
    return Q


@njit(cache=True)
def em_pass(X, y, beta0, beta1, a, b, v, K, ref, XtX, Xty, sr, syy, g, H, grad):
    """One fused pass: E-step and the statistics of both M-steps, responsibilities not stored.

    At the current parameters computes, per point, the responsibilities (top-K selection,
    log-sum-exp over the active set) and accumulates: the expert sufficient statistics
    (see :func:`expert_stats`), the gradient ``g`` and Hessian ``H`` of the gating Q with the
    active sets held (see :func:`gating_grad_hess`), and ``grad``, the gradient of the observed
    log-likelihood in all free parameters (see :func:`obs_grad`). All outputs are zeroed first.
    Returns the observed log-likelihood.
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
    s = np.empty(k)
    eta = np.empty(k)
    lj = np.empty(k)
    res = np.empty(k)
    r = np.empty(k)
    w = np.empty(k)
    active = np.empty(k, dtype=np.bool_)
    total = 0.0
    for nn in range(n):
        x = X[nn]
        yv = y[nn]
        lp = _joint_point(x, yv, beta0, beta1, a, b, v, K, s, active, eta, lj, res)
        total += lp
        # log-sum-exp of the gating logits, for the gating weights w
        m = -np.inf
        for i in range(k):
            if active[i] and eta[i] > m:
                m = eta[i]
        tot = 0.0
        for i in range(k):
            if active[i]:
                tot += math.exp(eta[i] - m)
        lse = m + math.log(tot)
        for i in range(k):
            if active[i]:
                r[i] = math.exp(lj[i] - lp)
                w[i] = math.exp(eta[i] - lse)
            else:
                r[i] = 0.0
                w[i] = 0.0
        for i in range(k):
            ri = r[i]
            if ri != 0.0:
                _accumulate_expert(x, yv, ri, i, XtX, Xty, sr, syy)
                e = res[i]
                c = ri * e / v[i]
                base = ng + i * p
                for u in range(d):
                    grad[base + u] += c * x[u]
                grad[base + d] += c
                grad[ng + k * p + i] += 0.5 * ri * (e * e / v[i] - 1.0)
        _accumulate_gating(x, r, w, active, ref, g, H)
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
    s = np.empty(k)
    eta = np.empty(k)
    lj = np.empty(k)
    res = np.empty(k)
    active = np.empty(k, dtype=np.bool_)
    total = 0.0
    for nn in range(n):
        x = X[nn]
        lp = _joint_point(x, y[nn], beta0, beta1, a, b, v, K, s, active, eta, lj, res)
        total += lp
        m = -np.inf
        for i in range(k):
            if active[i] and eta[i] > m:
                m = eta[i]
        tot = 0.0
        for i in range(k):
            if active[i]:
                tot += math.exp(eta[i] - m)
        lse = m + math.log(tot)
        bj = 0
        for i in range(k):
            if not active[i]:
                if i != ref:
                    bj += 1
                continue
            ri = math.exp(lj[i] - lp)
            if i != ref:
                cj = ri - math.exp(eta[i] - lse)
                for u in range(d):
                    grad[bj * p + u] += cj * x[u]
                grad[bj * p + d] += cj
                bj += 1
            e = res[i]
            c = ri * e / v[i]
            base = ng + i * p
            for u in range(d):
                grad[base + u] += c * x[u]
            grad[base + d] += c
            grad[ng + k * p + i] += 0.5 * ri * (e * e / v[i] - 1.0)
    return total
