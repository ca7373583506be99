"""Input laws for X (bounded support, as the theory requires)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["UniformBox", "input_law_from_dict"]


@dataclass(frozen=True)
class UniformBox:
    """X uniform on the box ``[low, high]^d``.

    Parameters
    ----------
    d : int
        Input dimension (>= 1).
    low, high : float
        Bounds of every coordinate, ``low < high``.
    """

    d: int
    low: float = -1.0
    high: float = 1.0

    def __post_init__(self):
        if isinstance(self.d, bool) or int(self.d) != self.d or self.d < 1:
            raise ValueError(f"d: the input dimension must be an integer >= 1, got {self.d!r}")
        if not (np.isfinite(self.low) and np.isfinite(self.high)) or not self.low < self.high:
            raise ValueError(
                "low/high: need finite bounds with low < high, "
                f"got low={self.low}, high={self.high}"
            )

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Draw ``n`` inputs, shape (n, d)."""
        if isinstance(n, bool) or int(n) != n or n < 1:
            raise ValueError(f"n: the sample size must be an integer >= 1, got {n!r}")
        return rng.uniform(self.low, self.high, size=(int(n), self.d))

    def quasi_random(self, m: int, seed: int = 0) -> np.ndarray:
        """A fixed scrambled-Sobol sample of size ``m`` (for expectations over X)."""
        from scipy.stats import qmc

        pts = qmc.Sobol(d=self.d, scramble=True, seed=seed).random(m)
        return self.low + (self.high - self.low) * pts

    def to_dict(self) -> dict:
        return {"law": "uniform", "d": self.d, "low": self.low, "high": self.high}


def input_law_from_dict(data: dict) -> UniformBox:
    """Build an input law from ``{"law": "uniform", "d": ..., "low": ..., "high": ...}``."""
    data = dict(data)
    law = data.pop("law", "uniform")
    if law != "uniform":
        raise ValueError(f"law: unknown input law {law!r}; allowed: ['uniform']")
    allowed = {"d", "low", "high"}
    unknown = set(data) - allowed
    if unknown:
        raise ValueError(f"input law: unknown key(s) {sorted(unknown)}; allowed {sorted(allowed)}")
    return UniformBox(**data)
