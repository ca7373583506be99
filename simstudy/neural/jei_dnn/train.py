"""Training of the exit heads on cached backbone features.

- :func:`train_ims` -- the IM warm-up (earlier IMs weighted more, early stopping per IM on
  validation accuracy); with ``boosted=True`` each IM is trained on the detached running sum of
  the earlier IMs' logits plus its own (the boosted baseline).
- :func:`train_jei` -- JEI-DNN: alternate gate phases (BCE on the targets of l*) and IM phases
  (exit-probability-weighted CE, or the plain mean) every ``switch`` batches.

Optimiser everywhere: SGD, lr 0.01, momentum 0.9, weight decay 5e-4, cosine schedule.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from simstudy.neural.jei_dnn.model import (
    ExitHeads,
    exit_probabilities,
    gate_pos_weight,
    gate_targets,
    optimal_exit,
)

__all__ = ["Cached", "train_ims", "train_jei", "exit_ce", "SGD_KW"]

SGD_KW = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}


@dataclass
class Cached:
    """Cached backbone outputs of one split: features (n, L, D), head logits (n, C), labels."""

    feats: torch.Tensor
    head: torch.Tensor
    y: torch.Tensor

    @classmethod
    def from_numpy(cls, feats, head, y) -> Cached:
        return cls(torch.as_tensor(feats), torch.as_tensor(head), torch.as_tensor(y))

    def __len__(self) -> int:
        return self.y.shape[0]

    def batch(self, idx) -> Cached:
        return Cached(self.feats[idx], self.head[idx], self.y[idx])


def exit_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every exit, (n, L), from logits (n, L, C)."""
    n, L, C = logits.shape
    return F.cross_entropy(logits.reshape(n * L, C), y.repeat_interleave(L), reduction="none").view(
        n, L
    )


def boosted_logits(heads: ExitHeads, data: Cached) -> torch.Tensor:
    """Exit logits of the boosted variant: IM_l's logits plus the *detached* sum of the earlier
    IMs' logits; the last exit is the frozen backbone head unchanged."""
    own = heads.im_logits(data.feats, data.head)
    L = own.shape[1]
    out, running = [], torch.zeros_like(own[:, 0])
    for l in range(L - 1):
        out.append(running + own[:, l])
        running = running + own[:, l].detach()
    out.append(own[:, -1])
    return torch.stack(out, dim=1)


def _batches(n: int, batch_size: int, rng: np.random.Generator):
    return np.array_split(rng.permutation(n), max(1, math.ceil(n / batch_size)))


def train_ims(
    heads: ExitHeads,
    train: Cached,
    val: Cached,
    epochs: int = 60,
    patience: int = 10,
    batch_size: int = 64,
    seed: int = 0,
    boosted: bool = False,
) -> dict:
    """Warm-up of the IMs alone (in place).

    Loss: sum_l w_l CE_l with w_l proportional to L-1-l (earlier IMs weighted more, mean 1).
    Early stopping per IM: after each epoch the validation accuracy of each IM is checked; an
    IM whose accuracy has not improved for ``patience`` epochs stops training (its weight
    drops out of the loss), and every IM ends at its best epoch's weights.
    Returns a log with each IM's best validation accuracy and stopping epoch.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    L = heads.n_exits
    w = torch.arange(L - 1, 0, -1, dtype=torch.float32)
    w = w / w.mean()
    params = [p for im in heads.ims for p in im.parameters()]
    opt = torch.optim.SGD(params, **SGD_KW)
    n_steps = epochs * len(_batches(len(train), batch_size, rng))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(n_steps, 1))
    active = torch.ones(L - 1, dtype=torch.bool)
    best_acc = [-1.0] * (L - 1)
    best_state = [copy.deepcopy(im.state_dict()) for im in heads.ims]
    stale = [0] * (L - 1)
    stop_epoch = [epochs] * (L - 1)
    logits_fn = boosted_logits if boosted else (lambda h, d: h.im_logits(d.feats, d.head))
    for epoch in range(epochs):
        if not active.any():
            break
        for idx in _batches(len(train), batch_size, rng):
            b = train.batch(idx)
            ce = exit_ce(logits_fn(heads, b), b.y)[:, :-1]
            loss = (ce.mean(0) * w * active).sum()
            opt.zero_grad()
            loss.backward()
            # a stopped IM must not move: weight decay and momentum would still change it
            for l in range(L - 1):
                if not active[l]:
                    for p in heads.ims[l].parameters():
                        p.grad = None
            opt.step()
            sched.step()
        with torch.no_grad():
            acc = (logits_fn(heads, val).argmax(-1) == val.y[:, None]).float().mean(0)
        for l in range(L - 1):
            if not active[l]:
                continue
            if acc[l] > best_acc[l]:
                best_acc[l], stale[l] = float(acc[l]), 0
                best_state[l] = copy.deepcopy(heads.ims[l].state_dict())
            else:
                stale[l] += 1
                if stale[l] >= patience:
                    active[l] = False
                    stop_epoch[l] = epoch + 1
    for l, im in enumerate(heads.ims):
        im.load_state_dict(best_state[l])
    return {"best_val_acc": best_acc, "stop_epoch": stop_epoch}


def train_jei(
    heads: ExitHeads,
    train: Cached,
    val: Cached,
    costs: torch.Tensor,
    lam: float,
    im_loss: str = "weighted",
    epochs: int = 40,
    switch: int = 4,
    batch_size: int = 64,
    seed: int = 0,
    pos_weight: str = "spec",
) -> dict:
    """Jointly train gates and IMs (in place) for one lambda.

    Batches alternate in blocks of ``switch``: a gate phase (IMs fixed) minimises the BCE of
    the gates against t_l = 1[l >= l*], l* = argmin_l CE_l + lambda C_l computed from the
    current IMs on the batch, with per-gate positive weight min(5, (N - n_l)/n_l) from the
    validation l* counts (refreshed at the start of each epoch); an IM phase (gates fixed)
    minimises sum_l pi_l CE_l (``im_loss="weighted"``) or mean_l CE_l (``"mean"``).
    In the weighted loss pi is a constant: it is computed from the gates on statistics that
    carry no gradient, and is detached as well. ``pos_weight="cumulative"`` is a variant
    outside the spec (see :func:`~simstudy.neural.jei_dnn.model.gate_pos_weight`).
    """
    if pos_weight not in ("spec", "cumulative"):
        raise ValueError(f"pos_weight: must be 'spec' or 'cumulative', got {pos_weight!r}")
    if im_loss not in ("weighted", "mean"):
        raise ValueError(f"im_loss: must be 'weighted' or 'mean', got {im_loss!r}")
    if isinstance(switch, bool) or int(switch) != switch or switch < 1:
        raise ValueError(f"switch: must be an integer >= 1, got {switch!r}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    L = heads.n_exits
    opt_g = torch.optim.SGD([p for g in heads.gates for p in g.parameters()], **SGD_KW)
    opt_im = torch.optim.SGD([p for im in heads.ims for p in im.parameters()], **SGD_KW)
    n_batches = len(_batches(len(train), batch_size, rng))
    total = max(1, epochs * n_batches)
    # each optimiser runs about half of the batches; the cosine runs over its own steps
    sched_g = torch.optim.lr_scheduler.CosineAnnealingLR(opt_g, T_max=math.ceil(total / 2))
    sched_im = torch.optim.lr_scheduler.CosineAnnealingLR(opt_im, T_max=math.ceil(total / 2))
    step = 0
    log = {"gate_loss": [], "im_loss": [], "pos_weight": []}
    for _ in range(epochs):
        with torch.no_grad():
            ce_val = exit_ce(heads.im_logits(val.feats, val.head), val.y)
            pos_w = gate_pos_weight(
                optimal_exit(ce_val, costs, lam), L, cumulative=pos_weight == "cumulative"
            )
        log["pos_weight"].append(pos_w.tolist())
        for idx in _batches(len(train), batch_size, rng):
            b = train.batch(idx)
            gate_phase = (step // switch) % 2 == 0
            step += 1
            if gate_phase:
                with torch.no_grad():
                    logits = heads.im_logits(b.feats, b.head)
                    t = gate_targets(optimal_exit(exit_ce(logits, b.y), costs, lam), L)
                z = heads.gate_logits(logits)
                # BCE with logits: pos_weight multiplies the t = 1 terms, per gate
                loss = F.binary_cross_entropy_with_logits(z, t, pos_weight=pos_w)
                opt_g.zero_grad()
                loss.backward()
                opt_g.step()
                sched_g.step()
                log["gate_loss"].append(float(loss.detach()))
            else:
                logits = heads.im_logits(b.feats, b.head)
                ce = exit_ce(logits, b.y)
                if im_loss == "weighted":
                    with torch.no_grad():
                        pi = exit_probabilities(heads.gate_values(logits))
                    loss = (pi * ce).sum(1).mean()
                else:
                    loss = ce.mean()
                opt_im.zero_grad()
                loss.backward()
                opt_im.step()
                sched_im.step()
                log["im_loss"].append(float(loss.detach()))
    return log
