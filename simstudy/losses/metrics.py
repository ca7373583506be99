"""All losses of one fit in one flat dict (the engine stores one column per key).

Headline (rate) metrics: ``D1``/``D2``, ``hellinger``, ``tv``, ``err_<p>_<j>`` (the weighted
per-parameter error e_j^(p) of spec section 3) and ``mass_<j>``; they match
:data:`simstudy.reports.rates.METRIC_PATTERN`. Everything else is a diagnostic with another
prefix and never gets a rate: ``heavy_<p>_<j>`` (|Delta| of the heaviest atom of A_j),
``umax_<p>_<j>`` (unweighted max over A_j), ``wmin_<j>`` (the lightest atom's weight
exp(beta0)), ``cell_size_<j>`` (realised |A_j|), ``ref_atom_cell`` (cell of the fitted reference
atom, numbered from 1), ``max_abs_beta1`` (largest |beta1_i|: the divergence of a dense fit of a
sparse truth) and ``loss_note``.
"""

from __future__ import annotations

from simstudy.losses.discrepancies import PARAMS, check_pair, voronoi_losses
from simstudy.losses.distances import DEFAULT_M, expected_density_distances
from simstudy.model.params import MoEParams

__all__ = ["compute_metrics", "metric_keys", "DIAGNOSTIC_PREFIXES"]

#: prefixes of the per-fit diagnostics (no rate, no guarantee)
DIAGNOSTIC_PREFIXES = ("heavy_", "umax_", "wmin_", "cell_size_", "ref_atom_cell",
                       "max_abs_beta1")


def metric_keys(k_star: int, kind: str) -> list[str]:
    """The keys of :func:`compute_metrics` for k* true experts and loss kind "D1" or "D2"."""
    if kind not in ("D1", "D2"):
        raise ValueError(f"kind: must be 'D1' or 'D2', got {kind!r}")
    keys = [kind, "hellinger", "tv"]
    for j in range(1, k_star + 1):
        keys += [f"err_{p}_{j}" for p in PARAMS] + [f"mass_{j}", f"cell_size_{j}"]
    for j in range(1, k_star + 1):
        keys += [f"heavy_{p}_{j}" for p in PARAMS] + [f"umax_{p}_{j}" for p in PARAMS]
        keys.append(f"wmin_{j}")
    return keys + ["ref_atom_cell", "max_abs_beta1", "loss_note"]


def compute_metrics(
    fitted: MoEParams, truth: MoEParams, inputs, *, m: int = DEFAULT_M
) -> dict[str, float | str]:
    """Voronoi loss, density distances, per-parameter errors and diagnostics of a fit.

    Parameters
    ----------
    fitted : MoEParams
        The fit (k >= k* experts, same d as the truth; ``fitted.K`` is its K-bar).
    truth : MoEParams
        The true parameters; its K is the K of the Voronoi loss.
    inputs : input law (e.g. :class:`simstudy.model.UniformBox`)
        Law of X for the expected distances.
    m : int, default=256
        Size of the quasi-random x sample of the expected distances.

    Returns
    -------
    dict
        Flat, in :func:`metric_keys` order, experts numbered from 1 as in the spec
        (j = 1..k*): ``"D1"`` when ``fitted.k == truth.k`` else ``"D2"``; ``"hellinger"``,
        ``"tv"``; per true expert j ``"err_<p>_j"`` for p in beta1, a, b, v (the weighted power
        mean e_j^(p)), ``"mass_j"`` (M_j), ``"cell_size_j"`` (|A_j|, as a float); the
        diagnostics (module docstring); ``"loss_note"``: "" when all is fine, else why
        something is NaN or suspect (empty cell, more than 3 atoms in a cell, a dense fit of a
        sparse truth, a reference cell with more than one atom).

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
        for p in PARAMS:
            out[f"err_{p}_{n}"] = float(vl.err[p][j])
        out[f"mass_{n}"] = float(vl.mass[j])
        out[f"cell_size_{n}"] = float(vl.cell_size[j])
    for j in range(truth.k):
        n = j + 1
        for p in PARAMS:
            out[f"heavy_{p}_{n}"] = float(vl.heavy[p][j])
        for p in PARAMS:
            out[f"umax_{p}_{n}"] = float(vl.umax[p][j])
        out[f"wmin_{n}"] = float(vl.wmin[j])
    out["ref_atom_cell"] = float(vl.ref_atom_cell + 1)
    out["max_abs_beta1"] = vl.max_abs_beta1
    out["loss_note"] = vl.note
    return out
