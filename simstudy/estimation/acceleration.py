"""SQUAREM acceleration of a monotone EM map (Varadhan & Roland 2008, step length S3).

One SQUAREM cycle from theta0: two EM steps theta1 = F(theta0), theta2 = F(theta1); with
r = theta1 - theta0 and u = theta2 - 2 theta1 + theta0 the extrapolation is
theta' = theta0 - 2 alpha r + alpha^2 u with alpha = -|r| / |u| (S3), alpha <= -1. Then one
stabilising EM step from theta'. alpha = -1 gives theta' = theta2 exactly, i.e. plain EM.

Monotone safeguard: theta' is kept only if it is valid and its log-likelihood is at least that
of theta2; otherwise alpha is pulled towards -1 ((alpha - 1) / 2) and finally falls back to
theta2. Since the EM map itself never lowers the log-likelihood, a cycle never does either.
The largest step length adapts as in the SQUAREM package: it starts at 1 and is multiplied by 4
whenever the full step length is accepted at the current maximum.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["StepOut", "SquaremState", "squarem_cycle"]


@dataclass
class StepOut:
    """One EM-map evaluation: ``theta_out = F(theta_in)``.

    ``loglik_in``/``loglik_out`` are the observed log-likelihoods at the input and output;
    ``grad_norm_in`` the scaled gradient norm at the input; ``n_steps`` the EM-map
    evaluations spent (more than one for an accelerated cycle).
    """

    theta: np.ndarray
    loglik_in: float
    loglik_out: float
    grad_norm_in: float
    n_steps: int = 1


@dataclass
class SquaremState:
    """Adaptive bound of the step length, carried from cycle to cycle."""

    step_max: float = 1.0
    step_max_factor: float = 4.0
    max_backtracks: int = 6
    n_extrapolated: int = 0
    n_fallback: int = 0


def squarem_cycle(
    theta0: np.ndarray,
    em_map: Callable[[np.ndarray], StepOut | None],
    loglik: Callable[[np.ndarray], float],
    valid: Callable[[np.ndarray], bool],
    state: SquaremState,
) -> StepOut | None:
    """One monotone SQUAREM cycle; ``None`` when a plain EM step itself fails (non-finite).

    Parameters
    ----------
    theta0 : numpy.ndarray
        Current parameter vector (free parameters, variances on the log scale).
    em_map : callable
        The EM map, returning a :class:`StepOut` or ``None`` on a non-finite value.
    loglik : callable
        Observed log-likelihood of a parameter vector.
    valid : callable
        False for vectors outside the parameter space (e.g. a variance below the floor).
    state : SquaremState
        Step-length state, updated in place.
    """
    s1 = em_map(theta0)
    if s1 is None:
        return None
    s2 = em_map(s1.theta)
    if s2 is None:
        return None
    n_steps = 2
    r = s1.theta - theta0
    u = s2.theta - 2.0 * s1.theta + theta0
    nr = float(np.linalg.norm(r))
    nu = float(np.linalg.norm(u))
    theta_p = s2.theta
    if nr > 0.0 and nu > 0.0:
        alpha = -min(max(nr / nu, 1.0), state.step_max)
        at_max = alpha == -state.step_max
        for _ in range(state.max_backtracks):
            if alpha >= -1.0:
                break
            cand = theta0 - 2.0 * alpha * r + alpha * alpha * u
            if valid(cand):
                l_cand = loglik(cand)
                if np.isfinite(l_cand) and l_cand >= s2.loglik_out:
                    theta_p = cand
                    state.n_extrapolated += 1
                    if at_max:
                        state.step_max *= state.step_max_factor
                    break
            alpha = 0.5 * (alpha - 1.0)
            at_max = False
        else:
            state.n_fallback += 1
    s3 = em_map(theta_p)
    n_steps += 1
    if s3 is None:
        # the extrapolated point broke the EM step: stabilise from the plain EM point instead
        s3 = em_map(s2.theta)
        n_steps += 1
        if s3 is None:
            return None
    return StepOut(s3.theta, s1.loglik_in, s3.loglik_out, s3.grad_norm_in, n_steps)
