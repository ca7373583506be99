"""All losses of one fit in one flat dict (the engine stores one column per key)."""

from __future__ import annotations

from simstudy.losses.discrepancies import check_pair, voronoi_losses
from simstudy.losses.distances import DEFAULT_M, expected_density_distances
from simstudy.model.params import MoEParams

__all__ = ["compute_metrics", "metric_keys"]


def metric_keys(k_star: int, kind: str) -> list[str]:
    """The keys of :func:`compute_metrics` for k* true experts and loss kind "D1" or "D2"."""
    if kind not in ("D1", "D2"):
        raise ValueError(f"kind: must be 'D1' or 'D2', got {kind!r}")
    keys = [kind, "hellinger", "tv"]
    for j in range(1, k_star + 1):
        keys += [
            f"err_beta1_{j}",
            f"err_a_{j}",
            f"err_b_{j}",
            f"err_v_{j}",
            f"mass_{j}",
            f"cell_size_{j}",
        ]
    return keys + ["loss_note"]


def compute_metrics(
    fitted: MoEParams, truth: MoEParams, inputs, *, m: int = DEFAULT_M
) -> dict[str, float | str]:
    """Voronoi loss, density distances and per-expert errors of a fit.

    Parameters
    ----------
    fitted : MoEParams
        The fit (k >= k* experts, same d as the truth).
    truth : MoEParams
        The true parameters; its K is the K of the Voronoi loss.
    inputs : input law (e.g. :class:`simstudy.model.UniformBox`)
        Law of X for the expected distances.
    m : int, default=256
        Size of the quasi-random x sample of the expected distances.

    Returns
    -------
    dict
        Flat, with experts numbered from 1 as in the spec (j = 1..k*): ``"D1"`` when
        ``fitted.k == truth.k`` else ``"D2"``; ``"hellinger"``, ``"tv"``; per true expert j
        ``"err_beta1_j"``, ``"err_a_j"``, ``"err_b_j"``, ``"err_v_j"`` (largest |Delta| over the
        atoms of the cell A_j), ``"mass_j"`` (M_j), ``"cell_size_j"`` (|A_j|, as a float);
        ``"loss_note"``: "" when all is fine, else why something is NaN or suspect (empty
        cell, more than 3 atoms in a cell, reference cell with more than one atom).

    Raises
    ------
    ValueError
        If the models' d differ, the fit has fewer experts than the truth, or the input law's
        d differs. A degenerate fit never raises.
    """
    check_pair(fitted, truth)
    if getattr(inputs, "d", None) != truth.d:
        raise ValueError(
            f"inputs: input law has d={getattr(inputs, 'd', None)}, the truth has d={truth.d}"
        )
    vl = voronoi_losses(fitted, truth)
    dd = expected_density_distances(fitted, truth, inputs, m=m)
    out: dict[str, float | str] = {vl.kind: vl.value, "hellinger": dd.hellinger, "tv": dd.tv}
    for j in range(truth.k):
        n = j + 1
        out[f"err_beta1_{n}"] = float(vl.err_beta1[j])
        out[f"err_a_{n}"] = float(vl.err_a[j])
        out[f"err_b_{n}"] = float(vl.err_b[j])
        out[f"err_v_{n}"] = float(vl.err_v[j])
        out[f"mass_{n}"] = float(vl.mass[j])
        out[f"cell_size_{n}"] = float(vl.cell_size[j])
    out["loss_note"] = vl.note
    return out
