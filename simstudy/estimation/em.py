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

Strict fits end with a certificate (:mod:`simstudy.estimation.certificate`); the strict
protocol leaves EM early for trust-region Newton with boundary moves
(:mod:`simstudy.estimation.newton`) and runs global checks (the truth and data-driven starts).
"""

from __future__ import annotations

import numpy as np

from simstudy.estimation.acceleration import StepOut
from simstudy.estimation.align import align_to_truth
from simstudy.estimation.base import BaseEM, _check_number
from simstudy.estimation.certificate import CertificateSettings, certify
from simstudy.estimation.continuation import smoothed_path
from simstudy.estimation.inference import observed_inference
from simstudy.estimation.init import INITS, NOISE_SCHEDULES, data_start, near_truth_start
from simstudy.estimation.likelihood import Likelihood
from simstudy.estimation.newton import NewtonSettings, refine
from simstudy.model import kernels
from simstudy.model.density import check_Xy
from simstudy.model.params import MoEParams

__all__ = ["TopKMoEEM", "VAR_SMALL"]

#: a fitted variance below VAR_SMALL * var(y) is flagged "var_small" (near-degenerate: a
#: spike on a few points; the true variances of the named designs are >= 6e-3 var(y))
VAR_SMALL = 1e-3
#: data-driven starts of the global check are first fitted on a subsample of this size
DATA_START_SUBSAMPLE = 4000
#: score scale max |beta1_i . x| beyond which strict fits probe for diverging slopes (the
#: named designs have 6 to 26; see simstudy.estimation.certificate.diverging)
DIVERGE_SCORE = 100.0


class TopKMoEEM(BaseEM):
    """EM estimator of a k-expert top-K sparse softmax gating Gaussian MoE.

    Parameters
    ----------
    k : int
        Number of fitted experts.
    K : int
        Number of selected experts, 1 <= K <= k (K = k: dense softmax gating).
    tol : float, default=1e-6
        Relative log-likelihood change that stops the loop (or, with ``grad_tol``, after
        which a certificate is tried).
    grad_tol : float or None, default=None
        Strict convergence: the fit stops only at a certified point (gradients of the observed
        log-likelihood in the free parameters, log variances, divided by n, <= grad_tol; exact
        scans across the region boundaries; see :mod:`simstudy.estimation.certificate`).
    max_iter : int, default=2000
    acceleration : None, "squarem", "lbfgs" or "newton", default=None
        "squarem": SQUAREM with a monotone safeguard (see
        :mod:`simstudy.estimation.acceleration`). "lbfgs" (needs ``grad_tol``): EM, then an
        L-BFGS polish of the observed log-likelihood, kept only if it does not lower it, then
        SQUAREM cycles until certified. "newton" (needs ``grad_tol``): EM until the relative
        change is <= ``newton_switch``, then trust-region Newton with the exact Hessian and
        boundary moves (:mod:`simstudy.estimation.newton`), the strict protocol's choice.
    init : {"near_truth", "data"}, default="near_truth"
    true_params : MoEParams, optional
        The truth, required by ``init="near_truth"`` and ``truth_start``.
    init_noise : float, default=0.1
        Fixed noise scale of near-truth starts (ignored with ``noise_schedule="papers"``).
    noise_schedule : None or "papers", default=None
        "papers": the n-dependent noises of the papers' protocol.
    extra_atoms : sequence of int, default=()
        0-based true experts that get one extra fitted atom each (near-truth starts); requires
        ``k == true_params.k + len(extra_atoms)``; the reference expert cannot get one.
    n_init : int, default=1
        Starts of the ``init`` kind (new noise / new data-driven start each).
    var_floor : float, default=1e-6
        Lower bound of the variances **relative to the sample variance of y** (the floor is
        ``var_floor * var(y)``, or ``var_floor`` itself when var(y) is 0 or overflows;
        hitting it is flagged).
    random_state : None, int, SeedSequence or Generator
    newton_switch : float, default=1e-4
        Relative change at which "newton" leaves EM.
    truth_start : bool, default=False
        Global check: also start from the true parameters (needs ``true_params`` with k
        experts, or k* plus ``extra_atoms``).
    n_data_starts : int, default=0
        Global check: also run this many data-driven starts (each first fitted by EM on a
        random subsample of DATA_START_SUBSAMPLE points, then on all the data).
    max_seconds : float or None, default=None
        Wall-time budget of the whole fit; when it runs out the fit stops with stop reason
        and status "timeout".
    beta1_bound : float or None, default=None
        Keep every gating-slope coordinate in [-beta1_bound, beta1_bound] (the optimiser
        enforces it; a fit held on the bound ends "certified_on_bound").
    scan_radius : float, default=0.05
        Certificate scans cover every slope move that changes no score beta1_i . x by more
        than this (score units).
    scan_tol : float, default=1e-9
        Certificate tolerance per observation: a scan refuses when it finds a value above
        l + scan_tol * n.
    continuation : "auto", True or False, default="auto"
        "newton" only: between EM and the Newton refinement, follow the maximum of a
        smoothed-selection likelihood towards the hard one
        (:mod:`simstudy.estimation.continuation`), kept only where it raises the hard
        log-likelihood. "auto": where boundaries move with the slopes (d >= 2, K < k); in
        d = 1 every boundary sits at x = 0 whatever the slopes.
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
    piecewise constant in beta1: EM keeps the gating at its start; strict fits move the
    boundaries only through the certificate's scans.
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
        newton_switch=1e-4,
        truth_start=False,
        n_data_starts=0,
        max_seconds=None,
        beta1_bound=None,
        scan_radius=0.05,
        scan_tol=1e-9,
        continuation="auto",
        n_threads=1,
    ):
        super().__init__(
            tol=tol,
            grad_tol=grad_tol,
            max_iter=max_iter,
            acceleration=acceleration,
            n_init=n_init,
            random_state=random_state,
            newton_switch=newton_switch,
            truth_start=truth_start,
            n_data_starts=n_data_starts,
            max_seconds=max_seconds,
            scan_radius=scan_radius,
            scan_tol=scan_tol,
        )
        self.k = k
        self.K = K
        self.init = init
        self.true_params = true_params
        self.init_noise = init_noise
        self.noise_schedule = noise_schedule
        self.extra_atoms = extra_atoms
        self.var_floor = var_floor
        self.beta1_bound = beta1_bound
        self.continuation = continuation
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
        _check_number("beta1_bound", self.beta1_bound, low=0.0, allow_none=True)
        if not (self.continuation == "auto" or isinstance(self.continuation, bool | np.bool_)):
            raise ValueError(
                f"continuation: expected 'auto', True or False, got {self.continuation!r}")
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
        truth = self.true_params
        if self.init == "near_truth" or self.truth_start:
            if not isinstance(truth, MoEParams):
                why = "init='near_truth'" if self.init == "near_truth" else "truth_start"
                raise ValueError(
                    f"true_params: {why} needs the true MoEParams, got {type(truth).__name__}"
                )
        if self.init == "near_truth":
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
        if self.truth_start and self.init != "near_truth" and k != truth.k:
            raise ValueError(
                f"truth_start: with init={self.init!r} the fit must have the truth's "
                f"k* = {truth.k} experts, got k = {k}"
            )
        self._k, self._K, self._extra = k, K, extra

    # -- data and work space ------------------------------------------------------------------
    def _prepare(self, X, y) -> None:
        d = self.true_params.d if isinstance(self.true_params, MoEParams) else None
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
        with np.errstate(over="ignore", invalid="ignore"):
            var_y = float(np.var(y))
        # the scale of the floor; a constant or overflowing y falls back to the absolute scale
        self._var_y = var_y if np.isfinite(var_y) and var_y > 0 else 1.0
        self._floor = float(self.var_floor) * self._var_y
        self._log_floor = float(np.log(self._floor))
        self._lik = Likelihood(X, y, k, self._K, self._floor, self.beta1_bound, self._parallel)
        self._ref = 0  # set by _initialize
        self._lik.set_ref(0)

    def _start_vector(self, parts) -> np.ndarray:
        beta0, beta1, a, b, v, ref = parts
        self._set_ref(ref)
        v = np.maximum(v, self._floor)
        if self.beta1_bound is not None:
            beta1 = np.clip(beta1, -self.beta1_bound, self.beta1_bound)
        return self._pack(beta0, beta1, a, b, v)

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
            parts = data_start(self._X, self._y, self._k, self._floor, rng)
        return self._start_vector(parts)

    def _global_start(self, kind, rng, index):
        """The truth itself or a data-driven start.

        The truth start of an over-specified fit puts each extra atom on its true expert
        (mass split, as in near-truth starts) with the slope moved by 0.05 score units: two
        exactly equal slopes would leave the order of their scores to rounding, point by
        point, as soon as an iteration moves them.
        """
        if kind == "truth":
            extra = self._extra if self.init == "near_truth" else []
            beta0, beta1, a, b, v, ref = near_truth_start(self.true_params, self._k, extra, 0.0,
                                                          None, self._n, rng)
            k_star = self.true_params.k
            if self._k > k_star:
                beta1 = beta1.copy()
                beta1[k_star:] += 0.05 / float(np.max(self._lik.xmax))
            return self._start_vector((beta0, beta1, a, b, v, ref))
        return self._subsample_start(rng)

    def _subsample_start(self, rng):
        """A data-driven start fitted by EM on a random subsample, as a start for all data."""
        n = self._n
        m = min(n, DATA_START_SUBSAMPLE)
        idx = np.sort(rng.choice(n, size=m, replace=False)) if m < n else np.arange(n)
        parts = data_start(self._X[idx], self._y[idx], self._k, self._floor, rng)
        if m < n:
            sub = TopKMoEEM(self._k, self._K, init="data", tol=1e-6, max_iter=300,
                            var_floor=self.var_floor, beta1_bound=self.beta1_bound,
                            n_threads=self.n_threads)
            sub._check_options()
            sub._prepare(self._X[idx], self._y[idx])
            rec = sub._run(sub._start_vector(parts), None)
            self._lik.count("em", int(np.ceil(rec["passes"] * m / n)))
            beta0, beta1, a, b, v = sub._unpack(rec["theta"])
            parts = (beta0, beta1, a, b, v, sub._ref)
        return self._start_vector(parts)

    def _n_obs(self) -> int:
        return self._n

    def _current_ref(self) -> int:
        return self._ref

    def _set_ref(self, ref) -> None:
        self._ref = int(ref)
        self._lik.set_ref(self._ref)

    def _passes(self) -> int:
        return self._lik.passes

    def _pass_counts(self) -> dict:
        return dict(self._lik.counts)

    # -- parameter vector <-> arrays ----------------------------------------------------------
    def _pack(self, beta0, beta1, a, b, v) -> np.ndarray:
        return self._lik.pack(beta0, beta1, a, b, v)

    def _unpack(self, theta):
        return self._lik.unpack(theta)

    def _to_params(self, theta) -> MoEParams:
        beta0, beta1, a, b, v = self._unpack(theta)
        return MoEParams(beta0, beta1, a, b, v, K=self._K, ref=self._ref)

    def _valid(self, theta) -> bool:
        return bool(
            np.all(np.isfinite(theta)) and np.all(theta[-self._k :] >= self._log_floor - 1e-12)
        )

    # -- model evaluations --------------------------------------------------------------------
    def _loglik(self, theta) -> float:
        return self._lik.loglik(theta)

    def _grad_norm(self, theta) -> float:
        _, g = self._lik.grad(theta)
        return float(np.linalg.norm(g)) / self._n

    def _smooth_grad_norm(self, theta) -> float:
        _, g = self._lik.grad(theta)
        return float(np.linalg.norm(g[self._lik.smooth])) / self._n

    def _flags(self, theta) -> dict:
        arrays = self._unpack(theta)
        st = _Stats(self._k, self._d)
        st.run(self._X, self._y, arrays, self._K, self._ref, self._parallel)
        self._lik.count("em")
        return {
            "var_floor": bool(np.any(arrays[4] <= self._floor * (1 + 1e-9))),
            "empty_expert": bool(np.any(st.sr < 1.0)),
            "var_small": bool(np.any(arrays[4] < VAR_SMALL * self._var_y)),
        }

    def _canonical(self, theta):
        """A fit from a data-driven start relabelled to the truth's layout (experts matched
        to the true ones, the true reference), kept only if the log-likelihood is unchanged
        (a permutation can change the tie rule at exact ties)."""
        truth = self.true_params
        if (not isinstance(truth, MoEParams) or self._k < truth.k
                or not np.all(np.isfinite(self._unpack(theta)[4]))):
            return theta
        fit = self._to_params(theta)
        new = align_to_truth(fit, truth)
        if new == fit:
            return theta
        l_old = self._loglik(theta)
        ref_old = self._ref
        self._set_ref(new.ref)
        theta_new = self._pack(new.beta0, new.beta1, new.a, new.b, new.v)
        l_new = self._loglik(theta_new)
        if np.isfinite(l_new) and abs(l_new - l_old) <= 1e-9 * max(1.0, abs(l_old)):
            return theta_new
        self._set_ref(ref_old)
        return theta

    def _admissible(self, theta) -> bool:
        flags = self._flags(theta)
        return bool(np.all(np.isfinite(theta))) and not (
            flags["var_floor"] or flags["var_small"] or flags["empty_expert"])

    def _cert_settings(self) -> CertificateSettings:
        return CertificateSettings(
            grad_tol=float(self.grad_tol), radius=float(self.scan_radius),
            tol_per_obs=float(self.scan_tol),
            diverge_score=None if self.beta1_bound is not None else DIVERGE_SCORE)

    def _certify(self, theta, loglik):
        lik = self._lik
        l0, g = lik.grad(theta)
        normals, pairs = lik.boundary_normals(theta)
        return certify(lik, theta, l0, g, normals, pairs, self._cert_settings())

    def _use_continuation(self) -> bool:
        if self.continuation == "auto":
            return self._d >= 2 and self._K < self._k
        return bool(self.continuation)

    def _refine(self, theta, loglik, trace, n_iter, deadline):
        if self._use_continuation():
            theta_c = smoothed_path(self._lik, theta)
            l_c = self._loglik(theta_c)
            if np.isfinite(l_c) and l_c >= loglik:  # monotone: only a higher point is kept
                theta, loglik = theta_c, l_c
                trace.append(l_c)
        cs = self._cert_settings()
        settings = NewtonSettings(certificate=cs, max_iter=int(self.max_iter),
                                  diverge_score=cs.diverge_score, deadline=deadline)
        return refine(self._lik, theta, loglik, trace, n_iter, settings)

    def _inference(self, theta) -> dict:
        truth = self.true_params
        over = isinstance(truth, MoEParams) and self._k > truth.k
        return observed_inference(self._lik, theta, over_specified=over)

    def _pass(self, theta):
        """Fused pass at ``theta`` into ``self._stats`` (reusing a matching trial pass)."""
        if self._trial_key is not None and self._trial_key == theta.tobytes():
            self._stats, self._trial = self._trial, self._stats
            self._trial_key = None
            return self._stats.loglik
        self._trial_key = None
        self._lik.count("em")
        return self._stats.run(self._X, self._y, self._unpack(theta), self._K, self._ref,
                               self._parallel)  # fmt: skip

    def _trial_loglik(self, beta0, beta1, a, b, v):
        """Log-likelihood at a trial point via a fused pass kept for the next iteration.

        Returns the packed trial vector and its log-likelihood; the statistics are evaluated
        at exactly the arrays the packed vector unpacks to (variances go through log/exp).
        """
        theta = self._pack(beta0, beta1, a, b, v)
        self._lik.count("em")
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
        lik = self._lik
        calls = [0]

        def objective(th):
            calls[0] += 1
            if not self._valid(th):
                return np.inf, np.zeros_like(th)
            ll, grad = lik.grad(th)
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
            v_new[i] = max(rss / sr, self._floor)
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
        if self.acceleration == "newton" and d == 1 and self._K < self._k:
            # warm-up for Newton: never halve onto a tie (see _tie_cap)
            t = _tie_cap(beta1[:, 0], step[:, 0], self._K, float(np.max(self._lik.xmax)))
            if t <= 0.0:
                return None
        bound = self.beta1_bound
        for halving in range(self.max_halvings):
            b1 = beta1 + t * step[:, :d]
            if bound is not None:  # projected step: the slopes stay in the box
                b1 = np.clip(b1, -bound, bound)
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


def _tie_cap(beta1, step1, K, xmax, rel_margin=1e-10):
    """Largest step fraction in (0, 1] that stops short of a tie changing the selection (d = 1).

    In d = 1 every boundary sits at x = 0, so the selection changes along a step only where
    two slopes cross, and only if the top-K sets at x = +1 or x = -1 differ on the two sides.
    Halving a step that crosses such a tie approaches it geometrically until the two slopes
    differ by a few ulps, where the order of their scores is decided by rounding point by
    point; the strict protocol's EM warm-up therefore stops a margin (1e-10 of the score
    scale) short of it. Returns 1.0 without such a crossing, 0.0 when already at the margin.
    """
    k = beta1.shape[0]
    scale = max(float(np.max(np.abs(beta1))) * xmax, 1.0)
    margin = rel_margin * scale / xmax

    def sets(b):
        order = np.lexsort((np.arange(k), -b))  # ties to the lower index
        low = np.lexsort((np.arange(k), b))
        return frozenset(order[:K].tolist()), frozenset(low[:K].tolist())

    cap = 1.0
    for i in range(k):
        for j in range(i + 1, k):
            rate = step1[i] - step1[j]
            gap = beta1[j] - beta1[i]
            if rate == 0.0 or not 0.0 <= gap / rate <= 1.0:
                continue
            tc = gap / rate
            before = sets(beta1 + 0.5 * tc * step1) if tc > 0 else sets(beta1)
            after = sets(beta1 + min(1.0, tc + 1e-6 + 0.5 * (1.0 - tc)) * step1)
            if before == after:
                continue
            cap = min(cap, max(tc - margin / abs(rate), 0.0))
    return cap


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
