"""Non-routing baselines: single experts (Oracle, Best Individual), Retrieval, Multitask LoRA.

Merged experts is the :class:`~simstudy.neural.phatgoose.lora.Merged` mode; the base model alone
is :class:`~simstudy.neural.phatgoose.lora.Off`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from simstudy.neural.phatgoose.lora import Off, Single, use_mode
from simstudy.neural.phatgoose.routing import RetrievalRouter
from simstudy.neural.phatgoose.train import predict


def expert_task_matrix(
    model: nn.Module, experts: Sequence[int], data: Mapping[str, tuple[torch.Tensor, torch.Tensor]]
) -> np.ndarray:
    """Accuracy of each single expert (rows) on each task's data (columns, in ``data`` order)."""
    acc = np.empty((len(experts), len(data)))
    for r, i in enumerate(experts):
        for c, (x, y) in enumerate(data.values()):
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


@torch.no_grad()
def embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Retrieval query embedding: the base model's pooled final representation."""
    model.eval()
    with use_mode(model, Off()):
        return model.features(x)


def build_retrieval(
    model: nn.Module,
    experts: Sequence[int],
    stores: Sequence[torch.Tensor],
) -> RetrievalRouter:
    """Retrieval router over stored training inputs ``stores[j]`` of ``experts[j]``'s task."""
    if len(stores) != len(experts):
        raise ValueError(f"stores: got {len(stores)} example sets for {len(experts)} experts")
    keys = torch.cat([embed(model, s) for s in stores])
    owners = torch.cat([torch.full((len(s),), i, dtype=torch.long)
                        for s, i in zip(stores, experts, strict=True)])
    return RetrievalRouter(keys, owners)


@torch.no_grad()
def retrieval_predict(
    model: nn.Module, router: RetrievalRouter, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Route each example of ``x`` whole to its retrieved expert; return (labels, experts)."""
    assigned = router.assign(embed(model, x))
    pred = torch.empty(len(x), dtype=torch.long)
    for i in assigned.unique():
        sel = assigned == i
        pred[sel] = predict(model, x[sel], Single(int(i)))
    return pred, assigned
