"""Coverage of Wald intervals and the fits' global checks, with Monte Carlo standard errors.

Every strict exact fit records per scalar parameter whether its 95% Wald interval covers the
true value (``cover_<parameter>`` in the metrics, from the exact observed information; see
:func:`simstudy.engine.task.fit_diagnostics`). :func:`coverage_table` gives the coverage per
parameter with its Monte Carlo standard error sqrt(p (1 - p) / fits) (rsimsum's ``cover``),
pooled over n and per n. :func:`check_table` counts, per n, the fits below the true
parameters' log-likelihood on the same data (not the MLE), the fits whose configured
near-truth start did not reach the best value of the global check, the near-degenerate
variances, and the certificates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from simstudy.reports.tables import to_markdown

__all__ = ["coverage_table", "check_table", "write_fit_checks", "NOMINAL"]

NOMINAL = 0.95
#: a fit is below the truth when its log-likelihood gap is below -GAP_TOL
GAP_TOL = 1e-6
_GROUP = ["label", "protocol"]


def _cover_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if str(c).startswith("cover_")]


def coverage_table(df: pd.DataFrame, by_n: bool = False) -> pd.DataFrame:
    """Coverage per (label, protocol[, n], parameter) with its Monte Carlo SE.

    Fits without the parameter's indicator (papers' protocol, singular information, the
    reference's fixed gating) do not count. Columns: label, protocol, [n,] parameter, fits,
    coverage, mcse, and ``within 2 SE`` (whether |coverage - 0.95| <= 2 mcse).
    """
    cols = _cover_columns(df)
    keys = _GROUP + (["n"] if by_n else [])
    rows = []
    if cols:
        for key, g in df.groupby(keys, sort=True):
            key = key if isinstance(key, tuple) else (key,)
            for c in cols:
                x = pd.to_numeric(g[c], errors="coerce").dropna()
                if x.empty:
                    continue
                p = float(x.mean())
                se = float(np.sqrt(p * (1.0 - p) / len(x)))
                rows.append({**dict(zip(keys, key, strict=True)),
                             "parameter": c[len("cover_"):], "fits": int(len(x)),
                             "coverage": p, "mcse": se,
                             "within 2 SE": bool(abs(p - NOMINAL) <= 2.0 * max(se, 1e-12))})
    return pd.DataFrame(rows, columns=keys + ["parameter", "fits", "coverage", "mcse",
                                              "within 2 SE"])


def check_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (label, protocol, n): fits, certified, below truth, start below best, var_small,
    median passes (columns absent from older stores count as missing)."""
    rows = []
    for (label, protocol, n), g in df.groupby(_GROUP + ["n"], sort=True):
        def col(name, g=g):
            return pd.to_numeric(g[name], errors="coerce") if name in g else pd.Series(
                np.nan, index=g.index)
        gap = col("loglik_gap")
        reached = col("start_reached_best")
        stops = g["stop_reason"].fillna("error") if "stop_reason" in g else pd.Series(
            "?", index=g.index)
        rows.append({
            "label": label, "protocol": protocol, "n": int(n), "fits": int(len(g)),
            "certified": int(stops.isin(("certified", "certified_on_tie",
                                         "certified_on_bound")).sum()),
            "on tie": int((stops == "certified_on_tie").sum()),
            "diverging": int((stops == "diverging").sum()),
            "below truth": int((gap < -GAP_TOL).sum()),
            "start below best": int((reached == 0).sum()),
            "var_small": int((col("flag_var_small") == 1).sum()),
            "median passes": float(col("n_passes").median()),
        })
    return pd.DataFrame(rows)


def write_fit_checks(study: str, df: pd.DataFrame, out) -> list[Path]:
    """Write ``tables/<study>_coverage.{csv,md}`` (when any fit has coverage indicators) and
    ``tables/<study>_checks.{csv,md}``; return the paths."""
    tables = Path(out) / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    files = []
    checks = check_table(df)
    for ext in ("csv", "md"):
        p = tables / f"{study}_checks.{ext}"
        if ext == "csv":
            checks.to_csv(p, index=False)
        else:
            p.write_text(
                f"# {study}: certificates and global checks\n\n"
                "below truth: fits whose log-likelihood is below that of the true parameters "
                "on the same data (not the MLE); start below best: the configured near-truth "
                "start did not reach the best value of the global check (truth and "
                "data-driven starts); var_small: a variance below 1e-3 var(y).\n\n"
                + to_markdown(checks))
        files.append(p)
    cover = coverage_table(df)
    if not cover.empty:
        by_n = coverage_table(df, by_n=True)
        cover.to_csv(tables / f"{study}_coverage.csv", index=False)
        by_n.to_csv(tables / f"{study}_coverage_by_n.csv", index=False)
        (tables / f"{study}_coverage.md").write_text(
            f"# {study}: coverage of 95% Wald intervals\n\n"
            "Intervals from the exact observed information at each strict fit (log scale for "
            "the variances); Monte Carlo SE sqrt(p (1 - p) / fits). Pooled over n; per n in "
            f"`{study}_coverage_by_n.csv`.\n\n" + to_markdown(cover))
        files += [tables / f"{study}_coverage.csv", tables / f"{study}_coverage_by_n.csv",
                  tables / f"{study}_coverage.md"]
    return files
