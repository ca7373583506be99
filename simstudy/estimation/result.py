"""Result object of an EM fit (statsmodels-results spirit: a plain record plus a summary)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simstudy.model.params import MoEParams

__all__ = ["FitResult", "ConvergenceWarning", "STOP_REASONS", "FLAG_KEYS"]

STOP_REASONS = ("tol", "strict", "stalled", "max_iter", "non_finite")
FLAG_KEYS = ("var_floor", "empty_expert", "non_finite")


class ConvergenceWarning(UserWarning):
    """The EM stopped at ``max_iter`` (or on a non-finite value) before its stopping rule."""


@dataclass(frozen=True)
class FitResult:
    """Outcome of one (best-of-restarts) EM fit.

    Attributes
    ----------
    params : MoEParams
        Fitted parameters (the last finite iterate).
    loglik : float
        Observed log-likelihood at ``params``.
    loglik_trace : numpy.ndarray
        Log-likelihood at the start and after every iteration (of the kept restart).
    n_iter : int
        Iterations run (an accelerated iteration is one SQUAREM cycle, see ``n_em_steps``; a
        quasi-Newton polish counts as one).
    converged : bool
        True when the stopping rule (``"tol"`` or ``"strict"``) stopped the fit.
    stop_reason : str
        One of ``"tol"``, ``"strict"``, ``"stalled"`` (strict mode: the log-likelihood stopped
        moving for many iterations while the gradient stayed above grad_tol, e.g. at a point
        where the top-K selection flips; not converged), ``"max_iter"``, ``"non_finite"``.
    grad_norm : float
        Euclidean norm of the observed log-likelihood gradient in the free parameters (active
        sets held, variances on the log scale), divided by n, at ``params``.
    flags : dict[str, bool]
        ``var_floor``: a fitted variance sits at the floor; ``empty_expert``: an expert has
        total responsibility below one observation; ``non_finite``: a non-finite value stopped
        the fit.
    seconds : float
        Wall time of the whole fit (all restarts).
    n_em_steps : int
        EM-map evaluations of the kept restart (equals ``n_iter`` without acceleration).
    n_polish_evals : int
        Log-likelihood/gradient evaluations of the quasi-Newton polish (``"lbfgs"``).
    n_init : int
        Restarts run; ``best_restart`` is the index of the kept one.
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

    @property
    def status(self) -> str:
        """``"degenerate"`` if any flag is set, else ``"ok"`` or ``"not_converged"``."""
        if any(self.flags.get(key, False) for key in FLAG_KEYS):
            return "degenerate"
        return "ok" if self.converged else "not_converged"

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
        }

    def summary(self) -> str:
        """A short human-readable report."""
        flags = ", ".join(key for key in FLAG_KEYS if self.flags.get(key)) or "none"
        return (
            f"TopK MoE EM fit: status={self.status} stop={self.stop_reason} "
            f"iterations={self.n_iter} (EM steps {self.n_em_steps})\n"
            f"  loglik={self.loglik:.6f} grad_norm={self.grad_norm:.3e} "
            f"seconds={self.seconds:.3f} flags={flags}\n{self.params!r}"
        )
