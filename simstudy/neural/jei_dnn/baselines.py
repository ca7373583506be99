"""Exit rules on a frozen backbone: JEI-DNN's gates, confidence thresholds, oracle, full path.

Every rule maps exit probabilities ``probs`` (n, L, C) (and, for JEI-DNN, the heads) to one
exit per example; :func:`outcome` scores a rule's exits.
"""

from __future__ import annotations

import numpy as np
import torch

from simstudy.neural.jei_dnn.metrics import expected_calibration_error
from simstudy.neural.jei_dnn.model import (
    ExitHeads,
    exit_probabilities,
    hazards,
    inference_exit,
)
from simstudy.neural.jei_dnn.train import Cached, boosted_logits

__all__ = [
    "exit_probs",
    "jei_exits",
    "threshold_exits",
    "oracle_exits",
    "outcome",
    "THRESHOLDS",
]

# max-probability thresholds of the confidence baselines (dense near 1, where digits live)
THRESHOLDS = tuple(np.round(np.r_[np.linspace(0.3, 0.9, 13), 0.93, 0.96, 0.98, 0.99, 0.995], 4))


@torch.no_grad()
def exit_probs(heads: ExitHeads, data: Cached, boosted: bool = False) -> np.ndarray:
    """Class probabilities of every exit, (n, L, C)."""
    logits = boosted_logits(heads, data) if boosted else heads.im_logits(data.feats, data.head)
    return torch.softmax(logits, dim=-1).numpy()


@torch.no_grad()
def jei_exits(heads: ExitHeads, data: Cached) -> tuple[np.ndarray, np.ndarray]:
    """JEI-DNN inference: exit at the first l with hazard h_l >= 0.5.

    Returns the exits (n,) and the exit probabilities pi (n, L).
    """
    logits = heads.im_logits(data.feats, data.head)
    pi = exit_probabilities(heads.gate_values(logits))
    return inference_exit(hazards(pi)).numpy(), pi.numpy()


def threshold_exits(probs: np.ndarray, tau: float) -> np.ndarray:
    """First exit whose max probability reaches ``tau`` (the last exit otherwise)."""
    hit = probs.max(-1) >= tau
    hit[:, -1] = True
    return np.argmax(hit, axis=1)


def oracle_exits(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """First exit that predicts correctly (the last exit when none does): an upper bound."""
    hit = probs.argmax(-1) == y[:, None]
    hit[:, -1] = True
    return np.argmax(hit, axis=1)


def outcome(probs: np.ndarray, y: np.ndarray, exits: np.ndarray, costs) -> dict:
    """Accuracy, mean normalised cost, ECE and exit counts of one exit rule.

    Also returns the per-example arrays (``correct``, ``cost``, ``confidence``, the chosen
    ``probs``) for spreads over test chunks and conformal prediction.
    """
    costs = np.asarray(costs, dtype=float)
    n, L, _ = probs.shape
    chosen = probs[np.arange(n), exits]
    pred = chosen.argmax(-1)
    conf = chosen.max(-1)
    correct = (pred == y).astype(float)
    return {
        "accuracy": float(correct.mean()),
        "cost": float(costs[exits].mean()),
        "ece": expected_calibration_error(conf, correct, 15),
        "exit_counts": np.bincount(exits, minlength=L).tolist(),
        "correct": correct,
        "example_cost": costs[exits],
        "confidence": conf,
        "chosen_probs": chosen,
    }
