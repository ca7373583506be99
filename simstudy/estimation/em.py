"""Generalized EM for the maximum-likelihood estimator of a top-K sparse softmax gating MoE.

The iteration is exactly spec section 2: E-step with the top-K selection; weighted least
squares for every expert and its variance (floored); one Newton (IRLS) step of the gating
multinomial logit in all gating parameters but the reference expert's, with each point's
active set held, a tiny ridge, and step halving until the observed log-likelihood (selection
recomputed) is not below the log-likelihood at the start of the iteration. If no halved step
qualifies, the gating parameters stay where they were (the expert step alone never lowers the
log-likelihood), so the observed log-likelihood never decreases. With K = k this is the IRLS
step of dense softmax gating.

The E-step and the statistics of both M-steps come from one fused pass over the data
(:func:`simstudy.model.kernels.em_pass`); each backtracking trial costs one log-likelihood pass.
"""

from __future__ import annotations

import numpy as np

from simstudy.estimation.acceleration import StepOut
from simstudy.estimation.base import BaseEM, _check_number
from simstudy.estimation.init import INITS, NOISE_SCHEDULES, data_start, near_truth_start
from simstudy.model import kernels
from simstudy.model.density import check_Xy
from simstudy.model.params import MoEParams

__all__ = ["TopKMoEEM"]


class TopKMoEEM(BaseEM):
    """EM estimator of a k-expert top-K sparse softmax gating Gaussian MoE.

    Parameters
    ----------
    k : int
        Number of fitted experts.
    K : int
        Number of selected experts, 1 <= K <= k (K = k: dense softmax gating).
    tol : float, default=1e-6
        Relative log-likelihood change that stops the loop.
    grad_tol : float or None, default=None
        Strict convergence: also require the gradient norm of the observed log-likelihood in
        the free parameters (active sets held, log variances), divided by n, to be <= grad_tol.
    max_iter : int, default=2000
    acceleration : None, "squarem" or "lbfgs", default=None
        "squarem": SQUAREM with a monotone safeguard (see
        :mod:`simstudy.estimation.acceleration`). "lbfgs" (needs ``grad_tol``): EM, then an
        L-BFGS polish of the observed log-likelihood, kept only if it does not lower it, then
        SQUAREM cycles until strict convergence.
    init : {"near_truth", "data"}, default="near_truth"
    true_params : MoEParams, optional
        The truth, required by ``init="near_truth"``.
    init_noise : float, default=0.1
        Fixed noise scale of near-truth starts (ignored with ``noise_schedule="papers"``).
    noise_schedule : None or "papers", default=None
        "papers": the n-dependent noises of the papers' protocol.
    extra_atoms : sequence of int, default=()
        0-based true experts that get one extra fitted atom each (near-truth starts); requires
        ``k == true_params.k + len(extra_atoms)``; the reference expert cannot get one.
    n_init : int, default=1
        Restarts (new noise / new data-driven start each); the best log-likelihood is kept.
    var_floor : float, default=1e-6
        Lower bound of the variances (hitting it is flagged).
    random_state : None, int, SeedSequence or Generator
    n_threads : int, default=1
        Threads of numba's parallel data passes for this one fit (blocks of points in a
        ``prange``, same results to the bit). Worth it for a single large fit (n >= 1e6) on
        an otherwise idle machine; keep 1 inside studies, which already run one fit per core.
        Capped by ``NUMBA_NUM_THREADS``. BLAS is held to one thread either way.

    Attributes
    ----------
    result_ : FitResult
    params_ : MoEParams
    n_iter_ : int
    converged_ : bool

    Notes
    -----
    With K = 1 every gating weight is 1, so the likelihood does not depend on beta0 and is
    piecewise constant in beta1: the gating step is skipped and the gating stays at its start.
    """

    #: step halvings of the gating Newton step before giving up on it for this iteration
    #: (smallest step 2^-10: at a selection kink every halving fails, and each costs a pass)
    max_halvings = 10
    #: relative ridge added to the negative gating Hessian
    ridge = 1e-10

    def __init__(
        self,
        k,
        K,
        *,
        tol=1e-6,
        grad_tol=None,
        max_iter=2000,
        acceleration=None,
        init="near_truth",
        true_params=None,
        init_noise=0.1,
        noise_schedule=None,
        extra_atoms=(),
        n_init=1,
        var_floor=1e-6,
        random_state=None,
        n_threads=1,
    ):
        super().__init__(
            tol=tol,
            grad_tol=grad_tol,
            max_iter=max_iter,
            acceleration=acceleration,
            n_init=n_init,
            random_state=random_state,
        )
        self.k = k
        self.K = K
        self.init = init
        self.true_params = true_params
        self.init_noise = init_noise
        self.noise_schedule = noise_schedule
        self.extra_atoms = extra_atoms
        self.var_floor = var_floor
        self.n_threads = n_threads

    # -- validation ---------------------------------------------------------------------------
    def _check_options(self) -> None:
        k = _check_number("k", self.k, low=1, integer=True, strict=False)
        K = _check_number("K", self.K, low=1, integer=True, strict=False)
        if K > k:
            raise ValueError(f"K: must satisfy 1 <= K <= k = {k}, got K = {K}")
        self._check_loop_options()
        _check_number("var_floor", self.var_floor, low=0.0)
        self._parallel = _check_number("n_threads", self.n_threads, low=1, integer=True,
                                       strict=False) > 1  # fmt: skip
        _check_number("init_noise", self.init_noise, low=0.0, strict=False)
        if self.init not in INITS:
            raise ValueError(f"init: unknown start {self.init!r}; allowed: {list(INITS)}")
        if self.noise_schedule not in NOISE_SCHEDULES:
            raise ValueError(
                f"noise_schedule: unknown schedule {self.noise_schedule!r}; "
                f"allowed: {list(NOISE_SCHEDULES)}"
            )
        try:
            extra = [int(e) for e in self.extra_atoms]
        except (TypeError, ValueError):
            raise ValueError(
                f"extra_atoms: expected a sequence of integers, got {self.extra_atoms!r}"
            ) from None
        if any(int(e) != e or isinstance(e, bool) for e in self.extra_atoms):
            raise ValueError(f"extra_atoms: expected integers, got {list(self.extra_atoms)!r}")
        if self.init == "near_truth":
            truth = self.true_params
            if not isinstance(truth, MoEParams):
                raise ValueError(
                    "true_params: init='near_truth' needs the true MoEParams, got "
                    f"{type(truth).__name__}"
                )
            bad = [e for e in extra if not 0 <= e < truth.k]
            if bad:
                raise ValueError(
                    f"extra_atoms: entries must be true expert indices in [0, {truth.k - 1}] "
                    f"(0-based), got {bad}"
                )
            if truth.ref in extra:
                raise ValueError(
                    f"extra_atoms: the reference expert {truth.ref} cannot get an extra atom "
                    "(its cell must hold exactly one fitted atom)"
                )
            if k != truth.k + len(extra):
                raise ValueError(
                    f"extra_atoms: k = {k} must equal the true k* = {truth.k} plus "
                    f"len(extra_atoms) = {len(extra)}"
                )
        elif extra:
            raise ValueError("extra_atoms: only meaningful with init='near_truth'")
        self._k, self._K, self._extra = k, K, extra

    # -- data and work space ------------------------------------------------------------------
    def _prepare(self, X, y) -> None:
        d = self.true_params.d if self.init == "near_truth" else None
        X, y = check_Xy(X, y, d)
        n, d = X.shape
        if n < 2:
            raise ValueError(f"X: needs at least 2 rows to fit, got {n}")
        k = self._k
        p = d + 1
        self._X, self._y = X, y
        self._n, self._d, self._p = n, d, p
        self._ng = (k - 1) * p
        # statistics at the current point, and at the last trial point of a gating step (the
        # trial's fused pass doubles as the next iteration's E-step when the step is taken)
        self._stats = _Stats(k, d)
        self._trial = _Stats(k, d)
        self._trial_key = None
        self._grad = np.zeros(kernels.n_free(k, d))
        self._ref = 0  # set by _initialize
        self._log_floor = float(np.log(self.var_floor))

    def _initialize(self, rng, restart):
        if self.init == "near_truth":
            parts = near_truth_start(
                self.true_params,
                self._k,
                self._extra,
                float(self.init_noise),
                self.noise_schedule,
                self._n,
                rng,
            )
        else:
            parts = data_start(self._X, self._y, self._k, float(self.var_floor), rng)
        beta0, beta1, a, b, v, ref = parts
        self._ref = int(ref)
        v = np.maximum(v, self.var_floor)
        return self._pack(beta0, beta1, a, b, v)

    # -- parameter vector <-> arrays ----------------------------------------------------------
    def _pack(self, beta0, beta1, a, b, v) -> np.ndarray:
        free = np.arange(self._k) != self._ref
        gating = np.column_stack([beta1, beta0])[free].ravel()
        experts = np.column_stack([a, b]).ravel()
        return np.concatenate([gating, experts, np.log(v)])

    def _unpack(self, theta):
        k, d, p, ng = self._k, self._d, self._p, self._ng
        gate = np.zeros((k, p))
        gate[np.arange(k) != self._ref] = theta[:ng].reshape(k - 1, p)
        ex = theta[ng : ng + k * p].reshape(k, p)
        v = np.exp(theta[ng + k * p :])
        return (
            np.ascontiguousarray(gate[:, d]),
            np.ascontiguousarray(gate[:, :d]),
            np.ascontiguousarray(ex[:, :d]),
            np.ascontiguousarray(ex[:, d]),
            v,
        )

    def _to_params(self, theta) -> MoEParams:
        beta0, beta1, a, b, v = self._unpack(theta)
        return MoEParams(beta0, beta1, a, b, v, K=self._K, ref=self._ref)

    def _valid(self, theta) -> bool:
        return bool(
            np.all(np.isfinite(theta)) and np.all(theta[-self._k :] >= self._log_floor - 1e-12)
        )

    # -- model evaluations --------------------------------------------------------------------
    def _loglik_arrays(self, beta0, beta1, a, b, v) -> float:
        return kernels.loglik(self._X, self._y, beta0, beta1, a, b, v, self._K, self._parallel)

    def _loglik(self, theta) -> float:
        return self._loglik_arrays(*self._unpack(theta))

    def _grad_norm(self, theta) -> float:
        beta0, beta1, a, b, v = self._unpack(theta)
        kernels.obs_grad(
            self._X, self._y, beta0, beta1, a, b, v, self._K, self._ref, self._grad,
            self._parallel,
        )  # fmt: skip
        return float(np.linalg.norm(self._grad)) / self._n

    def _flags(self, theta) -> dict:
        arrays = self._unpack(theta)
        st = _Stats(self._k, self._d)
        st.run(self._X, self._y, arrays, self._K, self._ref, self._parallel)
        return {
            "var_floor": bool(np.any(arrays[4] <= self.var_floor * (1 + 1e-9))),
            "empty_expert": bool(np.any(st.sr < 1.0)),
        }

    def _pass(self, theta):
        """Fused pass at ``theta`` into ``self._stats`` (reusing a matching trial pass)."""
        if self._trial_key is not None and self._trial_key == theta.tobytes():
            self._stats, self._trial = self._trial, self._stats
            self._trial_key = None
            return self._stats.loglik
        self._trial_key = None
        return self._stats.run(self._X, self._y, self._unpack(theta), self._K, self._ref,
                               self._parallel)  # fmt: skip

    def _trial_loglik(self, beta0, beta1, a, b, v):
        """Log-likelihood at a trial point via a fused pass kept for the next iteration.

        Returns the packed trial vector and its log-likelihood; the statistics are evaluated
        at exactly the arrays the packed vector unpacks to (variances go through log/exp).
        """
        theta = self._pack(beta0, beta1, a, b, v)
        self._trial.run(self._X, self._y, self._unpack(theta), self._K, self._ref,
                        self._parallel)  # fmt: skip
        self._trial_key = theta.tobytes()
        return theta, self._trial.loglik

    # -- quasi-Newton polish ------------------------------------------------------------------
    def _polish(self, theta, max_iter):
        """L-BFGS-B on -l / n in the free parameters (log variances), analytic gradient with
        the active sets held. Points below the variance floor count as +inf (line search
        backs off). Returns (theta, loglik, evaluations)."""
        from scipy.optimize import minimize

        n = self._n
        grad = np.zeros(theta.size)
        calls = [0]

        def objective(th):
            calls[0] += 1
            if not self._valid(th):
                return np.inf, np.zeros_like(th)
            ll = kernels.obs_grad(self._X, self._y, *self._unpack(th), self._K, self._ref, grad,
                                  self._parallel)  # fmt: skip
            if not np.isfinite(ll):
                return np.inf, np.zeros_like(th)
            return -ll / n, -grad / n

        opt = minimize(
            objective,
            theta,
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": int(max_iter), "gtol": 1e-3 * float(self.grad_tol),
                     "ftol": 1e-15, "maxcor": 20},
        )  # fmt: skip
        theta_p = np.asarray(opt.x, dtype=np.float64)
        if not self._valid(theta_p):
            return None
        return theta_p, self._loglik(theta_p), calls[0]

    # -- the EM map ---------------------------------------------------------------------------
    def _expert_step(self, a, b, v):
        """Weighted least squares and floored variances from the fused-pass statistics."""
        k, d = self._k, self._d
        a_new, b_new, v_new = a.copy(), b.copy(), v.copy()
        tiny = 1e-12 * self._n
        for i in range(k):
            sr = self._stats.sr[i]
            if not sr > tiny:  # an (almost) empty expert keeps its parameters
                continue
            A, c = self._stats.XtX[i], self._stats.Xty[i]
            try:
                coef = np.linalg.solve(A, c)
            except np.linalg.LinAlgError:
                coef = np.linalg.lstsq(A, c, rcond=None)[0]
            if not np.all(np.isfinite(coef)):
                coef = np.linalg.lstsq(A, c, rcond=None)[0]
            rss = self._stats.syy[i] - 2.0 * (coef @ c) + coef @ A @ coef
            a_new[i], b_new[i] = coef[:d], coef[d]
            v_new[i] = max(rss / sr, self.var_floor)
        return a_new, b_new, v_new

    def _gating_step(self, beta0, beta1, a, b, v, l_start):
        """Newton step with halving; returns (theta, loglik) or None if no step qualifies.

        The full step is evaluated by a fused pass (kept for the next E-step), halved steps
        by plain log-likelihood passes.
        """
        ng, p, d = self._ng, self._p, self._d
        g = self._stats.g
        A = -self._stats.H
        scale = max(1.0, float(np.max(np.abs(np.diag(A))))) if ng else 1.0
        A = A + self.ridge * scale * np.eye(ng)
        try:
            delta = np.linalg.solve(A, g)
        except np.linalg.LinAlgError:
            delta = np.linalg.lstsq(A, g, rcond=None)[0]
        if not np.all(np.isfinite(delta)) or not np.any(delta):
            return None
        free = np.arange(self._k) != self._ref
        step = np.zeros((self._k, p))
        step[free] = delta.reshape(-1, p)
        t = 1.0
        for halving in range(self.max_halvings):
            b1 = beta1 + t * step[:, :d]
            b0 = beta0 + t * step[:, d]
            if halving == 0:
                theta, lt = self._trial_loglik(b0, b1, a, b, v)
            else:
                theta = self._pack(b0, b1, a, b, v)
                lt = self._loglik(theta)
            if np.isfinite(lt) and lt >= l_start:
                return theta, lt
            t *= 0.5
        return None

    def _em_step(self, theta) -> StepOut | None:
        beta0, beta1, a, b, v = self._unpack(theta)
        l0 = self._pass(theta)
        if not np.isfinite(l0):
            return None
        gnorm = float(np.linalg.norm(self._stats.grad)) / self._n
        a, b, v = self._expert_step(a, b, v)
        if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b)) and np.all(np.isfinite(v))):
            return None
        gate = None
        if self._ng and self._K > 1:
            gate = self._gating_step(beta0, beta1, a, b, v, l0)
        if gate is None:
            theta_new, l1 = self._trial_loglik(beta0, beta1, a, b, v)
        else:
            theta_new, l1 = gate
        if not np.isfinite(l1):
            return None
        return StepOut(theta_new, l0, l1, gnorm)


class _Stats:
    """Buffers of one fused pass (:func:`simstudy.model.kernels.em_pass`)."""

    def __init__(self, k, d):
        p = d + 1
        ng = (k - 1) * p
        self.XtX = np.zeros((k, p, p))
        self.Xty = np.zeros((k, p))
        self.sr = np.zeros(k)
        self.syy = np.zeros(k)
        self.g = np.zeros(ng)
        self.H = np.zeros((ng, ng))
        self.grad = np.zeros(kernels.n_free(k, d))
        self.loglik = np.nan

    def run(self, X, y, arrays, K, ref, parallel=False) -> float:
        beta0, beta1, a, b, v = arrays
        self.loglik = kernels.em_pass(
            X, y, beta0, beta1, a, b, v, K, ref,
            self.XtX, self.Xty, self.sr, self.syy, self.g, self.H, self.grad, parallel,
        )  # fmt: skip
        return self.loglik
