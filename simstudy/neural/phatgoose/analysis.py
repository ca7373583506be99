"""Routing analysis: per-module routing distributions, their entropy, agreement with the Oracle."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def distribution_entropy(p: np.ndarray) -> float:
    """Shannon entropy of ``p`` normalised by ``log(len(p))`` (1 = uniform, 0 = one expert)."""
    p = np.asarray(p, dtype=float)
    if p.ndim != 1 or len(p) < 2:
        raise ValueError(f"p: need a 1-d distribution over >= 2 experts, got shape {p.shape}")
    total = p.sum()
    if not total > 0:
        raise ValueError("p: total mass must be positive")
    q = p[p > 0] / total
    return float(-(q * np.log(q)).sum() / np.log(len(p)))


def routing_summary(
    stats: Mapping[str, Mapping[str, object]],
    oracle: int | None = None,
    constituents: Sequence[int] = (),
) -> dict:
    """Summarise a router's recorded statistics over one evaluation set.

    Parameters
    ----------
    stats : mapping
        ``VectorRouter.stats``: module name -> ``weight_sum`` (m,), ``top1`` (m,), ``n``.
    oracle : int, optional
        Position (among the router's candidates) of the task's Oracle expert.
    constituents : sequence of int
        Positions of the experts whose tasks the evaluated task combines.

    Returns
    -------
    dict
        ``distribution`` (module -> mean routing weight per expert), ``top1`` (module -> share of
        tokens whose largest weight is each expert), ``entropy`` (module -> normalised entropy of
        the distribution), ``mean_entropy``, ``oracle_agreement`` (mean over modules of the share
        of tokens whose top-1 expert is the Oracle), ``constituent_mass`` (mean over modules of the
        routing weight on the constituents).
    """
    if not stats:
        raise ValueError("stats: no routing statistics were recorded")
    dist, top1, ent = {}, {}, {}
    for name, st in stats.items():
        n = int(st["n"])
        if n <= 0:
            raise ValueError(f"stats: module {name!r} saw no tokens")
        dist[name] = (np.asarray(st["weight_sum"], dtype=float) / n).tolist()
        top1[name] = (np.asarray(st["top1"], dtype=float) / n).tolist()
        ent[name] = distribution_entropy(np.asarray(dist[name]))
    out = {"distribution": dist, "top1": top1, "entropy": ent,
           "mean_entropy": float(np.mean(list(ent.values())))}
    out["oracle_agreement"] = (
        float(np.mean([t[oracle] for t in top1.values()])) if oracle is not None else float("nan")
    )
    cons = list(constituents)
    out["constituent_mass"] = (
        float(np.mean([sum(d[c] for c in cons) for d in dist.values()])) if cons
        else float("nan")
    )
    return out
