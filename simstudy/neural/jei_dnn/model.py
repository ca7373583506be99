"""JEI-DNN pieces: inference modules, gates, exit probabilities, costs and gate targets.

Exits are numbered 0..L-1 here (the spec numbers them 1..L). Exit l < L-1 is the inference
module IM_l on block l's cached CLS feature; exit L-1 is the frozen backbone head.

Reading of the spec's exit probabilities: ``pi_l = max(0, min(g_l, 1 - sum_{j<l} g_j))``
with the sum over the *gate values* g, as written. Summing the exit probabilities pi instead
gives exactly the same numbers: while the running sum of g stays below 1 every pi_j equals g_j;
at the first gate where it would pass 1, pi takes the remainder; afterwards both readings give
``max(0, <= 0) = 0`` (``test_jei_dnn.py`` checks this).
"""

from __future__ import annotations

import torch
from torch import nn

from simstudy.neural.transformer import MacCount

__all__ = [
    "gate_statistics",
    "exit_probabilities",
    "hazards",
    "hazard_to_probabilities",
    "inference_exit",
    "exit_costs",
    "gate_macs",
    "exit_costs_unnormalised",
    "backbone_only_cost",
    "optimal_exit",
    "gate_targets",
    "gate_pos_weight",
    "ExitHeads",
]


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1)


@torch.no_grad()
def gate_statistics(probs: torch.Tensor) -> torch.Tensor:
    """The gate's four inputs from class probabilities (..., C), computed without gradient.

    Max probability, entropy, margin (top-1 minus top-2) and the entropy of p^2 / sum p^2.
    Returns (..., 4).
    """
    top2 = torch.topk(probs, 2, dim=-1).values
    sq = probs**2
    sharp = sq / sq.sum(-1, keepdim=True)
    return torch.stack(
        [top2[..., 0], _entropy(probs), top2[..., 0] - top2[..., 1], _entropy(sharp)], dim=-1
    )


def exit_probabilities(g: torch.Tensor) -> torch.Tensor:
    """``pi`` (n, L) from gate values ``g`` (n, L-1): pi_l = max(0, min(g_l, 1 - sum_{j<l} g_j)),
    the last exit takes the rest ``1 - sum_{l<L-1} pi_l``."""
    before = torch.cumsum(g, dim=-1) - g  # sum_{j<l} g_j
    pi = torch.clamp(torch.minimum(g, 1 - before), min=0.0)
    last = torch.clamp(1 - pi.sum(-1, keepdim=True), min=0.0)
    return torch.cat([pi, last], dim=-1)


def hazards(pi: torch.Tensor) -> torch.Tensor:
    """Conditional form h_l = clip(pi_l / prod_{j<l} (1 - h_j), 0, 1), shape (n, L).

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
    """First exit l with h_l >= threshold (the last exit if none), shape (n,), int64."""
    hit = h >= threshold
    hit[..., -1] = True
    return torch.argmax(hit.to(torch.int8), dim=-1)


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


def optimal_exit(ce: torch.Tensor, costs: torch.Tensor, lam: float) -> torch.Tensor:
    """l* = argmin_l [CE_l + lambda C_l] per example; ``ce`` (n, L); ties to the earlier exit."""
    if not lam >= 0:
        raise ValueError(f"lam: the cost weight lambda must be >= 0, got {lam}")
    return torch.argmin(ce + lam * costs.to(ce.dtype), dim=-1)


def gate_targets(l_star: torch.Tensor, n_exits: int) -> torch.Tensor:
    """t_l = 1 for l >= l*, else 0; returns the L-1 gate targets (n, L-1) as floats."""
    ls = torch.arange(n_exits - 1, device=l_star.device)
    return (ls[None, :] >= l_star[:, None]).to(torch.float32)


def gate_pos_weight(
    l_star_val: torch.Tensor, n_exits: int, cap: float = 5.0, cumulative: bool = False
) -> torch.Tensor:
    """BCE positive weight per gate: min(cap, (N - n_l) / n_l), n_l = #{val examples: l* = l}.

    ``n_l = 0`` gives the cap. ``cumulative=True`` is a variant outside the spec: n_l counts
    l* <= l, the examples whose target at gate l is actually 1, so the weight balances each
    gate's positives against its negatives.
    """
    N = l_star_val.numel()
    n_l = torch.bincount(l_star_val, minlength=n_exits)[: n_exits - 1].to(torch.float32)
    if cumulative:
        n_l = torch.cumsum(n_l, dim=0)
    ratio = torch.where(n_l > 0, (N - n_l) / n_l.clamp_min(1), torch.full_like(n_l, cap))
    return torch.clamp(ratio, max=cap)


class ExitHeads(nn.Module):
    """The trainable part of JEI-DNN: L-1 inference modules and L-1 gates.

    Parameters
    ----------
    width : int
        Width of the cached CLS features.
    n_exits : int
        L, the number of exits (the last is the frozen backbone head).
    n_classes : int
    """

    def __init__(self, width: int, n_exits: int, n_classes: int):
        super().__init__()
        if n_exits < 2:
            raise ValueError(f"n_exits: need at least 2 exits, got {n_exits}")
        self.n_exits = n_exits
        self.ims = nn.ModuleList(nn.Linear(width, n_classes) for _ in range(n_exits - 1))
        self.gates = nn.ModuleList(nn.Linear(4, 1) for _ in range(n_exits - 1))

    def im_logits(self, feats: torch.Tensor, head_logits: torch.Tensor) -> torch.Tensor:
        """Logits of every exit (n, L, C) from cached features (n, L, width) and head logits."""
        out = [im(feats[:, l]) for l, im in enumerate(self.ims)]
        return torch.stack([*out, head_logits], dim=1)

    def gate_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid gate outputs (n, L-1) from exit logits (n, L, C); the statistics carry
        no gradient, so only the gates' own weights are trained through them."""
        stats = gate_statistics(torch.softmax(logits[:, :-1].detach(), dim=-1))
        z = [gate(stats[:, l]).squeeze(-1) for l, gate in enumerate(self.gates)]
        return torch.stack(z, dim=-1)

    def gate_values(self, logits: torch.Tensor) -> torch.Tensor:
        """g (n, L-1) = sigmoid of :meth:`gate_logits`."""
        return torch.sigmoid(self.gate_logits(logits))
