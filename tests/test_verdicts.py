"""Three-way verdicts on hand-built intervals exactly on every boundary (spec section 4).

Each boundary is hit exactly (the band ends are computed with the same expression as the code)
and missed by 1e-12 on the other side, so a `<=` turned into `<`, or a tolerance dropped on one
side, fails a test here directly.
"""

import numpy as np
import pytest

from simstudy.reports.verdicts import (
    MIN_LEVELS,
    MIN_REPS,
    bound_verdict,
    decidable,
    exact_verdict,
    verdict,
)

R, TOL = -0.5, 0.1
LO, HI = R - TOL, R + TOL  # the equivalence band [-0.6, -0.4]
EPS = 1e-12
WIDE = (-2.0, 2.0)


def test_exact_rate_consistent_on_the_closed_band():
    assert exact_verdict(R, (LO, HI), WIDE, TOL) == "consistent"  # both ends on the band
    assert exact_verdict(R, (LO, R), WIDE, TOL) == "consistent"
    assert exact_verdict(R, (R, HI), WIDE, TOL) == "consistent"
    assert exact_verdict(R, (LO - EPS, HI), WIDE, TOL) == "inconclusive"
    assert exact_verdict(R, (LO, HI + EPS), WIDE, TOL) == "inconclusive"


def test_exact_rate_uses_the_tolerance_on_both_sides():
    # inside the band but away from the theory on either side: a dropped tolerance fails this
    assert exact_verdict(R, (-0.59, -0.41), WIDE, TOL) == "consistent"
    assert exact_verdict(R, (-0.59, -0.52), WIDE, TOL) == "consistent"
    assert exact_verdict(R, (-0.48, -0.41), WIDE, TOL) == "consistent"
    # the band is theory +- tol, not [theory, theory + tol] or a zero-width band
    assert exact_verdict(R, (-0.55, -0.45), (-0.7, -0.55), TOL) == "consistent"


def test_exact_rate_uses_the_90_percent_interval_for_consistency():
    # the 95% interval pokes out of the band, the 90% one does not: consistent
    assert exact_verdict(R, (-0.58, -0.42), (-0.65, -0.35), TOL) == "consistent"
    # and the other way round: inconclusive
    assert exact_verdict(R, (-0.65, -0.35), (-0.58, -0.42), TOL) == "inconclusive"


def test_exact_rate_inconsistent_only_when_the_95_interval_is_strictly_outside():
    below, above = (LO - 0.3, LO), (HI, HI + 0.3)
    assert exact_verdict(R, below, below, TOL) == "inconclusive"  # touches the band
    assert exact_verdict(R, above, above, TOL) == "inconclusive"
    below, above = (LO - 0.3, LO - EPS), (HI + EPS, HI + 0.3)
    assert exact_verdict(R, below, below, TOL) == "inconsistent"
    assert exact_verdict(R, above, above, TOL) == "inconsistent"
    # between the band edge and the theory: overlaps the band, so not inconsistent
    assert exact_verdict(R, (-0.75, -0.55), (-0.7, -0.55), TOL) == "inconclusive"
    assert exact_verdict(R, (-0.45, -0.25), (-0.45, -0.3), TOL) == "inconclusive"
    # inconsistency is judged on the 95% interval, not the 90% one
    assert exact_verdict(R, (-0.35, -0.2), (-0.41, -0.15), TOL) == "inconclusive"


def test_bound_shown_inconsistent_inconclusive_on_the_edges():
    r = -0.125
    edge = r + TOL
    assert bound_verdict(r, (-0.6, edge), TOL) == "shown"
    assert bound_verdict(r, (-0.6, edge + EPS), TOL) == "inconclusive"
    assert bound_verdict(r, (edge, 0.2), TOL) == "inconclusive"
    assert bound_verdict(r, (edge + EPS, 0.2), TOL) == "inconsistent"
    # the tolerance counts on both rules
    assert bound_verdict(r, (-0.3, -0.1), TOL) == "shown"  # slower than r, within tol
    assert bound_verdict(r, (-0.1, 0.0), TOL) == "inconclusive"  # lower end within r + tol
    assert bound_verdict(r, (-0.05, 0.01), 0.2) == "shown"
    # faster than the bound is never a violation
    assert bound_verdict(r, (-1.5, -0.9), TOL) == "shown"


def test_verdict_dispatch_and_small_studies():
    assert verdict("rate", R, (LO, HI), WIDE, TOL) == "consistent"
    assert verdict("rate", R, (LO, HI), WIDE, TOL, can_decide=False) == "inconclusive"
    out = (LO - 1, LO - 0.5)
    assert verdict("rate", R, out, out, TOL, can_decide=False) == "inconclusive"
    assert verdict("bound", -0.25, WIDE, (-0.6, -0.3), TOL) == "shown"
    assert verdict("bound", -0.25, WIDE, (-0.6, -0.3), TOL, can_decide=False) == "inconclusive"
    # a plateau is an exact rate of 0 (the caller passes the upper-half intervals)
    assert verdict("plateau", np.nan, (-TOL, TOL), WIDE, TOL) == "consistent"
    assert verdict("plateau", 0.0, (-TOL - EPS, 0.0), WIDE, TOL) == "inconclusive"
    assert verdict("plateau", 0.0, (-0.5, -0.3), (-0.5, -0.3), TOL) == "inconsistent"
    assert verdict("none", np.nan, (-0.1, 0.1), WIDE) == "no guarantee"
    assert verdict("fixed", np.nan) == "fixed"
    assert verdict("rate", R) == "no data"
    assert verdict("bound", -0.125, can_decide=False) == "no data"
    with pytest.raises(ValueError, match="^kind: unknown kind 'exact'"):
        verdict("exact", R, (LO, HI), WIDE)
    with pytest.raises(ValueError, match="^tol: the tolerance must be finite and >= 0"):
        verdict("rate", R, (LO, HI), WIDE, tol=-1)
    with pytest.raises(ValueError, match="^ci90: lower end"):
        exact_verdict(R, (HI, LO), WIDE)


def test_decidable_boundaries():
    assert decidable(MIN_LEVELS, MIN_REPS) == (True, "")
    ok, why = decidable(MIN_LEVELS - 1, 40)
    assert not ok and f"{MIN_LEVELS - 1} sample sizes (need {MIN_LEVELS})" in why
    ok, why = decidable(20, MIN_REPS - 0.5)
    assert not ok and "usable replications at the median n" in why


def test_the_size_rule_is_four_sample_sizes_and_eight_replications():
    # the values the docs and every table cite (docs/rates.md): pinned, not just named
    assert (MIN_LEVELS, MIN_REPS) == (4, 8)
    assert decidable(4, 8)[0] and decidable(5, 9)[0] and decidable(4, 40)[0]
    assert not decidable(3, 40)[0] and not decidable(4, 7.9)[0]
    assert not decidable(4, np.nan)[0]  # no usable replications at all


def test_a_degenerate_interval_and_a_zero_tolerance_are_accepted():
    assert exact_verdict(R, (R, R), (R, R), tol=0.0) == "consistent"
    assert bound_verdict(-0.25, (-0.3, -0.3), tol=0.0) == "shown"


def test_a_half_missing_interval_is_no_data():
    assert bound_verdict(-0.125, (np.nan, -0.5)) == "no data"
    assert bound_verdict(-0.125, (-0.5, np.nan)) == "no data"
    assert exact_verdict(R, (np.nan, HI), WIDE) == "no data"
