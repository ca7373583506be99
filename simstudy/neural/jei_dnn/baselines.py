"""Exit rules on a frozen backbone: JEI-DNN's gates, confidence thresholds, oracle, full path.

Every rule maps class probabilities of all exits ``probs`` (n, L, C) to one exit per example:

- :func:`threshold_exits` -- one global max-probability threshold for every exit;
- :func:`per_exit_threshold_exits` with :func:`tune_per_exit_thresholds` -- a threshold per
  exit, chosen on validation data for each trade-off weight by coordinate ascent on
  accuracy - lambda' x cost (one curve point per lambda');
- :func:`oracle_exits` -- the first correct exit (an upper bound that looks at the label);
- JEI-DNN's learned gates: :func:`jei_exits`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from simstudy.neural.jei_dnn.model import ExitHeads, rule_exits, softmax_last
from simstudy.neural.jei_dnn.train import Cached, boosted_logits

__all__ = [
    "exit_probs",
    "jei_exits",
    "threshold_exits",
    "per_exit_threshold_exits",
    "tune_per_exit_thresholds",
    "oracle_exits",
    "THRESHOLDS",
    "TRADEOFFS",
]

# global max-probability thresholds (dense near 1, where confident exits live)
THRESHOLDS = tuple(float(v) for v in np.round(
    np.r_[0.0, np.linspace(0.25, 0.9, 14), 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999, 1.01], 4))
# weights lambda' of accuracy - lambda' cost for the per-exit thresholds (accuracy per unit cost)
TRADEOFFS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.5, 2.0,
             3.0)


@torch.no_grad()
def exit_probs(heads: ExitHeads, data: Cached, boosted: bool = False) -> np.ndarray:
    """Class probabilities of every exit, (R, n, L, C)."""
    logits = boosted_logits(heads, data) if boosted else heads.im_logits(data.feats, data.head)
    return np.ascontiguousarray(softmax_last(logits).numpy())


@torch.no_grad()
def jei_exits(heads: ExitHeads, data: Cached, rules: Sequence[str],
              see_level: Sequence[bool] | None = None) -> np.ndarray:
    """JEI-DNN inference exits (R, n): replica r's gates read under ``rules[r]``."""
    logits = heads.im_logits(data.feats, data.head)
    extra = None
    if heads.gate_extra:
        extra = torch.nn.functional.one_hot(data.difficulty.clamp(0, heads.gate_extra - 1),
                                            heads.gate_extra)
    mask = None if see_level is None else torch.tensor(list(see_level), dtype=torch.float32)
    g = heads.gate_values(logits, extra, mask)
    out = torch.empty(g.shape[:2], dtype=torch.int64)
    for rule in set(rules):
        idx = [r for r, x in enumerate(rules) if x == rule]
        out[idx] = rule_exits(g[idx], rule)
    return out.numpy()


def threshold_exits(probs: np.ndarray, tau: float) -> np.ndarray:
    """First exit whose max probability reaches ``tau`` (the last exit otherwise)."""
    hit = probs.max(-1) >= tau
    hit[:, -1] = True
    return np.argmax(hit, axis=1)


def per_exit_threshold_exits(probs: np.ndarray, taus: Sequence[float]) -> np.ndarray:
    """First exit l < L-1 whose max probability reaches ``taus[l]`` (else the last exit)."""
    taus = np.asarray(taus, dtype=float)
    if taus.shape != (probs.shape[1] - 1,):
        raise ValueError(f"taus: need one threshold per early exit ({probs.shape[1] - 1}), "
                         f"got shape {taus.shape}")
    hit = np.concatenate([probs[:, :-1].max(-1) >= taus, np.ones((len(probs), 1), bool)], 1)
    return np.argmax(hit, axis=1)


def _objective(conf, correct, costs, taus, lam) -> float:
    hit = np.concatenate([conf[:, :-1] >= taus, np.ones((len(conf), 1), bool)], 1)
    ex = np.argmax(hit, axis=1)
    rows = np.arange(len(ex))
    return float(correct[rows, ex].mean() - lam * costs[ex].mean())


def tune_per_exit_thresholds(probs: np.ndarray, y: np.ndarray, costs, lam: float,
                             n_candidates: int = 40, sweeps: int = 3) -> np.ndarray:
    """Per-exit thresholds maximising accuracy - ``lam`` x mean cost on (probs, y).

    Coordinate ascent: start from the best single global threshold of :data:`THRESHOLDS`,
    then, ``sweeps`` times, set each exit's threshold to the best of ``n_candidates`` quantiles
    of that exit's max probability (plus "never exit here"), the others held.
    """
    if not lam >= 0:
        raise ValueError(f"lam: must be >= 0, got {lam}")
    costs = np.asarray(costs, dtype=float)
    conf = probs.max(-1)
    correct = (probs.argmax(-1) == np.asarray(y)[:, None]).astype(float)
    L = conf.shape[1]
    start = max(THRESHOLDS, key=lambda t: _objective(conf, correct, costs,
                                                     np.full(L - 1, t), lam))
    taus = np.full(L - 1, start)
    qs = np.linspace(0, 1, n_candidates)
    best = _objective(conf, correct, costs, taus, lam)
    for _ in range(sweeps):
        changed = False
        for l in range(L - 1):
            cands = np.r_[np.quantile(conf[:, l], qs), 1.01]
            for c in cands:
                trial = taus.copy()
                trial[l] = c
                val = _objective(conf, correct, costs, trial, lam)
                if val > best + 1e-12:
                    best, taus, changed = val, trial, True
        if not changed:
            break
    return taus


def oracle_exits(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """First exit that predicts correctly (the last exit when none does): an upper bound."""
    hit = probs.argmax(-1) == y[:, None]
    hit[:, -1] = True
    return np.argmax(hit, axis=1)
