"""Smoothed-selection continuation: a path from a soft top-K selection to the hard one.

Where region boundaries move with the slopes (d >= 2), the finite-n log-likelihood is rugged
in the slopes: every point that crosses a boundary changes it by O(1), so a local method on
the hard likelihood stops at one of many nearby piece maxima. Replacing each expert's hard
membership by sigmoid((s_i - c(x)) / tau) (c the midpoint of the K-th and (K+1)-th scores;
:func:`simstudy.model.kernels_scan.smooth_loglik_grad`) averages the jumps out; L-BFGS-B on
that smooth function at decreasing temperatures tau follows its maximum towards the hard
likelihood. The hard refinement and the certificate then start from where the path ends
(kept only if the hard log-likelihood there is not lower: the strict fit stays monotone).

Measured on design P (``python -m benchmarks.bench_boundary``): from the same near-truth
starts, the path ends at or above the true parameters' log-likelihood far more often than the
exact scans alone, which stop at lower piece maxima (see docs/estimation.md).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

from simstudy.model import kernels_scan

__all__ = ["TEMPERATURES", "smoothed_path"]

#: temperatures of the path, in score units (the scores beta1_i . x are logits)
TEMPERATURES = (0.3, 0.1, 0.03, 0.01, 0.003)


def smoothed_path(lik, theta, temperatures=TEMPERATURES, max_iter=20):
    """Follow the smoothed maximum from ``theta`` through ``temperatures``; returns theta.

    Each evaluation (value and gradient, one pass over the data) is booked on ``lik`` as a
    "smooth" pass. The box of ``lik`` (variance floor, slope bound) is respected.
    """
    n = lik.n
    grad = np.zeros(lik.m)
    bounds = [(lo if np.isfinite(lo) else None, hi if np.isfinite(hi) else None)
              for lo, hi in zip(lik.lower, lik.upper, strict=True)]
    theta = np.asarray(theta, dtype=np.float64)
    for tau in temperatures:
        def objective(th, tau=tau):
            lik.count("smooth")
            ll = kernels_scan.smooth_loglik_grad(lik.X, lik.y, *lik.unpack(th), lik.K, lik.ref,
                                                 float(tau), grad)
            if not np.isfinite(ll):
                return np.inf, np.zeros_like(th)
            return -ll / n, -grad / n

        opt = minimize(objective, theta, jac=True, method="L-BFGS-B", bounds=bounds,
                       options={"maxiter": int(max_iter), "gtol": 1e-9, "ftol": 1e-13})
        if np.all(np.isfinite(opt.x)):
            theta = np.asarray(opt.x, dtype=np.float64)
    return lik.clip(theta)
