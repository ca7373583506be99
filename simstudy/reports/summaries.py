"""Per-n summaries of every metric and diagnostic: means, medians, their Monte Carlo standard
errors, counts by status."""

from __future__ import annotations

import numpy as np
import pandas as pd

from simstudy.reports.rates import (
    CELL_METRIC_PATTERN,
    DIAGNOSTIC_PATTERN,
    INCLUDED_STATUSES,
    designed_partition,
    mark_empty_expert_only,
    metric_columns,
    partition_ok,
    usable,
)

__all__ = ["mcse_mean", "mcse_median", "per_n_summary", "diagnostic_summary"]

_STATUSES = ("ok", "not_converged", "degenerate", "error")


def mcse_mean(x) -> float:
    """Monte Carlo SE of a mean: sd / sqrt(R) (NaN for fewer than two values)."""
    x = np.asarray(x, dtype=float)
    return float(np.std(x, ddof=1) / np.sqrt(x.size)) if x.size >= 2 else np.nan


def mcse_median(x, n_boot: int = 500, seed: int = 0) -> float:
    """Monte Carlo SE of a median by the nonparametric bootstrap (fixed seed: reproducible).

    The bootstrap avoids a density estimate at the median, which the asymptotic formula
    1 / (2 f(m) sqrt(R)) needs and which is poor with R = 20-40 replications.
    """
    x = np.asarray(x, dtype=float)
    if x.size < 2:
        return np.nan
    if int(n_boot) != n_boot or n_boot < 10:
        raise ValueError(f"n_boot: need an integer >= 10 bootstrap draws, got {n_boot!r}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(int(n_boot), x.size))
    return float(np.std(np.median(x[idx], axis=1), ddof=1))


def _partition_mask(g, metric, partition):
    """Fits of ``g`` with the designed partition, where ``metric`` is cell-based."""
    if partition is None or not CELL_METRIC_PATTERN.match(metric):
        return np.ones(len(g), dtype=bool)
    ok = partition_ok(g, *partition)
    return np.ones(len(g), dtype=bool) if ok is None else ok.to_numpy()


def _groups(df):
    df = mark_empty_expert_only(df)
    if "study" not in df.columns:
        df = df.assign(study="")
    return df.groupby(["study", "label", "protocol", "n"], sort=False)


def per_n_summary(df: pd.DataFrame, theory: pd.DataFrame | None = None,
                  statuses=INCLUDED_STATUSES, n_boot: int = 500) -> pd.DataFrame:
    """Per (study, label, protocol, metric, n): counts by status, then over the fits used (the
    rate regressions' rule: included statuses, the designed partition for cell-based losses,
    a finite metric) mean, MCSE of the mean, median, bootstrap MCSE of the median, geometric
    mean."""
    design = designed_partition(theory)
    metrics = metric_columns(df)
    rows = []
    for (study, label, protocol, n), g in _groups(df):
        st = g["status"].astype(str).to_numpy()
        for metric in metrics:
            val = pd.to_numeric(g[metric], errors="coerce").to_numpy(dtype=float)
            if not np.isfinite(val).any() and metric in ("D1", "D2"):
                continue  # D1 of an over-specified fit, D2 of an exact one: not applicable
            _, counts = usable(g, metric, design.get(label), statuses)
            # as the rates, but zeros (a quantity fixed at the truth) count here
            use = np.isin(st, statuses) & np.isfinite(val) & _partition_mask(
                g, metric, design.get(label))
            x = val[use]
            row = {"study": study, "label": label, "protocol": protocol, "metric": metric,
                   "n": n, "fits": len(g)}
            row.update({s: int((st == s).sum()) for s in _STATUSES})
            row["other partition"] = counts["other partition"]
            row["used"] = int(use.sum())
            row["mean"] = float(np.mean(x)) if x.size else np.nan
            row["mcse_mean"] = mcse_mean(x)
            row["median"] = float(np.median(x)) if x.size else np.nan
            row["mcse_median"] = mcse_median(x, n_boot=n_boot)
            pos = x[x > 0]
            row["geo_mean"] = float(np.exp(np.mean(np.log(pos)))) if pos.size else np.nan
            rows.append(row)
    return pd.DataFrame(rows)


def diagnostic_summary(df: pd.DataFrame, theory: pd.DataFrame | None = None,
                       statuses=INCLUDED_STATUSES) -> pd.DataFrame:
    """Per (study, label, protocol, n, diagnostic): fits used, median and quartiles of the
    diagnostics (heaviest atom's error, unweighted max, lightest weight, max |beta1|)."""
    design = designed_partition(theory)
    diags = [c for c in df.columns if DIAGNOSTIC_PATTERN.match(str(c))]
    rows = []
    for (study, label, protocol, n), g in _groups(df):
        for d in diags:
            # the per-cell diagnostics follow the partition rule of the losses
            part = None if d == "max_abs_beta1" else design.get(label)
            st = g["status"].astype(str).to_numpy()
            val = pd.to_numeric(g[d], errors="coerce").to_numpy(dtype=float)
            use = np.isin(st, statuses) & np.isfinite(val) & _partition_mask(g, "D2", part)
            x = val[use]
            if not x.size:
                continue
            q25, q50, q75 = np.quantile(x, [0.25, 0.5, 0.75])
            rows.append({"study": study, "label": label, "protocol": protocol, "n": n,
                         "diagnostic": d, "used": int(x.size), "median": q50, "q25": q25,
                         "q75": q75})
    return pd.DataFrame(rows, columns=["study", "label", "protocol", "n", "diagnostic", "used",
                                       "median", "q25", "q75"])
