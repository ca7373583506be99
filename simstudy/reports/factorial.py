"""The protocol factorial: how much of the papers' slopes comes from the start and how much
from the stopping rule.

The papers' protocol and the strict one differ in two factors at once: the start (near-truth
noise shrinking with n vs a fixed scale) and the stopping rule (tol 1e-6 relative, best of 5
starts for over-specified fits, vs strict convergence). :data:`simstudy.estimation.protocols.
FACTORIAL` crosses them into four protocols, run on the same data sets (common random
numbers). With S(start, stop) the slope of a loss under each, ``A = S(papers, papers)``
(the papers' protocol), ``B = S(strict, papers)`` (``fixed_tol``), ``C = S(papers, strict)``
(``shrinking_strict``) and ``D = S(strict, strict)`` (the strict protocol)::

    A - D = [(A - B) + (C - D)] / 2   +   [(A - C) + (B - D)] / 2
          =     start effect          +       stop effect

exactly (each main effect averaged over the other factor's two levels), and
``interaction = [(A - B) - (C - D)] / 2`` says how much the start effect depends on the stopping
rule. Slopes are median regressions on the replications that all four protocols can use; the
intervals resample those replications within each n, the same resample for all four protocols,
so the differences keep the pairing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from simstudy.reports.quantreg import boot_rng, qr_line, stratified_indices
from simstudy.reports.rates import (
    DEFAULT_BOOT,
    INCLUDED_STATUSES,
    designed_partition,
    mark_empty_expert_only,
    metric_columns,
    usable,
)
from simstudy.reports.verdicts import FIXED

__all__ = ["FACTOR_CELLS", "factorial_table", "format_factorial"]

#: the four protocols by (start, stop) factor level: A, B, C, D of the module docstring
FACTOR_CELLS = {"A": "papers", "B": "fixed_tol", "C": "shrinking_strict", "D": "strict"}

_EFFECTS = ("total", "start", "stop", "interaction")


def _effects(S: dict) -> dict:
    A, B, C, D = (S[k] for k in "ABCD")
    return {"total": A - D, "start": ((A - B) + (C - D)) / 2, "stop": ((A - C) + (B - D)) / 2,
            "interaction": ((A - B) - (C - D)) / 2}


def factorial_table(df: pd.DataFrame, theory: pd.DataFrame | None = None, *,
                    statuses=INCLUDED_STATUSES, n_boot: int = DEFAULT_BOOT,
                    seed: int = 0) -> pd.DataFrame:
    """The factorial decomposition per (study, label, metric) for labels run under all four
    protocols of :data:`FACTOR_CELLS` (empty frame when none is).

    Returns
    -------
    pandas.DataFrame
        study, label, metric, kind, expected, pairs (fits used per protocol), n_levels, n_min,
        n_max, reps_min, reps_max, slope_<protocol> for the four protocols, and for each of
        total (papers minus strict), start, stop and interaction: the value and its 95%
        interval (``<effect>``, ``<effect>_low``, ``<effect>_high``); start_share = start /
        total where the interval of the total excludes 0 (else NaN).
    """
    protos = list(FACTOR_CELLS.values())
    df = mark_empty_expert_only(df)
    if "study" not in df.columns:
        df = df.assign(study="")
    th = {} if theory is None else {(r.label, r.metric): (r.kind, r.expected)
                                    for r in theory.itertuples(index=False)}
    design = designed_partition(theory)
    rows = []
    for (study, label), g in df.groupby(["study", "label"], sort=False):
        if not set(protos) <= set(g["protocol"]):
            continue
        order = [m for (lab, m) in th if lab == label]  # the theory's order first
        metrics = [m for m in dict.fromkeys(order + metric_columns(g)) if m in g.columns
                   and th.get((label, m), ("none",))[0] != FIXED and g[m].notna().any()]
        for metric in metrics:
            kind, expected = th.get((label, metric), ("none", np.nan))
            series = {}
            for cell, p in FACTOR_CELLS.items():
                gp = g[g["protocol"] == p]
                use, _ = usable(gp, metric, design.get(label), statuses)
                s = pd.Series(pd.to_numeric(gp[metric], errors="coerce").to_numpy()[use],
                              index=pd.MultiIndex.from_arrays(
                                  [gp["n"].to_numpy()[use], gp["rep"].to_numpy()[use]]))
                series[cell] = s[~s.index.duplicated()]
            common = series["A"].index
            for s in series.values():
                common = common.intersection(s.index)
            common = common.sort_values()
            n = common.get_level_values(0).to_numpy(dtype=float)
            levels, counts = np.unique(n, return_counts=True)
            row = {"study": study, "label": label, "metric": metric, "kind": kind,
                   "expected": expected, "pairs": len(common), "n_levels": levels.size}
            if levels.size < 2:
                rows.append(row)
                continue
            row.update(n_min=levels[0], n_max=levels[-1], reps_min=int(counts.min()),
                       reps_max=int(counts.max()))
            x = np.log(n)
            groups = [np.flatnonzero(n == v) for v in levels]
            idx = stratified_indices(groups, n_boot, boot_rng(seed, study, label, metric,
                                                              "factorial"))
            point, draws = {}, {}
            for cell, s in series.items():
                y = np.log(s.loc[common].to_numpy(dtype=float))
                point[cell] = qr_line(x, y, 0.5)[1]
                draws[cell] = qr_line(x[idx[0]], y[idx], 0.5, start=point[cell])[1]
                row[f"slope_{FACTOR_CELLS[cell]}"] = point[cell]
            est, dist = _effects(point), _effects(draws)
            for e in _EFFECTS:
                lo, hi = np.quantile(dist[e], [0.025, 0.975])
                row.update({e: est[e], f"{e}_low": lo, f"{e}_high": hi})
            # a share of a difference that may be 0 means nothing: only when the 95% interval
            # of papers - strict excludes 0
            clear = row["total_low"] > 0 or row["total_high"] < 0
            row["start_share"] = est["start"] / est["total"] if clear else np.nan
            rows.append(row)
    cols = ["study", "label", "metric", "kind", "expected", "pairs", "n_levels", "n_min",
            "n_max", "reps_min", "reps_max", *[f"slope_{p}" for p in protos],
            *[c for e in _EFFECTS for c in (e, f"{e}_low", f"{e}_high")], "start_share"]
    return pd.DataFrame(rows, columns=cols)


def format_factorial(fac: pd.DataFrame) -> pd.DataFrame:
    """Readable columns of :func:`factorial_table`."""
    from simstudy.reports.tables import ci_text, range_text, theory_text

    def eff(e):
        return [f"{v:+.3f} {ci_text(lo, hi)}" if np.isfinite(v) else ""
                for v, lo, hi in zip(fac[e], fac[f"{e}_low"], fac[f"{e}_high"], strict=True)]

    out = pd.DataFrame({
        "label": fac["label"], "metric": fac["metric"],
        "theory": [theory_text(k, e) for k, e in zip(fac["kind"], fac["expected"],
                                                     strict=True)],
        **{p: fac[f"slope_{p}"] for p in FACTOR_CELLS.values()},
        "papers - strict [95% CI]": eff("total"), "start effect": eff("start"),
        "stop effect": eff("stop"), "interaction": eff("interaction"),
        "start share": fac["start_share"],
        "n range": [range_text(a, b, c) for a, b, c in zip(fac["n_min"], fac["n_max"],
                                                           fac["n_levels"], strict=True)],
        "fits per n": [("" if not np.isfinite(a) else f"{int(a)}" if a == b
                        else f"{int(a)}-{int(b)}")
                       for a, b in zip(fac["reps_min"], fac["reps_max"], strict=True)],
    })
    return out
