"""Slow, obviously-correct plain-numpy references for the kernels and the EM iteration.

Everything loops over points or uses textbook formulas; nothing here is shared with the
kernels. Parameter arrays: beta0 (k,), beta1 (k, d), a (k, d), b (k,), v (k,).
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp


def random_params(rng, k, d, ref=0, scale=2.0):
    """Random parameter arrays with the reference gating at zero."""
    beta0 = rng.normal(0, 1, k)
    beta1 = rng.normal(0, scale, (k, d))
    beta0[ref] = 0.0
    beta1[ref] = 0.0
    a = rng.normal(0, 2, (k, d))
    b = rng.normal(0, 2, k)
    v = rng.uniform(0.2, 1.5, k)
    return beta0, beta1, a, b, v


def active(X, beta1, K):
    """Top-K sets by sorting each point's scores with key (-score, index)."""
    n = X.shape[0]
    k = beta1.shape[0]
    mask = np.zeros((n, k), dtype=bool)
    for t in range(n):
        s = [float(beta1[i] @ X[t]) for i in range(k)]
        order = sorted(range(k), key=lambda i, s=s: (-s[i], i))
        mask[t, order[:K]] = True
    return mask


def log_joint(X, y, beta0, beta1, a, b, v, mask):
    """log w_i(x_n) + log N(y_n; a_i.x_n + b_i, v_i) with the given active sets; -inf off."""
    n = X.shape[0]
    k = beta0.shape[0]
    out = np.full((n, k), -np.inf)
    for t in range(n):
        eta = np.array([beta1[i] @ X[t] + beta0[i] for i in range(k)])
        idx = np.flatnonzero(mask[t])
        lse = logsumexp(eta[idx])
        for i in idx:
            mu = a[i] @ X[t] + b[i]
            log_norm = -0.5 * np.log(2 * np.pi * v[i]) - (y[t] - mu) ** 2 / (2 * v[i])
            out[t, i] = eta[i] - lse + log_norm
    return out


def log_density(X, y, beta0, beta1, a, b, v, K, mask=None):
    """log p(y_n | x_n), selection recomputed unless ``mask`` is given."""
    if mask is None:
        mask = active(X, beta1, K)
    return logsumexp(log_joint(X, y, beta0, beta1, a, b, v, mask), axis=1)


def loglik(X, y, beta0, beta1, a, b, v, K, mask=None):
    return float(np.sum(log_density(X, y, beta0, beta1, a, b, v, K, mask)))


def e_step(X, y, beta0, beta1, a, b, v, K):
    """Responsibilities (zero off the active set), active sets, log-likelihood."""
    mask = active(X, beta1, K)
    lj = log_joint(X, y, beta0, beta1, a, b, v, mask)
    lp = logsumexp(lj, axis=1)
    return np.exp(lj - lp[:, None]), mask, float(lp.sum())


def design(X):
    """Regressors z = (x, 1)."""
    return np.column_stack([X, np.ones(X.shape[0])])


def expert_stats(X, y, R):
    Z = design(X)
    k = R.shape[1]
    XtX = np.stack([(Z * R[:, [i]]).T @ Z for i in range(k)])
    Xty = np.stack([Z.T @ (R[:, i] * y) for i in range(k)])
    return XtX, Xty, R.sum(axis=0), (R * y[:, None] ** 2).sum(axis=0)


def gating_weights_held(X, beta0, beta1, mask):
    eta = X @ beta1.T + beta0
    eta = np.where(mask, eta, -np.inf)
    return np.exp(eta - logsumexp(eta, axis=1, keepdims=True))


def gating_grad_hess(X, R, mask, beta0, beta1, ref):
    """Gradient/Hessian of Q in the free gating blocks (beta1_j, beta0_j), j != ref."""
    Z = design(X)
    n, p = Z.shape
    k = beta0.shape[0]
    W = gating_weights_held(X, beta0, beta1, mask)
    free = [j for j in range(k) if j != ref]
    blocks = [((R[:, j] - W[:, j])[:, None] * Z).sum(axis=0) for j in free]
    g = np.concatenate([np.zeros(0), *blocks])
    m = len(free)
    H = np.zeros((m * p, m * p))
    for u, j in enumerate(free):
        for q, l in enumerate(free):
            c = W[:, j] * W[:, l] - (W[:, j] if j == l else 0.0)
            H[u * p : (u + 1) * p, q * p : (q + 1) * p] = (Z * c[:, None]).T @ Z
    with np.errstate(divide="ignore", invalid="ignore"):
        logW = np.where(mask, np.log(W), 0.0)
    Q = float(np.sum(np.where(R > 0, R * logW, 0.0)))
    return g, H, Q


def pack(beta0, beta1, a, b, v, ref):
    """Free-parameter vector in the kernels' order (gating blocks, expert blocks, log v)."""
    k = beta0.shape[0]
    free = [j for j in range(k) if j != ref]
    gate = [np.append(beta1[j], beta0[j]) for j in free]
    ex = [np.append(a[i], b[i]) for i in range(k)]
    return np.concatenate(gate + ex + [np.log(v)])


def unpack(theta, k, d, ref):
    p = d + 1
    beta0, beta1 = np.zeros(k), np.zeros((k, d))
    pos = 0
    for j in range(k):
        if j == ref:
            continue
        beta1[j] = theta[pos : pos + d]
        beta0[j] = theta[pos + d]
        pos += p
    a, b = np.zeros((k, d)), np.zeros(k)
    for i in range(k):
        a[i] = theta[pos : pos + d]
        b[i] = theta[pos + d]
        pos += p
    return beta0, beta1, a, b, np.exp(theta[pos:])


def obs_grad_fd(X, y, beta0, beta1, a, b, v, K, ref, h=1e-6):
    """Central finite differences of the log-likelihood with the active sets held."""
    k, d = beta1.shape
    mask = active(X, beta1, K)
    theta = pack(beta0, beta1, a, b, v, ref)
    g = np.zeros_like(theta)
    for u in range(theta.size):
        tp, tm = theta.copy(), theta.copy()
        tp[u] += h
        tm[u] -= h
        lp = loglik(X, y, *unpack(tp, k, d, ref), K, mask)
        lm = loglik(X, y, *unpack(tm, k, d, ref), K, mask)
        g[u] = (lp - lm) / (2 * h)
    return g


def em_iteration(X, y, beta0, beta1, a, b, v, K, ref, var_floor=1e-6, ridge=1e-10):
    """One generalized-EM iteration in plain numpy (spec section 2).

    E-step; weighted least squares per expert via sqrt-weighted lstsq; floored variance; one
    Newton step of the gating Q (active sets held, relative ridge); halving until the observed
    log-likelihood is not below its value at the start of the iteration (else gating kept).
    Returns the new arrays and the new log-likelihood.
    """
    k, d = beta1.shape
    n = X.shape[0]
    R, mask, l0 = e_step(X, y, beta0, beta1, a, b, v, K)
    Z = design(X)
    a, b, v = a.copy(), b.copy(), v.copy()
    for i in range(k):
        sw = np.sqrt(R[:, i])
        if R[:, i].sum() <= 1e-12 * n:
            continue
        coef = np.linalg.lstsq(Z * sw[:, None], y * sw, rcond=None)[0]
        a[i], b[i] = coef[:d], coef[d]
        v[i] = max(np.sum(R[:, i] * (y - Z @ coef) ** 2) / R[:, i].sum(), var_floor)
    if k > 1 and K > 1:
        g, H, _ = gating_grad_hess(X, R, mask, beta0, beta1, ref)
        A = -H
        A = A + ridge * max(1.0, np.max(np.abs(np.diag(A)))) * np.eye(A.shape[0])
        delta = np.linalg.solve(A, g)
        free = [j for j in range(k) if j != ref]
        t = 1.0
        for _ in range(30):
            b0, b1 = beta0.copy(), beta1.copy()
            for u, j in enumerate(free):
                b1[j] += t * delta[u * (d + 1) : u * (d + 1) + d]
                b0[j] += t * delta[u * (d + 1) + d]
            lt = loglik(X, y, b0, b1, a, b, v, K)
            if np.isfinite(lt) and lt >= l0:
                return b0, b1, a, b, v, lt
            t *= 0.5
    return beta0, beta1, a, b, v, loglik(X, y, beta0, beta1, a, b, v, K)


def obs_hess(X, y, beta0, beta1, a, b, v, K, ref):
    """Gradient and Hessian of the observed log-likelihood with the active sets held.

    Per point, l = log sum_i exp(lj_i) - log sum_i exp(eta_i) over the active set. With the
    Jacobians J (rows d lj_i / d theta) and Jw (rows d eta_i / d theta) and the Hessians of
    each lj_i written out entry by entry, the chain rule for a log-sum-exp gives
    Hess = J' (diag r - r r') J + sum_i r_i Hess lj_i - Jw' (diag w - w w') Jw.
    Returns (grad, H).
    """
    n, d = X.shape
    k = beta0.shape[0]
    p = d + 1
    free = [j for j in range(k) if j != ref]
    ng = len(free) * p
    m = ng + k * p + k
    mask = active(X, beta1, K)
    grad = np.zeros(m)
    H = np.zeros((m, m))
    for t in range(n):
        z = np.append(X[t], 1.0)
        idx = np.flatnonzero(mask[t])
        eta = np.array([beta1[i] @ X[t] + beta0[i] for i in idx])
        e = np.array([y[t] - a[i] @ X[t] - b[i] for i in idx])
        vi = v[idx]
        lj = eta - 0.5 * np.log(2 * np.pi * vi) - e**2 / (2 * vi)
        r = np.exp(lj - logsumexp(lj))
        w = np.exp(eta - logsumexp(eta))
        J = np.zeros((idx.size, m))
        Jw = np.zeros((idx.size, m))
        hess_lj = np.zeros((idx.size, m, m))
        for row, i in enumerate(idx):
            if i != ref:
                g0 = free.index(i) * p
                J[row, g0 : g0 + p] = z
                Jw[row, g0 : g0 + p] = z
            x0 = ng + i * p
            t0 = ng + k * p + i
            J[row, x0 : x0 + p] = e[row] / vi[row] * z
            J[row, t0] = 0.5 * (e[row] ** 2 / vi[row] - 1.0)
            hess_lj[row, x0 : x0 + p, x0 : x0 + p] = -np.outer(z, z) / vi[row]
            hess_lj[row, x0 : x0 + p, t0] = -e[row] / vi[row] * z
            hess_lj[row, t0, x0 : x0 + p] = -e[row] / vi[row] * z
            hess_lj[row, t0, t0] = -0.5 * e[row] ** 2 / vi[row]
        grad += J.T @ r - Jw.T @ w
        H += J.T @ (np.diag(r) - np.outer(r, r)) @ J + np.tensordot(r, hess_lj, axes=1)
        H -= Jw.T @ (np.diag(w) - np.outer(w, w)) @ Jw
    return grad, H
