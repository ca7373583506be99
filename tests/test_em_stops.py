"""Stopping rules and the gating step's acceptance rule decide outcomes: tests that fail when
either is loosened (mutants that the recovery and monotonicity tests let through)."""

import warnings

import numpy as np
import pytest

from simstudy.estimation import ConvergenceWarning, TopKMoEEM
from simstudy.model import get_design, kernels, sample

DES_T = get_design("T")


def exact_grad_norm(params, X, y):
    """Scaled norm of the observed log-likelihood gradient at ``params`` (active sets held),
    computed from the returned parameters, not by the estimator's own stopping code."""
    grad = np.zeros(kernels.n_free(params.k, params.d))
    kernels.obs_grad(X, y, params.beta0, params.beta1, params.a, params.b, params.v, params.K,
                     params.ref, grad)  # fmt: skip
    return float(np.linalg.norm(grad)) / X.shape[0]


@pytest.mark.parametrize("acceleration", [None, "squarem"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_strict_stop_implies_gradient_below_grad_tol(seed, acceleration):
    """A "certified" stop is at a stationary point: grad_norm <= grad_tol at the returned fit.

    Design T, k = 3, K = 2, n = 2000, tol = 1e-3, grad_tol = 1e-6: the loose tol is met after a
    few iterations, long before the gradient is small, so the gradient check alone decides
    when the loop stops. (Plain EM on data seed 1 stops at 9.4e-7; without the exact gradient
    check, or with it loosened 100x, it stops at 5.5e-6.)
    """
    X, y = sample(DES_T.params, 2000, DES_T.inputs, np.random.default_rng(seed))
    grad_tol = 1e-6
    est = TopKMoEEM(3, 2, true_params=DES_T.params, tol=1e-3, grad_tol=grad_tol,
                    acceleration=acceleration, max_iter=5000, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # must converge, strictly
        res = est.fit(X, y)
    assert res.stop_reason == "certified" and res.converged
    assert res.grad_norm <= grad_tol
    assert exact_grad_norm(res.params, X, y) == pytest.approx(res.grad_norm, rel=1e-9)
    # the relative-change rule held at the last step too
    l_prev, l_last = res.loglik_trace[-2:]
    assert abs(l_last - l_prev) <= 1e-3 * abs(l_prev)


def test_strict_rule_refuses_an_unreached_gradient_tolerance():
    """grad_tol = 1e-13 is out of reach in 40 plain EM iterations: the fit must not claim a
    strict (or any) convergence although its relative change is far below tol."""
    X, y = sample(DES_T.params, 2000, DES_T.inputs, np.random.default_rng(1))
    est = TopKMoEEM(3, 2, true_params=DES_T.params, tol=1e-3, grad_tol=1e-13, max_iter=40,
                    random_state=0)
    with pytest.warns(ConvergenceWarning):
        res = est.fit(X, y)
    assert res.stop_reason in ("max_iter", "stalled") and not res.converged
    assert res.grad_norm > 1e-13


def prepared_gating_step(seed=4, n=600):
    """An estimator with the fused pass and the expert step done at a noisy near-truth start:
    the arguments of a gating step, and the full Newton step's log-likelihood."""
    X, y = sample(DES_T.params, n, DES_T.inputs, np.random.default_rng(seed))
    est = TopKMoEEM(3, 2, true_params=DES_T.params, init_noise=0.3)
    est._check_options()
    est._prepare(X, y)
    theta = est._initialize(np.random.default_rng(seed), 0)
    beta0, beta1, a, b, v = est._unpack(theta)
    l0 = est._pass(theta)
    a, b, v = est._expert_step(a, b, v)
    args = (beta0, beta1, a, b, v)
    full = est._gating_step(*args, -np.inf)  # the full step is taken whatever its value
    assert full is not None
    return est, args, full, l0


def test_gating_step_accepts_a_full_step_that_ties_the_start():
    """Acceptance is ``l_trial >= l_start``: a full Newton step whose log-likelihood equals
    l_start exactly is taken as it is (never halved, never dropped)."""
    est, args, (theta_full, l_full), _ = prepared_gating_step()
    got = est._gating_step(*args, l_full)
    assert got is not None
    theta, lt = got
    assert lt == l_full
    np.testing.assert_array_equal(theta, theta_full)


def test_gating_step_returns_only_steps_at_least_as_good_as_the_start():
    """With l_start just above the full step's value the full step is refused; whatever comes
    back (a halved step or nothing) is never below l_start, so EM stays monotone."""
    est, args, (theta_full, l_full), l0 = prepared_gating_step()
    assert l_full > l0  # a useful step from a noisy start
    above = float(np.nextafter(l_full, np.inf))
    got = est._gating_step(*args, above)
    if got is not None:
        theta, lt = got
        assert lt >= above and not np.array_equal(theta, theta_full)
        assert lt == pytest.approx(est._loglik(theta), rel=1e-12)
