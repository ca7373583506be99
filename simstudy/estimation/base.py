"""Base class of EM estimators: restarts, the iteration loop, stopping rules, the result.

Subclasses work on a flat vector of free parameters and supply the model-specific parts
(scikit-learn ``mixture._base`` spirit):

* ``_check_options()``: validate the constructor options (ValueError naming the option);
* ``_prepare(X, y)``: validate the data and allocate work space;
* ``_initialize(rng, restart)``: a starting vector;
* ``_em_step(theta)``: the EM map, a :class:`StepOut` or ``None`` on a non-finite value;
* ``_loglik(theta)``, ``_valid(theta)``, ``_grad_norm(theta)``, ``_flags(theta)``,
  ``_to_params(theta)``.
"""

from __future__ import annotations

import time
import warnings
from abc import ABC, abstractmethod

import numpy as np

from simstudy.estimation.acceleration import SquaremState, StepOut, squarem_cycle
from simstudy.estimation.result import ConvergenceWarning, FitResult
from simstudy.model.threads import thread_limits

__all__ = ["BaseEM", "ACCELERATIONS"]

ACCELERATIONS = (None, "squarem", "lbfgs")
#: relative log-likelihood change below which the "lbfgs" acceleration switches to the polish
POLISH_SWITCH = 1e-6
#: strict mode: consecutive iterations with a relative change <= tol but a gradient above
#: grad_tol after which the fit is declared stalled. Over-specified top-K fits can climb onto a
#: point where the selection flips (a kink): the log-likelihood stops moving (changes ~1e-16)
#: while the held-active-set gradient stays ~1e-3, so no amount of iterations certifies it.
STALL_ITER = 20


def _check_number(name, value, *, low=None, integer=False, allow_none=False, strict=True):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    if integer and int(value) != value:
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    if not np.isfinite(value):
        raise ValueError(f"{name}: must be finite, got {value!r}")
    if low is not None and (value <= low if strict else value < low):
        raise ValueError(f"{name}: must be {'>' if strict else '>='} {low}, got {value!r}")
    return int(value) if integer else float(value)


class BaseEM(ABC):
    """EM loop shared by the estimators (see the module docstring for the subclass hooks).

    Parameters
    ----------
    tol : float
        Relative log-likelihood change |l_t - l_{t-1}| <= tol |l_{t-1}| that stops the loop.
    grad_tol : float or None
        If given, the loop stops only when additionally the scaled gradient norm of the
        observed log-likelihood is <= grad_tol (strict convergence, stop_reason "strict").
    max_iter : int
        Maximum iterations per restart (an accelerated iteration is one SQUAREM cycle).
    acceleration : None, "squarem" or "lbfgs"
        "squarem": every iteration is a monotone SQUAREM cycle. "lbfgs" (needs grad_tol):
        plain EM until the relative change is <= max(tol, 1e-6), then one quasi-Newton
        polish of the observed log-likelihood (kept only if it does not lower it), then
        SQUAREM cycles until the strict rule certifies the point.
    n_init : int
        Restarts; the one with the largest final log-likelihood is kept.
    random_state : None, int, numpy.random.SeedSequence or numpy.random.Generator
    """

    def __init__(self, *, tol, grad_tol, max_iter, acceleration, n_init, random_state):
        self.tol = tol
        self.grad_tol = grad_tol
        self.max_iter = max_iter
        self.acceleration = acceleration
        self.n_init = n_init
        self.random_state = random_state

    # -- hooks ------------------------------------------------------------------------------
    @abstractmethod
    def _check_options(self) -> None: ...

    @abstractmethod
    def _prepare(self, X, y) -> None: ...

    @abstractmethod
    def _initialize(self, rng: np.random.Generator, restart: int) -> np.ndarray: ...

    @abstractmethod
    def _em_step(self, theta: np.ndarray) -> StepOut | None: ...

    @abstractmethod
    def _loglik(self, theta: np.ndarray) -> float: ...

    @abstractmethod
    def _valid(self, theta: np.ndarray) -> bool: ...

    @abstractmethod
    def _grad_norm(self, theta: np.ndarray) -> float: ...

    @abstractmethod
    def _flags(self, theta: np.ndarray) -> dict: ...

    @abstractmethod
    def _to_params(self, theta: np.ndarray): ...

    # -- common validation --------------------------------------------------------------------
    def _check_loop_options(self) -> None:
        _check_number("tol", self.tol, low=0.0)
        _check_number("grad_tol", self.grad_tol, low=0.0, allow_none=True)
        _check_number("max_iter", self.max_iter, low=1, integer=True, strict=False)
        _check_number("n_init", self.n_init, low=1, integer=True, strict=False)
        if self.acceleration not in ACCELERATIONS:
            raise ValueError(
                f"acceleration: unknown method {self.acceleration!r}; allowed: {ACCELERATIONS}"
            )
        if self.acceleration == "lbfgs" and self.grad_tol is None:
            raise ValueError("acceleration: 'lbfgs' polishes towards strict convergence, so it "
                             "needs grad_tol")
        rs = self.random_state
        if not (
            rs is None
            or isinstance(rs, np.random.Generator | np.random.SeedSequence)
            or (isinstance(rs, int | np.integer) and not isinstance(rs, bool) and rs >= 0)
        ):
            raise ValueError(
                "random_state: expected None, a non-negative int, a numpy SeedSequence or a "
                f"numpy Generator, got {rs!r}"
            )

    # -- the loop -----------------------------------------------------------------------------
    def _run(self, theta: np.ndarray) -> dict:
        """Iterate from ``theta`` until a stopping rule; return the restart's record."""
        tol, grad_tol, max_iter = float(self.tol), self.grad_tol, int(self.max_iter)
        sq_state = SquaremState() if self.acceleration == "squarem" else None
        polish_pending = self.acceleration == "lbfgs"
        l_cur = self._loglik(theta)
        trace = [l_cur]
        n_iter = n_steps = n_polish = n_flat = 0
        stop = "max_iter"
        if not np.isfinite(l_cur):
            stop = "non_finite"
        while stop == "max_iter" and n_iter < max_iter:
            if sq_state is None:
                out = self._em_step(theta)
            else:
                out = squarem_cycle(theta, self._em_step, self._loglik, self._valid, sq_state)
            if out is None or not np.isfinite(out.loglik_out) or not self._valid(out.theta):
                stop = "non_finite"
                break
            n_iter += 1
            n_steps += out.n_steps
            l_prev, l_cur, theta = l_cur, out.loglik_out, out.theta
            trace.append(l_cur)
            if abs(l_cur - l_prev) <= tol * abs(l_prev):
                n_flat += 1
                if grad_tol is None:
                    stop = "tol"
                # the gradient at the input of the step is a cheap pre-filter; the exact one
                # is computed at the new point before declaring strict convergence
                elif out.grad_norm_in <= 10.0 * grad_tol and self._grad_norm(theta) <= grad_tol:
                    stop = "strict"
                elif n_flat >= STALL_ITER and not polish_pending:
                    stop = "stalled"
            else:
                n_flat = 0
            switch = max(tol, POLISH_SWITCH) * abs(l_prev)
            if stop == "max_iter" and polish_pending and abs(l_cur - l_prev) <= switch:
                polish_pending = False
                sq_state = SquaremState()  # certify the polished point with SQUAREM cycles
                res = self._polish(theta, max_iter)
                if res is not None:
                    theta_p, l_p, n_evals = res
                    n_polish += n_evals
                    # monotone safeguard: keep the polish only if it does not lower l
                    if np.isfinite(l_p) and l_p >= l_cur and self._valid(theta_p):
                        theta, l_cur = theta_p, l_p
                        trace.append(l_cur)
                        n_iter += 1
        return {
            "theta": theta,
            "loglik": l_cur,
            "trace": np.asarray(trace),
            "n_iter": n_iter,
            "n_steps": n_steps,
            "n_polish": n_polish,
            "stop": stop,
        }

    def fit(self, X, y):
        """Fit by EM from ``n_init`` starts and keep the largest log-likelihood.

        BLAS is held to one thread and numba to ``n_threads`` (default 1) for the whole fit.

        Returns
        -------
        FitResult
            Also stored as ``result_``; the fitted parameters as ``params_``.
        """
        with thread_limits(getattr(self, "n_threads", 1)):
            return self._fit(X, y)

    def _fit(self, X, y):
        t0 = time.perf_counter()
        self._check_options()
        self._prepare(X, y)
        rng = np.random.default_rng(self.random_state)
        best, best_idx = None, 0
        for restart in range(int(self.n_init)):
            rec = self._run(self._initialize(rng, restart))
            better = best is None or (
                np.isfinite(rec["loglik"])
                and (not np.isfinite(best["loglik"]) or rec["loglik"] > best["loglik"])
            )
            if better:
                best, best_idx = rec, restart
        theta = best["theta"]
        flags = self._flags(theta)
        flags["non_finite"] = best["stop"] == "non_finite"
        converged = best["stop"] in ("tol", "strict")
        if not converged:
            warnings.warn(
                f"EM stopped without convergence (stop_reason={best['stop']!r}, "
                f"{best['n_iter']} iterations)",
                ConvergenceWarning,
                stacklevel=2,
            )
        self.result_ = FitResult(
            params=self._to_params(theta),
            loglik=float(self._loglik(theta)),
            loglik_trace=best["trace"],
            n_iter=best["n_iter"],
            converged=converged,
            stop_reason=best["stop"],
            grad_norm=float(self._grad_norm(theta)),
            flags=flags,
            seconds=time.perf_counter() - t0,
            n_em_steps=best["n_steps"],
            n_polish_evals=best["n_polish"],
            n_init=int(self.n_init),
            best_restart=best_idx,
        )
        self.params_ = self.result_.params
        self.n_iter_ = self.result_.n_iter
        self.converged_ = converged
        return self.result_
