"""Digits data (scikit-learn's bundled ``load_digits``): fixed splits, long-tailed variant."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Split", "DigitsData", "load_data", "long_tail_counts", "SPLIT_SEED"]

SPLIT_SEED = 0  # the train/val/calib/test split is fixed; seeds vary only the training
FRACTIONS = {"train": 0.55, "val": 0.15, "calib": 0.15, "test": 0.15}


@dataclass(frozen=True)
class Split:
    """Images (n, 8, 8) scaled to [0, 1] and labels (n,)."""

    X: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return self.y.shape[0]


@dataclass(frozen=True)
class DigitsData:
    """The four splits: ``train`` (backbone, IMs, gates), ``val`` (early stopping, gate
    weights), ``calib`` (conformal calibration), ``test``."""

    name: str
    train: Split
    val: Split
    calib: Split
    test: Split
    n_classes: int = 10


def long_tail_counts(n_max: int, n_classes: int, imbalance: float) -> np.ndarray:
    """Exponential profile ``n_c = n_max * imbalance^(-c / (C - 1))``, c = 0..C-1 (CIFAR-LT)."""
    if not imbalance >= 1:
        raise ValueError(f"imbalance: must be >= 1, got {imbalance}")
    c = np.arange(n_classes)
    return np.maximum(1, np.floor(n_max * imbalance ** (-c / max(n_classes - 1, 1)))).astype(int)


def load_data(name: str = "digits", imbalance: float = 10.0) -> DigitsData:
    """Digits with a fixed stratified split; ``"digits_lt"`` subsamples the training split.

    Parameters
    ----------
    name : {"digits", "digits_lt"}
        ``digits_lt`` keeps, of class c, ``n_c = n_max * imbalance^(-c/9)`` training examples
        (class 0 the most frequent); val, calib and test stay balanced, as in CIFAR-LT.
    imbalance : float
        Ratio of the largest to the smallest class in the long-tailed training split.
    """
    from sklearn.datasets import load_digits

    if name not in ("digits", "digits_lt"):
        raise ValueError(f"name: unknown data set {name!r}; allowed: ['digits', 'digits_lt']")
    raw = load_digits()
    X = (raw.images / 16.0).astype(np.float32)
    y = raw.target.astype(np.int64)
    rng = np.random.default_rng(SPLIT_SEED)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in FRACTIONS}
    for c in range(10):  # stratified: same class proportions in every split
        idx = rng.permutation(np.flatnonzero(y == c))
        cuts = np.round(np.cumsum(list(FRACTIONS.values())) * idx.size).astype(int)
        for key, chunk in zip(FRACTIONS, np.split(idx, cuts[:-1]), strict=True):
            parts[key].append(chunk)
    splits = {k: np.sort(np.concatenate(v)) for k, v in parts.items()}
    if name == "digits_lt":
        tr = splits["train"]
        counts = long_tail_counts(min(np.bincount(y[tr])), 10, imbalance)
        keep = [rng.permutation(tr[y[tr] == c])[: counts[c]] for c in range(10)]
        splits["train"] = np.sort(np.concatenate(keep))
    made = {k: Split(X[v], y[v]) for k, v in splits.items()}
    return DigitsData(name=name, **made)
