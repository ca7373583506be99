"""Rates: quantile regression of log(loss) on log(n) with bootstrap intervals (spec section 4).

Losses are heavy-tailed at small n (an atom that jumps cells gives D2 = 1e7 beside a median of
12), so the slope is estimated by **median regression** (quantile 0.5) of log(loss) on log(n)
over all replications, and by **upper-quantile regression** (0.9): an O_P(n^-r) bound constrains
every quantile. Point estimates come from statsmodels' ``QuantReg``. Confidence intervals
(percentile, 90% and 95%) come from resampling replications within each n (a stratified
bootstrap; :mod:`simstudy.reports.quantreg` refits every resample exactly), seeded by the rate's
name, so tables are reproducible and do not depend on the order rates are computed in. Beside
the slope over the whole n range each rate reports the slope over its upper half (n at or above
the geometric midpoint of the range) and a **curvature** term, the upper-half slope minus the
lower-half slope (0 for a straight line in log-log; positive when the loss flattens as n grows),
with its interval from the same resamples; and the chord slope of the log factor
sqrt(log n / n) over the same range (-0.445 over [1e3, 1e5]), as the share of the tolerance it
uses.

Which fits enter a rate (stated in every table):

* fits with status "ok" and "not_converged": a fit that stopped at max_iter still returned an
  estimate for that data set, and dropping it would select data sets on the outcome; degenerate
  fits whose only flag is an empty expert (relabelled "empty_expert": their estimate and density
  are well defined, and at true K = 1 the never-selected expert is empty in every fit). Errors
  and the other degenerate fits (a variance at the floor, a non-finite value) are excluded and
  counted, as are fits stopped by their time budget ("timeout");
* for losses built on the Voronoi cells (D1, D2, per-parameter errors, cell masses) only fits
  whose **realised partition** equals the designed one: the same cell sizes |A_j| and the
  fitted reference atom in the reference cell. A fit whose extra atom left its cell is a
  different configuration with a different theory row; such fits are counted beside the rate
  (``n_other_partition``) and listed by :func:`partition_table`. The density distances do not
  depend on the cells and use every fit;
* NaN metrics (undefined losses) and metrics <= 0 (no logarithm) are excluded and counted.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from simstudy.reports.defaults import DEFAULT_BOOT
from simstudy.reports.quantreg import boot_rng, qr_line, stratified_indices
from simstudy.reports.verdicts import (
    BOUND,
    DEFAULT_TOL,
    FIXED,
    INCONCLUSIVE,
    NONE,
    PLATEAU,
    RATE,
    decidable,
    to_decide,
    verdict,
)

__all__ = [
    "INCLUDED_STATUSES",
    "KNOWN_STATUSES",
    "DEFAULT_TOL",
    "DEFAULT_BOOT",
    "METRIC_PATTERN",
    "CELL_METRIC_PATTERN",
    "DIAGNOSTIC_PATTERN",
    "RateFit",
    "RateFits",
    "fit_rate",
    "fit_rates",
    "log_factor_shift",
    "metric_columns",
    "long_metrics",
    "mark_empty_expert_only",
    "designed_partition",
    "partition_ok",
    "usable",
    "partition_table",
    "rate_table",
    "RATE_COLUMNS",
]

#: statuses whose fits enter the rate regressions (see the module docstring)
INCLUDED_STATUSES = ("ok", "not_converged", "empty_expert")
#: every status a rate table knows: the engine's, plus "empty_expert" (see the module docstring)
KNOWN_STATUSES = ("ok", "not_converged", "empty_expert", "degenerate", "error", "timeout")

#: metric columns of the tidy table that get a rate
METRIC_PATTERN = re.compile(r"^(D1|D2|hellinger|tv|err_(beta1|a|b|v)_\d+|mass_\d+)$")
#: rate metrics built on the Voronoi cells (they need the designed partition)
CELL_METRIC_PATTERN = re.compile(r"^(D1|D2|err_(beta1|a|b|v)_\d+|mass_\d+)$")
#: per-fit diagnostics (no rate): summarised per n only
DIAGNOSTIC_PATTERN = re.compile(
    r"^(heavy_(beta1|a|b|v)_\d+|umax_(beta1|a|b|v)_\d+|wmin_\d+|max_abs_beta1)$")

_GROUP = ["study", "label", "protocol"]


@dataclass
class RateFit:
    """Quantile regression of log(loss) on log(n), with bootstrap draws (statsmodels-like).

    Attributes
    ----------
    q : float
        The quantile.
    params : pandas.Series
        Intercept (``const``) and slope (``log_n``) from statsmodels' QuantReg.
    draws : ndarray, shape (n_boot, 2)
        (intercept, slope) refitted on every bootstrap resample.
    result : statsmodels QuantRegResults or None
    nobs, n_levels : int
    n_min, n_max : float
    reps_min, reps_max : int
        Fewest and most fits at one n.
    reps_median : float
        Median number of fits per n.
    """

    q: float
    params: pd.Series
    draws: np.ndarray
    result: object
    nobs: int
    n_levels: int
    n_min: float
    n_max: float
    reps_min: int
    reps_max: int
    reps_median: float

    @property
    def slope(self) -> float:
        return float(self.params["log_n"])

    @property
    def bse(self) -> pd.Series:
        """Bootstrap standard errors."""
        return pd.Series(self.draws.std(axis=0, ddof=1), index=["const", "log_n"])

    def conf_int(self, alpha: float = 0.05) -> pd.DataFrame:
        """(1 - alpha) percentile bootstrap intervals."""
        if not 0 < alpha < 1:
            raise ValueError(f"alpha: must lie in (0, 1), got {alpha}")
        lo, hi = np.quantile(self.draws, [alpha / 2, 1 - alpha / 2], axis=0)
        return pd.DataFrame({"lower": lo, "upper": hi}, index=["const", "log_n"])

    def ci(self, level: float = 0.95) -> tuple[float, float]:
        """The slope's percentile interval at ``level`` (0.9 or 0.95, say)."""
        lo, hi = self.conf_int(1 - level).loc["log_n"]
        return float(lo), float(hi)

    def summary(self) -> str:
        lo, hi = self.ci(0.95)
        lo9, hi9 = self.ci(0.90)
        return (
            f"quantile regression (q = {self.q:g}) of log(loss) on log(n)\n"
            f"  slope {self.slope:+.4f}  bootstrap SE {self.bse['log_n']:.4f}  "
            f"90% CI [{lo9:+.4f}, {hi9:+.4f}]  95% CI [{lo:+.4f}, {hi:+.4f}]\n"
            f"  {self.nobs} fits, {self.n_levels} sample sizes n in [{self.n_min:g}, "
            f"{self.n_max:g}], {self.reps_min}-{self.reps_max} fits per n, "
            f"{self.draws.shape[0]} resamples"
        )


@dataclass
class RateFits:
    """Every slope of one rate: median and 0.9-quantile regression over the whole range, the
    median regression over the upper and lower halves, and the curvature draws."""

    q50: RateFit
    q90: RateFit
    upper: RateFit | None
    lower: RateFit | None
    curvature: float = np.nan
    curvature_draws: np.ndarray = field(default_factory=lambda: np.empty(0))

    def curvature_ci(self, level: float = 0.95) -> tuple[float, float]:
        if self.curvature_draws.size == 0:
            return np.nan, np.nan
        a = (1 - level) / 2
        lo, hi = np.quantile(self.curvature_draws, [a, 1 - a])
        return float(lo), float(hi)


def _check_inputs(n, values):
    n = np.asarray(n, dtype=float)
    y = np.asarray(values, dtype=float)
    if n.shape != y.shape or n.ndim != 1:
        raise ValueError(f"values: need 1-d n and values of equal length, got {n.shape} and "
                         f"{y.shape}")
    if not (np.all(np.isfinite(n)) and np.all(n > 0)):
        raise ValueError("n: sample sizes must be finite and > 0")
    if not (np.all(np.isfinite(y)) and np.all(y > 0)):
        raise ValueError("values: metric values must be finite and > 0 to take logarithms")
    levels = np.unique(n)
    if levels.size < 2:
        raise ValueError(f"n: need at least two distinct sample sizes, got {levels.size}")
    order = np.argsort(n, kind="stable")
    return n[order], np.log(y[order]), levels


def _quantreg(x, y, q):
    """statsmodels QuantReg of y on (1, x); the point estimate and its results object."""
    import statsmodels.api as sm
    from statsmodels.tools.sm_exceptions import ConvergenceWarning, IterationLimitWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IterationLimitWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = sm.QuantReg(y, sm.add_constant(x, has_constant="add")).fit(q=q, max_iter=5000)
    return res


def _fit(n, x, y, q, idx, cols):
    """One RateFit on the columns ``cols`` of the sorted data, resamples ``idx``."""
    sub_n = n[cols]
    levels, counts = np.unique(sub_n, return_counts=True)
    res = _quantreg(x[cols], y[cols], q)
    params = pd.Series(np.asarray(res.params, dtype=float), index=["const", "log_n"])
    bidx = idx[:, cols]
    a, b = qr_line(x[bidx[0]], y[bidx], q, start=params["log_n"])
    return RateFit(q=q, params=params, draws=np.column_stack([a, b]), result=res,
                   nobs=int(cols.size), n_levels=int(levels.size), n_min=float(levels[0]),
                   n_max=float(levels[-1]), reps_min=int(counts.min()),
                   reps_max=int(counts.max()), reps_median=float(np.median(counts)))


def fit_rates(n, values, *, n_boot: int = DEFAULT_BOOT, seed: int = 0, key=(),
              halves: bool = True) -> RateFits:
    """All slopes of one rate (see :class:`RateFits`) from one set of resamples.

    Parameters
    ----------
    n, values : array_like
        Sample size and loss (> 0, finite) of every fit.
    n_boot : int
        Bootstrap resamples (replications drawn with replacement within each n).
    seed : int
        Root seed of the resamples; with ``key`` (the rate's name) it seeds them.
    key : tuple
        Names the rate (study, label, protocol, metric), so every rate has its own stream.
    halves : bool
        Also fit the upper and lower halves of the n range (and the curvature).

    Raises
    ------
    ValueError
        When lengths differ, a value is not finite and positive, or fewer than two distinct n.
    """
    n, y, levels = _check_inputs(n, values)
    x = np.log(n)
    groups = [np.flatnonzero(n == v) for v in levels]
    idx = stratified_indices(groups, n_boot, boot_rng(seed, *key))
    everything = np.arange(n.size)
    out = RateFits(q50=_fit(n, x, y, 0.5, idx, everything),
                   q90=_fit(n, x, y, 0.9, idx, everything), upper=None, lower=None)
    if halves:
        mid = 0.5 * (np.log(levels[0]) + np.log(levels[-1]))
        eps = 1e-9
        # columns of idx follow the strata, so a half is a set of whole strata
        up_cols = np.flatnonzero(x[idx[0]] >= mid - eps)
        low_cols = np.flatnonzero(x[idx[0]] <= mid + eps)
        if np.unique(x[up_cols]).size >= 2 and np.unique(x[low_cols]).size >= 2:
            out.upper = _fit(n, x, y, 0.5, idx, up_cols)
            out.lower = _fit(n, x, y, 0.5, idx, low_cols)
            out.curvature = out.upper.slope - out.lower.slope
            out.curvature_draws = out.upper.draws[:, 1] - out.lower.draws[:, 1]
    return out


def fit_rate(n, values, q: float = 0.5, *, n_boot: int = DEFAULT_BOOT, seed: int = 0,
             key=()) -> RateFit:
    """Quantile regression (quantile ``q``) of log(values) on log(n) over all fits, with
    bootstrap draws (replications resampled within each n)."""
    if q not in (0.5, 0.9):
        n_, y, levels = _check_inputs(n, values)
        groups = [np.flatnonzero(n_ == v) for v in levels]
        idx = stratified_indices(groups, n_boot, boot_rng(seed, *key))
        return _fit(n_, np.log(n_), y, q, idx, np.arange(n_.size))
    fits = fit_rates(n, values, n_boot=n_boot, seed=seed, key=key, halves=False)
    return fits.q50 if q == 0.5 else fits.q90


def log_factor_shift(n_min: float, n_max: float) -> float:
    """How much a factor sqrt(log n) moves a chord slope over [n_min, n_max].

    The chord slope of sqrt(log n / n) over the range is -0.5 plus this shift (+0.0555 over
    [1e3, 1e5]: -0.445).
    """
    if not (n_max > n_min > 1):
        raise ValueError(f"n_min, n_max: need 1 < n_min < n_max, got {n_min}, {n_max}")
    return 0.5 * (np.log(np.log(n_max)) - np.log(np.log(n_min))) / (np.log(n_max)
                                                                     - np.log(n_min))


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


def designed_partition(theory: pd.DataFrame | None) -> dict:
    """label -> (designed cell sizes tuple, 1-based reference expert) from a theory table."""
    if theory is None or "cell_sizes" not in theory.columns:
        return {}
    out = {}
    for label, g in theory.groupby("label", sort=False):
        sizes = tuple(int(s) for s in str(g["cell_sizes"].iloc[0]).split(","))
        ref = int(g["ref"].iloc[0]) if "ref" in g.columns else None
        out[label] = (sizes, ref)
    return out


def partition_ok(df: pd.DataFrame, sizes, ref=None) -> pd.Series | None:
    """Per fit: the realised partition (``cell_size_j``, ``ref_atom_cell``) equals the designed
    one. None when the table does not record the cell sizes."""
    cols = [f"cell_size_{j}" for j in range(1, len(sizes) + 1)]
    if not set(cols) <= set(df.columns):
        return None
    real = df[cols].apply(pd.to_numeric, errors="coerce").to_numpy()
    ok = np.all(real == np.asarray(sizes, dtype=float)[None, :], axis=1)
    if ref is not None and "ref_atom_cell" in df.columns:
        ok &= pd.to_numeric(df["ref_atom_cell"], errors="coerce").to_numpy() == ref
    return pd.Series(ok, index=df.index)


def usable(g: pd.DataFrame, metric: str, partition=None, statuses=INCLUDED_STATUSES):
    """Masks of the fits of ``g`` (one label and protocol) that enter the rate of ``metric``.

    Returns
    -------
    use : ndarray of bool
    counts : dict
        Why the others are out: "<status>", "other partition", "NaN metric", "metric <= 0".
    """
    st = g["status"].astype(str).to_numpy()
    inc = np.isin(st, statuses)
    val = pd.to_numeric(g[metric], errors="coerce").to_numpy(dtype=float) \
        if metric in g.columns else np.full(len(g), np.nan)
    part = np.ones(len(g), dtype=bool)
    if partition is not None and CELL_METRIC_PATTERN.match(metric):
        ok = partition_ok(g, *partition)
        if ok is not None:
            part = ok.to_numpy()
    other = inc & ~part
    nan = inc & part & ~np.isfinite(val)
    nonpos = inc & part & np.isfinite(val) & (val <= 0)
    use = inc & part & np.isfinite(val) & (val > 0)
    counts = {s: int((st == s).sum()) for s in reversed(KNOWN_STATUSES) if s not in statuses}
    counts.update({"other partition": int(other.sum()), "NaN metric": int(nan.sum()),
                   "metric <= 0": int(nonpos.sum())})
    return use, counts


def partition_table(df: pd.DataFrame, theory: pd.DataFrame | None) -> pd.DataFrame:
    """Realised partitions per (label, protocol, n): how many fits have the designed cell sizes
    (and the fitted reference atom in the reference cell), and the others by partition."""
    design = designed_partition(theory)
    rows = []
    for (label, protocol), g in df.groupby(["label", "protocol"], sort=False):
        if label not in design:
            continue
        sizes, ref = design[label]
        ok = partition_ok(g, sizes, ref)
        if ok is None:
            continue
        cols = [f"cell_size_{j}" for j in range(1, len(sizes) + 1)]
        for n, gn in g.groupby("n", sort=True):
            real = gn[cols].apply(pd.to_numeric, errors="coerce")
            names = real.apply(lambda r: ",".join("?" if not np.isfinite(v) else str(int(v))
                                                  for v in r), axis=1)
            if "ref_atom_cell" in gn.columns:
                rc = pd.to_numeric(gn["ref_atom_cell"], errors="coerce")
                names = names.where(rc.isna() | (rc == ref),
                                    names + " (reference atom in cell "
                                    + rc.fillna(0).astype(int).astype(str) + ")")
            others = names[~ok.loc[gn.index]].value_counts()
            rows.append({"label": label, "protocol": protocol, "n": int(n), "fits": len(gn),
                         "designed": ",".join(map(str, sizes)),
                         "as designed": int(ok.loc[gn.index].sum()),
                         "others": "; ".join(f"{k}: {v}" for k, v in others.items())})
    return pd.DataFrame(rows, columns=["label", "protocol", "n", "fits", "designed",
                                       "as designed", "others"])


def _excluded_text(counts: dict) -> str:
    return "; ".join(f"{k}: {v}" for k, v in counts.items() if v) or ""


#: columns of :func:`rate_table`
RATE_COLUMNS = [
    "study", "label", "protocol", "metric", "kind", "expected", "n_fits", "n_used",
    "n_other_partition", "excluded", "n_levels", "n_min", "n_max", "reps_min", "reps_max",
    "slope", "intercept", "se", "ci90_low", "ci90_high", "ci95_low", "ci95_high",
    "slope_q90", "ci90_low_q90", "ci90_high_q90", "ci95_low_q90", "ci95_high_q90",
    "upper_n_min", "slope_upper", "ci90_low_upper", "ci90_high_upper", "ci95_low_upper",
    "ci95_high_upper", "curvature", "curvature_ci95_low", "curvature_ci95_high",
    "slope_ols", "log_shift", "log_share", "verdict", "verdict_q90", "verdict_upper",
    "note", "headline", "reason", "decide_as", "decide_reps", "decide_n_max",
]

_NUMERIC = [c for c in RATE_COLUMNS if c not in ("study", "label", "protocol", "metric", "kind",
                                                  "excluded", "verdict", "verdict_q90",
                                                  "verdict_upper", "note", "headline",
                                                  "reason", "decide_as")]


def _judge(kind, expected, fit: RateFit | None, tol, can_decide, upper: RateFit | None = None):
    """Verdict of one fit (a plateau is judged on the upper half)."""
    if kind == PLATEAU:
        fit = upper
    if fit is None:
        return verdict(kind, expected, tol=tol, can_decide=can_decide)
    return verdict(kind, expected, fit.ci(0.90), fit.ci(0.95), tol, can_decide=can_decide)


def rate_table(df: pd.DataFrame, theory: pd.DataFrame | None = None, *,
               statuses=INCLUDED_STATUSES, tol: float = DEFAULT_TOL,
               headline_protocol: str = "strict", n_boot: int = DEFAULT_BOOT,
               seed: int = 0) -> pd.DataFrame:
    """One rate row per (study, label, protocol, metric).

    Parameters
    ----------
    df : pandas.DataFrame
        Tidy results: study, label, protocol, n, rep, status, the metric columns and, for the
        partition rule, ``cell_size_j`` and ``ref_atom_cell``.
    theory : pandas.DataFrame, optional
        :func:`simstudy.reports.theory.theory_table` output; without it every row is
        "no guarantee" and no partition is checked.
    statuses : tuple of str
        Statuses whose fits enter the regression.
    tol : float
        Verdict tolerance on the exponent.
    headline_protocol : str
        Protocol whose rows are the headline (``headline`` column) in studies that have it;
        in a study without it every protocol is headline.
    n_boot, seed : int
        Bootstrap resamples per rate and their root seed.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`RATE_COLUMNS`: counts (fits, used, other partition, the excluded by
        reason), the n range and fits per n it rests on, the median-regression slope with its
        bootstrap SE and 90% / 95% intervals, the same for the 0.9 quantile and for the upper
        half of the n range, the curvature (upper-half minus lower-half slope) and its 95%
        interval, the OLS slope for comparison, the log factor's chord shift and the share of
        the tolerance it uses, the verdicts (headline: median regression over the whole range;
        a plateau: the upper half), why a verdict is not decided (``note``), ``headline`` and
        the theory's reason.
    """
    missing = {"label", "protocol", "n", "status"} - set(df.columns)
    if missing:
        raise ValueError(f"df: the tidy table lacks column(s) {sorted(missing)}")
    unknown = set(statuses) - set(KNOWN_STATUSES)
    if unknown:
        raise ValueError(f"statuses: unknown status(es) {sorted(unknown)}")
    if not (np.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol: the tolerance must be finite and >= 0, got {tol}")
    df = mark_empty_expert_only(df)
    if "study" not in df.columns:
        df["study"] = ""
    th = {}
    if theory is not None:
        for r in theory.itertuples(index=False):
            th[(r.label, r.metric)] = (r.kind, r.expected, r.reason)
    design = designed_partition(theory)
    protos = df.groupby("study")["protocol"].agg(lambda s: set(s)).to_dict()
    present = metric_columns(df)
    rows = []
    for (study, label, protocol), g in df.groupby(_GROUP, sort=False):
        have = protos.get(study, set())
        headline = protocol == headline_protocol or headline_protocol not in have
        metrics = list(dict.fromkeys(
            [m for (lab, m) in th if lab == label]
            + [m for m in present if g[m].notna().any() or (label, m) in th]))
        for metric in metrics:
            kind, expected, reason = th.get((label, metric),
                                            (NONE, np.nan, "no theory row for this metric"))
            row = dict.fromkeys(RATE_COLUMNS, np.nan)
            row.update(study=study, label=label, protocol=protocol, metric=metric, kind=kind,
                       expected=expected, n_fits=len(g), headline=headline, reason=reason,
                       note="", n_other_partition=0, decide_as="")
            if metric not in g.columns:
                row.update(n_used=0, excluded=f"metric column missing: {len(g)}",
                           verdict=verdict(kind, expected, tol=tol), note="no data")
                row["verdict_q90"] = row["verdict_upper"] = row["verdict"]
                rows.append(row)
                continue
            use, counts = usable(g, metric, design.get(label), statuses)
            row.update(n_used=int(use.sum()), n_other_partition=counts["other partition"],
                       excluded=_excluded_text(counts))
            nu = g["n"].to_numpy(dtype=float)[use]
            vu = pd.to_numeric(g[metric], errors="coerce").to_numpy(dtype=float)[use]
            levels = np.unique(nu)
            row["n_levels"] = levels.size
            fits = None
            if kind != FIXED and levels.size >= 2:
                fits = fit_rates(nu, vu, n_boot=n_boot, seed=seed,
                                 key=(study, label, protocol, metric),
                                 halves=kind in (RATE, BOUND, PLATEAU))
                f = fits.q50
                row.update(n_min=f.n_min, n_max=f.n_max, reps_min=f.reps_min,
                           reps_max=f.reps_max, slope=f.slope,
                           intercept=float(f.params["const"]), se=float(f.bse["log_n"]))
                row["ci90_low"], row["ci90_high"] = f.ci(0.90)
                row["ci95_low"], row["ci95_high"] = f.ci(0.95)
                f9 = fits.q90
                row["slope_q90"] = f9.slope
                row["ci90_low_q90"], row["ci90_high_q90"] = f9.ci(0.90)
                row["ci95_low_q90"], row["ci95_high_q90"] = f9.ci(0.95)
                if fits.upper is not None:
                    u = fits.upper
                    row.update(upper_n_min=u.n_min, slope_upper=u.slope,
                               curvature=fits.curvature)
                    row["ci90_low_upper"], row["ci90_high_upper"] = u.ci(0.90)
                    row["ci95_low_upper"], row["ci95_high_upper"] = u.ci(0.95)
                    lo, hi = fits.curvature_ci(0.95)
                    row["curvature_ci95_low"], row["curvature_ci95_high"] = lo, hi
                row["slope_ols"] = float(np.polyfit(np.log(nu), np.log(vu), 1)[0])
                row["log_shift"] = log_factor_shift(f.n_min, f.n_max)
                row["log_share"] = row["log_shift"] / tol if tol > 0 else np.nan
            reps_med = fits.q50.reps_median if fits is not None else 0.0
            ok, why = decidable(int(levels.size), reps_med)
            if fits is None:
                row["verdict"] = row["verdict_q90"] = row["verdict_upper"] = verdict(
                    kind, expected, tol=tol)
                if kind not in (FIXED, NONE):
                    row["note"] = (f"no usable slope ({int(use.sum())} fits used at "
                                   f"{levels.size} sample size(s))")
            else:
                up_ok, up_why = (decidable(fits.upper.n_levels, fits.upper.reps_median)
                                 if fits.upper is not None else (False, "no upper half"))
                row["verdict"] = _judge(kind, expected, fits.q50, tol,
                                        up_ok if kind == PLATEAU else ok, fits.upper)
                row["verdict_q90"] = _judge(kind if kind != PLATEAU else NONE, expected,
                                            fits.q90, tol, ok)
                row["verdict_upper"] = _judge(kind if kind != PLATEAU else RATE,
                                              0.0 if kind == PLATEAU else expected,
                                              fits.upper, tol, up_ok)
                if kind in (RATE, BOUND, PLATEAU):
                    row["note"] = up_why if kind == PLATEAU else why
                if row["verdict"] == INCONCLUSIVE and kind in (RATE, BOUND):
                    row["decide_as"], row["decide_reps"], row["decide_n_max"] = to_decide(
                        kind, expected, fits.q50.slope, fits.q50.ci(0.90), fits.q50.ci(0.95),
                        reps_med, fits.q50.n_min, fits.q50.n_max, tol)
            rows.append(row)
    out = pd.DataFrame(rows, columns=RATE_COLUMNS)
    for c in _NUMERIC:
        out[c] = pd.to_numeric(out[c], errors="coerce")
    if len(out):
        # fixed order: studies and labels as they appear, metrics as the theory lists them
        order = {}
        if theory is not None:
            for label, g in theory.groupby("label", sort=False):
                order.update({(label, m): i for i, m in enumerate(g["metric"])})
        m_pos = [order.get((la, m), 10_000) for la, m in zip(out["label"], out["metric"],
                                                              strict=True)]
        lab = {v: i for i, v in enumerate(dict.fromkeys(df["label"]))}
        pro = {v: i for i, v in enumerate(dict.fromkeys(df["protocol"]))}
        key = pd.DataFrame({"s": out["study"], "l": out["label"].map(lab),
                            "p": out["protocol"].map(pro), "m": m_pos, "name": out["metric"]},
                           index=out.index)
        out = out.loc[key.sort_values(["s", "l", "p", "m", "name"], kind="stable").index]
        out = out.reset_index(drop=True)
    return out
