"""Starting values of the EM: near-truth starts (the papers' protocol) and data-driven ones."""

from __future__ import annotations

import numpy as np

from simstudy.model import kernels

__all__ = ["INITS", "NOISE_SCHEDULES", "near_truth_start", "data_start", "papers_noise_scales"]

INITS = ("near_truth", "data")
NOISE_SCHEDULES = (None, "papers")


def papers_noise_scales(n: int) -> tuple[float, float, float]:
    """Noise scales of the papers' protocol at sample size n (spec section 2).

    Returns the standard deviations of the gating scalar, the expert scalar and the variance
    noise: 0.005 n^-0.083, 0.05 n^-0.083 and 0.005 n^-0.25.
    """
    return 0.005 * n**-0.083, 0.05 * n**-0.083, 0.005 * n**-0.25


def near_truth_start(truth, k, extra_atoms, init_noise, noise_schedule, n, rng):
    """Atoms on the true experts plus noise; returns (beta0, beta1, a, b, v, ref) arrays.

    Fitted atoms 0..k*-1 sit on true experts 0..k*-1 in order, then one atom per entry of
    ``extra_atoms`` (0-based true indices). Atoms sharing a true expert split its gating mass
    (beta0 - log m). The reference atom (the true reference index) keeps gating (0, 0) exactly.

    Noise: with ``noise_schedule="papers"`` one scalar N(0, s_g^2) is added to all gating
    coefficients of an atom, one scalar N(0, s_e^2) to all its expert coefficients and
    |N(0, s_v^2)| to its variance (:func:`papers_noise_scales`); otherwise every coefficient
    gets independent N(0, init_noise^2) noise and the variance is multiplied by
    exp(N(0, init_noise^2)) (positive by construction).
    """
    src = np.concatenate([np.arange(truth.k), np.asarray(extra_atoms, dtype=np.int64)])
    src = src.astype(np.int64)
    counts = np.bincount(src, minlength=truth.k)
    beta0 = truth.beta0[src] - np.log(counts[src])
    beta1 = truth.beta1[src].copy()
    a = truth.a[src].copy()
    b = truth.b[src].copy()
    v = truth.v[src].copy()
    ref = truth.ref
    d = truth.d
    free = np.arange(k) != ref
    if noise_schedule == "papers":
        s_g, s_e, s_v = papers_noise_scales(n)
        eps_g = rng.normal(0.0, s_g, size=k)
        eps_e = rng.normal(0.0, s_e, size=k)
        eps_v = np.abs(rng.normal(0.0, s_v, size=k))
        beta0[free] += eps_g[free]
        beta1[free] += eps_g[free, None]
        a += eps_e[:, None]
        b += eps_e
        v += eps_v
    elif init_noise > 0:
        s = init_noise
        beta0[free] += rng.normal(0.0, s, size=int(free.sum()))
        beta1[free] += rng.normal(0.0, s, size=(int(free.sum()), d))
        a += rng.normal(0.0, s, size=(k, d))
        b += rng.normal(0.0, s, size=k)
        v *= np.exp(rng.normal(0.0, s, size=k))
    beta0[ref] = 0.0
    beta1[ref] = 0.0
    return beta0, beta1, a, b, v, ref


def data_start(X, y, k, var_floor, rng, n_lloyd=10):
    """Data-driven start without the truth; returns (beta0, beta1, a, b, v, ref=0).

    A k-means partition of the standardised (x, y) (random distinct points as centres, a few
    Lloyd iterations) gives soft responsibilities (0.9 on the own cluster), from which a
    weighted least-squares fit gives each expert; gating slopes are random N(0, 1 / sd(x)^2),
    intercepts zero, expert 0 is the reference.
    """
    n, d = X.shape
    Z = np.column_stack([X, y])
    sd = Z.std(axis=0)
    sd[sd == 0] = 1.0
    Z = (Z - Z.mean(axis=0)) / sd
    centres = Z[rng.choice(n, size=k, replace=n < k)]
    labels = np.zeros(n, dtype=np.int64)
    for _ in range(n_lloyd):
        dist = ((Z[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
        labels = dist.argmin(axis=1)
        for i in range(k):
            members = Z[labels == i]
            if members.shape[0]:
                centres[i] = members.mean(axis=0)
    R = np.full((n, k), 0.1 / max(k - 1, 1))
    R[np.arange(n), labels] = 0.9
    if k == 1:
        R[:] = 1.0
    p = d + 1
    XtX = np.zeros((k, p, p))
    Xty = np.zeros((k, p))
    sr = np.zeros(k)
    syy = np.zeros(k)
    kernels.expert_stats(X, y, R, XtX, Xty, sr, syy)
    a = np.zeros((k, d))
    b = np.zeros(k)
    v = np.zeros(k)
    for i in range(k):
        coef = np.linalg.lstsq(XtX[i], Xty[i], rcond=None)[0]
        a[i], b[i] = coef[:d], coef[d]
        rss = syy[i] - 2.0 * coef @ Xty[i] + coef @ XtX[i] @ coef
        v[i] = max(rss / sr[i], var_floor, 1e-3 * float(np.var(y)))
    sx = X.std(axis=0)
    sx[sx == 0] = 1.0
    beta1 = rng.normal(0.0, 1.0, size=(k, d)) / sx
    beta0 = np.zeros(k)
    beta1[0] = 0.0
    return beta0, beta1, a, b, v, 0
