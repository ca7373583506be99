"""Seeds of a study: functions of content, never of worker count or execution order.

Both seeds are ``numpy.random.SeedSequence(root_seed, spawn_key=...)`` with a stream tag first
(0 = data, 1 = fit) so the two families never collide, then integers derived from hashes:

- data of replication ``rep`` at size ``n``: ``(0, int(design_hash), rep, n)``. Every fit and
  protocol of that replication sees the same data set (common random numbers);
- the fit's own randomness (initial noise, restarts): ``(1, int(condition_id), rep)``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["data_seed", "fit_seed", "data_rng", "fit_rng"]

_DATA, _FIT = 0, 1


def _hash_int(hex_digest: str) -> int:
    # 64 bits of the hash are plenty to separate designs / conditions
    return int(hex_digest[:16], 16)


def _check(name: str, value: int, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
    return int(value)


def data_seed(root_seed: int, design_hash: str, rep: int, n: int) -> np.random.SeedSequence:
    """Seed of the data set of replication ``rep`` at sample size ``n``."""
    root_seed, rep, n = _check("root_seed", root_seed), _check("rep", rep), _check("n", n, 1)
    return np.random.SeedSequence(root_seed, spawn_key=(_DATA, _hash_int(design_hash), rep, n))


def fit_seed(root_seed: int, condition_id: str, rep: int) -> np.random.SeedSequence:
    """Seed of the fit's own randomness for replication ``rep`` of a condition."""
    root_seed, rep = _check("root_seed", root_seed), _check("rep", rep)
    return np.random.SeedSequence(root_seed, spawn_key=(_FIT, _hash_int(condition_id), rep))


def data_rng(root_seed: int, design_hash: str, rep: int, n: int) -> np.random.Generator:
    """Generator for the data set (see :func:`data_seed`)."""
    return np.random.default_rng(data_seed(root_seed, design_hash, rep, n))


def fit_rng(root_seed: int, condition_id: str, rep: int) -> np.random.Generator:
    """Generator for the fit (see :func:`fit_seed`)."""
    return np.random.default_rng(fit_seed(root_seed, condition_id, rep))
