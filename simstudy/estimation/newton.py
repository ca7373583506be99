"""Trust-region Newton with boundary moves: the strict protocol's optimiser after EM.

On each selection piece (the set of slopes beta1 on which no point's top-K set changes) the
observed log-likelihood is smooth and the piece is a polyhedron: its faces are the linear
constraints (beta1_i - beta1_j) . x_n >= 0 of the points on a region boundary. The
refinement is an active-set trust-region Newton method on the current piece:

* the exact Hessian with the active sets held (``kernels.obs_hess``), Jacobi scaling, and the
  exact trust-region step (:func:`~simstudy.estimation.trust_region.tr_step`) in the subspace
  that keeps the active faces, the ties and the coordinates held on the box fixed;
* every step is evaluated with the selection recomputed and taken only if the log-likelihood
  does not decrease. A step that crosses a boundary and loses is cut at the first breakpoint
  (the point that meets the boundary becomes an active face; two slopes that meet form a
  tie); a step that crosses and gains is taken (it jumps to a better piece);
* faces whose multiplier points into the piece are released one at a time, at a point that
  is stationary on the current face;
* at a stationary point of the piece the certificate (:mod:`.certificate`) scans the
  neighbouring pieces exactly along every slope coordinate and the slope part of the gradient;
  a higher value found there is moved to and the refinement goes on, so a point below a known
  higher one within the scan radius is never returned as certified.

Stop reasons: ``certified``, ``certified_on_tie``, ``certified_on_bound``; ``diverging``
(the gating slopes grow without bound: beyond a score scale of ``diverge_score`` the Newton
step is hundreds of score units long, sharpens the gates and still raises the
log-likelihood, as in the fit of a dense model to a sparse truth); ``stalled`` (no step
gains and the certificate refuses); ``max_iter``; ``timeout``; ``non_finite``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from simstudy.estimation.certificate import (
    Certificate,
    CertificateSettings,
    bound_held,
    certify,
    diverging,
    multipliers,
    nudges,
)
from simstudy.estimation.trust_region import tr_step

__all__ = ["NewtonSettings", "refine"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NewtonSettings:
    """Settings of :func:`refine`.

    Attributes
    ----------
    certificate : CertificateSettings
        Gradient tolerance, scan radius and scan tolerance.
    max_iter : int
        Cap on the iteration count (EM iterations before the switch included).
    diverge_score : float
        Score scale max |beta1_i . x| beyond which diverging slopes are probed (None: never;
        see :func:`~simstudy.estimation.certificate.diverging`).
    deadline : float or None
        ``time.perf_counter()`` value after which the fit stops with "timeout".
    stall_iter : int
        Consecutive iterations without gain (and refused certificates) before "stalled".
    """

    certificate: CertificateSettings = CertificateSettings()
    max_iter: int = 5000
    diverge_score: float | None = 100.0
    deadline: float | None = None
    stall_iter: int = 8


@dataclass
class RefineOut:
    theta: np.ndarray
    loglik: float
    n_iter: int
    stop: str
    certificate: Certificate | None
    n_newton: int = 0
    n_moves: int = 0


def _null_basis(C: np.ndarray, m: int) -> np.ndarray:
    """Orthonormal basis (m, r) of the null space of the rows of C (q, m)."""
    if C.shape[0] == 0:
        return np.eye(m)
    _, s, Vt = np.linalg.svd(C, full_matrices=True)
    rank = int(np.sum(s > 1e-10 * max(s[0], 1e-300)))
    return Vt[rank:].T


def _box_fraction(lik, theta, s) -> float:
    """Largest t in (0, 1] keeping theta + t s in the box."""
    t = 1.0
    up = s > 0
    dn = s < 0
    if np.any(up):
        t = min(t, float(np.min((lik.upper[up] - theta[up]) / s[up])))
    if np.any(dn):
        t = min(t, float(np.min((lik.lower[dn] - theta[dn]) / s[dn])))
    return max(t, 0.0)


#: accepted steps whose gain exceeds the predicted one by this factor are extrapolated
EXTRAPOLATE_RATIO = 1.1


def _extrapolate(lik, theta, s, th1, l1, max_doublings=3):
    """Try theta + t s for t = 2, 4, 8 (stopping at the first that does not gain, or that
    crosses a boundary: a selection change shows as a fall, which is refused); returns the
    best point, its log-likelihood and its t."""
    best, l_best, t_best = th1, l1, 1.0
    t = 1.0
    for _ in range(max_doublings):
        t *= 2.0
        if _box_fraction(lik, theta, t * s) < 1.0:
            break
        th = theta + t * s
        lt = lik.loglik(th)
        if not (np.isfinite(lt) and lt > l_best):
            break
        best, l_best, t_best = th, lt, t
    return best, l_best, t_best


def _snap_ties(lik, theta, l0, pairs):
    """Make every tie of two slopes robust to rounding.

    Two slopes a few ulps apart order the pair's scores by rounding, point by point, so any
    later step would re-draw that order and change l by O(1). Each tied pair is set to exact
    equality (the tie rule then picks the lower index everywhere) or to a difference of 1e-10
    of the score scale either way, whichever gives the highest log-likelihood; the current
    point is kept if it is higher still (the refinement stays monotone).
    """
    scale = max(lik.sharpness(theta), 1.0)
    for i, j in pairs:
        if not lik.is_tie(theta, (i, j)):
            continue
        beta1 = lik.unpack(theta)[1]
        diff = beta1[i] - beta1[j]
        u = diff / np.max(np.abs(diff)) if np.any(diff) else np.eye(lik.d)[0]
        eps = 1e-10 * scale / float(np.max(np.abs(lik.xmax)) if lik.xmax.size else 1.0)
        mover, anchor = (i, j) if i != lik.ref else (j, i)
        sign = 1.0 if mover == i else -1.0
        best = (l0, theta)
        for off in (0.0, eps, -eps):
            th = theta.copy()
            # the mover's slope becomes the anchor's plus the offset, exactly
            target = beta1[anchor] + sign * off * u
            th[lik.idx_beta1[mover]] = target
            if not lik.feasible(th):
                continue
            lt = lik.loglik(th)
            if np.isfinite(lt) and lt > best[0]:
                best = (lt, th)
        l0, theta = best
    return theta, l0


def _faces(lik, theta, l_cur, trace):
    """The active faces at theta, after making its ties robust (see :func:`_snap_ties`)."""
    normals, pairs = lik.boundary_normals(theta)
    if pairs:
        theta, l_snap = _snap_ties(lik, theta, l_cur, pairs)
        if l_snap > l_cur:
            l_cur = l_snap
            trace.append(l_cur)
            normals, pairs = lik.boundary_normals(theta)
    return theta, l_cur, normals, pairs


def refine(lik, theta, l0, trace, n_iter, settings: NewtonSettings) -> RefineOut:
    """Refine ``theta`` (log-likelihood ``l0``) to a certified point; append accepted values
    to ``trace``; ``n_iter`` iterations were already spent (EM)."""
    cs = settings.certificate
    n, m = lik.n, lik.m
    gt = cs.grad_tol
    noise = 1e-12 * max(1.0, abs(l0))
    theta = lik.clip(np.asarray(theta, dtype=np.float64))
    theta, l_cur, normals, pairs = _faces(lik, theta, float(l0), trace)
    radius = None
    stall = 0
    cert = None
    n_newton = n_moves = 0
    while True:
        if n_iter >= settings.max_iter:
            return RefineOut(theta, l_cur, n_iter, "max_iter", cert, n_newton, n_moves)
        if settings.deadline is not None and time.perf_counter() > settings.deadline:
            return RefineOut(theta, l_cur, n_iter, "timeout", cert, n_newton, n_moves)
        l_cur, g, H = lik.grad_hess(theta)
        n_iter += 1
        n_newton += 1
        if not (np.isfinite(l_cur) and np.all(np.isfinite(g)) and np.all(np.isfinite(H))):
            return RefineOut(theta, l_cur, n_iter, "non_finite", cert, n_newton, n_moves)
        if settings.diverge_score is not None and diverging(lik, theta, l_cur, g, H,
                                                            settings.diverge_score):
            return RefineOut(theta, l_cur, n_iter, "diverging", cert, n_newton, n_moves)
        diag = np.abs(np.diag(H))
        # coordinates the likelihood does not depend on (gating with K = 1) are left out
        dead = (diag == 0.0) & (g == 0.0)
        held = bound_held(lik, theta, g) | dead
        lam, resid = multipliers(normals, g, held)
        proj = float(np.linalg.norm(resid)) / n
        if proj <= gt:
            if lam.size and lam.min() / n < -gt:
                # stationary on the face but a face pulls inwards: release it
                q = int(np.argmin(lam))
                log.debug("iter %d release face %s (multiplier %.2e)", n_iter, pairs[q],
                          lam[q] / n)
                normals = np.delete(normals, q, axis=0)
                pairs = pairs[:q] + pairs[q + 1 :]
                continue
            cert = certify(lik, theta, l_cur, g, normals, pairs, cs)
            log.debug("iter %d l=%.8f certificate passed=%s %s", n_iter, l_cur, cert.passed,
                      cert.refusal)
            if cert.passed:
                return RefineOut(theta, l_cur, n_iter, cert.reason, cert, n_newton, n_moves)
            if cert.improvement is not None:
                theta, l_cur = cert.improvement
                trace.append(l_cur)
                n_moves += 1
                theta, l_cur, normals, pairs = _faces(lik, theta, l_cur, trace)
                radius = None
                stall = 0
                continue
            stall += 1
            if stall >= settings.stall_iter:
                return RefineOut(theta, l_cur, n_iter, "stalled", cert, n_newton, n_moves)
        # the trust-region step on the current face, in Jacobi-scaled coordinates
        D = np.sqrt(np.maximum(diag, 1e-12 * max(float(diag.max()), 1e-300)))
        C = [normals / D] if normals.shape[0] else []
        if np.any(held):
            C.append(np.eye(m)[held])
        Z = _null_basis(np.vstack(C) if C else np.zeros((0, m)), m)
        gz = Z.T @ (g / D)
        Az = -Z.T @ (H / np.outer(D, D)) @ Z
        if radius is None:
            radius = float(min(max(np.linalg.norm(gz) / max(np.abs(Az).max(), 1e-300), 1.0),
                               1e3))
        z, pred = tr_step(gz, Az, radius)
        s = (Z @ z) / D
        frac = _box_fraction(lik, theta, s)
        if frac < 1.0:
            s *= frac
            pred = frac * float(gz @ z) - 0.5 * frac**2 * float(z @ Az @ z)
        step_norm = float(np.linalg.norm(z)) * frac
        if step_norm == 0.0:
            stall += 1
            if stall >= settings.stall_iter:
                return RefineOut(theta, l_cur, n_iter, "stalled", cert, n_newton, n_moves)
            continue
        th_new = lik.clip(theta + s)
        l_new = lik.loglik(th_new)
        hit = False
        if not (np.isfinite(l_new) and l_new >= l_cur) and np.any(s[lik.slopes]):
            # the step lost: if it crossed a boundary, cut it at the first breakpoint
            t1 = lik.first_event(theta, s, 1.0)
            if t1 < 1.0:
                tc = nudges(lik, theta, s, t1, 0.0, t1)[0] if t1 > 0 else 0.0
                if tc > 0:
                    th_c = lik.clip(theta + tc * s)
                    l_c = lik.loglik(th_c)
                    if np.isfinite(l_c) and l_c >= l_cur:
                        th_new, l_new, hit = th_c, l_c, True
                        pred = tc * float(gz @ z) - 0.5 * tc**2 * float(z @ Az @ z)
                        step_norm *= tc
                if not hit:
                    # already on the breakpoint: make the point(s) there active faces
                    normals_new, pairs_new = lik.boundary_normals(theta, rel_tol=1e-7)
                    log.debug("iter %d step crosses at t1=%.2e: faces %d -> %d", n_iter, t1,
                              normals.shape[0], normals_new.shape[0])
                    if normals_new.shape[0] > normals.shape[0]:
                        normals, pairs = normals_new, pairs_new
                        continue
        gain = l_new - l_cur if np.isfinite(l_new) else -np.inf
        ratio = gain / pred if pred > noise else (1.0 if gain >= 0 else -1.0)
        log.debug("iter %d l=%.8f proj=%.2e faces=%d radius=%.2e step=%.2e pred=%.2e gain=%.2e "
                  "hit=%s", n_iter, l_cur, proj, normals.shape[0], radius, step_norm, pred, gain,
                  hit)
        if gain >= 0 and (ratio > 1e-4 or gain <= noise):
            if ratio > EXTRAPOLATE_RATIO and not hit and frac == 1.0:
                # the model under-predicts: the log-likelihood is flatter than quadratic
                # along the step (near a singular maximum of an over-specified fit, where
                # Newton alone converges linearly); go on along the same direction while l
                # keeps rising
                th_new, l_new, t_ext = _extrapolate(lik, theta, s, th_new, l_new)
                step_norm *= t_ext
            theta, l_cur = th_new, l_new
            trace.append(l_cur)
            if gain > noise:
                stall = 0
            if ratio > 0.75 and step_norm >= 0.99 * radius:
                radius = min(2.0 * radius, 1e6)
            elif ratio < 0.25:
                radius = 0.25 * step_norm
            if hit:
                theta, l_cur, normals, pairs = _faces(lik, theta, l_cur, trace)
        else:
            radius = 0.25 * step_norm
            if radius < 1e-14:
                stall += 1
                radius = None
                if stall >= settings.stall_iter:
                    return RefineOut(theta, l_cur, n_iter, "stalled", cert, n_newton, n_moves)
