"""Rate regressions: OLS of log(metric) on log(n) with HC3 standard errors, and verdicts.

Which fits enter a rate (decided here, stated in every table): fits with status "ok" **and**
"not_converged". A fit that stopped at max_iter still returned an estimate for that data set;
dropping it would select data sets on the outcome (the spec's "outcome, not redraw" rule applies
to the analysis too). Degenerate fits whose only flag is an empty expert (relabelled
"empty_expert" here) enter too: their estimate and density are well defined, and at true K = 1
the never-selected expert is empty by construction in every fit. Fits with status "error" (no
estimate) and the other degenerate fits (a variance at the floor or a non-finite value: the loss
is not an estimation error of a regular fit) are excluded and counted, as are NaN metrics and
metrics <= 0 (no logarithm). The slope over
"ok" fits alone is reported beside the headline slope (``slope_ok_only``) so the choice can be
judged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import statsmodels.api as sm

from simstudy.reports.defaults import BOUND_RULES, DEFAULT_TOL
from simstudy.reports.theory import BOUND, FIXED, NONE, RATE

__all__ = [
    "INCLUDED_STATUSES",
    "DEFAULT_TOL",
    "BOUND_RULES",
    "METRIC_PATTERN",
    "RateFit",
    "fit_rate",
    "metric_columns",
    "long_metrics",
    "mark_empty_expert_only",
    "sensitivity",
    "verdict",
    "rate_table",
]

#: statuses whose fits enter the rate regressions (see the module docstring)
INCLUDED_STATUSES = ("ok", "not_converged", "empty_expert")
#: every status a rate table knows: the engine's, plus "empty_expert" (see the module docstring)
KNOWN_STATUSES = ("ok", "not_converged", "empty_expert", "degenerate", "error", "timeout")


#: metric columns of the tidy table that get a rate
METRIC_PATTERN = re.compile(r"^(D1|D2|hellinger|tv|err_(beta1|a|b|v)_\d+|mass_\d+)$")

_GROUP = ["study", "label", "protocol"]


@dataclass
class RateFit:
    """OLS fit of log(metric) on log(n) with HC3 covariance (statsmodels-like results).

    Attributes
    ----------
    result : statsmodels RegressionResultsWrapper
        The underlying statsmodels fit (``cov_type="HC3"``).
    nobs : int
        Observations used.
    n_levels : int
        Distinct sample sizes used.
    """

    result: object
    nobs: int
    n_levels: int

    @property
    def params(self) -> pd.Series:
        """Intercept (``const``) and slope (``log_n``)."""
        return pd.Series(np.asarray(self.result.params), index=["const", "log_n"])

    @property
    def bse(self) -> pd.Series:
        """HC3 standard errors."""
        return pd.Series(np.asarray(self.result.bse), index=["const", "log_n"])

    @property
    def slope(self) -> float:
        return float(self.params["log_n"])

    @property
    def slope_se(self) -> float:
        return float(self.bse["log_n"])

    def conf_int(self, alpha: float = 0.05) -> pd.DataFrame:
        """(1 - alpha) confidence intervals (normal quantiles, as statsmodels uses for HC3)."""
        ci = np.asarray(self.result.conf_int(alpha))
        return pd.DataFrame(ci, index=["const", "log_n"], columns=["lower", "upper"])

    def summary(self) -> str:
        """A short text summary."""
        lo, hi = self.conf_int().loc["log_n"]
        return (
            f"OLS log(metric) ~ log(n), HC3 SE\n"
            f"  slope {self.slope:+.4f}  SE {self.slope_se:.4f}  95% CI [{lo:+.4f}, {hi:+.4f}]\n"
            f"  intercept {self.params['const']:+.4f}  nobs {self.nobs}  n levels {self.n_levels}"
        )


def fit_rate(n, values) -> RateFit:
    """Regress log(values) on log(n) by OLS with HC3 standard errors.

    Parameters
    ----------
    n : array_like
        Sample sizes (> 0).
    values : array_like
        Metric values (> 0, finite), same length.

    Raises
    ------
    ValueError
        When lengths differ, a value is not finite and positive, or fewer than two distinct n.
    """
    n = np.asarray(n, dtype=float)
    y = np.asarray(values, dtype=float)
    if n.shape != y.shape or n.ndim != 1:
        raise ValueError(f"values: need 1-d n and values of equal length, got {n.shape} and "
                         f"{y.shape}")
    if not (np.all(np.isfinite(n)) and np.all(n > 0)):
        raise ValueError("n: sample sizes must be finite and > 0")
    if not (np.all(np.isfinite(y)) and np.all(y > 0)):
        raise ValueError("values: metric values must be finite and > 0 to take logarithms")
    levels = np.unique(n).size
    if levels < 2:
        raise ValueError(f"n: need at least two distinct sample sizes, got {levels}")
    X = sm.add_constant(np.log(n), has_constant="add")
    res = sm.OLS(np.log(y), X).fit(cov_type="HC3")
    return RateFit(result=res, nobs=int(n.size), n_levels=int(levels))


def metric_columns(df: pd.DataFrame) -> list[str]:
    """Columns of a tidy table that are rate metrics (D1/D2, hellinger, tv, err_*, mass_*)."""
    return [c for c in df.columns if METRIC_PATTERN.match(str(c))]


def mark_empty_expert_only(df: pd.DataFrame) -> pd.DataFrame:
    """Copy of ``df`` whose degenerate fits flagged only for an empty expert have status
    "empty_expert" (needs the engine's flag columns; without them nothing changes)."""
    df = df.copy()
    flags = ["flag_empty_expert", "flag_var_floor", "flag_non_finite"]
    if set(flags) <= set(df.columns):
        f = df[flags].fillna(False).astype(bool)
        only = ((df["status"] == "degenerate") & f["flag_empty_expert"] & ~f["flag_var_floor"]
                & ~f["flag_non_finite"])
        df.loc[only, "status"] = "empty_expert"
    return df


def long_metrics(df: pd.DataFrame, metrics=None) -> pd.DataFrame:
    """Tidy table -> long format (one row per fit and metric, column ``value``)."""
    metrics = metric_columns(df) if metrics is None else list(metrics)
    keep = [c for c in (*_GROUP, "n", "rep", "status") if c in df.columns]
    out = df.melt(id_vars=keep, value_vars=metrics, var_name="metric", value_name="value")
    out["value"] = pd.to_numeric(out["value"], errors="coerce")
    return out


def sensitivity(n, values, min_levels: int = 3) -> pd.DataFrame:
    """Slope after dropping the smallest 0, 1, 2, ... sample sizes.

    Drops continue while at least ``max(min_levels, half of the levels)`` distinct n remain.

    Returns
    -------
    pandas.DataFrame
        Columns dropped, n_min, slope, se.
    """
    n = np.asarray(n, dtype=float)
    y = np.asarray(values, dtype=float)
    levels = np.unique(n)
    keep_at_least = max(min_levels, int(np.ceil(levels.size / 2)))
    rows = []
    for d in range(0, max(levels.size - keep_at_least, 0) + 1):
        sel = n >= levels[d]
        if np.unique(n[sel]).size < 2:
            break
        f = fit_rate(n[sel], y[sel])
        rows.append({"dropped": d, "n_min": levels[d], "slope": f.slope, "se": f.slope_se})
    return pd.DataFrame(rows, columns=["dropped", "n_min", "slope", "se"])




def verdict(kind: str, expected: float, ci_low: float, ci_high: float, slope: float,
            tol: float = DEFAULT_TOL, bound_rule: str = "upper") -> str:
    """Verdict of a rate against the theory.

    * ``kind == "rate"``: "consistent" when the 95% CI overlaps [expected - tol, expected + tol]
      (the theory holds up to log factors, which bend a finite-range slope by a few hundredths);
    * ``kind == "bound"`` (slow rates of multi-atom cells, n^-1/8 etc. *or faster*): "consistent"
      when the slope is at least as fast as the bound: CI upper end <= expected + tol
      (``bound_rule="upper"``, the default). This demands evidence: a slope exactly at the
      bound with a wide CI is "inconsistent". ``bound_rule="overlap"`` only asks that the slope
      is not significantly slower: CI lower end <= expected + tol;
    * ``kind == "none"``: "no guarantee (slope s)";  ``kind == "fixed"``: "fixed (always 0)";
    * no usable slope: "no data".
    """
    if bound_rule not in BOUND_RULES:
        raise ValueError(f"bound_rule: unknown rule {bound_rule!r}; allowed {list(BOUND_RULES)}")
    if tol < 0 or not np.isfinite(tol):
        raise ValueError(f"tol: the tolerance must be finite and >= 0, got {tol}")
    if kind == FIXED:
        return "fixed (always 0)"
    if kind not in (RATE, BOUND, NONE):
        raise ValueError(f"kind: unknown kind {kind!r}; allowed {[RATE, BOUND, NONE, FIXED]}")
    if not np.isfinite(slope):
        return "no data"
    if kind == NONE:
        return f"no guarantee (slope {slope:+.2f})"
    if not (np.isfinite(ci_low) and np.isfinite(ci_high)):
        return "no data"
    if kind == RATE:
        ok = ci_low <= expected + tol and ci_high >= expected - tol
    else:
        ok = (ci_high if bound_rule == "upper" else ci_low) <= expected + tol
    return "consistent" if ok else "inconsistent"


def _excluded_text(counts: dict) -> str:
    return "; ".join(f"{k}: {v}" for k, v in counts.items() if v) or ""


def rate_table(df: pd.DataFrame, theory: pd.DataFrame | None = None, *,
               statuses=INCLUDED_STATUSES, tol: float = DEFAULT_TOL,
               min_levels: int = 3, headline_protocol: str = "strict",
               bound_rule: str = "upper") -> pd.DataFrame:
    """One rate row per (study, label, protocol, metric).

    Parameters
    ----------
    df : pandas.DataFrame
        Tidy results (:mod:`simstudy.engine.results`): study, label, protocol, n, rep, status and
        the metric columns.
    theory : pandas.DataFrame, optional
        :func:`simstudy.reports.theory.theory_table` output (label, metric, kind, expected,
        reason); without it every row is "no guarantee".
    statuses : tuple of str
        Statuses whose fits enter the regression (default ok and not_converged).
    tol : float
        Verdict tolerance on the exponent.
    bound_rule : {"upper", "overlap"}
        How slow-rate bounds are judged (see :func:`verdict`).
    min_levels : int
        Fewest distinct n kept in the sensitivity refits.
    headline_protocol : str
        Protocol whose rows are the headline (``headline`` column) in studies that have it;
        in a study without it every protocol is headline.

    Returns
    -------
    pandas.DataFrame
        Columns: study, label, protocol, metric, kind, expected, n_fits, n_used, excluded
        (reasons and counts), n_levels, n_min, n_max, slope, se, ci_low, ci_high,
        slope_median, se_median, ci_low_median, ci_high_median, slope_ok_only, sens_min,
        sens_max, sens_drops, verdict, headline, reason.
    """
    missing = {"label", "protocol", "n", "status"} - set(df.columns)
    if missing:
        raise ValueError(f"df: the tidy table lacks column(s) {sorted(missing)}")
    unknown = set(statuses) - set(KNOWN_STATUSES)
    if unknown:
        raise ValueError(f"statuses: unknown status(es) {sorted(unknown)}")
    df = mark_empty_expert_only(df)
    if "study" not in df.columns:
        df["study"] = ""
    long = long_metrics(df)
    th = {}
    if theory is not None:
        for r in theory.itertuples(index=False):
            th[(r.label, r.metric)] = (r.kind, r.expected, r.reason)
    protos = df.groupby("study")["protocol"].agg(lambda s: set(s)).to_dict()
    rows = []
    for (study, label, protocol, metric), g in long.groupby([*_GROUP, "metric"], sort=False):
        if (label, metric) not in th and not g["value"].notna().any():
            continue  # a metric that does not apply to this fit (D1 of an over-specified fit)
        kind, expected, reason = th.get((label, metric),
                                        (NONE, np.nan, "no theory row for this metric"))
        st = g["status"].astype(str)
        inc = st.isin(statuses)
        val = g["value"].to_numpy(dtype=float)
        nan = inc & ~np.isfinite(val)
        nonpos = inc & np.isfinite(val) & (val <= 0)
        use = inc & np.isfinite(val) & (val > 0)
        counts = {s: int((st == s).sum()) for s in reversed(KNOWN_STATUSES)
                  if s not in statuses}
        counts.update({"NaN metric": int(nan.sum()), "metric <= 0": int(nonpos.sum())})
        row = {
            "study": study, "label": label, "protocol": protocol, "metric": metric,
            "kind": kind, "expected": expected, "n_fits": len(g), "n_used": int(use.sum()),
            "excluded": _excluded_text(counts),
        }
        nu, vu = g["n"].to_numpy(dtype=float)[use], val[use]
        row.update(dict.fromkeys(
            ["n_levels", "n_min", "n_max", "slope", "se", "ci_low", "ci_high", "slope_median",
             "se_median", "ci_low_median", "ci_high_median", "slope_ok_only", "sens_min",
             "sens_max"], np.nan))
        row["sens_drops"] = 0
        levels = np.unique(nu)
        row["n_levels"] = levels.size
        if levels.size >= 2:
            row["n_min"], row["n_max"] = levels[0], levels[-1]
            f = fit_rate(nu, vu)
            lo, hi = f.conf_int().loc["log_n"]
            row.update(slope=f.slope, se=f.slope_se, ci_low=lo, ci_high=hi)
            med = pd.Series(vu).groupby(nu).median()
            if med.size >= 3:  # HC3 needs residual degrees of freedom
                fm = fit_rate(med.index.to_numpy(), med.to_numpy())
                lo_m, hi_m = fm.conf_int().loc["log_n"]
                row.update(slope_median=fm.slope, se_median=fm.slope_se,
                           ci_low_median=lo_m, ci_high_median=hi_m)
            ok_only = use & (st == "ok").to_numpy()
            if np.unique(g["n"].to_numpy(dtype=float)[ok_only]).size >= 2:
                row["slope_ok_only"] = fit_rate(g["n"].to_numpy(dtype=float)[ok_only],
                                                val[ok_only]).slope
            sens = sensitivity(nu, vu, min_levels=min_levels)
            if len(sens):
                row.update(sens_min=sens["slope"].min(), sens_max=sens["slope"].max(),
                           sens_drops=int(sens["dropped"].max()))
        row["verdict"] = verdict(kind, expected, row["ci_low"], row["ci_high"], row["slope"],
                                 tol, bound_rule)
        have = protos.get(study, set())
        row["headline"] = protocol == headline_protocol or headline_protocol not in have
        row["reason"] = reason
        rows.append(row)
    cols = ["study", "label", "protocol", "metric", "kind", "expected", "n_fits", "n_used",
            "excluded", "n_levels", "n_min", "n_max", "slope", "se", "ci_low", "ci_high",
            "slope_median", "se_median", "ci_low_median", "ci_high_median", "slope_ok_only",
            "sens_min", "sens_max", "sens_drops", "verdict", "headline", "reason"]
    # theory rows of a fitted label whose metric column is absent altogether: "no data", never
    # a silent omission (a guaranteed metric that is not measured must show up)
    seen = {(r["study"], r["label"], r["protocol"], r["metric"]) for r in rows}
    present = set(long["metric"].unique())
    for (study, label, protocol), g in df.groupby(_GROUP, sort=False):
        for (tl, metric), (kind, expected, reason) in th.items():
            if tl != label or metric in present or (study, label, protocol, metric) in seen:
                continue
            row = dict.fromkeys(cols, np.nan)
            row.update(study=study, label=label, protocol=protocol, metric=metric, kind=kind,
                       expected=expected, n_fits=len(g), n_used=0,
                       excluded=f"metric column missing: {len(g)}", sens_drops=0,
                       reason=reason)
            row["verdict"] = verdict(kind, expected, np.nan, np.nan, np.nan, tol, bound_rule)
            have = protos.get(study, set())
            row["headline"] = protocol == headline_protocol or headline_protocol not in have
            rows.append(row)
    out = pd.DataFrame(rows, columns=cols)
    if len(out):
        # fixed order: studies and labels as they appear, metrics as the theory lists them
        order = {}
        if theory is not None:
            for label, g in theory.groupby("label", sort=False):
                order.update({(label, m): i for i, m in enumerate(g["metric"])})
        m_pos = [order.get((la, m), 10_000) for la, m in zip(out["label"], out["metric"],
                                                              strict=True)]
        lab = {v: i for i, v in enumerate(dict.fromkeys(df["label"]))}
        key = pd.DataFrame({"s": out["study"], "l": out["label"].map(lab),
                            "p": out["protocol"], "m": m_pos, "name": out["metric"]},
                           index=out.index)
        out = out.loc[key.sort_values(["s", "l", "p", "m", "name"], kind="stable").index]
        out = out.reset_index(drop=True)
    return out
