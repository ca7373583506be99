"""Relabel a fit to the truth's layout: experts in the true order, the true reference expert.

A fit from a data-driven start has its own expert order and reference expert (index 0). The
likelihood does not change when the experts are permuted or when the same (t0, t1) is
subtracted from every gating block, so a fit can be written in the truth's layout: fitted
atom matched to true expert j at index j (extra atoms after the k* matched ones), the atom
matched to the true reference as the reference with gating (0, 0). Atoms are matched by the
Voronoi distance of the losses, ||(beta1, a, b, v)_i - (beta1, a, b, v)*_j||, minimised over
the assignment (Hungarian method) and over the choice of the reference.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from simstudy.model.params import MoEParams

__all__ = ["align_to_truth"]


def align_to_truth(fit: MoEParams, truth: MoEParams) -> MoEParams:
    """The fit in the truth's layout (see the module docstring); same density."""
    k, ks = fit.k, truth.k
    if k < ks or fit.d != truth.d:
        raise ValueError(f"fit: needs k >= k* = {ks} experts of dimension {truth.d}")
    target = truth.atoms()
    best = None
    for r in range(k):
        beta1 = fit.beta1 - fit.beta1[r]
        atoms = np.column_stack([beta1, fit.a, fit.b, fit.v])
        cost = np.linalg.norm(atoms[:, None, :] - target[None, :, :], axis=2)  # (k, k*)
        # the candidate reference must take the true reference
        cost = cost.copy()
        cost[r, :] = np.inf
        cost[r, truth.ref] = np.linalg.norm(atoms[r] - target[truth.ref])
        cost[np.arange(k) != r, truth.ref] = np.inf
        rows, cols = linear_sum_assignment(np.where(np.isfinite(cost), cost, 1e300))
        total = float(cost[rows, cols].sum())
        if best is None or total < best[0]:
            best = (total, r, rows, cols)
    _, r, rows, cols = best
    order = np.empty(ks, dtype=np.int64)
    order[cols] = rows
    rest = [i for i in range(k) if i not in set(rows.tolist())]
    perm = np.concatenate([order, np.asarray(rest, dtype=np.int64)])
    return MoEParams(
        beta0=(fit.beta0 - fit.beta0[r])[perm],
        beta1=(fit.beta1 - fit.beta1[r])[perm],
        a=fit.a[perm],
        b=fit.b[perm],
        v=fit.v[perm],
        K=fit.K,
        ref=truth.ref,
    )
