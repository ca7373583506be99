"""Write the rate, summary, partition, diagnostics, protocol and cost tables (CSV and Markdown).

Every Markdown table of rates says the n range and the fits per n it rests on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from simstudy.reports.verdicts import BOUND, FIXED, PLATEAU, RATE

__all__ = [
    "to_markdown",
    "theory_text",
    "ci_text",
    "n_text",
    "range_text",
    "format_rates",
    "protocol_comparison",
    "cost_table",
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


def theory_text(kind, expected) -> str:
    """The theory column: "-0.500" (exact rate), "<= -0.125" (bound), "plateau", ..."""
    if kind == RATE:
        return f"{expected:+.3f}"
    if kind == BOUND:
        return f"<= {expected:+.3f}"
    if kind == PLATEAU:
        return "plateau (0)"
    if kind == FIXED:
        return "fixed"
    return "none"


def ci_text(lo, hi) -> str:
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return ""
    return f"[{lo:+.3f}, {hi:+.3f}]"


def slope_ci_text(s, lo, hi) -> str:
    if not np.isfinite(s):
        return ""
    return f"{s:+.3f} {ci_text(lo, hi)}".strip()


def n_text(v) -> str:
    """A sample size, short: 1000 -> "1e3", 8000 -> "8e3", 31623 -> "3.16e4"."""
    if not (np.isfinite(v) and v > 0):
        return ""
    e = int(np.floor(np.log10(v) + 1e-12))
    m = v / 10**e
    return f"{m:.3g}e{e}"


def range_text(n_min, n_max, levels) -> str:
    """"1e3-1e6 (24 n)": the n range and the number of sample sizes a rate rests on."""
    if not (np.isfinite(n_min) and np.isfinite(n_max)):
        return ""
    return f"{n_text(n_min)}-{n_text(n_max)} ({int(levels)} n)"


def reps_text(lo, hi) -> str:
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return ""
    return f"{int(lo)}" if lo == hi else f"{int(lo)}-{int(hi)}"


def decide_text(target, reps, n_max) -> str:
    """What would decide an inconclusive rate (:func:`simstudy.reports.verdicts.to_decide`)."""
    if not isinstance(target, str) or not target or not np.isfinite(reps):
        return ""
    stretch = f"n to {n_text(n_max)}" if np.isfinite(n_max) and n_max < 1e12 else ""
    return f"{target}: ~{int(reps)} fits per n" + (f" or {stretch}" if stretch else "")


def format_rates(rates: pd.DataFrame) -> pd.DataFrame:
    """The readable columns of a rate table (for Markdown and the console)."""
    return pd.DataFrame({
        "label": rates["label"], "protocol": rates["protocol"], "metric": rates["metric"],
        "theory": [theory_text(k, e) for k, e in zip(rates["kind"], rates["expected"],
                                                   strict=True)],
        "slope": rates["slope"],
        "90% CI": [ci_text(a, b) for a, b in zip(rates["ci90_low"], rates["ci90_high"],
                                               strict=True)],
        "95% CI": [ci_text(a, b) for a, b in zip(rates["ci95_low"], rates["ci95_high"],
                                               strict=True)],
        "verdict": rates["verdict"],
        "upper half [95% CI]": [slope_ci_text(s, a, b) for s, a, b in zip(
            rates["slope_upper"], rates["ci95_low_upper"], rates["ci95_high_upper"],
            strict=True)],
        "to decide (projected)": [decide_text(*v) for v in zip(
            rates["decide_as"], rates["decide_reps"], rates["decide_n_max"], strict=True)],
        "upper-half verdict": rates["verdict_upper"],
        "q0.9 slope [95% CI]": [slope_ci_text(s, a, b) for s, a, b in zip(
            rates["slope_q90"], rates["ci95_low_q90"], rates["ci95_high_q90"], strict=True)],
        "curvature [95% CI]": [slope_ci_text(s, a, b) for s, a, b in zip(
            rates["curvature"], rates["curvature_ci95_low"], rates["curvature_ci95_high"],
            strict=True)],
        "OLS": rates["slope_ols"],
        "n range": [range_text(a, b, c) for a, b, c in zip(rates["n_min"], rates["n_max"],
                                                         rates["n_levels"], strict=True)],
        "fits per n": [reps_text(a, b) for a, b in zip(rates["reps_min"], rates["reps_max"],
                                                      strict=True)],
        "fits used": rates["n_used"], "excluded": rates["excluded"], "note": rates["note"],
    })


def _rates_preamble(study: str, rates: pd.DataFrame, tol: float) -> str:
    shift = rates["log_shift"].dropna()
    log = ""
    if len(shift):
        s = float(shift.median())
        log = (f" A factor sqrt(log n) moves a chord over the typical range of this study by "
               f"{s:+.3f}, {100 * s / tol:.0f}% of the tolerance {tol:g} (column `log_share` "
               "of the CSV, per rate).")
    return (
        f"# Rates: {study}\n\nMedian regression (quantile 0.5) of log(loss) on log(n) over all "
        "replications; 90% and 95% percentile intervals from resampling replications within "
        "each n (seeded). `upper half`: the same over n at or above the geometric midpoint of "
        "the range; `q0.9`: the 0.9-quantile regression; `curvature`: upper-half minus "
        "lower-half slope (positive: flattening); OLS for comparison. Verdicts (exact rate: "
        f"consistent when the 90% CI lies inside theory +- {tol:g}, inconsistent when the 95% "
        "CI lies outside; bound: shown when the 95% CI's upper end is <= bound + tolerance) as "
        "in docs/rates.md. Fits used: status ok, not_converged or degenerate with only an "
        "empty expert, and for the cell-based losses the designed partition (the others: "
        f"`excluded`, and the partition table).{log}\n\n")


def protocol_comparison(df: pd.DataFrame, rates: pd.DataFrame,
                        protocols=("papers", "strict")) -> dict[str, pd.DataFrame]:
    """Side-by-side comparison of two protocols on the same data (common random numbers).

    Returns
    -------
    dict
        ``"slopes"``: per (label, metric) the slope (and 95% CI) under each protocol;
        ``"per_n"``: per (label, n) the median log-likelihood gap (second minus first protocol,
        matched by replication) and the median number of iterations under each protocol.
    """
    p0, p1 = protocols
    r = rates[rates["protocol"].isin(protocols)]
    slopes = r.pivot_table(index=["label", "metric"], columns="protocol",
                           values=["slope", "ci95_low", "ci95_high"], aggfunc="first",
                           sort=False)
    slopes.columns = [f"{a}_{b}" for a, b in slopes.columns]
    slopes = slopes.reset_index()
    for p in protocols:
        for c in ("slope", "ci95_low", "ci95_high"):
            if f"{c}_{p}" not in slopes.columns:
                slopes[f"{c}_{p}"] = np.nan
    slopes = slopes[["label", "metric", f"slope_{p0}", f"ci95_low_{p0}", f"ci95_high_{p0}",
                     f"slope_{p1}", f"ci95_low_{p1}", f"ci95_high_{p1}"]]
    slopes[f"slope_{p1}_minus_{p0}"] = slopes[f"slope_{p1}"] - slopes[f"slope_{p0}"]
    # what the rows rest on (the first protocol's rate; the design is shared)
    if {"n_min", "n_max", "n_levels", "reps_min", "reps_max"} <= set(r.columns):
        base = r[r["protocol"] == p1].set_index(["label", "metric"])
        keys = list(zip(slopes["label"], slopes["metric"], strict=True))
        slopes["n range"] = [range_text(*base.loc[k, ["n_min", "n_max", "n_levels"]])
                             if k in base.index else "" for k in keys]
        slopes["fits per n"] = [reps_text(*base.loc[k, ["reps_min", "reps_max"]])
                                if k in base.index else "" for k in keys]

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
        it = pd.to_numeric(g["n_iter"], errors="coerce").astype(float)
        rows.append({
            "label": label, "protocol": protocol, "n": int(n), "fits": len(g),
            "median_iter": float(it.median()), "max_iter": float(it.max()),
            "median_s": float(g["seconds"].median()), "max_s": float(g["seconds"].max()),
            "total_s": float(g["seconds"].sum()),
            "stops": ", ".join(f"{k} {v}" for k, v in stops.items()),
        })
    return pd.DataFrame(rows)


def _write(tdir: Path, name: str, frame: pd.DataFrame, markdown: str) -> list[Path]:
    frame.to_csv(tdir / f"{name}.csv", index=False)
    (tdir / f"{name}.md").write_text(markdown)
    return [tdir / f"{name}.csv", tdir / f"{name}.md"]


def write_tables(study: str, df: pd.DataFrame, rates: pd.DataFrame, summary: pd.DataFrame,
                 out, *, partitions: pd.DataFrame | None = None,
                 diagnostics: pd.DataFrame | None = None,
                 factorial: pd.DataFrame | None = None, tol: float = 0.1) -> list[Path]:
    """Write results/tables/<study>_{rates,summary,cost}.{csv,md} and, where there is
    something to say, <study>_{partitions,diagnostics,protocols,factorial}.{csv,md}.
    Returns the written paths."""
    tdir = Path(out) / "tables"
    tdir.mkdir(parents=True, exist_ok=True)
    written = _write(tdir, f"{study}_rates", rates,
                     _rates_preamble(study, rates, tol) + to_markdown(format_rates(rates)))
    written += _write(tdir, f"{study}_summary", summary,
                      f"# Per-n summaries: {study}\n\nOver the fits used by the rates (same "
                      "rule). MCSE: Monte Carlo standard errors.\n\n" + to_markdown(summary))
    if partitions is not None and len(partitions):
        written += _write(tdir, f"{study}_partitions", partitions,
                          f"# Realised partitions: {study}\n\nFits whose Voronoi cell sizes "
                          "(and the cell of the fitted reference atom) are as designed enter "
                          "the cell-based rates; the others are listed by partition.\n\n"
                          + to_markdown(partitions))
    if diagnostics is not None and len(diagnostics):
        written += _write(tdir, f"{study}_diagnostics", diagnostics,
                          f"# Diagnostics: {study}\n\nNo guarantee attaches to these: the "
                          "heaviest atom's error (`heavy_`), the unweighted max over a cell "
                          "(`umax_`), the lightest atom's weight exp(beta0) (`wmin_`) and the "
                          "largest |beta1| (the divergence of a dense fit of a sparse truth). "
                          "Medians and quartiles per n over the fits used by the rates.\n\n"
                          + to_markdown(diagnostics))
    if {"papers", "strict"} <= set(df["protocol"]):
        comp = protocol_comparison(df, rates)
        both = pd.concat([comp["slopes"].assign(table="slopes"),
                          comp["per_n"].assign(table="per_n")], ignore_index=True)
        md = (f"# Protocols side by side: {study}\n\n## Slopes\n\n" + to_markdown(comp["slopes"])
              + "\n## Log-likelihood gap (strict minus papers, same data) and iterations\n\n"
              + to_markdown(comp["per_n"]))
        written += _write(tdir, f"{study}_protocols", both, md)
    if factorial is not None and len(factorial):
        from simstudy.reports.factorial import format_factorial

        written += _write(tdir, f"{study}_factorial", factorial,
                          f"# Where the papers' slopes come from: {study}\n\n"
                          "The 2 x 2 factorial of protocols (start: the papers' noise "
                          "shrinking with n vs a fixed scale; stop: tol 1e-6 vs strict "
                          "convergence) on the same data sets. `papers - strict` is split "
                          "exactly into the start effect (shrinking minus fixed start, averaged "
                          "over the two stopping rules) and the stop effect (tol minus strict, "
                          "averaged over the two starts); `interaction` is how much the start "
                          "effect differs between the stopping rules. Slopes by median "
                          "regression on the replications every protocol can use; 95% "
                          "intervals by resampling the same replications within each n for "
                          "all four protocols (paired).\n\n" + to_markdown(format_factorial(
                              factorial)))
    cost = cost_table(df)
    by_fit = cost.groupby(["label", "protocol"], sort=True)[["fits", "total_s"]].sum()
    written += _write(tdir, f"{study}_cost", cost,
                      f"# Compute cost: {study}\n\nSeconds are per fit (one core, wall time "
                      "inside the worker); `stops` counts the stop reasons.\n\n## Totals\n\n"
                      + to_markdown(by_fit.reset_index()) + "\n## Per n\n\n"
                      + to_markdown(cost))
    return written
