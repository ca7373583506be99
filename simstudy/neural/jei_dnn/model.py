"""JEI-DNN pieces: gates, the two exit rules, costs, gate targets, and the exit heads.

Exits are numbered 0..L-1 here (the paper numbers them 1..L). Exit l < L-1 is the inference
module IM_l on block l's pooled feature; exit L-1 is the frozen backbone head.

Two readings of the gates g_l (l < L-1), side by side (``rule``):

``"paper"`` -- as the paper writes it and as its code (networkslab/dynn,
    ``ClassifierTrainingHelper``) computes it: ``pi_l = max(0, min(g_l, 1 - sum_{j<l} g_j))``,
    the last exit takes the rest; hazards ``h_l = clip(pi_l / prod_{j<l} (1 - h_j), 0, 1)``;
    exit at the first ``h_l >= 0.5``. Gate targets are exit-subsequent (``t_l = 1[l >= l*]``)
    with the class-balancing positive weight ``min(5, (N - n_l) / n_l)``, n_l = #{l* = l} on
    validation data. The targets train g_l towards P(l* <= l), a cumulative probability, while
    pi sums the g's as if each were the mass at l: two gates near 0.5 spend all the mass.
``"cdf"`` -- g_l read as that cumulative probability: with the running maximum
    ``G_l = max_{j<=l} g_j`` (a proper CDF even when the gates are not monotone),
    ``pi_l = G_l - G_{l-1}`` (G_{-1} = 0), the last exit takes ``1 - G_{L-2}``; exit at the
    first ``g_l >= 0.5`` (the median of that exit distribution); the same targets, plain
    (unweighted) BCE.

Summing pi instead of g in the paper rule gives the same numbers (while sum g < 1 every pi_j
= g_j; afterwards both give 0), which ``tests/test_jei_dnn.py`` checks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from simstudy.neural.transformer import MacCount

__all__ = [
    "RULES",
    "gate_statistics",
    "softmax_last",
    "log_softmax_last",
    "top2",
    "exit_probabilities",
    "hazards",
    "hazard_to_probabilities",
    "inference_exit",
    "rule_exits",
    "gate_macs",
    "exit_costs",
    "exit_costs_unnormalised",
    "backbone_only_cost",
    "optimal_exit",
    "gate_targets",
    "gate_pos_weight",
    "ExitHeads",
]

RULES = ("paper", "cdf")


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ValueError(f"rule: must be one of {list(RULES)}, got {rule!r}")


# The class axis is short (5-10) and, in the exit heads' logits, the slowest in memory: torch's
# softmax / topk / cross-entropy kernels are slow on such a layout, so these few element-wise
# versions (tested against them) keep JEI training at a few milliseconds per step.
def softmax_last(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis (the same numbers as ``torch.softmax(x, -1)``)."""
    z = x - x.amax(-1, keepdim=True)
    e = z.exp()
    return e / e.sum(-1, keepdim=True)


def log_softmax_last(x: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the last axis."""
    z = x - x.amax(-1, keepdim=True)
    return z - z.exp().sum(-1, keepdim=True).log()


def top2(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The largest and second-largest value over the last axis (ties counted twice)."""
    m1 = p.amax(-1, keepdim=True)
    at = p >= m1
    rest = torch.where(at, torch.full_like(p, -float("inf")), p).amax(-1)
    return m1[..., 0], torch.where(at.sum(-1) > 1, m1[..., 0], rest)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1)


@torch.no_grad()
def gate_statistics(probs: torch.Tensor) -> torch.Tensor:
    """The gate's four inputs from class probabilities (..., C), computed without gradient.

    Max probability, entropy, margin (top-1 minus top-2) and the entropy of p^2 / sum p^2.
    Returns (..., 4).
    """
    first, second = top2(probs)
    sq = probs**2
    sharp = sq / sq.sum(-1, keepdim=True)
    return torch.stack([first, _entropy(probs), first - second, _entropy(sharp)], dim=-1)


def exit_probabilities(g: torch.Tensor, rule: str = "paper") -> torch.Tensor:
    """``pi`` (..., L) from gate values ``g`` (..., L-1) under ``rule`` (module docstring)."""
    _check_rule(rule)
    if rule == "paper":
        before = torch.cumsum(g, dim=-1) - g  # sum_{j<l} g_j
        pi = torch.clamp(torch.minimum(g, 1 - before), min=0.0)
    else:
        G = torch.cummax(g, dim=-1).values
        prev = torch.cat([torch.zeros_like(G[..., :1]), G[..., :-1]], dim=-1)
        pi = G - prev
    last = torch.clamp(1 - pi.sum(-1, keepdim=True), min=0.0)
    return torch.cat([pi, last], dim=-1)


def hazards(pi: torch.Tensor) -> torch.Tensor:
    """Conditional form h_l = clip(pi_l / prod_{j<l} (1 - h_j), 0, 1), shape (..., L).

    Where nothing is left to exit (the product is 0) h_l is set to 1; the last exit has h = 1.
    """
    hs = []
    surv = torch.ones_like(pi[..., 0])
    L = pi.shape[-1]
    for l in range(L):
        if l == L - 1:
            h = torch.ones_like(surv)
        else:
            safe = torch.where(surv > 0, surv, torch.ones_like(surv))
            h = torch.where(surv > 0, torch.clamp(pi[..., l] / safe, 0.0, 1.0), 1.0)
        hs.append(h)
        surv = surv * (1 - h)
    return torch.stack(hs, dim=-1)


def hazard_to_probabilities(h: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`hazards`: pi_l = h_l prod_{j<l} (1 - h_j)."""
    surv = torch.cumprod(1 - h, dim=-1)
    before = torch.cat([torch.ones_like(surv[..., :1]), surv[..., :-1]], dim=-1)
    return h * before


def inference_exit(h: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """First exit l with h_l >= threshold (the last exit if none), shape (...,), int64."""
    hit = h >= threshold
    hit[..., -1] = True
    return torch.argmax(hit.to(torch.int8), dim=-1)


def rule_exits(g: torch.Tensor, rule: str) -> torch.Tensor:
    """Inference exits from gate values (..., L-1): the paper's hazard rule, or the first
    ``g_l >= 0.5`` for the CDF reading."""
    _check_rule(rule)
    if rule == "paper":
        return inference_exit(hazards(exit_probabilities(g, "paper")))
    hit = torch.cat([g >= 0.5, torch.ones_like(g[..., :1], dtype=torch.bool)], dim=-1)
    return torch.argmax(hit.to(torch.int8), dim=-1)


# -- costs -----------------------------------------------------------------------------------
def gate_macs(n_classes: int) -> float:
    """Multiply-add equivalents of one gate: the softmax of the IM's logits (3 C), its four
    statistics (max C, margin C + 1, entropy 2 C, entropy of p^2 / sum p^2 5 C, as counted by
    the reference code) and the linear gate (4)."""
    return 3.0 * n_classes + 9.0 * n_classes + 1.0 + 4.0


def exit_costs_unnormalised(mc: MacCount, im_macs, n_classes: int) -> torch.Tensor:
    """Multiply-adds to reach each exit (before normalisation), shape (L,).

    Reaching exit l < L-1 costs the embedding, blocks 0..l and, for every exit j <= l on the
    way, the shared final norm + pooling of block j's output, IM_j (``im_macs[j]``) and gate
    j. The last exit adds the remaining blocks, the final pooling and the backbone head.
    """
    L = mc.depth
    if len(im_macs) != L - 1:
        raise ValueError(f"im_macs: need one count per inference module ({L - 1}), "
                         f"got {len(im_macs)}")
    per_exit = [mc.pool + float(m) + gate_macs(n_classes) for m in im_macs]
    costs = [mc.through(l + 1) + sum(per_exit[: l + 1]) for l in range(L - 1)]
    costs.append(mc.through(L) + sum(per_exit) + mc.pool + mc.head)
    return torch.tensor(costs, dtype=torch.float64)


def exit_costs(mc: MacCount, im_macs, n_classes: int) -> torch.Tensor:
    """Normalised cumulative multiply-adds C_l to reach exit l, shape (L,); C_{L-1} = 1 (the
    full path: every IM and gate evaluated on the way, then the head)."""
    c = exit_costs_unnormalised(mc, im_macs, n_classes)
    return c / c[-1]


def backbone_only_cost(mc: MacCount, im_macs, n_classes: int) -> float:
    """Cost of the plain backbone (no IMs, no gates) on the same normalised scale."""
    return mc.total / float(exit_costs_unnormalised(mc, im_macs, n_classes)[-1])


# -- gate targets ----------------------------------------------------------------------------
def optimal_exit(ce: torch.Tensor, costs: torch.Tensor, lam) -> torch.Tensor:
    """l* = argmin_l [CE_l + lambda C_l]; ``ce`` (..., n, L); ties go to the earlier exit.

    ``lam`` is a float or a tensor broadcasting against ``ce[..., 0]`` (one per replica).
    """
    lam_t = torch.as_tensor(lam, dtype=ce.dtype)
    if not bool(torch.all(lam_t >= 0)):
        raise ValueError(f"lam: the cost weight lambda must be >= 0, got {lam}")
    while lam_t.ndim < ce.ndim:
        lam_t = lam_t.unsqueeze(-1)
    return torch.argmin(ce + lam_t * costs.to(ce.dtype), dim=-1)


def gate_targets(l_star: torch.Tensor, n_exits: int) -> torch.Tensor:
    """t_l = 1 for l >= l*, else 0; returns the L-1 gate targets (..., L-1) as floats."""
    ls = torch.arange(n_exits - 1, device=l_star.device)
    return (ls >= l_star.unsqueeze(-1)).to(torch.float32)


def gate_pos_weight(
    l_star_val: torch.Tensor, n_exits: int, cap: float = 5.0, cumulative: bool = False
) -> torch.Tensor:
    """BCE positive weight per gate: min(cap, (N - n_l) / n_l), n_l = #{val examples: l* = l}.

    ``l_star_val`` is (N,) or (R, N) (one row per replica). ``n_l = 0`` gives the cap (the
    reference floors the count at 0.1). ``cumulative=True`` is a variant outside the paper:
    n_l counts l* <= l, the examples whose target at gate l is 1.
    """
    squeeze = l_star_val.ndim == 1
    ls = l_star_val.reshape(-1, l_star_val.shape[-1])
    N = ls.shape[-1]
    n_l = torch.stack([torch.bincount(r, minlength=n_exits)[: n_exits - 1] for r in ls]).float()
    if cumulative:
        n_l = torch.cumsum(n_l, dim=-1)
    ratio = torch.where(n_l > 0, (N - n_l) / n_l.clamp_min(1), torch.full_like(n_l, cap))
    out = torch.clamp(ratio, max=cap)
    return out[0] if squeeze else out


# -- the trainable part: R replicas of (IMs, gates) ------------------------------------------
def _uniform(shape, fan_in: int, generator: torch.Generator) -> nn.Parameter:
    bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default initialisation
    return nn.Parameter((torch.rand(shape, generator=generator) * 2 - 1) * bound)


class ExitHeads(nn.Module):
    """R independent replicas of JEI-DNN's trainable part: L-1 IMs and L-1 gates each.

    Replicas (one per lambda, exit rule, loss variant) train at once on the same batches; the
    parameters are disjoint, so summing their losses trains each exactly as if alone (SGD,
    momentum and weight decay act element-wise).

    Parameters
    ----------
    width : int
        Width of the cached block features.
    n_exits : int
        L, the number of exits (the last is the frozen backbone head).
    n_classes : int
    im_hidden : sequence of int, optional
        Hidden width of each IM (0 = linear, the paper's IM); default all linear.
    n_replicas : int
    gate_extra : int
        Extra gate inputs (the difficulty one-hot of the ``+level`` variants); replicas that
        should not see them get a zero mask (see :meth:`gate_logits`).
    seed : int
        Initial weights; every replica starts from the same draw.
    """

    def __init__(self, width: int, n_exits: int, n_classes: int,
                 im_hidden: Sequence[int] | None = None, n_replicas: int = 1,
                 gate_extra: int = 0, seed: int = 0):
        super().__init__()
        if n_exits < 2:
            raise ValueError(f"n_exits: need at least 2 exits, got {n_exits}")
        im_hidden = [0] * (n_exits - 1) if im_hidden is None else [int(h) for h in im_hidden]
        if len(im_hidden) != n_exits - 1 or min(im_hidden) < 0:
            raise ValueError(f"im_hidden: need {n_exits - 1} widths >= 0, got {im_hidden}")
        self.n_exits, self.n_classes, self.width = n_exits, n_classes, width
        self.im_hidden, self.n_replicas, self.gate_extra = im_hidden, 1, gate_extra
        g = torch.Generator().manual_seed(seed)
        self.ims = nn.ModuleList()
        for h in im_hidden:
            m = nn.ParameterDict()
            if h == 0:
                m["w"], m["b"] = _uniform((1, width, n_classes), width, g), \
                    _uniform((1, n_classes), width, g)
            else:
                m["w1"], m["b1"] = _uniform((1, width, h), width, g), _uniform((1, h), width, g)
                m["w2"], m["b2"] = _uniform((1, h, n_classes), h, g), \
                    _uniform((1, n_classes), h, g)
            self.ims.append(m)
        d_in = 4 + gate_extra
        self.gate_w = _uniform((1, n_exits - 1, d_in), 4, g)
        self.gate_b = _uniform((1, n_exits - 1), 4, g)
        with torch.no_grad():
            self.gate_w[..., 4:] = 0.0  # extra inputs start switched off
        if n_replicas != 1:
            self.replicate(n_replicas)

    def replicate(self, n: int) -> ExitHeads:
        """Copy replica 0 into ``n`` replicas (in place); returns self."""
        if isinstance(n, bool) or int(n) != n or n < 1:
            raise ValueError(f"n_replicas: must be an integer >= 1, got {n!r}")
        with torch.no_grad():
            for m in self.ims:
                for k in list(m.keys()):
                    m[k] = nn.Parameter(m[k][:1].repeat(n, *([1] * (m[k].ndim - 1))).clone())
            self.gate_w = nn.Parameter(self.gate_w[:1].repeat(n, 1, 1).clone())
            self.gate_b = nn.Parameter(self.gate_b[:1].repeat(n, 1).clone())
        self.n_replicas = int(n)
        return self

    def im_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.ims for p in m.values()]

    def gate_parameters(self) -> list[nn.Parameter]:
        return [self.gate_w, self.gate_b]

    def im_macs(self) -> list[float]:
        """Multiply-adds of each IM on one example (hidden GELU counted as 1 per unit)."""
        D, C = self.width, self.n_classes
        return [float(D * C) if h == 0 else float(D * h + h + h * C) for h in self.im_hidden]

    def im_logits(self, feats: torch.Tensor, head_logits: torch.Tensor) -> torch.Tensor:
        """Logits of every exit (R, n, L, C) from features (n, L, width) and head logits
        (n, C); the last exit is the backbone head, the same for every replica.

        The result is a view of a class-major (C, R, n, L) tensor (see :func:`softmax_last`).
        """
        out = []
        for l, m in enumerate(self.ims):
            f = feats[:, l]
            if "w" in m:
                z = torch.matmul(f, m["w"]) + m["b"][:, None]
            else:
                hid = F.gelu(torch.matmul(f, m["w1"]) + m["b1"][:, None])
                z = torch.bmm(hid, m["w2"]) + m["b2"][:, None]
            out.append(z.permute(2, 0, 1))
        out.append(head_logits.T[:, None].expand(-1, self.n_replicas, -1))
        return torch.stack(out, dim=-1).permute(1, 2, 3, 0)

    def gate_inputs(self, logits: torch.Tensor, extra: torch.Tensor | None = None,
                    extra_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The gates' inputs (R, n, L-1, 4 + gate_extra), without gradient: the four
        statistics of each IM's softmax and, masked per replica by ``extra_mask`` (R,) (0: the
        replica does not see them), the ``extra`` inputs (n, gate_extra)."""
        stats = gate_statistics(softmax_last(logits[:, :, :-1].detach()))
        if not self.gate_extra:
            return stats
        R, n = stats.shape[:2]
        if extra is None:
            ex = torch.zeros(R, n, self.gate_extra)
        else:
            mask = torch.ones(R) if extra_mask is None else extra_mask.float()
            ex = mask[:, None, None] * extra.float()[None]
        ex = ex.unsqueeze(2).expand(R, n, self.n_exits - 1, self.gate_extra)
        return torch.cat([stats, ex], dim=-1)

    def gates_from_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid gate outputs (R, n, L-1) from :meth:`gate_inputs`."""
        return torch.einsum("rnlk,rlk->rnl", inputs, self.gate_w) + self.gate_b[:, None]

    def gate_logits(self, logits: torch.Tensor, extra: torch.Tensor | None = None,
                    extra_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pre-sigmoid gate outputs (R, n, L-1) from exit logits (R, n, L, C).

        The statistics carry no gradient, so only the gates' own weights train through them.
        """
        return self.gates_from_inputs(self.gate_inputs(logits, extra, extra_mask))

    def gate_values(self, logits, extra=None, extra_mask=None) -> torch.Tensor:
        """g (R, n, L-1) = sigmoid of :meth:`gate_logits`."""
        return torch.sigmoid(self.gate_logits(logits, extra, extra_mask))
