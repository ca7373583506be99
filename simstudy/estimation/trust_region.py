"""The trust-region subproblem: maximise g.z - z.A.z / 2 subject to |z| <= radius.

Solved exactly through the eigen-decomposition of the symmetric A (Moré & Sorensen 1983):
the Newton step A^-1 g when A is positive definite and the step fits; otherwise the step on
the boundary z(mu) = (A + mu I)^-1 g with mu >= max(0, -lambda_min) found by Newton's method on
the secular equation 1/|z(mu)| = 1/radius, with the "hard case" (g orthogonal to the
eigenvector of the smallest eigenvalue) completed along that eigenvector.
"""

from __future__ import annotations

import numpy as np

__all__ = ["tr_step"]


def tr_step(g: np.ndarray, A: np.ndarray, radius: float) -> tuple[np.ndarray, float]:
    """Exact trust-region step; returns ``(z, predicted increase)``.

    Parameters
    ----------
    g : numpy.ndarray, shape (r,)
        Gradient of the objective to maximise (already scaled).
    A : numpy.ndarray, shape (r, r)
        Minus its Hessian (symmetric; positive definite at a strict local maximum).
    radius : float
        Trust-region radius (> 0).
    """
    r = g.size
    if r == 0:
        return np.zeros(0), 0.0
    lam, Q = np.linalg.eigh(0.5 * (A + A.T))
    a = Q.T @ g
    scale = max(float(np.max(np.abs(lam))), 1e-300)
    tiny = 1e-12 * scale

    def z_of(mu):
        return a / (lam + mu)

    if lam[0] > tiny:
        c = z_of(0.0)
        if np.linalg.norm(c) <= radius:
            z = Q @ c
            return z, float(g @ z - 0.5 * z @ A @ z)
    mu_lo = max(0.0, -lam[0]) + tiny
    c = z_of(mu_lo)
    if np.linalg.norm(c) < radius:
        if lam[0] <= tiny:
            # hard case: |z(mu)| < radius for every admissible mu; mu = -lambda_min and the
            # rest of the radius along the eigenvector(s) of lambda_min
            low = lam + mu_lo <= 2.0 * tiny + max(-lam[0], 0.0) * 1e-12
            c = np.where(low, 0.0, a / np.where(low, 1.0, lam + max(0.0, -lam[0])))
            c[0] = np.sqrt(max(radius**2 - float(c @ c), 0.0)) * (1.0 if a[0] >= 0 else -1.0)
        z = Q @ c
        return z, float(g @ z - 0.5 * z @ A @ z)
    mu = mu_lo
    for _ in range(100):
        c = z_of(mu)
        nc = float(np.linalg.norm(c))
        if abs(nc - radius) <= 1e-10 * radius:
            break
        dn = -float(np.sum(a * a / (lam + mu) ** 3)) / nc  # d|z| / d mu
        # Newton on phi(mu) = 1/|z| - 1/radius: concave and increasing for mu > -lambda_min,
        # so the iterates from phi <= 0 increase monotonically to the root
        phi = 1.0 / nc - 1.0 / radius
        dphi = -dn / nc**2
        mu = mu - phi / dphi
        if not np.isfinite(mu) or mu < mu_lo:
            mu = mu_lo
    z = Q @ z_of(mu)
    return z, float(g @ z - 0.5 * z @ A @ z)
