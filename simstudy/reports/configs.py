"""Fitted configurations of a study (truth, input law, k, K-bar, extra atoms), for the theory.

The theory table is derived from these, never typed per study. They come from the study spec
TOML (format in docs/studies.md; ``extra_atoms`` are 1-based there) or, when only a tidy results
table is at hand, from its columns (design name, true K, k, K) with the extra atoms inferred from
the most common Voronoi cell sizes (``cell_size_j``) of the fits.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pandas as pd

from simstudy.model.designs import get_design
from simstudy.model.inputs import input_law_from_dict
from simstudy.model.params import MoEParams
from simstudy.reports.theory import FitConfig

__all__ = ["truth_from_design_table", "configs_from_spec", "configs_from_table", "study_name"]


def truth_from_design_table(design: dict):
    """(truth, inputs) from a ``[design]`` table: a named design or inline params + inputs."""
    if "name" in design and "params" not in design:
        d = get_design(str(design["name"]), design.get("K"))
        return d.params, d.inputs
    if "params" not in design or "inputs" not in design:
        raise ValueError("design: need either name = 'T'|'S' or both [design.params] and "
                         "[design.inputs]")
    params = dict(design["params"])
    if "K" in design:
        params["K"] = design["K"]
    return MoEParams.from_dict(params), input_law_from_dict(design["inputs"])


def study_name(spec_path) -> str:
    """The ``[study] name`` of a spec file (the file stem when absent)."""
    path = Path(spec_path)
    with path.open("rb") as fh:
        data = tomllib.load(fh)
    return str(data.get("study", {}).get("name", path.stem))


def configs_from_spec(spec_path) -> dict[str, FitConfig]:
    """label -> :class:`FitConfig` for every ``[[fit]]`` of a study spec.

    Raises
    ------
    ValueError
        When the spec lacks ``[design]`` or ``[[fit]]`` or a fit is inconsistent (the message
        names the spec file and the fit label).
    """
    path = Path(spec_path)
    with path.open("rb") as fh:
        data = tomllib.load(fh)
    if "design" not in data:
        raise ValueError(f"{path}: design: the spec has no [design] table")
    fits = data.get("fit")
    if not fits:
        raise ValueError(f"{path}: fit: the spec has no [[fit]] entries")
    truth0, inputs = truth_from_design_table(data["design"])
    out = {}
    for fit in fits:
        label = str(fit.get("label", ""))
        truth = truth0
        if "true_K" in fit:  # a per-fit true K (the K sweep in one study)
            try:
                truth = truth0.replace(K=int(fit["true_K"]))
            except ValueError as exc:
                raise ValueError(f"{path}: fit {label!r}: true_K: {exc}") from None
        extra = [int(j) - 1 for j in fit.get("extra_atoms", [])]  # spec numbering -> 0-based
        k = int(fit.get("k", truth.k + len(extra)))
        K = int(fit.get("K", truth.K))
        bound = fit.get("beta1_bound")
        try:
            out[label] = FitConfig(label, truth, inputs, k, K, tuple(extra),
                                   None if bound is None else float(bound))
        except ValueError as exc:
            raise ValueError(f"{path}: fit {label!r}: {exc}") from None
    return out


def configs_from_table(df: pd.DataFrame) -> dict[str, FitConfig]:
    """label -> :class:`FitConfig` inferred from a tidy results table (named designs only).

    The truth comes from the ``design`` and ``true_K`` columns; the extra atoms from the most
    common ``cell_size_j`` of the fits with that label (near-truth fits keep their assignment).
    """
    need = {"label", "design", "true_K", "k", "K"}
    missing = need - set(df.columns)
    if missing:
        raise ValueError(f"df: the tidy table lacks column(s) {sorted(missing)}")
    out = {}
    for label, g in df.groupby("label", sort=False):
        first = g.iloc[0]
        name = str(first["design"])
        base = name.split("_K")[0]  # design T with a K override may be named "T_K1"
        truth = get_design(base, int(first["true_K"]) if base == "T" else None)
        k, K = int(first["k"]), int(first["K"])
        extra: list[int] = []
        if k > truth.params.k:
            for j in range(1, truth.params.k + 1):
                col = f"cell_size_{j}"
                if col not in g.columns:
                    raise ValueError(f"df: label {label!r}: over-specified (k={k}) but no "
                                     f"column {col} to infer the extra atoms from")
                vals = pd.to_numeric(g[col], errors="coerce").dropna()
                mode = int(vals.mode().iloc[0]) if len(vals) else 1
                extra += [j - 1] * max(mode - 1, 0)
        out[str(label)] = FitConfig(str(label), truth.params, truth.inputs, k, K,
                                    tuple(np.array(extra, dtype=int).tolist()))
    return out
