"""Three-way verdicts of a measured rate against the theory (spec section 4).

A slope's confidence intervals are compared with the theory's exponent ``-r`` widened by a
tolerance ``delta`` (default 0.1: rates hold up to log factors, and sqrt(log n / n) already
bends a chord over [1e3, 1e5] by +0.055):

* an **exact rate** (D1, D2, the density distances, a singly-fitted expert, a cell mass) is
  ``consistent`` when the 90% CI lies inside ``[-r - delta, -r + delta]`` (an equivalence test:
  two one-sided tests at 5%), ``inconsistent`` when the 95% CI lies entirely outside that band,
  and ``inconclusive`` otherwise;
* a **bound** ("n^-1/8 or faster", the slow parameters of a multiply-fitted expert) is ``shown``
  when the 95% CI's upper end is ``<= -r + delta``, ``inconsistent`` only when its lower end is
  ``> -r + delta`` (the loss clearly shrinks slower than the bound), else ``inconclusive``;
* a **plateau** (a distance that should level off: a bounded dense fit of a sparse truth) is an
  exact rate of 0 judged on the upper half of the n range;
* no guarantee, a quantity fixed by the convention, or no usable slope: ``no guarantee``,
  ``fixed``, ``no data``.

A study too small to decide (fewer than :data:`MIN_LEVELS` sample sizes, or fewer than
:data:`MIN_REPS` usable replications at the median n) is ``inconclusive`` whatever its intervals
say: a bootstrap from a handful of replications understates the spread.
"""

from __future__ import annotations

import numpy as np

from simstudy.reports.defaults import DEFAULT_TOL

__all__ = [
    "RATE", "BOUND", "PLATEAU", "NONE", "FIXED", "KINDS",
    "CONSISTENT", "SHOWN", "INCONSISTENT", "INCONCLUSIVE", "NO_GUARANTEE", "FIXED_VERDICT",
    "NO_DATA", "DECIDED", "DEFAULT_TOL", "MIN_LEVELS", "MIN_REPS",
    "exact_verdict", "bound_verdict", "verdict", "decidable", "to_decide",
]

#: kinds of expectation (the theory table's ``kind`` column)
RATE = "rate"  # the slope should equal the exponent (up to log factors)
BOUND = "bound"  # the slope should be at least as fast as (<=) the exponent
PLATEAU = "plateau"  # the loss should level off (slope 0 on the upper half of the n range)
NONE = "none"  # the theory gives no guarantee
FIXED = "fixed"  # the quantity is fixed at the truth by the convention (always 0)
KINDS = (RATE, BOUND, PLATEAU, NONE, FIXED)

CONSISTENT = "consistent"
SHOWN = "shown"
INCONSISTENT = "inconsistent"
INCONCLUSIVE = "inconclusive"
NO_GUARANTEE = "no guarantee"
FIXED_VERDICT = "fixed"
NO_DATA = "no data"
#: verdicts that decide a guaranteed rate
DECIDED = (CONSISTENT, SHOWN, INCONSISTENT)

#: fewest distinct sample sizes for a decided verdict
MIN_LEVELS = 4
#: fewest usable replications at the median sample size for a decided verdict
MIN_REPS = 8


def _interval(ci, name):
    lo, hi = (float(v) for v in ci)
    if np.isfinite(lo) and np.isfinite(hi) and lo > hi:
        raise ValueError(f"{name}: lower end {lo} above upper end {hi}")
    return lo, hi


def _check_tol(tol):
    if not (np.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol: the tolerance must be finite and >= 0, got {tol}")


def exact_verdict(expected: float, ci90, ci95, tol: float = DEFAULT_TOL) -> str:
    """Equivalence test of an exact rate: see the module docstring.

    Parameters
    ----------
    expected : float
        The theory's slope (-r).
    ci90, ci95 : pair of float
        The 90% and 95% confidence intervals of the slope.
    tol : float
        The tolerance delta.
    """
    _check_tol(tol)
    lo90, hi90 = _interval(ci90, "ci90")
    lo95, hi95 = _interval(ci95, "ci95")
    if not all(np.isfinite(v) for v in (lo90, hi90, lo95, hi95)):
        return NO_DATA
    band_lo, band_hi = expected - tol, expected + tol
    if lo90 >= band_lo and hi90 <= band_hi:
        return CONSISTENT
    if hi95 < band_lo or lo95 > band_hi:
        return INCONSISTENT
    return INCONCLUSIVE


def bound_verdict(expected: float, ci95, tol: float = DEFAULT_TOL) -> str:
    """A bound "n^-r or faster": see the module docstring."""
    _check_tol(tol)
    lo95, hi95 = _interval(ci95, "ci95")
    if not (np.isfinite(lo95) and np.isfinite(hi95)):
        return NO_DATA
    edge = expected + tol
    if hi95 <= edge:
        return SHOWN
    if lo95 > edge:
        return INCONSISTENT
    return INCONCLUSIVE


def decidable(n_levels: int, reps_median: float) -> tuple[bool, str]:
    """Whether a study is large enough to decide a verdict, and why not."""
    if n_levels < MIN_LEVELS:
        return False, f"too small to decide: {n_levels} sample sizes (need {MIN_LEVELS})"
    if not reps_median >= MIN_REPS:
        return False, (f"too small to decide: {reps_median:g} usable replications at the median "
                       f"n (need {MIN_REPS})")
    return True, ""


def verdict(kind: str, expected: float, ci90=(np.nan, np.nan), ci95=(np.nan, np.nan),
            tol: float = DEFAULT_TOL, *, can_decide: bool = True) -> str:
    """The verdict of one rate.

    Parameters
    ----------
    kind : str
        One of :data:`KINDS`.
    expected : float
        The exponent (-r; 0 for a plateau); ignored for "none" and "fixed".
    ci90, ci95 : pair of float
        Confidence intervals of the slope the kind is judged on (for a plateau: the slope over
        the upper half of the n range).
    tol : float
        The tolerance delta.
    can_decide : bool
        False when the study is too small (:func:`decidable`): a finite interval then gives
        "inconclusive".
    """
    _check_tol(tol)
    if kind == FIXED:
        return FIXED_VERDICT
    if kind == NONE:
        return NO_GUARANTEE
    if kind == RATE:
        v = exact_verdict(expected, ci90, ci95, tol)
    elif kind == PLATEAU:
        v = exact_verdict(0.0, ci90, ci95, tol)
    elif kind == BOUND:
        v = bound_verdict(expected, ci95, tol)
    else:
        raise ValueError(f"kind: unknown kind {kind!r}; allowed {list(KINDS)}")
    if v != NO_DATA and not can_decide:
        return INCONCLUSIVE
    return v


def to_decide(kind: str, expected: float, slope: float, ci90, ci95, reps: float, n_min: float,
              n_max: float, tol: float = DEFAULT_TOL) -> tuple[str, float, float]:
    """What would decide an inconclusive rate: a projection, not a promise.

    Assumes the slope estimate stays where it is and its interval shrinks as
    1/sqrt(replications per n) on the same n grid, or as 1/log(n_max / n_min) when the grid
    is stretched to a larger n_max with the same replications (the slope's standard error of
    a least-squares or quantile fit scales with the spread of log n). A slow rate that still
    bends (see the curvature) moves the estimate, so the projection is a lower bound on the
    work in that case.

    Parameters
    ----------
    kind, expected, tol
        As in :func:`verdict` (only "rate" and "bound" are projected).
    slope, ci90, ci95 : float, pair of float
        The slope and its 90% / 95% intervals.
    reps : float
        Usable replications per n now (the median over n).
    n_min, n_max : float
        The n range now.

    Returns
    -------
    (str, float, float)
        The verdict it would reach ("consistent", "shown" or "inconsistent"; "" when nothing
        is projected), the replications per n and the n_max that would reach it (nan when
        not projected).
    """
    _check_tol(tol)
    none = ("", np.nan, np.nan)
    lo90, hi90 = _interval(ci90, "ci90")
    lo95, hi95 = _interval(ci95, "ci95")
    vals = (slope, lo90, hi90, lo95, hi95, reps, n_min, n_max)
    if not all(np.isfinite(v) for v in vals) or reps <= 0 or not n_max > n_min > 0:
        return none
    if kind == BOUND:
        edge = expected + tol
        if slope < edge:
            target, shrink = SHOWN, (edge - slope) / max(hi95 - slope, 1e-300)
        elif slope > edge:
            target, shrink = INCONSISTENT, (slope - edge) / max(slope - lo95, 1e-300)
        else:
            return none
    elif kind == RATE:
        band_lo, band_hi = expected - tol, expected + tol
        if slope in (band_lo, band_hi):
            return none
        if band_lo < slope < band_hi:
            target = CONSISTENT
            shrink = min((band_hi - slope) / max(hi90 - slope, 1e-300),
                         (slope - band_lo) / max(slope - lo90, 1e-300))
        elif slope <= band_lo:
            target, shrink = INCONSISTENT, (band_lo - slope) / max(hi95 - slope, 1e-300)
        else:
            target, shrink = INCONSISTENT, (slope - band_hi) / max(slope - lo95, 1e-300)
    else:
        return none
    shrink = min(shrink, 1.0)  # decided by its interval already: only the size rule is left
    need_reps = max(float(np.ceil(reps / shrink**2)), float(MIN_REPS))
    with np.errstate(over="ignore"):
        need_n_max = float(n_min * np.power(n_max / n_min, 1.0 / shrink))
    return target, need_reps, need_n_max
