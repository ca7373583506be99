"""Base class of EM estimators: starts, the iteration loop, stopping rules, the result.

Subclasses work on a flat vector of free parameters and supply the model-specific parts
(scikit-learn ``mixture._base`` spirit):

* ``_check_options()``: validate the constructor options (ValueError naming the option);
* ``_prepare(X, y)``: validate the data and allocate work space;
* ``_initialize(rng, restart)``: a starting vector (the configured start);
* ``_global_start(kind, rng, index)``: a start of the global checks ("truth" or "data");
* ``_em_step(theta)``: the EM map, a :class:`StepOut` or ``None`` on a non-finite value;
* ``_loglik(theta)``, ``_valid(theta)``, ``_grad_norm(theta)``, ``_smooth_grad_norm(theta)``,
  ``_flags(theta)``, ``_to_params(theta)``;
* ``_certify(theta, loglik)``: the convergence certificate at a point;
* ``_refine(theta, loglik, trace, n_iter, deadline)``: the Newton refinement after EM;
* ``_inference(theta)``: standard errors; ``_passes()``: data passes spent so far;
* ``_admissible(theta)``: whether a global check's fit may replace the configured start;
  ``_canonical(theta)``: the kept fit in the layout of the truth (same density).
"""

from __future__ import annotations

import time
import warnings
from abc import ABC, abstractmethod

import numpy as np

from simstudy.estimation.acceleration import SquaremState, StepOut, squarem_cycle
from simstudy.estimation.result import CONVERGED, ConvergenceWarning, FitResult
from simstudy.model.threads import thread_limits

__all__ = ["BaseEM", "ACCELERATIONS"]

ACCELERATIONS = (None, "squarem", "lbfgs", "newton")
#: relative log-likelihood change below which the "lbfgs" acceleration switches to the polish
POLISH_SWITCH = 1e-6
#: strict mode: consecutive iterations with a relative change <= tol but no certificate after
#: which the fit is declared stalled. Over-specified top-K fits can climb onto a point where
#: the selection flips (a kink): the log-likelihood stops moving (changes ~1e-16) while the
#: held-active-set gradient stays ~1e-3, so no amount of EM iterations certifies it.
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
        Relative log-likelihood change |l_t - l_{t-1}| <= tol |l_{t-1}| that stops the loop
        (without ``grad_tol``), or after which a certificate is tried (with it).
    grad_tol : float or None
        Strict convergence: the fit stops only at a certified point (see
        :mod:`simstudy.estimation.certificate`; gradients are divided by n).
    max_iter : int
        Maximum iterations per start (an accelerated iteration is one SQUAREM cycle, a Newton
        iteration one trust-region step).
    acceleration : None, "squarem", "lbfgs" or "newton"
        "squarem": every iteration is a monotone SQUAREM cycle. "lbfgs" (needs grad_tol):
        plain EM until the relative change is <= max(tol, 1e-6), then one quasi-Newton
        polish (kept only if it does not lower l), then SQUAREM cycles until certified.
        "newton" (needs grad_tol): plain EM until the relative change is <= newton_switch,
        then trust-region Newton with boundary moves (:mod:`simstudy.estimation.newton`).
    n_init : int
        Starts of the configured kind; the largest final log-likelihood is kept.
    random_state : None, int, numpy.random.SeedSequence or numpy.random.Generator
    newton_switch : float
        Relative change at which "newton" leaves EM.
    truth_start : bool
        Global check: also start from the true parameters.
    n_data_starts : int
        Global check: also run this many data-driven starts.
    max_seconds : float or None
        Wall-time budget of the whole fit; when spent the fit stops with "timeout".
    scan_radius, scan_tol : float
        Certificate settings: scan radius in score units and tolerance per observation.
    """

    def __init__(self, *, tol, grad_tol, max_iter, acceleration, n_init, random_state,
                 newton_switch=1e-4, truth_start=False, n_data_starts=0, max_seconds=None,
                 scan_radius=0.05, scan_tol=1e-9):
        self.tol = tol
        self.grad_tol = grad_tol
        self.max_iter = max_iter
        self.acceleration = acceleration
        self.n_init = n_init
        self.random_state = random_state
        self.newton_switch = newton_switch
        self.truth_start = truth_start
        self.n_data_starts = n_data_starts
        self.max_seconds = max_seconds
        self.scan_radius = scan_radius
        self.scan_tol = scan_tol

    # -- hooks ------------------------------------------------------------------------------
    @abstractmethod
    def _check_options(self) -> None: ...

    @abstractmethod
    def _prepare(self, X, y) -> None: ...

    @abstractmethod
    def _initialize(self, rng: np.random.Generator, restart: int) -> np.ndarray: ...

    @abstractmethod
    def _global_start(self, kind: str, rng: np.random.Generator, index: int) -> np.ndarray: ...

    @abstractmethod
    def _em_step(self, theta: np.ndarray) -> StepOut | None: ...

    @abstractmethod
    def _loglik(self, theta: np.ndarray) -> float: ...

    @abstractmethod
    def _valid(self, theta: np.ndarray) -> bool: ...

    @abstractmethod
    def _grad_norm(self, theta: np.ndarray) -> float: ...

    @abstractmethod
    def _smooth_grad_norm(self, theta: np.ndarray) -> float: ...

    @abstractmethod
    def _flags(self, theta: np.ndarray) -> dict: ...

    @abstractmethod
    def _to_params(self, theta: np.ndarray): ...

    @abstractmethod
    def _certify(self, theta: np.ndarray, loglik: float): ...

    @abstractmethod
    def _refine(self, theta, loglik, trace, n_iter, deadline): ...

    @abstractmethod
    def _inference(self, theta: np.ndarray) -> dict: ...

    @abstractmethod
    def _admissible(self, theta: np.ndarray) -> bool: ...

    @abstractmethod
    def _canonical(self, theta: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _passes(self) -> int: ...

    @abstractmethod
    def _pass_counts(self) -> dict: ...

    # -- common validation --------------------------------------------------------------------
    def _check_loop_options(self) -> None:
        _check_number("tol", self.tol, low=0.0)
        _check_number("grad_tol", self.grad_tol, low=0.0, allow_none=True)
        _check_number("max_iter", self.max_iter, low=1, integer=True, strict=False)
        _check_number("n_init", self.n_init, low=1, integer=True, strict=False)
        _check_number("newton_switch", self.newton_switch, low=0.0)
        _check_number("n_data_starts", self.n_data_starts, low=0, integer=True, strict=False)
        _check_number("max_seconds", self.max_seconds, low=0.0, allow_none=True)
        _check_number("scan_radius", self.scan_radius, low=0.0)
        _check_number("scan_tol", self.scan_tol, low=0.0)
        if not isinstance(self.truth_start, bool | np.bool_):
            raise ValueError(f"truth_start: expected True or False, got {self.truth_start!r}")
        if self.acceleration not in ACCELERATIONS:
            raise ValueError(
                f"acceleration: unknown method {self.acceleration!r}; allowed: {ACCELERATIONS}"
            )
        if self.acceleration in ("lbfgs", "newton") and self.grad_tol is None:
            raise ValueError(f"acceleration: {self.acceleration!r} runs to strict convergence, "
                             "so it needs grad_tol")
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
    def _run(self, theta: np.ndarray, deadline: float | None) -> dict:
        """Iterate from ``theta`` until a stopping rule; return the start's record."""
        tol, grad_tol, max_iter = float(self.tol), self.grad_tol, int(self.max_iter)
        passes0 = self._passes()
        sq_state = SquaremState() if self.acceleration == "squarem" else None
        polish_pending = self.acceleration == "lbfgs"
        newton = self.acceleration == "newton"
        switch = max(tol, float(self.newton_switch))
        l_cur = self._loglik(theta)
        trace = [l_cur]
        n_iter = n_steps = n_polish = n_flat = 0
        cert = None
        stop = "max_iter"
        if not np.isfinite(l_cur):
            stop = "non_finite"
        while stop == "max_iter" and n_iter < max_iter:
            if deadline is not None and time.perf_counter() > deadline:
                stop = "timeout"
                break
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
            change = abs(l_cur - l_prev)
            if newton and change <= switch * abs(l_prev):
                ref = self._refine(theta, l_cur, trace, n_iter, deadline)
                theta, l_cur, n_iter, stop, cert = (ref.theta, ref.loglik, ref.n_iter, ref.stop,
                                                    ref.certificate)
                break
            if change <= tol * abs(l_prev):
                n_flat += 1
                if grad_tol is None:
                    stop = "tol"
                elif self._smooth_grad_norm(theta) <= grad_tol:
                    cert = self._certify(theta, l_cur)
                    if cert.passed:
                        stop = cert.reason
                    elif cert.improvement is not None:  # a higher point across a boundary
                        theta, l_cur = cert.improvement
                        trace.append(l_cur)
                        n_flat = 0
                if stop == "max_iter" and n_flat >= STALL_ITER and not polish_pending:
                    stop = "stalled"
            else:
                n_flat = 0
            if stop == "max_iter" and polish_pending and change <= max(tol, POLISH_SWITCH) * abs(
                    l_prev):
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
            "certificate": cert,
            "passes": self._passes() - passes0,
        }

    def _starts(self, rng):
        """(label, start) pairs: the configured starts, then the global checks."""
        for restart in range(int(self.n_init)):
            label = self.init if int(self.n_init) == 1 else f"{self.init}_{restart}"
            yield label, restart, lambda r=restart: self._initialize(rng, r)
        if self.truth_start:
            yield "truth", 0, lambda: self._global_start("truth", rng, 0)
        for j in range(int(self.n_data_starts)):
            yield f"data_start_{j}", j, lambda j=j: self._global_start("data", rng, j)

    def fit(self, X, y):
        """Fit from every start and keep the largest log-likelihood.

        The configured starts (``n_init`` of ``init``) come first, then the global checks
        (the truth, ``n_data_starts`` data-driven starts); a later start is kept only if it
        ends higher by more than the certificate tolerance and is admissible (no spike, no
        empty expert), so the result says whether the configured start reached the best
        value found.

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
        deadline = None if self.max_seconds is None else t0 + float(self.max_seconds)
        rng = np.random.default_rng(self.random_state)
        margin = float(self.scan_tol) * self._n_obs()
        best, best_idx, records = None, 0, []
        timed_out = False
        for idx, (label, _, make) in enumerate(self._starts(rng)):
            # the first start always runs (it stops at once when the budget is spent)
            if records and deadline is not None and time.perf_counter() > deadline:
                timed_out = True
                break
            rec = self._run(make(), deadline)
            rec["label"], rec["ref"] = label, self._current_ref()
            # a global check replaces the configured start only by an admissible fit: a
            # higher maximum with a spike (a variance near zero) or an empty expert is a
            # spurious maximiser of the mixture likelihood, recorded but not kept
            rec["admissible"] = idx < int(self.n_init) or self._admissible(rec["theta"])
            records.append(rec)
            timed_out |= rec["stop"] == "timeout"
            better = best is None or (
                rec["admissible"]
                and np.isfinite(rec["loglik"])
                and (not np.isfinite(best["loglik"]) or rec["loglik"] > best["loglik"] + margin)
            )
            if better:
                best, best_idx = rec, idx
        self._set_ref(best["ref"])
        theta = self._canonical(best["theta"])
        stop = "timeout" if timed_out else best["stop"]
        flags = self._flags(theta)
        flags["non_finite"] = best["stop"] == "non_finite"
        converged = stop in CONVERGED
        if not converged:
            warnings.warn(
                f"EM stopped without convergence (stop_reason={stop!r}, "
                f"{best['n_iter']} iterations)",
                ConvergenceWarning,
                stacklevel=2,
            )
        primary = records[: int(self.n_init)]
        l_primary = max(r["loglik"] for r in primary)
        l_best = best["loglik"]
        inference = self._inference(theta) if self.grad_tol is not None else {}
        self.result_ = FitResult(
            params=self._to_params(theta),
            loglik=float(self._loglik(theta)),
            loglik_trace=best["trace"],
            n_iter=best["n_iter"],
            converged=converged,
            stop_reason=stop,
            grad_norm=float(self._grad_norm(theta)),
            flags=flags,
            seconds=time.perf_counter() - t0,
            n_em_steps=best["n_steps"],
            n_polish_evals=best["n_polish"],
            n_init=int(self.n_init),
            best_restart=best_idx,
            n_passes=int(self._passes()),
            pass_counts=self._pass_counts(),
            certificate=best["certificate"],
            starts=tuple({"label": r["label"], "loglik": float(r["loglik"]), "stop": r["stop"],
                          "n_iter": int(r["n_iter"]), "passes": int(r["passes"]),
                          "admissible": bool(r["admissible"])} for r in records),
            best_start=best["label"],
            start_reached_best=bool(l_primary >= l_best - margin) if len(records) > len(
                primary) else None,
            start_gap=float(l_best - l_primary),
            **inference,
        )
        self.params_ = self.result_.params
        self.n_iter_ = self.result_.n_iter
        self.converged_ = converged
        return self.result_
