"""Non-routing baselines: single experts (Oracle, Best Individual), Retrieval, Multitask LoRA.

Merged experts is the :class:`~simstudy.neural.phatgoose.lora.Merged` mode; the base model alone
is :class:`~simstudy.neural.phatgoose.lora.Off`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from simstudy.neural.phatgoose.lora import Single
from simstudy.neural.phatgoose.routing import RetrievalRouter
from simstudy.neural.phatgoose.train import predict


def expert_task_matrix(
    model: nn.Module, experts: Sequence[int], data: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> np.ndarray:
    """Accuracy of each single expert (rows) on each task's ``(x, y)`` (columns, in order)."""
    acc = np.empty((len(experts), len(data)))
    for r, i in enumerate(experts):
        for c, (x, y) in enumerate(data):
            acc[r, c] = float((predict(model, x, Single(i)) == y).float().mean())
    return acc


def oracle(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best expert per task, chosen with the test labels: (row index, accuracy) per column."""
    best = matrix.argmax(axis=0)
    return best, matrix[best, np.arange(matrix.shape[1])]


def best_individual(matrix: np.ndarray) -> tuple[int, np.ndarray]:
    """The one expert with the best mean accuracy over the columns, and its accuracies."""
    r = int(matrix.mean(axis=1).argmax())
    return r, matrix[r]


def build_retrieval(
    raw_stores: Sequence[np.ndarray], experts: Sequence[int]
) -> RetrievalRouter:
    """Retrieval over stored examples of each expert's task, embedded from the *raw input*.

    ``raw_stores[j]`` holds raw-input embeddings (family's ``raw_embedding``: bag of tokens, or
    pixels) of examples of ``experts[j]``'s training data. The paper embeds the input with a
    sentence encoder, not with the base model; base-model features were measured to retrieve
    far worse (34% vs 96-97% held-in on the first proxy).
    """
    if len(raw_stores) != len(experts):
        raise ValueError(f"raw_stores: got {len(raw_stores)} example sets for {len(experts)} "
                         "experts")
    keys = torch.as_tensor(np.concatenate(raw_stores), dtype=torch.float32)
    owners = torch.cat([torch.full((len(s),), i, dtype=torch.long)
                        for s, i in zip(raw_stores, experts, strict=True)])
    return RetrievalRouter(keys, owners)


@torch.no_grad()
def retrieval_predict(
    model: nn.Module, router: RetrievalRouter, x: torch.Tensor, raw: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """Route each example of ``x`` whole to the expert retrieved for its raw embedding ``raw``;
    return (labels, experts)."""
    assigned = router.assign(torch.as_tensor(raw, dtype=torch.float32))
    pred = None
    for i in assigned.unique():
        sel = assigned == i
        p = predict(model, x[sel], Single(int(i)))
        if pred is None:
            pred = torch.empty((len(x), *p.shape[1:]), dtype=torch.long)
        pred[sel] = p
    return pred, assigned
