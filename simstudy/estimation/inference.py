"""Standard errors from the exact observed information at a fit.

The observed information is minus the Hessian of the log-likelihood in the free parameters
(gating blocks of every expert but the reference, expert blocks, log variances; active sets
held), from ``kernels.obs_hess``. Where it is positive definite and not ill-conditioned its
inverse is the covariance of the free parameters; otherwise the standard errors are reported
as "singular". Over-specified fits (k > k*, known from the truth) are reported "singular"
too: their information at the true parameters is singular, so Wald intervals have no
asymptotic justification even where the finite-n observed information can be inverted
(measured condition numbers of the Jacobi-scaled information: 20-90 for exact fits, 30 to
6e4 for over-specified ones, 1e16 at ties).
"""

from __future__ import annotations

import numpy as np

from simstudy.estimation.result import param_names

__all__ = ["observed_inference", "SINGULAR_COND"]

#: condition number of the Jacobi-scaled information beyond which it counts as singular
SINGULAR_COND = 1e8


def observed_inference(lik, theta, over_specified=False) -> dict:
    """Keyword arguments of :class:`FitResult`: ``names, cov, information,
    information_note, bse_vector``."""
    k, d = lik.k, lik.d
    names = param_names(k, d)
    out = {"names": names, "cov": None, "information": "singular",
           "bse_vector": np.full(len(names), np.nan)}
    if over_specified:
        out["information_note"] = ("over-specified fit: the information at the true "
                                   "parameters is singular, Wald intervals do not apply")
        return out
    ll, _, H = lik.grad_hess(theta)
    info = -H
    if not (np.isfinite(ll) and np.all(np.isfinite(info))):
        out["information_note"] = "non-finite observed information"
        return out
    dg = np.sqrt(np.abs(np.diag(info)))
    if np.any(dg == 0.0):
        out["information_note"] = "a parameter the likelihood does not depend on"
        return out
    scaled = info / np.outer(dg, dg)
    lam = np.linalg.eigvalsh(scaled)
    if lam[0] <= 0.0 or lam[-1] / lam[0] > SINGULAR_COND:
        out["information_note"] = (
            "observed information not positive definite" if lam[0] <= 0.0 else
            f"condition number {lam[-1] / lam[0]:.1e} of the scaled information")
        return out
    cov = np.linalg.inv(scaled) / np.outer(dg, dg)
    se_free = np.sqrt(np.diag(cov))
    # map the free parameters to the named scalars: the reference's gating is fixed (NaN),
    # a variance's error by the delta method from its log
    v = lik.unpack(theta)[4]
    p = lik.p
    bse = np.full(len(names), np.nan)
    per = 1 + d + d + 2  # beta0, beta1 (d), a (d), b, v per expert
    for j in range(k):
        base = j * per
        if j != lik.ref:
            bse[base] = se_free[lik.idx_beta0[j]]
            bse[base + 1 : base + 1 + d] = se_free[lik.idx_beta1[j]]
        e0 = lik.ng + j * p
        bse[base + 1 + d : base + 1 + 2 * d] = se_free[e0 : e0 + d]
        bse[base + 1 + 2 * d] = se_free[e0 + d]
        bse[base + 2 + 2 * d] = v[j] * se_free[lik.logv[j]]
    out.update(cov=cov, information="ok", bse_vector=bse)
    return out
