"""The statistical top-K MoE as a torch module, fitted by Adam on the negative log-likelihood.

Exact parametrisation of :class:`simstudy.model.MoEParams`: gating ``beta0 (k,)``,
``beta1 (k, d)`` with the reference expert's gating fixed at zero, Gaussian experts with slope
``a``, intercept ``b`` and log-variance. The top-K set is chosen on ``beta1 . x`` (ties to the
lower index) and the weights are the softmax of ``beta1 . x + beta0`` over it, exactly as in
:func:`simstudy.model.log_gating_weights`; the selection itself carries no gradient (it is
piecewise constant), as in the likelihood.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from simstudy.model import MoEParams
from simstudy.neural.routers import topk_indices

__all__ = ["TorchTopKMoE", "AdamFit", "fit_adam"]


class TorchTopKMoE(nn.Module):
    """Top-K sparse softmax gating Gaussian MoE (float64), initialised from ``params``."""

    def __init__(self, params: MoEParams):
        super().__init__()
        if not isinstance(params, MoEParams):
            raise ValueError(f"params: expected MoEParams, got {type(params).__name__}")
        t = lambda x: torch.tensor(np.array(x), dtype=torch.float64)  # noqa: E731
        self.K = params.K
        self.ref = params.ref
        self.beta0 = nn.Parameter(t(params.beta0))
        self.beta1 = nn.Parameter(t(params.beta1))
        self.a = nn.Parameter(t(params.a))
        self.b = nn.Parameter(t(params.b))
        self.log_v = nn.Parameter(t(np.log(params.v)))
        mask = torch.ones(params.k, dtype=torch.float64)
        mask[params.ref] = 0.0
        self.register_buffer("free", mask)  # zero for the fixed reference gating

    def log_density(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(y_n | x_n), shape (n,)."""
        slope = X @ (self.beta1 * self.free[:, None]).T
        logits = slope + self.beta0 * self.free
        idx = topk_indices(slope, self.K, stable=True)
        log_w = torch.log_softmax(logits.gather(1, idx), dim=1)
        mean = (X @ self.a.T + self.b).gather(1, idx)
        log_v = self.log_v.expand_as(logits).gather(1, idx)
        log_norm = -0.5 * (math.log(2 * math.pi) + log_v + (y[:, None] - mean) ** 2 / log_v.exp())
        return torch.logsumexp(log_w + log_norm, dim=1)

    def nll(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood."""
        return -self.log_density(X, y).mean()

    def to_params(self) -> MoEParams:
        """The current parameters as :class:`MoEParams`."""
        with torch.no_grad():
            return MoEParams(
                beta0=(self.beta0 * self.free).numpy().copy(),
                beta1=(self.beta1 * self.free[:, None]).numpy().copy(),
                a=self.a.numpy().copy(),
                b=self.b.numpy().copy(),
                v=self.log_v.exp().numpy().copy(),
                K=self.K,
                ref=self.ref,
            )


@dataclass
class AdamFit:
    """Result of :func:`fit_adam` (statsmodels-style results object)."""

    params: MoEParams
    loglik: float
    n_iter: int
    converged: bool
    seconds: float
    nll_trace: list[float] = field(default_factory=list)


def fit_adam(
    X,
    y,
    init: MoEParams,
    lr: float = 0.02,
    max_iter: int = 4000,
    tol: float = 1e-9,
    patience: int = 50,
) -> AdamFit:
    """Fit by full-batch Adam on the mean negative log-likelihood.

    Parameters
    ----------
    X, y : array_like, shapes (n, d) and (n,)
    init : MoEParams
        Starting point (the same near-truth start as the EM fit).
    lr : float
        Adam step size; multiplied by 0.5 whenever the loss has not improved for ``patience``
        steps (a plateau schedule, so the fit can settle).
    max_iter : int
        Maximum number of Adam steps.
    tol : float
        Stop when the best loss improved by less than ``tol`` (relative) over ``patience``
        steps at the smallest step size (lr / 64).
    """
    if not lr > 0:
        raise ValueError(f"lr: must be > 0, got {lr}")
    if isinstance(max_iter, bool) or int(max_iter) != max_iter or max_iter < 1:
        raise ValueError(f"max_iter: must be an integer >= 1, got {max_iter!r}")
    Xt = torch.as_tensor(np.asarray(X, dtype=np.float64))
    yt = torch.as_tensor(np.asarray(y, dtype=np.float64))
    model = TorchTopKMoE(init)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    start = time.perf_counter()
    best = math.inf
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    since, cur_lr, trace, converged = 0, lr, [], False
    n_iter = 0
    for n_iter in range(1, int(max_iter) + 1):  # noqa: B007 -- n_iter is reported after the loop
        opt.zero_grad()
        loss = model.nll(Xt, yt)
        loss.backward()
        val = float(loss.detach())
        trace.append(val)
        if val < best - tol * max(1.0, abs(best)):
            best, since = val, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            since += 1
            if val < best:
                best = val
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
        if since >= patience:
            if cur_lr <= lr / 64:
                converged = True
                break
            cur_lr /= 2
            for g in opt.param_groups:
                g["lr"] = cur_lr
            since = 0
        opt.step()
    model.load_state_dict(best_state)
    with torch.no_grad():
        ll = float(model.log_density(Xt, yt).sum())
    return AdamFit(model.to_params(), ll, n_iter, converged, time.perf_counter() - start, trace)
