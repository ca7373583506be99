"""Top-K routers and a sparse mixture-of-experts layer (spec ``neural.md`` section 1).

Router variants over E experts for tokens ``h`` (shape (T, hidden)), logits ``z = W h + c``:

``"topk_softmax"``
    softmax over the K largest logits, zero elsewhere (Mixtral; the statistical model's gating).
``"softmax_topk"``
    softmax over all E logits, keep the K largest probabilities, no renormalisation (Switch top-1).
``"noisy_topk"``
    Shazeer et al. (2017): in training the logits get ``N(0, 1) * softplus(W_noise h)`` added,
    then topk-softmax; auxiliary load-balancing loss ``cv^2(importance) + cv^2(load)`` with the
    paper's smooth load estimator (normal CDF).
``"dense_softmax"``
    softmax over all E experts (K is E).

The statistical model selects the top-K set on the slope part ``beta1 . x`` but weights with
``beta1 . x + beta0``: :func:`route` takes optional ``selection_logits`` for that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "VARIANTS",
    "RouterOutput",
    "topk_indices",
    "route",
    "cv_squared",
    "noisy_topk_load",
    "load_balancing_loss",
    "Router",
    "ExpertFFN",
    "SparseMoE",
    "DenseMaskedMoE",
    "ActiveFlopsFFN",
    "dense_weights",
]

VARIANTS = ("topk_softmax", "softmax_topk", "noisy_topk", "dense_softmax")


def _check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"variant: unknown router variant {variant!r}; allowed: {list(VARIANTS)}")
    return variant


def _check_k(k: int, n_experts: int) -> int:
    if isinstance(k, bool) or int(k) != k or not 1 <= k <= n_experts:
        raise ValueError(f"k: must be an integer with 1 <= k <= n_experts = {n_experts}, got {k!r}")
    return int(k)


@dataclass
class RouterOutput:
    """What a router decides for a batch of T tokens.

    Attributes
    ----------
    indices : torch.Tensor, shape (T, K), int64
        Selected experts of each token.
    weights : torch.Tensor, shape (T, K)
        Their gating weights (same order as ``indices``).
    logits : torch.Tensor, shape (T, E)
        Router logits used for the weights (noisy ones for noisy top-k in training).
    aux_loss : torch.Tensor
        Load-balancing loss (scalar; zero for variants without one).
    """

    indices: torch.Tensor
    weights: torch.Tensor
    logits: torch.Tensor
    aux_loss: torch.Tensor

    @property
    def n_experts(self) -> int:
        return self.logits.shape[-1]

    def dense(self) -> torch.Tensor:
        """The (T, E) weight matrix, zero outside each token's selected experts."""
        return dense_weights(self.indices, self.weights, self.n_experts)


def dense_weights(indices: torch.Tensor, weights: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Scatter (T, K) weights at (T, K) indices into a (T, E) matrix of zeros."""
    out = weights.new_zeros(weights.shape[0], n_experts)
    return out.scatter(1, indices, weights)


def topk_indices(scores: torch.Tensor, k: int, stable: bool = False) -> torch.Tensor:
    """Indices of the k largest scores per row.

    ``stable=True`` breaks ties towards the lower index (as :func:`simstudy.model.active_mask`
    does) at the price of a full sort; ``torch.topk`` leaves tie order unspecified.
    """
    if stable:
        return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]
    return torch.topk(scores, k, dim=-1, sorted=False).indices


def route(
    logits: torch.Tensor,
    k: int,
    variant: str = "topk_softmax",
    selection_logits: torch.Tensor | None = None,
    stable: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Selected experts and weights from logits (no noise; see :class:`Router` for that).

    Parameters
    ----------
    logits : torch.Tensor, shape (T, E)
        Logits that the weights are a softmax of.
    k : int
        Experts per token (ignored by ``"dense_softmax"``, which uses all E).
    variant : str
        One of :data:`VARIANTS`; ``"noisy_topk"`` behaves as ``"topk_softmax"`` here.
    selection_logits : torch.Tensor, optional, shape (T, E)
        Scores that choose the top-K set (default: ``logits``). The statistical model selects on
        ``beta1 . x`` and weights with ``beta1 . x + beta0``. Only the top-k variants use it.
    stable : bool
        Ties go to the lower expert index (needs a sort).

    Returns
    -------
    indices : torch.Tensor, shape (T, K)
    weights : torch.Tensor, shape (T, K)
    """
    _check_variant(variant)
    if logits.ndim != 2:
        raise ValueError(f"logits: expected shape (T, E), got {tuple(logits.shape)}")
    n_experts = logits.shape[1]
    if variant == "dense_softmax":
        idx = torch.arange(n_experts, device=logits.device).expand(logits.shape[0], n_experts)
        return idx, torch.softmax(logits, dim=-1)
    k = _check_k(k, n_experts)
    if variant == "softmax_topk":
        if selection_logits is not None:
            raise ValueError("selection_logits: only the topk_softmax/noisy_topk variants use it")
        probs = torch.softmax(logits, dim=-1)
        idx = topk_indices(probs, k, stable)
        return idx, probs.gather(1, idx)
    sel = logits if selection_logits is None else selection_logits
    if sel.shape != logits.shape:
        raise ValueError(
            f"selection_logits: shape {tuple(sel.shape)} differs from logits {tuple(logits.shape)}"
        )
    idx = topk_indices(sel, k, stable)
    return idx, torch.softmax(logits.gather(1, idx), dim=-1)


def cv_squared(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Squared coefficient of variation ``var(x) / mean(x)^2`` (population variance).

    Zero for a constant vector and for a single element.
    """
    x = x.to(torch.float32) if not x.is_floating_point() else x
    if x.numel() <= 1:
        return x.new_zeros(())
    mean = x.mean()
    return ((x - mean) ** 2).mean() / (mean**2 + eps)


def noisy_topk_load(
    clean: torch.Tensor, noisy: torch.Tensor, noise_std: torch.Tensor, k: int
) -> torch.Tensor:
    """Smooth load estimator of Shazeer et al. (2017), eq. (9)-(10).

    ``P(x, i) = Phi((clean_i - kth_excluding(noisy, k, i)) / noise_std_i)``: the probability that
    expert i stays in the top k when its own noise is redrawn, the others held fixed. The
    threshold is the k-th largest noisy logit among the *other* experts: the (k+1)-th largest
    overall if i is in the noisy top k, else the k-th largest. Returns the load per expert,
    ``sum_x P(x, i)``, shape (E,).
    """
    n_experts = noisy.shape[1]
    if k >= n_experts:
        # every expert is always selected: the load is the number of tokens
        return clean.new_full((n_experts,), float(clean.shape[0]))
    top = torch.topk(noisy, k + 1, dim=-1).values  # (T, k+1), descending
    thr_in = top[:, k : k + 1]  # threshold for experts currently in the top k
    thr_out = top[:, k - 1 : k]  # threshold for the others
    is_in = noisy >= thr_out  # in the noisy top-k (ties are measure-zero with noise)
    thr = torch.where(is_in, thr_in, thr_out)
    normal = torch.distributions.Normal(clean.new_zeros(()), clean.new_ones(()))
    prob = normal.cdf((clean - thr) / noise_std)
    return prob.sum(dim=0)


def load_balancing_loss(importance: torch.Tensor, load: torch.Tensor) -> torch.Tensor:
    """``cv^2(importance) + cv^2(load)`` (both loss weights 1, as the spec states it)."""
    return cv_squared(importance) + cv_squared(load)


class Router(nn.Module):
    """A linear router ``z = W h + c`` with one of :data:`VARIANTS`.

    Parameters
    ----------
    hidden : int
        Token dimension.
    n_experts : int
        Number of experts E (>= 1).
    k : int
        Experts per token, 1 <= k <= E (``"dense_softmax"`` uses all E whatever k is).
    variant : str
        One of :data:`VARIANTS`.
    bias : bool
        Whether the router has a bias c.
    select_on_slope : bool
        Choose the top-K set on ``W h`` without the bias (weights still from ``W h + c``): the
        statistical model's rule (:func:`simstudy.model.log_gating_weights`), ties to the lower
        index. Only for the top-k variants with a bias.

    Notes
    -----
    Noisy top-k follows Shazeer et al. (2017): in training ``H = z + N(0,1) * softplus(W_n h)``,
    weights = softmax over the top k of H; ``aux_loss = cv^2(importance) + cv^2(load)`` with
    importance = sum over tokens of the weights and the smooth normal-CDF load estimator.
    In eval mode there is no noise and the load is the count of tokens per expert (not
    differentiable), as in the paper's code. ``W_n`` starts at zero (the paper's choice), so the
    noise scale starts at softplus(0) = log 2.
    """

    def __init__(
        self,
        hidden: int,
        n_experts: int,
        k: int,
        variant: str = "topk_softmax",
        bias: bool = False,
        select_on_slope: bool = False,
    ):
        super().__init__()
        if select_on_slope and (not bias or variant not in ("topk_softmax", "noisy_topk")):
            raise ValueError("select_on_slope: needs bias=True and a topk_softmax/noisy_topk "
                             f"variant, got bias={bias}, variant={variant!r}")
        self.select_on_slope = bool(select_on_slope)
        if isinstance(hidden, bool) or int(hidden) != hidden or hidden < 1:
            raise ValueError(f"hidden: must be an integer >= 1, got {hidden!r}")
        if isinstance(n_experts, bool) or int(n_experts) != n_experts or n_experts < 1:
            raise ValueError(f"n_experts: must be an integer >= 1, got {n_experts!r}")
        self.variant = _check_variant(variant)
        self.n_experts = int(n_experts)
        self.k = self.n_experts if variant == "dense_softmax" else _check_k(k, self.n_experts)
        self.gate = nn.Linear(hidden, n_experts, bias=bias)
        if variant == "noisy_topk":
            self.noise = nn.Linear(hidden, n_experts, bias=False)
            nn.init.zeros_(self.noise.weight)
        else:
            self.noise = None

    def forward(self, h: torch.Tensor) -> RouterOutput:
        """Route tokens ``h`` of shape (T, hidden)."""
        clean = self.gate(h)
        zero = clean.new_zeros(())
        # the statistical rule selects on the slope part; the offset cancels from the noise
        offset = self.gate.bias if self.select_on_slope else None
        sel = None if offset is None else clean - offset
        stable = self.select_on_slope
        if self.variant != "noisy_topk":
            idx, w = route(clean, self.k, self.variant, selection_logits=sel, stable=stable)
            return RouterOutput(idx, w, clean, zero)
        if self.training:
            noise_std = F.softplus(self.noise(h))
            noisy = clean + torch.randn_like(clean) * noise_std
            nsel = None if offset is None else noisy - offset
            idx, w = route(noisy, self.k, "topk_softmax", selection_logits=nsel, stable=stable)
            if offset is None:
                load = noisy_topk_load(clean, noisy, noise_std, self.k)
            else:
                load = noisy_topk_load(sel, nsel, noise_std, self.k)
        else:
            noisy = clean
            idx, w = route(clean, self.k, "topk_softmax", selection_logits=sel, stable=stable)
            load = torch.bincount(idx.reshape(-1), minlength=self.n_experts).to(clean.dtype)
        importance = dense_weights(idx, w, self.n_experts).sum(dim=0)
        return RouterOutput(idx, w, noisy, load_balancing_loss(importance, load))


class ExpertFFN(nn.Module):
    """E independent two-layer experts ``W2 gelu(W1 h + b1) + b2``, weights stacked per expert.

    Parameters
    ----------
    n_experts, hidden, ffn : int
        Number of experts, token width, inner width.
    """

    def __init__(self, n_experts: int, hidden: int, ffn: int):
        super().__init__()
        for name, val in (("n_experts", n_experts), ("hidden", hidden), ("ffn", ffn)):
            if isinstance(val, bool) or int(val) != val or val < 1:
                raise ValueError(f"{name}: must be an integer >= 1, got {val!r}")
        self.w1 = nn.Parameter(torch.randn(n_experts, hidden, ffn) / math.sqrt(hidden))
        self.b1 = nn.Parameter(torch.zeros(n_experts, ffn))
        self.w2 = nn.Parameter(torch.randn(n_experts, ffn, hidden) / math.sqrt(ffn))
        self.b2 = nn.Parameter(torch.zeros(n_experts, hidden))

    @property
    def n_experts(self) -> int:
        return self.w1.shape[0]

    def expert(self, e: int, h: torch.Tensor, unbound=None) -> torch.Tensor:
        """Output of expert ``e`` on tokens ``h`` (n, hidden).

        ``unbound`` (from :meth:`unbound`) supplies the expert's weights when many experts run
        in one pass.
        """
        w1, b1, w2, b2 = unbound[e] if unbound is not None else \
            (self.w1[e], self.b1[e], self.w2[e], self.b2[e])
        return F.gelu(h @ w1 + b1) @ w2 + b2

    def unbound(self) -> list[tuple[torch.Tensor, ...]]:
        """Per expert ``(w1, b1, w2, b2)`` views from one ``unbind`` of each stacked weight.

        Under autograd one unbind has a single backward that stacks the experts' gradients;
        indexing ``w1[e]`` expert by expert would allocate a zero gradient of the whole stack
        for every expert (E times the work).
        """
        return list(zip(self.w1.unbind(0), self.b1.unbind(0), self.w2.unbind(0),
                        self.b2.unbind(0), strict=True))

    def all_experts(self, h: torch.Tensor) -> torch.Tensor:
        """Every expert on every token, shape (E, T, hidden)."""
        inner = F.gelu(torch.einsum("th,ehf->etf", h, self.w1) + self.b1[:, None, :])
        return torch.einsum("etf,efh->eth", inner, self.w2) + self.b2[:, None, :]


class _MoEBase(nn.Module):
    def __init__(
        self,
        hidden: int,
        ffn: int,
        n_experts: int,
        k: int,
        variant: str = "topk_softmax",
        router_bias: bool = False,
    ):
        super().__init__()
        self.router = Router(hidden, n_experts, k, variant, bias=router_bias)
        self.experts = ExpertFFN(n_experts, hidden, ffn)

    @classmethod
    def sharing(cls, other: _MoEBase) -> _MoEBase:
        """A layer of this class holding the very same router and experts as ``other``.

        No weights are copied (a benchmark compares layers on identical weights without
        doubling their memory).
        """
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.router, layer.experts = other.router, other.experts
        return layer

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, RouterOutput]:
        """Mix the experts on tokens ``h`` (T, hidden) or (..., hidden).

        Returns the output (same shape as ``h``) and the router's decisions (flattened tokens).
        """
        shape = h.shape
        flat = h.reshape(-1, shape[-1])
        r = self.router(flat)
        return self._mix(flat, r).reshape(shape), r


class SparseMoE(_MoEBase):
    """MoE layer that runs each token only through its K selected experts.

    Tokens are grouped per expert (one sort of the T*K assignments, one gather), each expert
    runs once on its contiguous block of tokens, and the weighted outputs are scatter-added back
    in one ``index_add``; experts that receive no token are skipped. The E - K unused outputs
    of a token are never computed.
    Parameters as :class:`DenseMaskedMoE` (same parameter names, so state dicts are shared).
    """

    def _mix(self, h: torch.Tensor, r: RouterOutput) -> torch.Tensor:
        T, K = r.indices.shape
        flat_expert = r.indices.reshape(-1)
        order = torch.argsort(flat_expert, stable=True)
        token = torch.div(order, K, rounding_mode="floor")
        weight = r.weights.reshape(-1)[order]
        counts = torch.bincount(flat_expert, minlength=self.experts.n_experts).tolist()
        # one gather, one split, one scatter-add: under autograd each has a single backward
        # of size T*K (slicing or gathering per expert would allocate a full-size gradient
        # for every expert, E times the work)
        chunks = torch.split(h.index_select(0, token), counts)
        unbound = self.experts.unbound()
        ys = torch.cat([self.experts.expert(e, x, unbound) for e, x in enumerate(chunks)
                        if len(x)])
        return h.new_zeros(h.shape).index_add(0, token, ys * weight[:, None])


class DenseMaskedMoE(_MoEBase):
    """Reference MoE layer: computes all E experts on every token, then masks and mixes.

    Same parameters as :class:`SparseMoE`; outputs agree to float tolerance.
    """

    def _mix(self, h: torch.Tensor, r: RouterOutput) -> torch.Tensor:
        all_out = self.experts.all_experts(h)  # (E, T, hidden)
        return torch.einsum("te,eth->th", r.dense(), all_out)


class ActiveFlopsFFN(nn.Module):
    """Dispatch-overhead baseline: the router, then one dense FFN of inner width ``k * ffn``.

    Every token runs through the same two-layer GELU FFN whose inner width is the sum of the
    inner widths of its K selected experts, so its multiply-adds per token equal those of a
    :class:`SparseMoE` token (router included); what it lacks is the dispatch (top-k, grouping
    by expert, gather, scatter-add). The router's weights only feed an added zero, so its cost
    is counted and its output ignored.

    Parameters
    ----------
    hidden, ffn, n_experts, k, variant : as :class:`SparseMoE`.
    """

    def __init__(self, hidden: int, ffn: int, n_experts: int, k: int,
                 variant: str = "topk_softmax"):
        super().__init__()
        self.router = Router(hidden, n_experts, k, variant)
        self.ffn = ExpertFFN(1, hidden, self.router.k * int(ffn))

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, RouterOutput]:
        shape = h.shape
        flat = h.reshape(-1, shape[-1])
        r = self.router(flat)
        # the routing weights enter the output (times zero) so that, under autograd, the
        # router's backward runs as it does in the sparse layer
        out = self.ffn.expert(0, flat) + 0.0 * r.weights.sum(dim=1, keepdim=True)
        return out.reshape(shape), r
