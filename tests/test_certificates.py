"""Certificates on the piecewise-smooth likelihood: each one holds where it should and refuses
where it must (spec section 2): a point below a known higher one across a boundary, a point on
a tie whose multiplier points the wrong way, diverging slopes with a flat likelihood."""

import warnings

import numpy as np
import pytest

from simstudy.estimation import ConvergenceWarning, TopKMoEEM, protocol_options
from simstudy.estimation.certificate import CertificateSettings, certify
from simstudy.estimation.likelihood import Likelihood
from simstudy.model import get_design, sample

SETTINGS = CertificateSettings()


def draw(name, n, seed):
    d = get_design(name)
    return d, *sample(d.params, n, d.inputs, np.random.default_rng(seed))


def single_start(n, **over):
    opts = protocol_options("strict", n)
    opts.update(truth_start=False, n_data_starts=0, **over)
    return opts


def polish(lik, theta, fixed, iters=60):
    """Newton on every coordinate but ``fixed`` (selection recomputed, monotone)."""
    free = np.setdiff1d(np.arange(lik.m), fixed)
    for _ in range(iters):
        l0, g, H = lik.grad_hess(theta)
        step = np.linalg.lstsq(-H[np.ix_(free, free)], g[free], rcond=None)[0]
        t = 1.0
        while t > 1e-10:
            cand = theta.copy()
            cand[free] += t * step
            if lik.loglik(cand) >= l0:
                theta = cand
                break
            t /= 2
        if np.linalg.norm(g[free]) / lik.n < 1e-12:
            break
    return theta


def certificate_at(lik, theta):
    l0, g = lik.grad(theta)
    return certify(lik, theta, l0, g, *lik.boundary_normals(theta), SETTINGS)


def fitted(design, k, K, extra, n, seed):
    D, X, y = draw(design, n, seed)
    est = TopKMoEEM(k, K, true_params=D.params, extra_atoms=extra, random_state=seed,
                    **single_start(n))
    res = est.fit(X, y)
    p = res.params
    return est._lik, est._lik.pack(p.beta0, p.beta1, p.a, p.b, p.v), res


# -- certified ----------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_certified_holds_at_the_newton_fit_of_design_P(seed):
    lik, theta, res = fitted("P", 3, 2, (), 1000, seed)
    cert = certificate_at(lik, theta)
    assert res.stop_reason == "certified" and cert.passed and cert.reason == "certified"
    assert cert.n_scans_with_events >= 1  # moving boundaries: at least one scan saw them
    assert cert.grad_smooth <= SETTINGS.grad_tol
    # on a piece edge the held-active-set slope gradient does not vanish (a diagnostic)
    assert cert.grad_slopes > 100 * SETTINGS.grad_tol


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_certified_refuses_a_point_below_a_known_higher_one_across_a_boundary(seed):
    """From the certified fit, move one slope coordinate by 0.03 (within the scan radius: the
    known higher point is 0.03 away) and polish every other parameter, slopes held: the
    smooth gradient vanishes and the held-active-set gradient is that of a stationary point
    of its piece, yet the point is lower than one across a boundary. The certificate must
    refuse and return a higher point."""
    lik, theta, res = fitted("P", 3, 2, (), 1000, seed)
    moved = theta.copy()
    u = lik.slopes[0]
    moved[u] += 0.03
    moved = polish(lik, moved, fixed=lik.slopes)
    l_moved = lik.loglik(moved)
    assert l_moved < res.loglik - 1e-3  # below the known higher point
    cert = certificate_at(lik, moved)
    assert cert.grad_smooth <= 1e-10  # (a) holds: only the scans can refuse
    assert not cert.passed and cert.reason == ""
    assert cert.improvement is not None and cert.improvement[1] > l_moved + cert.tol


@pytest.mark.parametrize("seed", [0, 1, 3])
def test_the_held_gradient_alone_never_certifies(seed):
    """Top-1 gating on design P's parameters: the likelihood is piecewise constant in the
    slopes, so with the boundary moved by 0.03 and the experts refitted by EM the whole
    held-active-set gradient vanishes (~1e-15) while the fit from the true boundary is higher
    by 15-50. The certificate must refuse and find a higher point."""
    D = get_design("P")
    truth = D.params.replace(K=1)
    X, y = sample(truth, 1000, D.inputs, np.random.default_rng(seed))
    beta1 = truth.beta1.copy()
    beta1[0, 0] += 0.03
    kw = dict(init_noise=0.0, tol=1e-12, max_iter=500)
    moved = TopKMoEEM(3, 1, true_params=truth.replace(beta1=beta1), **kw).fit(X, y)
    known = TopKMoEEM(3, 1, true_params=truth, **kw).fit(X, y)
    lik = Likelihood(X, y, 3, 1, 1e-8)
    lik.set_ref(truth.ref)
    p = moved.params
    theta = lik.pack(p.beta0, p.beta1, p.a, p.b, p.v)
    l0, g = lik.grad(theta)
    assert np.linalg.norm(g) / lik.n <= 1e-12  # the old rule would certify this point
    assert known.loglik > l0 + 10.0
    cert = certificate_at(lik, theta)
    assert not cert.passed and cert.improvement is not None
    assert cert.improvement[1] > l0 + 10.0


# -- certified_on_tie ---------------------------------------------------------------------------
def _tie_with_the_reference(seed=0):
    """Design T exact data; expert 1's slope held on the reference's 0 (a tie: at equal scores
    the lower index 0 wins, so every x < 0 keeps expert 1 selected) and every other parameter
    polished. Moving the slope up crosses the tie; its natural value (-5) lies the other way,
    into the piece: the multiplier has the wrong sign."""
    D, X, y = draw("T", 1000, seed)
    P = D.params
    lik = Likelihood(X, y, 3, 2, 1e-8)
    lik.set_ref(P.ref)
    beta1 = P.beta1.copy()
    beta1[0] = 0.0
    theta = lik.pack(P.beta0, beta1, P.a, P.b, P.v)
    u = int(lik.idx_beta1[0][0])
    return lik, polish(lik, theta, fixed=[u]), u


def test_certified_on_tie_refuses_a_multiplier_pointing_into_the_piece():
    lik, theta, u = _tie_with_the_reference()
    cert = certificate_at(lik, theta)
    assert cert.ties == ((0, 1),)
    assert cert.grad_projected <= 1e-10  # stationary on the tie
    assert cert.min_multiplier < -SETTINGS.grad_tol  # but the multiplier points inwards
    assert not cert.passed
    assert cert.improvement is not None  # moving into the piece is higher
    assert cert.improvement[0][u] < theta[u]


def test_certified_on_tie_holds_where_the_slopes_meet_and_crossing_loses():
    """Design T, k = 4, K-bar = 2 (seed 0): the fit ends on a tie of the two atoms near
    expert 1, with the multiplier pointing across the tie, and the scans across it find
    nothing higher."""
    lik, theta, res = fitted("T", 4, 2, (0,), 1000, 0)
    cert = certificate_at(lik, theta)
    assert res.stop_reason == "certified_on_tie"
    assert cert.passed and cert.reason == "certified_on_tie"
    assert cert.ties and cert.min_multiplier >= -SETTINGS.grad_tol
    assert cert.grad_projected <= SETTINGS.grad_tol
    assert cert.n_scans_with_events >= 1 and cert.max_gain <= cert.tol
    # the same point with the tie's slopes pulled apart into the losing piece is much lower
    i, j = cert.ties[0]
    ui, uj = lik.idx_beta1[i][0], lik.idx_beta1[j][0]
    for sign in (1.0, -1.0):
        crossed = theta.copy()
        crossed[ui] += sign * 1e-4
        crossed[uj] -= sign * 1e-4
        assert lik.loglik(crossed) <= res.loglik + cert.tol


# -- diverging ----------------------------------------------------------------------------------
def test_nothing_is_certified_at_diverging_slopes_with_a_flat_likelihood():
    """K-bar = 4 = k on design T (n = 2000, seed 1): EM drives the slopes to ~480, where the
    held gradient is below 1e-6 because the likelihood is flat at infinity. The gradient
    conditions alone would pass there; the certificate must refuse as diverging, and the
    strict EM path must not stop as certified either."""
    D, X, y = draw("T", 2000, 1)
    est = TopKMoEEM(4, 4, true_params=D.params, extra_atoms=(0,), random_state=1,
                    **single_start(2000, acceleration="squarem", max_iter=200))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = est.fit(X, y)
    assert res.stop_reason not in ("certified", "certified_on_tie", "certified_on_bound")
    lik = est._lik
    p = res.params
    theta = lik.pack(p.beta0, p.beta1, p.a, p.b, p.v)
    l0, g = lik.grad(theta)
    assert lik.sharpness(theta) > 100
    blind = certify(lik, theta, l0, g, *lik.boundary_normals(theta),
                    CertificateSettings(diverge_score=None))
    guarded = certificate_at(lik, theta)
    assert not guarded.passed and "diverging" in guarded.refusal
    assert np.linalg.norm(g) / lik.n <= SETTINGS.grad_tol
    assert blind.passed  # the danger the guard exists for


# -- certified_on_bound -------------------------------------------------------------------------
def test_certified_on_bound_holds_and_refuses_off_its_kkt_point():
    D, X, y = draw("T", 2000, 1)
    est = TopKMoEEM(4, 4, true_params=D.params, extra_atoms=(0,), random_state=1,
                    beta1_bound=15.0, **single_start(2000))
    res = est.fit(X, y)
    lik = est._lik
    p = res.params
    theta = lik.pack(p.beta0, p.beta1, p.a, p.b, p.v)
    cert = certificate_at(lik, theta)
    assert res.stop_reason == "certified_on_bound" and cert.passed and cert.n_bound >= 1
    # inside the box, away from the bound, the same slopes polished elsewhere: refused
    moved = theta.copy()
    at = [u for u in lik.slopes if abs(abs(theta[u]) - 15.0) < 1e-9]
    moved[at[0]] *= 0.9
    cert2 = certificate_at(lik, moved)
    assert not cert2.passed
