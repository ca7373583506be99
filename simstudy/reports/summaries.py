"""Per-n summaries of every metric: mean, median, their Monte Carlo standard errors, counts."""

from __future__ import annotations

import numpy as np
import pandas as pd

from simstudy.reports.rates import INCLUDED_STATUSES, long_metrics

__all__ = ["mcse_mean", "mcse_median", "per_n_summary"]

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


def per_n_summary(df: pd.DataFrame, statuses=INCLUDED_STATUSES, n_boot: int = 500) -> pd.DataFrame:
    """Per (study, label, protocol, metric, n): counts by status, then over the fits used (the
    rate regressions' rule: included statuses, finite metric) mean, MCSE of the mean, median,
    bootstrap MCSE of the median, geometric mean."""
    if "study" not in df.columns:
        df = df.assign(study="")
    long = long_metrics(df)
    rows = []
    for (study, label, protocol, metric, n), g in long.groupby(
            ["study", "label", "protocol", "metric", "n"], sort=False):
        val = g["value"].to_numpy(dtype=float)
        if not np.isfinite(val).any() and metric in ("D1", "D2"):
            # D1 of an over-specified fit, D2 of an exact one: not applicable
            continue
        st = g["status"].astype(str).to_numpy()
        use = np.isin(st, statuses) & np.isfinite(val)
        x = val[use]
        row = {"study": study, "label": label, "protocol": protocol, "metric": metric,
               "n": n, "fits": len(g)}
        row.update({s: int((st == s).sum()) for s in _STATUSES})
        row["used"] = int(use.sum())
        row["mean"] = float(np.mean(x)) if x.size else np.nan
        row["mcse_mean"] = mcse_mean(x)
        row["median"] = float(np.median(x)) if x.size else np.nan
        row["mcse_median"] = mcse_median(x, n_boot=n_boot)
        pos = x[x > 0]
        row["geo_mean"] = float(np.exp(np.mean(np.log(pos)))) if pos.size else np.nan
        rows.append(row)
    return pd.DataFrame(rows)
