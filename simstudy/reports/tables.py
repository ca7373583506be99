"""Write the rate, summary and protocol-comparison tables (CSV and Markdown)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "to_markdown",
    "format_rates",
    "protocol_comparison",
    "write_tables",
]


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            return "" if np.isnan(v) else str(v)
        if v == int(v) and abs(v) >= 1000:
            return str(int(v))
        return f"{v:.{digits}g}" if abs(v) >= 1e4 or (v != 0 and abs(v) < 1e-3) \
            else f"{v:.{digits}f}"
    return str(v).replace("|", "/").replace("\n", " ")


def to_markdown(df: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table (no external dependency)."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v, digits) for v in row) + " |")
    return "\n".join(lines) + "\n"


def format_rates(rates: pd.DataFrame) -> pd.DataFrame:
    """The readable columns of a rate table (for Markdown and the console)."""
    out = pd.DataFrame({
        "label": rates["label"], "protocol": rates["protocol"], "metric": rates["metric"],
        "theory": [_theory_text(k, e) for k, e in zip(rates["kind"], rates["expected"],
                                                      strict=True)],
        "slope": rates["slope"], "SE (HC3)": rates["se"],
        "95% CI": [_ci(lo, hi) for lo, hi in zip(rates["ci_low"], rates["ci_high"],
                                                  strict=True)],
        "median-fit slope": rates["slope_median"],
        "drop-small-n range": [_ci(lo, hi) for lo, hi in zip(rates["sens_min"],
                                                              rates["sens_max"], strict=True)],
        "fits used": rates["n_used"], "excluded": rates["excluded"],
        "verdict": rates["verdict"],
    })
    return out


def _theory_text(kind, expected) -> str:
    if kind == "rate":
        return f"{expected:+.3f}"
    if kind == "bound":
        return f"<= {expected:+.3f}"
    if kind == "fixed":
        return "fixed"
    return "none"


def _ci(lo, hi) -> str:
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return ""
    return f"[{lo:+.3f}, {hi:+.3f}]"


def protocol_comparison(df: pd.DataFrame, rates: pd.DataFrame,
                        protocols=("papers", "strict")) -> dict[str, pd.DataFrame]:
    """Side-by-side comparison of two protocols on the same data (common random numbers).

    Returns
    -------
    dict
        ``"slopes"``: per (label, metric) the slope (and CI) under each protocol;
        ``"per_n"``: per (label, n) the median log-likelihood gap (second minus first protocol,
        matched by replication) and the median number of iterations under each protocol.
    """
    p0, p1 = protocols
    r = rates[rates["protocol"].isin(protocols)]
    slopes = r.pivot_table(index=["label", "metric"], columns="protocol",
                           values=["slope", "ci_low", "ci_high"], aggfunc="first", sort=False)
    slopes.columns = [f"{a}_{b}" for a, b in slopes.columns]
    slopes = slopes.reset_index()
    for p in protocols:
        for c in ("slope", "ci_low", "ci_high"):
            if f"{c}_{p}" not in slopes.columns:
                slopes[f"{c}_{p}"] = np.nan
    slopes = slopes[["label", "metric", f"slope_{p0}", f"ci_low_{p0}", f"ci_high_{p0}",
                     f"slope_{p1}", f"ci_low_{p1}", f"ci_high_{p1}"]]
    slopes[f"slope_{p1}_minus_{p0}"] = slopes[f"slope_{p1}"] - slopes[f"slope_{p0}"]

    d = df[df["protocol"].isin(protocols)].copy()
    # n_iter may be a nullable integer column; medians need plain floats
    for c in ("loglik", "n_iter"):
        d[c] = pd.to_numeric(d[c], errors="coerce").astype(float)
    wide = d.pivot_table(index=["label", "n", "rep"], columns="protocol",
                         values=["loglik", "n_iter"], aggfunc="first")
    per_n = []
    for (label, n), g in wide.groupby(level=["label", "n"], sort=False):
        row = {"label": label, "n": n}
        if ("loglik", p0) in g.columns and ("loglik", p1) in g.columns:
            gap = g[("loglik", p1)] - g[("loglik", p0)]
            row["median_loglik_gap"] = float(gap.median())
            row["pairs"] = int(gap.notna().sum())
        for p in protocols:
            if ("n_iter", p) in g.columns:
                row[f"median_iter_{p}"] = float(g[("n_iter", p)].median())
        per_n.append(row)
    per_n = pd.DataFrame(per_n).rename(
        columns={"median_loglik_gap": f"median_loglik_gap_{p1}_minus_{p0}"})
    return {"slopes": slopes, "per_n": per_n}


def cost_table(df: pd.DataFrame) -> pd.DataFrame:
    """Compute cost per (label, protocol, n): fits, iterations and seconds per fit, and how
    the fits stopped. Shows where a study's time goes (e.g. EM crawling at selection kinks)."""
    rows = []
    for (label, protocol, n), g in df.groupby(["label", "protocol", "n"], sort=True):
        stops = g["stop_reason"].fillna("error").value_counts()
        rows.append({
            "label": label, "protocol": protocol, "n": int(n), "fits": len(g),
            "median_iter": float(g["n_iter"].median()), "max_iter": float(g["n_iter"].max()),
            "median_s": float(g["seconds"].median()), "max_s": float(g["seconds"].max()),
            "total_s": float(g["seconds"].sum()),
            "stops": ", ".join(f"{k} {v}" for k, v in stops.items()),
        })
    return pd.DataFrame(rows)


def write_tables(study: str, df: pd.DataFrame, rates: pd.DataFrame, summary: pd.DataFrame,
                 out) -> list[Path]:
    """Write results/tables/<study>_rates.{csv,md}, <study>_summary.{csv,md} and, with two
    protocols, <study>_protocols.{csv,md}. Returns the written paths."""
    tdir = Path(out) / "tables"
    tdir.mkdir(parents=True, exist_ok=True)
    written = []
    rates.to_csv(tdir / f"{study}_rates.csv", index=False)
    (tdir / f"{study}_rates.md").write_text(
        f"# Rates: {study}\n\nOLS of log(metric) on log(n) over all replications, HC3 SE, "
        "95% CI. Fits used: status ok, not_converged or degenerate with only an empty expert "
        "(errors, other degenerate fits, NaN and "
        "non-positive metrics excluded, counts in 'excluded').\n\n" + to_markdown(format_rates(
            rates)))
    written += [tdir / f"{study}_rates.csv", tdir / f"{study}_rates.md"]
    summary.to_csv(tdir / f"{study}_summary.csv", index=False)
    (tdir / f"{study}_summary.md").write_text(f"# Per-n summaries: {study}\n\n"
                                              + to_markdown(summary))
    written += [tdir / f"{study}_summary.csv", tdir / f"{study}_summary.md"]
    if {"papers", "strict"} <= set(df["protocol"]):
        comp = protocol_comparison(df, rates)
        both = pd.concat([comp["slopes"].assign(table="slopes"),
                          comp["per_n"].assign(table="per_n")], ignore_index=True)
        both.to_csv(tdir / f"{study}_protocols.csv", index=False)
        (tdir / f"{study}_protocols.md").write_text(
            f"# Protocols side by side: {study}\n\n## Slopes\n\n" + to_markdown(comp["slopes"])
            + "\n## Log-likelihood gap (strict minus papers, same data) and iterations\n\n"
            + to_markdown(comp["per_n"]))
        written += [tdir / f"{study}_protocols.csv", tdir / f"{study}_protocols.md"]
    cost = cost_table(df)
    cost.to_csv(tdir / f"{study}_cost.csv", index=False)
    by_fit = cost.groupby(["label", "protocol"], sort=True)[["fits", "total_s"]].sum()
    (tdir / f"{study}_cost.md").write_text(
        f"# Compute cost: {study}\n\nSeconds are per fit (one core, wall time inside the "
        "worker); `stops` counts the stop reasons.\n\n## Totals\n\n"
        + to_markdown(by_fit.reset_index()) + "\n## Per n\n\n" + to_markdown(cost))
    written += [tdir / f"{study}_cost.csv", tdir / f"{study}_cost.md"]
    return written
