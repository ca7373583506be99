"""The frozen backbone: the shared tiny transformer, trained once per seed, and its features.

What JEI-DNN needs from the backbone is, for every example, the pooled representation after
each block passed through the *shared* final LayerNorm (the inference modules read those:
:meth:`~simstudy.neural.transformer.Transformer.block_features`) and the backbone head's
logits (the last exit). :func:`extract_features` computes them once, so the exit heads of
every lambda train on cached features in seconds.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import numpy as np
import torch
from torch.nn import functional as F

from simstudy.neural.jei_dnn.data import IGNORE
from simstudy.neural.transformer import Transformer, TransformerConfig

__all__ = ["train_backbone", "extract_features", "accuracy"]


@torch.no_grad()
def accuracy(model: Transformer, x: torch.Tensor, y: torch.Tensor, chunk: int = 4096) -> float:
    """Top-1 accuracy of the backbone head on (x, y)."""
    model.eval()
    hits = 0
    for s in range(0, len(y), chunk):
        logits = model.head(model.features(x[s : s + chunk]))  # the pooled exit, any output
        hits += int((logits.argmax(-1) == y[s : s + chunk]).sum())
    return hits / max(len(y), 1)


def train_backbone(
    cfg: TransformerConfig,
    sample: Callable[[np.random.Generator, int], tuple[torch.Tensor, torch.Tensor]],
    val: tuple[torch.Tensor, torch.Tensor],
    steps: int,
    seed: int,
    batch_size: int = 128,
    lr: float = 3e-3,
    eval_every: int = 100,
    label_smoothing: float = 0.0,
) -> tuple[Transformer, dict]:
    """Train a :class:`~simstudy.neural.transformer.Transformer` and freeze it.

    Parameters
    ----------
    cfg : TransformerConfig
    sample : callable
        ``sample(rng, batch_size) -> (x, y)``: one training batch (fresh synthetic draws, or a
        resample of the backbone's training images with fresh corruption/augmentation); for
        ``output="tokens"`` models ``y`` is (n, n_tokens) with ``IGNORE`` where unlabelled.
    val : (x, y)
        Validation data: the weights of the best validation accuracy (checked every
        ``eval_every`` steps and at the end) are kept.
    steps, seed, batch_size, lr
        AdamW (weight decay 0.05) with a one-cycle schedule; ``seed`` sets the initial weights
        and the batch stream.

    Returns
    -------
    model : Transformer
        In eval mode with ``requires_grad`` off.
    log : dict
        ``val_acc`` (the checks), ``best_val_acc``, ``best_step``.
    """
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps: must be an integer >= 1, got {steps!r}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = Transformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=int(steps), pct_start=0.1
    )
    best, best_state, best_step, log = -1.0, None, 0, {"val_acc": []}
    for step in range(1, int(steps) + 1):
        model.train()
        xb, yb = sample(rng, batch_size)
        out = model(xb)
        # per-token models train on every position's target (IGNORE where there is none)
        loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), yb.reshape(-1),
                               ignore_index=IGNORE, label_smoothing=label_smoothing)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % eval_every == 0 or step == steps:
            acc = accuracy(model, *val)
            log["val_acc"].append([step, acc])
            if acc >= best:
                best, best_step = acc, step
                best_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    log.update(best_val_acc=best, best_step=best_step)
    return model, log


@torch.no_grad()
def extract_features(
    model: Transformer, x: torch.Tensor, chunk: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """Cached inputs of the exits: pooled features (n, L, width) and head logits (n, C)."""
    model.eval()
    feats, logits = [], []
    for s in range(0, len(x), chunk):
        f = model.block_features(x[s : s + chunk])
        feats.append(f)
        logits.append(model.head(f[:, -1]))
    if not feats:
        L, D = model.cfg.depth, model.cfg.width
        return np.zeros((0, L, D), np.float32), np.zeros((0, model.cfg.n_outputs), np.float32)
    return torch.cat(feats).numpy(), torch.cat(logits).numpy()


def steps_for(epochs: int, n: int, batch_size: int) -> int:
    """Optimiser steps of ``epochs`` passes over ``n`` examples."""
    return max(1, epochs * math.ceil(n / batch_size))
