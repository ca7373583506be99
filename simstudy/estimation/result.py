"""Result object of a fit (statsmodels-results spirit: a record, standard errors, a summary)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import norm

from simstudy.model.params import MoEParams

__all__ = ["FitResult", "ConvergenceWarning", "STOP_REASONS", "CONVERGED", "FLAG_KEYS",
           "param_names"]

#: every stop reason a fit can end with (see :attr:`FitResult.stop_reason`)
STOP_REASONS = ("tol", "certified", "certified_on_tie", "certified_on_bound", "diverging",
                "stalled", "max_iter", "timeout", "non_finite")
#: stop reasons that count as converged
CONVERGED = ("tol", "certified", "certified_on_tie", "certified_on_bound")
#: flags that make a fit "degenerate"
FLAG_KEYS = ("var_floor", "empty_expert", "non_finite")


class ConvergenceWarning(UserWarning):
    """The fit stopped before its stopping rule (cap, stall, divergence, timeout, non-finite)."""


def param_names(k: int, d: int) -> tuple[str, ...]:
    """Names of the scalar parameters, experts numbered from 1 as in the spec.

    Per expert j: ``beta0_j``, the slope coordinates ``beta1_j`` (d = 1) or ``beta1_j_c``
    (c = 1..d), likewise ``a_j`` / ``a_j_c``, then ``b_j`` and ``v_j``.
    """
    names = []
    for j in range(1, k + 1):
        names.append(f"beta0_{j}")
        names += [f"beta1_{j}"] if d == 1 else [f"beta1_{j}_{c}" for c in range(1, d + 1)]
        names += [f"a_{j}"] if d == 1 else [f"a_{j}_{c}" for c in range(1, d + 1)]
        names += [f"b_{j}", f"v_{j}"]
    return tuple(names)


def params_vector(p: MoEParams) -> np.ndarray:
    """The parameters in the order of :func:`param_names`."""
    rows = [np.concatenate([[p.beta0[j]], p.beta1[j], p.a[j], [p.b[j], p.v[j]]])
            for j in range(p.k)]
    return np.concatenate(rows)


@dataclass(frozen=True)
class FitResult:
    """Outcome of one fit (the best of its starts).

    Attributes
    ----------
    params : MoEParams
        Fitted parameters (the last finite iterate of the kept start).
    loglik : float
        Observed log-likelihood at ``params``.
    loglik_trace : numpy.ndarray
        Log-likelihood at the start and after every accepted iteration (of the kept start).
    n_iter : int
        Iterations run (EM iterations, SQUAREM cycles, a polish, Newton iterations).
    converged : bool
        True when the stop reason is one of :data:`CONVERGED`.
    stop_reason : str
        ``"tol"`` (papers' rule: relative change <= tol), ``"certified"``,
        ``"certified_on_tie"``, ``"certified_on_bound"`` (strict rule, see
        :mod:`simstudy.estimation.certificate`), or, not converged: ``"diverging"`` (the
        gating slopes grow without bound), ``"stalled"`` (no progress and no certificate),
        ``"max_iter"``, ``"timeout"`` (the ``max_seconds`` budget ran out), ``"non_finite"``.
    grad_norm : float
        Norm of the held-active-set gradient in the free parameters, divided by n (a
        diagnostic: on a piece edge its slope part does not vanish).
    flags : dict[str, bool]
        ``var_floor``, ``empty_expert``, ``non_finite`` (these make the fit "degenerate"),
        and ``var_small``: a variance below ``VAR_SMALL`` times the variance of y (reported,
        status unchanged).
    seconds : float
        Wall time of the whole fit (all starts).
    n_em_steps, n_polish_evals : int
        EM-map evaluations and quasi-Newton polish evaluations of the kept start.
    n_init, best_restart : int
        Configured starts; index of the kept start among all starts run.
    n_passes : int
        Full-data evaluations of the whole fit, all starts and checks included
        (log-likelihood, gradient, Hessian, EM pass, one per node of an exact line scan; a
        data start's subsample EM counted in proportion to its size); ``pass_counts``
        splits them by kind.
    certificate : Certificate or None
        The last certificate of the kept start (its tolerances, radius and diagnostics).
    starts : tuple of dict
        Per start: ``label`` ("near_truth", "truth", "data_start_0", ...), ``loglik``,
        ``stop``, ``n_iter``, ``passes``.
    best_start : str
        Label of the kept start.
    start_reached_best : bool or None
        Whether the configured start reached the best value found (within the certificate
        tolerance); None when no global check ran.
    start_gap : float
        Best log-likelihood found minus that of the configured start (>= 0).
    names : tuple of str
        Scalar parameter names (:func:`param_names`).
    cov : numpy.ndarray or None
        Covariance of the free parameters (inverse observed information; log variances).
    information : str
        ``"ok"``, ``"singular"`` (over-specified fits, or an observed information that is not
        positive definite or is ill-conditioned; ``information_note`` says which) or
        ``"not_computed"`` (papers' protocol).
    bse_vector : numpy.ndarray or None
        Standard errors in the order of ``names``; NaN for the reference expert's fixed
        gating, all NaN when the information is singular.
    """

    params: MoEParams
    loglik: float
    loglik_trace: np.ndarray
    n_iter: int
    converged: bool
    stop_reason: str
    grad_norm: float
    flags: dict = field(default_factory=dict)
    seconds: float = 0.0
    n_em_steps: int = 0
    n_polish_evals: int = 0
    n_init: int = 1
    best_restart: int = 0
    n_passes: int = 0
    pass_counts: dict = field(default_factory=dict)
    certificate: object = None
    starts: tuple = ()
    best_start: str = ""
    start_reached_best: bool | None = None
    start_gap: float = 0.0
    names: tuple = ()
    cov: np.ndarray | None = None
    information: str = "not_computed"
    information_note: str = ""
    bse_vector: np.ndarray | None = None

    @property
    def status(self) -> str:
        """``"timeout"``, ``"degenerate"`` (a flag of FLAG_KEYS), ``"ok"`` or
        ``"not_converged"``."""
        if self.stop_reason == "timeout":
            return "timeout"
        if any(self.flags.get(key, False) for key in FLAG_KEYS):
            return "degenerate"
        return "ok" if self.converged else "not_converged"

    # -- standard errors (statsmodels style) ---------------------------------------------------
    @property
    def bse(self) -> np.ndarray:
        """Standard errors aligned with :attr:`names` (NaN where singular or fixed).

        Computed from the exact observed information at the fit (active sets held); the
        variances' errors by the delta method from the log scale.
        """
        if self.bse_vector is None:
            return np.full(len(self.names) or len(params_vector(self.params)), np.nan)
        return self.bse_vector

    def conf_int(self, alpha: float = 0.05) -> np.ndarray:
        """Wald intervals, shape (p, 2), aligned with :attr:`names`.

        ``estimate -/+ z_{1 - alpha/2} * bse``; for a variance the interval of log v mapped
        back (v exp(-/+ z se(log v))), so it stays positive. NaN rows where :attr:`bse` is.
        """
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha: must lie in (0, 1), got {alpha!r}")
        z = norm.ppf(1.0 - alpha / 2.0)
        est = params_vector(self.params)
        se = self.bse
        out = np.column_stack([est - z * se, est + z * se])
        is_v = np.array([n.startswith("v_") for n in self.names], dtype=bool)
        if is_v.any():
            rel = se[is_v] / est[is_v]  # se of log v
            out[is_v] = np.column_stack([est[is_v] * np.exp(-z * rel),
                                         est[is_v] * np.exp(z * rel)])
        return out

    def to_dict(self) -> dict:
        """JSON-serialisable dict (parameters as nested lists, the trace as a list)."""
        return {
            "params": self.params.to_dict(),
            "loglik": float(self.loglik),
            "loglik_trace": [float(t) for t in self.loglik_trace],
            "n_iter": int(self.n_iter),
            "converged": bool(self.converged),
            "stop_reason": self.stop_reason,
            "grad_norm": float(self.grad_norm),
            "flags": {key: bool(self.flags.get(key, False)) for key in FLAG_KEYS},
            "status": self.status,
            "seconds": float(self.seconds),
            "n_em_steps": int(self.n_em_steps),
            "n_polish_evals": int(self.n_polish_evals),
            "n_init": int(self.n_init),
            "best_restart": int(self.best_restart),
            "n_passes": int(self.n_passes),
            "pass_counts": {key: int(val) for key, val in self.pass_counts.items()},
            "starts": [dict(s) for s in self.starts],
            "best_start": self.best_start,
            "start_reached_best": self.start_reached_best,
            "information": self.information,
            "bse": [float(s) for s in self.bse],
        }

    def summary(self) -> str:
        """A short human-readable report with the parameter table."""
        flags = ", ".join(key for key in (*FLAG_KEYS, "var_small") if self.flags.get(key))
        lines = [
            f"TopK MoE fit: status={self.status} stop={self.stop_reason} "
            f"iterations={self.n_iter} passes={self.n_passes}",
            f"  loglik={self.loglik:.6f} grad_norm={self.grad_norm:.3e} "
            f"seconds={self.seconds:.3f} flags={flags or 'none'}",
        ]
        cert = self.certificate
        if cert is not None:
            lines.append(f"  certificate: smooth gradient {cert.grad_smooth:.2e}, slope gradient "
                         f"{cert.grad_slopes:.2e}, radius {cert.radius:g} (score units), scan "
                         f"tolerance {cert.tol:.2e}, {cert.n_scans} scans"
                         + (f", refused: {cert.refusal}" if cert.refusal else ""))
        if len(self.starts) > 1:
            lines.append("  starts: " + ", ".join(f"{s['label']} {s['loglik']:.4f} ({s['stop']})"
                                                 for s in self.starts)
                         + f"; kept {self.best_start}")
        lines.append(f"  standard errors: {self.information}"
                     + (f" ({self.information_note})" if self.information_note else ""))
        if self.names:
            ci = self.conf_int()
            est = params_vector(self.params)
            lines.append(f"  {'parameter':<12}{'estimate':>12}{'std err':>12}"
                         f"{'[0.025':>12}{'0.975]':>12}")
            for q, name in enumerate(self.names):
                lines.append(f"  {name:<12}{est[q]:>12.5f}{self.bse[q]:>12.5f}"
                             f"{ci[q, 0]:>12.5f}{ci[q, 1]:>12.5f}")
        else:
            lines.append(repr(self.params))
        return "\n".join(lines)
