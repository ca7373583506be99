"""Convergence certificates on the piecewise-smooth observed log-likelihood (spec section 2).

The log-likelihood l is smooth in the parameters that never move a selection (beta0, a, b,
log v) and piecewise smooth in the gating slopes beta1: it jumps where a point's top-K set
changes. A gradient with the active sets held therefore certifies nothing on its own. A point
is

* ``certified`` when (a) the gradient in the smooth parameters, divided by n, is <= grad_tol
  and (b) along each gating-slope coordinate and along the slope part of the held gradient,
  within the scan radius: where no point's selection changes the directional derivative
  (divided by n) is <= grad_tol; where selections change, exact one-sided scans both ways
  (:mod:`simstudy.estimation.scan`, breakpoints included) find no value above l + tol;
* ``certified_on_tie`` when it sits on a tie of two slopes (a point of the selection piece's
  boundary where two experts' slopes are equal, so that crossing flips the selection of every
  point on one side): with the tie held the projected gradient is <= grad_tol, the multiplier
  has the sign that points across the tie, and the scans of (b) (across the tie included)
  find no higher value;
* ``certified_on_bound`` likewise when some coordinates sit on the box (variance floor, the
  optional bound on the slopes) with the gradient pointing out of it;
* otherwise not certified, with the reason; a scan that finds a higher value returns it (the
  optimiser moves there). Nothing is certified at diverging slopes (:func:`diverging`),
  where the likelihood is flat at infinity.

The radius is in score units: along a direction delta the scan covers |t| <= radius /
max_i,x |delta beta1_i . x| (the largest change of any score over the data), so that no score
moves by more than ``radius``. The tolerance of a scan is ``tol_per_obs * n``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["CertificateSettings", "Certificate", "certify", "bound_held", "multipliers",
           "nudges", "diverging"]


@dataclass(frozen=True)
class CertificateSettings:
    """Tolerances and radius of the certificate (see the module docstring)."""

    grad_tol: float = 1e-6
    radius: float = 0.05
    tol_per_obs: float = 1e-9
    #: score scale max |beta1_i . x| beyond which diverging slopes are probed (None: never;
    #: see :func:`diverging`)
    diverge_score: float | None = 100.0


@dataclass
class Certificate:
    """Outcome of :func:`certify` (all gradients divided by n).

    ``passed`` with ``reason`` one of "certified", "certified_on_tie", "certified_on_bound";
    else ``refusal`` says why, and ``improvement`` holds ``(theta, loglik)`` when a scan found
    a higher value (verified by a full evaluation).
    """

    passed: bool = False
    reason: str = ""
    refusal: str = ""
    grad_smooth: float = np.nan
    grad_slopes: float = np.nan
    grad_projected: float = np.nan
    min_multiplier: float = np.nan
    ties: tuple = ()
    n_faces: int = 0
    n_bound: int = 0
    radius: float = 0.0
    tol: float = 0.0
    n_scans: int = 0
    n_scans_with_events: int = 0
    max_gain: float = 0.0
    improvement: tuple | None = field(default=None, repr=False)

    def to_metrics(self) -> dict:
        """Flat float diagnostics (``cert_*`` keys) for a task's metrics dict."""
        return {
            "cert_grad_smooth": float(self.grad_smooth),
            "cert_grad_slopes": float(self.grad_slopes),
            "cert_grad_projected": float(self.grad_projected),
            "cert_min_multiplier": float(self.min_multiplier),
            "cert_ties": float(len(self.ties)),
            "cert_faces": float(self.n_faces),
            "cert_bound": float(self.n_bound),
            "cert_radius": float(self.radius),
            "cert_tol": float(self.tol),
            "cert_scans": float(self.n_scans),
            "cert_scans_with_events": float(self.n_scans_with_events),
            "cert_max_gain": float(self.max_gain),
        }


def diverging(lik, theta, l0, g, H, min_score) -> bool:
    """Whether the gating slopes are running off to infinity (a sup at infinity, no maximum).

    Probed only when the score scale max |beta1_i . x| exceeds ``min_score``: the Newton step
    (Jacobi-scaled, curvatures floored at 1e-14 of the largest) must move some score by more
    than 1, sharpen the gates further, and raise l. At a finite maximum the Newton step is
    tiny; in a dense fit of a sparse truth (the K-bar = k fit of design T) the curvature
    along the sharpening direction vanishes and the step is hundreds of score units long,
    uphill. Beyond 100 * min_score the slopes count as diverging without a probe.
    """
    sharp = lik.sharpness(theta)
    if sharp <= min_score:
        return False
    if sharp > 100.0 * min_score:
        return True
    d = np.sqrt(np.abs(np.diag(H)))
    d[d == 0] = 1.0
    lam, Q = np.linalg.eigh(-H / np.outer(d, d))
    lam = np.maximum(lam, 1e-14 * max(float(lam.max()), 1e-300))
    s = (Q @ ((Q.T @ (g / d)) / lam)) / d
    if lik.score_scale(s) <= 1.0:
        return False
    th = theta + s
    if lik.sharpness(th) <= sharp:
        return False
    lt = lik.loglik(th)
    return bool(np.isfinite(lt) and lt > l0)


def bound_held(lik, theta, g) -> np.ndarray:
    """Coordinates on the box whose gradient points out of it (held at the bound)."""
    span = 1e-12 * (1.0 + np.abs(theta))
    at_lo = theta <= lik.lower + span
    at_hi = theta >= lik.upper - span
    return (at_lo & (g < 0)) | (at_hi & (g > 0))


def multipliers(normals, g, held):
    """Least-squares multipliers lambda >= 0 of KKT ``g + normals' lambda = 0`` (on the
    coordinates not held) and the residual (the projected gradient)."""
    free = ~held
    gf = g[free]
    if normals.shape[0] == 0:
        return np.zeros(0), gf
    Nf = normals[:, free]
    lam = np.linalg.lstsq(Nf.T, -gf, rcond=None)[0]
    return lam, gf + Nf.T @ lam


def nudges(lik, theta, delta, t, lo, hi):
    """Points just inside the piece [lo, hi] next to its end ``t``: the selection there is the
    piece's whatever the tie rule at the breakpoint, with a score margin (about 1e-10 of the
    score scale) that rounding cannot flip."""
    width = hi - lo
    if width <= 0 or t not in (lo, hi):
        return [t]
    h = max(lik.score_scale(delta), 1e-300)
    scale = max(lik.sharpness(theta), 1.0)
    inward = 1.0 if t == lo else -1.0
    steps = [min(1e-10 * scale / h, 0.5 * width)] + [f * width for f in (1e-6, 1e-3)]
    return [t + inward * dt for dt in steps] + [t]


def _verify(lik, theta, delta, sc, l0, tol):
    """Full evaluation of a scan's best point (nudged into its piece, see :func:`nudges`).
    Returns (theta, l) or None."""
    lo, hi = sc.piece
    best = None
    for t in nudges(lik, theta, delta, sc.t_best, lo, hi):
        th = lik.clip(theta + t * delta)
        lt = lik.loglik(th)
        if np.isfinite(lt) and lt > l0 + tol and (best is None or lt > best[1]):
            best = (th, lt)
            if lt >= l0 + 0.5 * sc.gain_best:
                break
    return best


def _interval(lik, theta, delta, t_max):
    """[t_lo, t_hi] within +-t_max that keeps theta + t delta in the box."""
    t_lo, t_hi = -t_max, t_max
    nz = delta != 0
    if np.any(nz):
        lo = (lik.lower[nz] - theta[nz]) / delta[nz]
        hi = (lik.upper[nz] - theta[nz]) / delta[nz]
        t_hi = min(t_hi, float(np.min(np.maximum(lo, hi))))
        t_lo = max(t_lo, float(np.max(np.minimum(lo, hi))))
    return min(t_lo, 0.0), max(t_hi, 0.0)


def certify(lik, theta, l0, g, normals, pairs, settings: CertificateSettings) -> Certificate:
    """Check the certificates at ``theta`` (see the module docstring).

    Parameters
    ----------
    lik : Likelihood
    theta : numpy.ndarray
        The point; ``l0`` its log-likelihood and ``g`` its held-active-set gradient.
    normals, pairs : numpy.ndarray, list
        Active constraints of the selection piece (:meth:`Likelihood.boundary_normals`).
    settings : CertificateSettings
    """
    n = lik.n
    gt = settings.grad_tol
    tol = settings.tol_per_obs * n
    held = bound_held(lik, theta, g)
    cert = Certificate(radius=settings.radius, tol=tol, n_bound=int(held.sum()))
    if settings.diverge_score is not None and lik.sharpness(theta) > settings.diverge_score:
        _, _, H = lik.grad_hess(theta)
        if diverging(lik, theta, l0, g, H, settings.diverge_score):
            # the likelihood is flat at infinity: a small gradient there certifies nothing
            cert.refusal = (f"diverging slopes: score scale {lik.sharpness(theta):.3g}, and "
                            "l still rises along the Newton step that sharpens the gates")
            return cert
    smooth = np.zeros(lik.m, dtype=bool)
    smooth[lik.smooth] = True
    cert.grad_smooth = float(np.linalg.norm(g[smooth & ~held])) / n
    cert.grad_slopes = float(np.linalg.norm(g[lik.slopes])) / n
    lam, resid = multipliers(normals, g, held)
    cert.grad_projected = float(np.linalg.norm(resid)) / n
    cert.min_multiplier = float(lam.min()) / n if lam.size else np.nan
    tie_rows = [q for q, pair in enumerate(pairs) if lik.is_tie(theta, pair)]
    cert.ties = tuple(pairs[q] for q in tie_rows)
    cert.n_faces = len(pairs) - len(tie_rows)

    # (b): scans along each slope coordinate and along the slope part of the gradient
    directions = []
    gdir = np.zeros(lik.m)
    free_slopes = [u for u in lik.slopes if not held[u]]
    gdir[free_slopes] = g[free_slopes]
    if np.any(gdir):
        directions.append(("gradient", gdir / np.linalg.norm(gdir)))
    for u in lik.slopes:
        e = np.zeros(lik.m)
        e[u] = 1.0
        directions.append((f"slope {u}", e))
    refusal = ""
    best_improvement = None
    for name, delta in directions:
        h = lik.score_scale(delta)
        if h <= 0:
            continue
        t_lo, t_hi = _interval(lik, theta, delta, settings.radius / h)
        u = int(np.flatnonzero(delta)[0]) if name != "gradient" else -1
        if u >= 0 and held[u]:  # on the box: scan inwards only
            if g[u] > 0:
                t_hi = 0.0
            else:
                t_lo = 0.0
        sc = lik.scan(theta, delta, t_lo, t_hi, tol)
        cert.n_scans += 1
        if sc.smooth:
            if u >= 0 and held[u]:
                continue
            deriv = abs(float(g @ delta)) / n
            if deriv > gt:
                refusal = refusal or f"{name}: smooth directional derivative {deriv:.2e} > {gt:g}"
            continue
        cert.n_scans_with_events += 1
        cert.max_gain = max(cert.max_gain, sc.gain_best)
        if sc.cleared:
            continue
        if sc.gain_best > tol:
            found = _verify(lik, theta, delta, sc, l0, tol)
            if found is not None:
                if best_improvement is None or found[1] > best_improvement[1]:
                    best_improvement = found
                refusal = refusal or f"{name}: a higher value at t = {sc.t_best:.3e}"
                break  # the optimiser moves there and certifies again
        refusal = refusal or f"{name}: the scan could not exclude a higher value"
    cert.improvement = best_improvement

    # (a) and the on-tie / on-bound conditions
    on_tie = bool(tie_rows)
    on_bound = bool(held.any())
    if on_tie or on_bound:
        if cert.grad_projected > gt:
            refusal = refusal or (f"projected gradient {cert.grad_projected:.2e} > {gt:g} with "
                                  "the tie / bound held")
        tie_lam = lam[tie_rows] / n if tie_rows else np.zeros(0)
        if tie_lam.size and tie_lam.min() < -gt:
            refusal = refusal or (f"tie multiplier {tie_lam.min():.2e} points into the piece "
                                  "(not across the tie)")
    if cert.grad_smooth > gt:
        refusal = refusal or f"smooth-parameter gradient {cert.grad_smooth:.2e} > {gt:g}"
    cert.refusal = refusal
    cert.passed = not refusal
    if cert.passed:
        cert.reason = ("certified_on_tie" if on_tie else
                       "certified_on_bound" if on_bound else "certified")
    return cert
