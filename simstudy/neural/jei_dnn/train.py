"""Training of the exit heads on cached backbone features.

- :func:`train_ims` -- the IM warm-up (earlier IMs weighted more, early stopping per IM on
  validation accuracy); with ``boosted=True`` each IM is trained on the detached running sum of
  the earlier IMs' logits plus its own (the boosted baseline).
- :func:`train_jei` -- JEI-DNN for R replicas at once (one per lambda, exit rule and loss
  variant): alternate gate phases (BCE on the exit-subsequent targets of l*) and IM phases
  (exit-probability-weighted CE, or the plain mean) every ``switch`` batches, starting with a
  gate phase, as the reference code does (200 batches per phase there, ~4,000 gate steps).

Optimiser everywhere: SGD, lr 0.01, momentum 0.9, weight decay 5e-4, cosine schedule.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from simstudy.neural.jei_dnn.model import (
    RULES,
    ExitHeads,
    exit_probabilities,
    gate_pos_weight,
    gate_targets,
    log_softmax_last,
    optimal_exit,
)

__all__ = ["Cached", "train_ims", "train_jei", "exit_ce", "boosted_logits", "SGD_KW",
           "IM_LOSSES"]

SGD_KW = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}
IM_LOSSES = ("weighted", "mean")


@dataclass
class Cached:
    """Cached backbone outputs of one split: features (n, L, D), head logits (n, C), labels
    (n,) and difficulty (n,)."""

    feats: torch.Tensor
    head: torch.Tensor
    y: torch.Tensor
    difficulty: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def batch(self, idx) -> Cached:
        return Cached(self.feats[idx], self.head[idx], self.y[idx], self.difficulty[idx])


def exit_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every exit, (..., n, L), from logits (..., n, L, C) and labels (n,)."""
    idx = y.view(*([1] * (logits.ndim - 3)), -1, 1, 1).expand(*logits.shape[:-1], 1)
    return -log_softmax_last(logits).gather(-1, idx)[..., 0]


def boosted_logits(heads: ExitHeads, data: Cached) -> torch.Tensor:
    """Exit logits of the boosted variant (R, n, L, C): IM_l's logits plus the *detached* sum
    of the earlier IMs' logits; the last exit is the frozen backbone head unchanged."""
    own = heads.im_logits(data.feats, data.head)
    L = own.shape[2]
    out, running = [], torch.zeros_like(own[:, :, 0])
    for l in range(L - 1):
        out.append(running + own[:, :, l])
        running = running + own[:, :, l].detach()
    out.append(own[:, :, -1])
    return torch.stack(out, dim=2)


def _epochs(n: int, batch_size: int, rng: np.random.Generator):
    """Endless minibatch indices, a fresh permutation per epoch."""
    while True:
        yield from np.array_split(rng.permutation(n), max(1, math.ceil(n / batch_size)))


def train_ims(heads: ExitHeads, train: Cached, val: Cached, epochs: int = 60, patience: int = 8,
              batch_size: int = 64, seed: int = 0, boosted: bool = False) -> dict:
    """Warm-up of the IMs alone (in place; every replica is trained alike).

    Loss: sum_l w_l CE_l with w_l proportional to L-1-l (earlier IMs weighted more, mean 1).
    Early stopping per IM: after each epoch the validation accuracy of each IM (of replica 0)
    is checked; an IM that has not improved for ``patience`` epochs stops training (its
    gradient is dropped), and every IM ends at its best epoch's weights.
    Returns a log with each IM's best validation accuracy and stopping epoch.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    L = heads.n_exits
    w = torch.arange(L - 1, 0, -1, dtype=torch.float32)
    w = w / w.mean()
    opt = torch.optim.SGD(heads.im_parameters(), **SGD_KW)
    per_epoch = max(1, math.ceil(len(train) / batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs * per_epoch, 1))
    active = [True] * (L - 1)
    best_acc = [-1.0] * (L - 1)
    best_state = [copy.deepcopy(m.state_dict()) for m in heads.ims]
    stale = [0] * (L - 1)
    stop_epoch = [epochs] * (L - 1)

    def logits_of(d: Cached) -> torch.Tensor:
        return boosted_logits(heads, d) if boosted else heads.im_logits(d.feats, d.head)

    batches = _epochs(len(train), batch_size, rng)
    for epoch in range(epochs):
        if not any(active):
            break
        for _ in range(per_epoch):
            b = train.batch(next(batches))
            ce = exit_ce(logits_of(b), b.y)[..., :-1]  # (R, n, L-1)
            mask = torch.tensor(active, dtype=torch.float32)
            loss = (ce.mean(1) * w * mask).sum()
            opt.zero_grad()
            loss.backward()
            # a stopped IM must not move: weight decay and momentum would still change it
            for l in range(L - 1):
                if not active[l]:
                    for p in heads.ims[l].values():
                        p.grad = None
            opt.step()
            sched.step()
        with torch.no_grad():
            acc = (logits_of(val)[0].argmax(-1) == val.y[:, None]).float().mean(0)
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
    for l, m in enumerate(heads.ims):
        m.load_state_dict(best_state[l])
    return {"best_val_acc": best_acc, "stop_epoch": stop_epoch}


def replica_exit_probabilities(g: torch.Tensor, rules: Sequence[str]) -> torch.Tensor:
    """pi (R, n, L) with replica r read under ``rules[r]``."""
    out = torch.empty(*g.shape[:-1], g.shape[-1] + 1, dtype=g.dtype)
    for rule in set(rules):
        idx = [r for r, x in enumerate(rules) if x == rule]
        out[idx] = exit_probabilities(g[idx], rule)
    return out


def _one_hot(d: torch.Tensor, n: int) -> torch.Tensor:
    return F.one_hot(d.clamp(0, n - 1), n).float()


def train_jei(
    heads: ExitHeads,
    train: Cached,
    val: Cached,
    costs: torch.Tensor,
    lams: Sequence[float],
    rules: Sequence[str],
    im_losses: Sequence[str],
    see_level: Sequence[bool] | None = None,
    steps: int = 8000,
    switch: int = 200,
    batch_size: int = 64,
    seed: int = 0,
    log_every: int = 100,
) -> dict:
    """Jointly train gates and IMs of every replica (in place), ``steps`` batches in all.

    Replica r uses cost weight ``lams[r]``, exit rule ``rules[r]`` (``"paper"`` or ``"cdf"``,
    see :mod:`~simstudy.neural.jei_dnn.model`) and IM loss ``im_losses[r]``; with
    ``see_level[r]`` its gates also read the example's difficulty (one-hot; needs
    ``heads.gate_extra`` = number of levels).

    Phases alternate every ``switch`` batches, gates first. Gate phase (IMs fixed): BCE of the
    gates against t_l = 1[l >= l*], l* = argmin_l CE_l + lambda C_l from the current IMs on
    the batch; paper replicas weigh the positive terms by min(5, (N - n_l)/n_l) from the
    validation l* counts (refreshed every epoch), CDF replicas use the plain BCE. IM phase
    (gates fixed): sum_l pi_l CE_l (``"weighted"``; pi computed by the replica's rule from
    gates on statistics without gradient, so a constant) or mean_l CE_l (``"mean"``).
    """
    R = heads.n_replicas
    see_level = [False] * R if see_level is None else list(see_level)
    for name, seq in (("lams", lams), ("rules", rules), ("im_losses", im_losses),
                      ("see_level", see_level)):
        if len(seq) != R:
            raise ValueError(f"{name}: need one entry per replica ({R}), got {len(seq)}")
    for r in rules:
        if r not in RULES:
            raise ValueError(f"rules: must be in {list(RULES)}, got {r!r}")
    for v in im_losses:
        if v not in IM_LOSSES:
            raise ValueError(f"im_losses: must be in {list(IM_LOSSES)}, got {v!r}")
    if any(see_level) and not heads.gate_extra:
        raise ValueError("see_level: the heads were built without extra gate inputs")
    for name, v in (("steps", steps), ("switch", switch)):
        if isinstance(v, bool) or int(v) != v or v < 1:
            raise ValueError(f"{name}: must be an integer >= 1, got {v!r}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    L = heads.n_exits
    lam = torch.tensor(list(lams), dtype=torch.float64)
    paper = torch.tensor([r == "paper" for r in rules])
    weighted = torch.tensor([v == "weighted" for v in im_losses], dtype=torch.float32)
    mask = torch.tensor(see_level, dtype=torch.float32)
    n_extra = heads.gate_extra

    def extra(d: Cached):
        return _one_hot(d.difficulty, n_extra) if n_extra else None

    opt_g = torch.optim.SGD(heads.gate_parameters(), **SGD_KW)
    opt_im = torch.optim.SGD(heads.im_parameters(), **SGD_KW)
    n_gate = sum(1 for s in range(steps) if (s // switch) % 2 == 0)
    sched_g = torch.optim.lr_scheduler.CosineAnnealingLR(opt_g, T_max=max(1, n_gate))
    sched_im = torch.optim.lr_scheduler.CosineAnnealingLR(opt_im, T_max=max(1, steps - n_gate))
    per_epoch = max(1, math.ceil(len(train) / batch_size))
    batches = _epochs(len(train), batch_size, rng)
    log = {"gate_loss": [], "im_loss": [], "pos_weight": [], "gate_steps": n_gate,
           "im_steps": steps - n_gate}
    pos_w = torch.ones(R, L - 1)
    g_acc, im_acc = [], []
    for step in range(steps):
        if step % per_epoch == 0:
            with torch.no_grad():
                ce_val = exit_ce(heads.im_logits(val.feats, val.head), val.y)
                pw = gate_pos_weight(optimal_exit(ce_val, costs, lam), L)
            pos_w = torch.where(paper[:, None], pw, torch.ones_like(pw))
            log["pos_weight"].append(pos_w.tolist())
        b = train.batch(next(batches))
        if (step // switch) % 2 == 0:
            with torch.no_grad():
                logits = heads.im_logits(b.feats, b.head)
                t = gate_targets(optimal_exit(exit_ce(logits, b.y), costs, lam), L)
                x = heads.gate_inputs(logits, extra(b), mask)
            z = heads.gates_from_inputs(x)
            # BCE with logits; the positive terms weighted per replica and gate
            per = pos_w[:, None] * t * F.softplus(-z) + (1 - t) * F.softplus(z)
            loss = per.mean(dim=(1, 2)).sum()
            opt_g.zero_grad()
            loss.backward()
            opt_g.step()
            sched_g.step()
            g_acc.append(float(loss.detach()) / R)
        else:
            logits = heads.im_logits(b.feats, b.head)
            ce = exit_ce(logits, b.y)[..., :-1]  # the head is frozen
            with torch.no_grad():
                pi = replica_exit_probabilities(heads.gate_values(logits, extra(b), mask), rules)
            w_loss = (pi[..., :-1] * ce).sum(-1).mean(-1)
            m_loss = ce.mean(dim=(1, 2))
            loss = (weighted * w_loss + (1 - weighted) * m_loss).sum()
            opt_im.zero_grad()
            loss.backward()
            opt_im.step()
            sched_im.step()
            im_acc.append(float(loss.detach()) / R)
        if (step + 1) % log_every == 0:
            if g_acc:
                log["gate_loss"].append([step + 1, float(np.mean(g_acc))])
            if im_acc:
                log["im_loss"].append([step + 1, float(np.mean(im_acc))])
            g_acc, im_acc = [], []
    return log
