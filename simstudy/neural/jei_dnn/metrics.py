"""Metrics of gated early-exit predictions: accuracy/cost, ECE, split conformal per exit."""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "expected_calibration_error",
    "reliability",
    "score_exits",
    "conformal_thresholds",
    "conformal_sets",
    "conformal_report",
    "chunk_spread",
    "ALPHAS",
]

ALPHAS = (0.01, 0.02, 0.03, 0.04, 0.05)


def expected_calibration_error(confidence, correct, n_bins: int = 15) -> float:
    """ECE with equal-mass bins: sum_b (n_b / n) |accuracy_b - mean confidence_b|.

    Examples are sorted by confidence and cut into ``n_bins`` groups of (almost) equal size.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if confidence.shape != correct.shape or confidence.ndim != 1:
        raise ValueError(
            f"confidence/correct: expected two 1-d arrays of one length, got shapes "
            f"{confidence.shape} and {correct.shape}"
        )
    if isinstance(n_bins, bool) or int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins: must be an integer >= 1, got {n_bins!r}")
    n = confidence.size
    if n == 0:
        return float("nan")
    order = np.argsort(confidence, kind="stable")
    ece = 0.0
    for chunk in np.array_split(order, min(int(n_bins), n)):
        ece += chunk.size / n * abs(correct[chunk].mean() - confidence[chunk].mean())
    return float(ece)


def _conformal_quantile(scores: np.ndarray, alpha: float) -> float:
    """The ceil((n+1)(1-alpha))-th smallest score; +inf when that rank exceeds n."""
    n = scores.size
    rank = math.ceil((n + 1) * (1 - alpha))
    if rank > n:
        return math.inf
    return float(np.sort(scores)[rank - 1])


def conformal_thresholds(probs, labels, exits, n_exits: int, alpha: float) -> np.ndarray:
    """Split-conformal threshold of every exit from calibration data (score 1 - p(y|x)).

    Parameters
    ----------
    probs : array (n, C)
        Class probabilities of the exit each calibration example took.
    labels, exits : arrays (n,)
        True labels and taken exits.
    n_exits : int
    alpha : float in (0, 1)
        Miscoverage level; every exit gets its own threshold from its own calibration examples,
        so coverage >= 1 - alpha holds conditionally on the exit taken (exchangeability within
        an exit). An exit with fewer than 1/alpha - 1 calibration examples gets +inf (full set).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: must be in (0, 1), got {alpha}")
    probs = np.asarray(probs)
    labels = np.asarray(labels)
    exits = np.asarray(exits)
    scores = 1.0 - probs[np.arange(labels.size), labels]
    return np.array(
        [_conformal_quantile(scores[exits == l], alpha) for l in range(n_exits)], dtype=float
    )


def conformal_sets(probs, exits, thresholds) -> np.ndarray:
    """Boolean prediction sets (n, C): class c is in the set when 1 - p_c <= q_{exit}."""
    probs = np.asarray(probs)
    q = np.asarray(thresholds)[np.asarray(exits)]
    return (1.0 - probs) <= q[:, None]


def conformal_report(cal, test, n_exits: int, alphas=ALPHAS) -> list[dict]:
    """Coverage and mean set size on ``test`` for each alpha; ``cal``/``test`` are
    ``(probs, labels, exits)`` triples."""
    rows = []
    for alpha in alphas:
        q = conformal_thresholds(*cal, n_exits=n_exits, alpha=alpha)
        sets = conformal_sets(test[0], test[2], q)
        covered = sets[np.arange(test[1].size), test[1]]
        rows.append(
            {
                "alpha": alpha,
                "coverage": float(covered.mean()),
                "set_size": float(sets.sum(1).mean()),
                "n_full_set_exits": int(np.sum(~np.isfinite(q))),
            }
        )
    return rows


def chunk_spread(values, n_chunks: int = 5) -> tuple[float, float]:
    """Mean and standard deviation over ``n_chunks`` contiguous chunks of per-example values."""
    values = np.asarray(values, dtype=float)
    means = [c.mean() for c in np.array_split(values, n_chunks) if c.size]
    return float(np.mean(means)), float(np.std(means, ddof=1)) if len(means) > 1 else 0.0


def reliability(confidence, correct, n_bins: int = 15) -> list[list[float]]:
    """Equal-mass reliability diagram: [mean confidence, accuracy] per bin."""
    confidence = np.asarray(confidence, dtype=float)
    correct = np.asarray(correct, dtype=float)
    order = np.argsort(confidence, kind="stable")
    return [[float(confidence[c].mean()), float(correct[c].mean())]
            for c in np.array_split(order, min(n_bins, max(confidence.size, 1))) if c.size]


def score_exits(probs, y, exits, costs, difficulty=None, n_levels: int = 1, calib=None,
                alphas=ALPHAS, n_chunks: int = 5) -> dict:
    """Everything reported for one exit rule on one split.

    Parameters
    ----------
    probs : array (n, L, C)
        Class probabilities of every exit.
    y, exits : arrays (n,)
    costs : array (L,)
        Normalised cost of each exit.
    difficulty : array (n,), optional
        Per-example difficulty in 0..n_levels-1 (accuracy, mean exit and cost by level).
    calib : (probs, y, exits), optional
        The same rule on the calibration split: split-conformal sets with per-exit thresholds.

    Returns
    -------
    dict
        ``accuracy``, ``cost``, ``ece``, ``acc_chunk_sd``/``cost_chunk_sd`` (spread over
        ``n_chunks`` test chunks), ``exit_counts``, ``mean_exit`` (1-based), ``by_level``
        (rows [level, n, accuracy, mean exit, mean cost]), ``conformal`` and ``reliability``.
    """
    probs = np.asarray(probs)
    y, exits = np.asarray(y), np.asarray(exits)
    costs = np.asarray(costs, dtype=float)
    n, L, _ = probs.shape
    chosen = probs[np.arange(n), exits]
    conf = chosen.max(-1)
    correct = (chosen.argmax(-1) == y).astype(float)
    cost = costs[exits]
    out = {
        "accuracy": float(correct.mean()),
        "cost": float(cost.mean()),
        "ece": expected_calibration_error(conf, correct, 15),
        "acc_chunk_sd": chunk_spread(correct, n_chunks)[1],
        "cost_chunk_sd": chunk_spread(cost, n_chunks)[1],
        "exit_counts": np.bincount(exits, minlength=L).tolist(),
        "mean_exit": float(exits.mean() + 1),
        "reliability": reliability(conf, correct),
    }
    if difficulty is not None:
        difficulty = np.asarray(difficulty)
        rows = []
        for d in range(n_levels):
            m = difficulty == d
            if m.any():
                rows.append([d, int(m.sum()), float(correct[m].mean()),
                             float(exits[m].mean() + 1), float(cost[m].mean())])
        out["by_level"] = rows
    if calib is not None:
        cp, cy, ce = (np.asarray(a) for a in calib)
        chosen_cal = cp[np.arange(len(cy)), ce]
        out["conformal"] = conformal_report((chosen_cal, cy, ce), (chosen, y, exits), L, alphas)
    return out
