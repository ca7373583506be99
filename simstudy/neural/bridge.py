"""Bridge to the statistics: the project's routers as the gating of a Gaussian MoE regression.

:class:`RouterMoE` puts a :class:`simstudy.neural.routers.Router` (``d`` inputs, ``k`` experts,
``K`` active, with a bias) in front of ``k`` Gaussian linear experts (slope ``a``, intercept
``b``, log-variance). Router weight and bias are the gating ``beta1`` and ``beta0`` of
:class:`simstudy.model.MoEParams`. Variants:

``"topk_softmax"``
    top-K chosen on ``beta1 . x`` (ties to the lower index), softmax of ``beta1 . x + beta0``
    over them: exactly the statistical model of ``topk_moe.md``.
``"softmax_topk"``
    softmax over all k, keep the K largest, no renormalisation: the kept weights sum to less
    than one, so its "likelihood" is that of a sub-density; its fitted parameters are read as
    the statistical model's when scored.
``"noisy_topk"``
    training adds ``N(0, 1) * softplus(W_noise x)`` to the logits (selection still on the slope
    part plus noise) and the loss adds ``aux_weight * (cv^2(importance) + cv^2(load))``; at
    evaluation there is no noise, so the fitted model is the statistical one.

:func:`fit_adam` trains any variant by minibatch Adam, :func:`fit_em` runs the project's EM
(:class:`simstudy.estimation.TopKMoEEM`) from the same start, and :func:`random_start` /
:func:`kmeans_start` make the shared starts. Every fit is scored under the statistical model
(:func:`simstudy.model.loglik`), so all methods are compared on one objective.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from simstudy.estimation import TopKMoEEM
from simstudy.estimation.init import data_start
from simstudy.model import MoEParams, loglik
from simstudy.neural.routers import Router

__all__ = [
    "BRIDGE_VARIANTS",
    "RouterMoE",
    "AdamFit",
    "EMFit",
    "fit_adam",
    "fit_em",
    "random_start",
    "kmeans_start",
    "regauge",
    "time_to_tolerance",
]

BRIDGE_VARIANTS = ("topk_softmax", "softmax_topk", "noisy_topk")


def _t(x) -> torch.Tensor:
    return torch.tensor(np.array(x, dtype=np.float64), dtype=torch.float64)


class RouterMoE(nn.Module):
    """Gaussian MoE regression gated by the project's :class:`~simstudy.neural.routers.Router`.

    Parameters
    ----------
    init : MoEParams
        Starting parameters (``k`` experts, ``K`` active, ``d`` inputs).
    variant : {"topk_softmax", "softmax_topk", "noisy_topk"}
        Router variant (see the module docstring).
    """

    def __init__(self, init: MoEParams, variant: str = "topk_softmax"):
        super().__init__()
        if not isinstance(init, MoEParams):
            raise ValueError(f"init: expected MoEParams, got {type(init).__name__}")
        if variant not in BRIDGE_VARIANTS:
            raise ValueError(f"variant: unknown bridge variant {variant!r}; allowed: "
                             f"{list(BRIDGE_VARIANTS)}")
        self.variant = variant
        self.router = Router(init.d, init.k, init.K, variant, bias=True,
                             select_on_slope=variant != "softmax_topk").double()
        with torch.no_grad():
            self.router.gate.weight.copy_(_t(init.beta1))
            self.router.gate.bias.copy_(_t(init.beta0))
        self.a = nn.Parameter(_t(init.a))
        self.b = nn.Parameter(_t(init.b))
        self.log_v = nn.Parameter(_t(np.log(init.v)))
        self.K, self.ref = init.K, init.ref

    def forward(self, X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean negative log-(sub)density of the batch and the router's auxiliary loss."""
        r = self.router(X)
        mean = (X @ self.a.T + self.b).gather(1, r.indices)
        log_v = self.log_v.expand(X.shape[0], -1).gather(1, r.indices)
        log_norm = -0.5 * (math.log(2 * math.pi) + log_v + (y[:, None] - mean) ** 2
                           / log_v.exp())
        log_w = torch.log(r.weights.clamp_min(1e-300))
        return -torch.logsumexp(log_w + log_norm, dim=1).mean(), r.aux_loss

    def to_params(self) -> MoEParams:
        """The current parameters as :class:`MoEParams` (gauge: the start's reference atom).

        Subtracting the reference's gating row from every row changes neither the top-K sets
        (all slopes shift by the same ``x . beta1_ref``) nor the weights, so the model is the
        same; :func:`regauge` picks another reference.
        """
        with torch.no_grad():
            w = self.router.gate.weight.numpy()
            c = self.router.gate.bias.numpy()
            return MoEParams(
                beta0=c - c[self.ref], beta1=w - w[self.ref], a=self.a.numpy().copy(),
                b=self.b.numpy().copy(), v=np.exp(self.log_v.numpy()), K=self.K, ref=self.ref,
            )


def regauge(params: MoEParams, truth: MoEParams) -> MoEParams:
    """Re-express ``params`` with the atom nearest the true reference expert as reference.

    The Voronoi losses expect the fitted reference atom in the true reference's cell; a fit
    from a data-driven start has an arbitrary reference. "Nearest" is measured on the expert
    coordinates ``(a, b, v)``, which do not depend on the gating gauge. The model (top-K sets
    and weights) is unchanged.
    """
    dist = ((params.a - truth.a[truth.ref]) ** 2).sum(axis=1) \
        + (params.b - truth.b[truth.ref]) ** 2 + (params.v - truth.v[truth.ref]) ** 2
    ref = int(np.argmin(dist))
    return params.replace(beta0=params.beta0 - params.beta0[ref],
                          beta1=params.beta1 - params.beta1[ref], ref=ref)


def random_start(X, y, k: int, K: int, rng: np.random.Generator) -> MoEParams:
    """A random start: experts through random data points, random gating slopes.

    Expert i gets intercept ``y_j - a_i x_j`` at a random data point j with slope
    ``a_i ~ N(0, (sd(y) / sd(x))^2)``, variance ``var(y)``; gating slopes
    ``N(0, 1 / sd(x)^2)``, intercepts 0, reference atom 0 (gating row zero).
    """
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64)
    sx = X.std(axis=0)
    sx[sx == 0] = 1.0
    sy = float(y.std()) or 1.0
    j = rng.choice(len(y), size=k, replace=len(y) < k)
    a = rng.normal(size=(k, X.shape[1])) * sy / sx
    b = y[j] - (a * X[j]).sum(axis=1)
    beta1 = rng.normal(size=(k, X.shape[1])) / sx
    beta1[0] = 0.0
    return MoEParams(beta0=np.zeros(k), beta1=beta1, a=a, b=b, v=np.full(k, sy**2), K=K, ref=0)


def kmeans_start(X, y, k: int, K: int, rng: np.random.Generator,
                 var_floor: float = 1e-6) -> MoEParams:
    """The EM's own data-driven start (:func:`simstudy.estimation.init.data_start`): k-means
    of the standardised ``(x, y)``, weighted least squares per cluster, random gating slopes."""
    beta0, beta1, a, b, v, ref = data_start(np.asarray(X, dtype=np.float64),
                                            np.asarray(y, dtype=np.float64), k, var_floor, rng)
    return MoEParams(beta0=beta0, beta1=beta1, a=a, b=b, v=v, K=K, ref=ref)


def time_to_tolerance(trace, target: float) -> float:
    """First time in ``trace`` (``(seconds, mean log-lik)`` pairs) with log-lik >= ``target``.

    NaN if the trace never gets there.
    """
    for secs, ll in trace:
        if ll >= target:
            return float(secs)
    return float("nan")


@dataclass
class AdamFit:
    """Result of :func:`fit_adam`.

    Attributes
    ----------
    params : MoEParams
        Best parameters seen at an evaluation (statistical-model log-likelihood).
    loglik : float
        Their log-likelihood under the statistical model (sum over the data).
    n_steps, n_evals : int
        Adam steps taken; full-data evaluations.
    converged : bool
        Stopped by the plateau rule (not by ``max_steps``).
    seconds : float
    trace : list of (seconds, mean log-lik)
        At every evaluation (time since the start, statistical model, no noise).
    """

    params: MoEParams
    loglik: float
    n_steps: int
    n_evals: int
    converged: bool
    seconds: float
    trace: list[tuple[float, float]] = field(default_factory=list)


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")
    return int(value)


def fit_adam(
    X,
    y,
    init: MoEParams,
    variant: str = "topk_softmax",
    *,
    lr: float = 0.05,
    batch: int = 256,
    max_steps: int = 4000,
    eval_every: int = 50,
    patience: int = 2,
    min_lr_factor: float = 1 / 16,
    tol: float = 1e-6,
    aux_weight: float = 0.01,
    seed: int = 0,
) -> AdamFit:
    """Fit a :class:`RouterMoE` by minibatch Adam (reshuffled epochs, float64).

    Every ``eval_every`` steps the full-data log-likelihood of the statistical model at the
    current parameters is computed; after ``patience`` evaluations without a relative
    improvement of ``tol`` of the best, the step size halves, and the fit stops once it has
    reached ``lr * min_lr_factor`` (a plateau schedule, so the minibatch noise settles). The
    best evaluated parameters are returned.

    Parameters
    ----------
    X, y : array_like, shapes (n, d) and (n,)
    init : MoEParams
        Starting point (shared with the EM).
    variant : str
        One of :data:`BRIDGE_VARIANTS`.
    lr, batch, max_steps, eval_every, patience, min_lr_factor, tol : optimisation settings.
    aux_weight : float
        Weight of the noisy top-k load-balancing loss (Shazeer et al. use 0.01-0.1); ignored
        by the other variants (their auxiliary loss is zero).
    seed : int
        Seeds the minibatch order and the router noise.
    """
    if not lr > 0:
        raise ValueError(f"lr: must be > 0, got {lr}")
    if not tol >= 0:
        raise ValueError(f"tol: must be >= 0, got {tol}")
    if not 0 < min_lr_factor <= 1:
        raise ValueError(f"min_lr_factor: must lie in (0, 1], got {min_lr_factor}")
    if not aux_weight >= 0:
        raise ValueError(f"aux_weight: must be >= 0, got {aux_weight}")
    batch = _check_positive_int("batch", batch)
    max_steps = _check_positive_int("max_steps", max_steps)
    eval_every = _check_positive_int("eval_every", eval_every)
    patience = _check_positive_int("patience", patience)
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    n = len(y)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = RouterMoE(init, variant)
    # foreach: one fused update for all parameter tensors (fewer small ops per step)
    opt = torch.optim.Adam(model.parameters(), lr=lr, foreach=True)
    start = time.perf_counter()

    def evaluate() -> tuple[float, MoEParams]:
        p = model.to_params()
        return loglik(p, X, y), p

    best_ll, best_p = evaluate()
    trace = [(0.0, best_ll / n)]
    cur_lr, since, steps, n_evals, converged = lr, 0, 0, 1, False
    perm, pos = torch.randperm(n, generator=gen), 0
    b = min(batch, n)
    model.train()
    while steps < max_steps:
        if pos + b > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos:pos + b]
        pos += b
        nll, aux = model(Xt[idx], yt[idx])
        loss = nll + aux_weight * aux if variant == "noisy_topk" else nll
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
        if steps % eval_every and steps < max_steps:
            continue
        ll, p = evaluate()
        n_evals += 1
        trace.append((time.perf_counter() - start, ll / n))
        if np.isfinite(ll) and ll > best_ll + tol * abs(best_ll):
            best_ll, best_p, since = ll, p, 0
        else:
            if np.isfinite(ll) and ll > best_ll:
                best_ll, best_p = ll, p
            since += 1
        if since >= patience:
            if cur_lr <= lr * min_lr_factor * (1 + 1e-12):
                converged = True
                break
            cur_lr /= 2
            for g in opt.param_groups:
                g["lr"] = cur_lr
            since = 0
    return AdamFit(best_p, float(best_ll), steps, n_evals, converged,
                   time.perf_counter() - start, trace)


@dataclass
class EMFit:
    """Result of :func:`fit_em`: the EM's :class:`~simstudy.estimation.FitResult` fields used
    here, and a trace of ``(approximate seconds, mean log-lik)``."""

    params: MoEParams
    loglik: float
    n_iter: int
    converged: bool
    stop_reason: str
    seconds: float
    trace: list[tuple[float, float]] = field(default_factory=list)


class _StartEM(TopKMoEEM):
    """:class:`TopKMoEEM` started at given parameters (the subclass hook is ``_initialize``)."""

    def __init__(self, start: MoEParams, **kw):
        super().__init__(start.k, start.K, init="data", **kw)
        self.start = start

    def _initialize(self, rng, restart):
        s = self.start
        self._ref = int(s.ref)
        return self._pack(s.beta0.copy(), s.beta1.copy(), s.a.copy(), s.b.copy(),
                          np.maximum(s.v, self.var_floor))


def fit_em(X, y, start: MoEParams, *, tol: float = 1e-10, grad_tol: float | None = 1e-6,
           max_iter: int = 3000) -> EMFit:
    """The project's EM from ``start`` (SQUAREM, strict convergence by default).

    SQUAREM cycles cost about the same (about three EM steps each), so the trace's times are
    the fit's wall time spread evenly over its iterations (approximate). Non-convergence is an
    outcome (``converged`` false, ``stop_reason``), never an error.
    """
    if not isinstance(start, MoEParams):
        raise ValueError(f"start: expected MoEParams, got {type(start).__name__}")
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    est = _StartEM(start, tol=tol, grad_tol=grad_tol, max_iter=max_iter,
                   acceleration="squarem", n_init=1, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # non-convergence is recorded in the result
        res = est.fit(X, y)
    n = len(y)
    tr = np.asarray(res.loglik_trace, dtype=np.float64)
    steps = max(len(tr) - 1, 1)
    trace = [(res.seconds * i / steps, float(v) / n) for i, v in enumerate(tr)]
    return EMFit(res.params, float(res.loglik), int(res.n_iter), bool(res.converged),
                 str(res.stop_reason), float(res.seconds), trace)
