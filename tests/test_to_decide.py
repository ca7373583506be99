"""The projection of what would decide an inconclusive rate (`verdicts.to_decide`), on
hand-computed cases, and its place in the rate table (only inconclusive guaranteed rates)."""

import numpy as np
import pytest

from simstudy.reports.rates import rate_table
from simstudy.reports.tables import decide_text
from simstudy.reports.theory import theory_table
from simstudy.reports.verdicts import MIN_REPS, bound_verdict, exact_verdict, to_decide
from tests.reports_synth import design_config, synth_table

NAN2 = (np.nan, np.nan)


def test_a_bound_below_its_edge_projects_shown_with_the_interval_shrunk_to_the_edge():
    # edge = -0.125 + 0.1 = -0.025; the 95% upper end must shrink from +0.2 to +0.175 above
    # the slope: a factor 0.875, so 10 / 0.875^2 = 13.06 -> 14 replications, or the log range
    # stretched by 1 / 0.875: n_max = 1e3 * 100^(8/7)
    target, reps, n_max = to_decide("bound", -0.125, -0.2, (-0.28, -0.02), (-0.3, 0.0), 10,
                                    1e3, 1e5)
    assert bound_verdict(-0.125, (-0.3, 0.0)) == "inconclusive"
    assert target == "shown" and reps == 14
    assert n_max == pytest.approx(1e3 * 100 ** (8 / 7))


def test_a_bound_above_its_edge_projects_inconsistent():
    # (slope - edge) / (slope - lo95) = 0.125 / 0.2 = 0.625: 10 / 0.390625 = 25.6 -> 26
    target, reps, _ = to_decide("bound", -0.125, 0.1, (-0.05, 0.25), (-0.1, 0.3), 10, 1e3, 1e5)
    assert target == "inconsistent" and reps == 26


def test_an_exact_rate_inside_the_band_projects_consistent_on_its_tighter_side():
    # band [-0.6, -0.4]; slope -0.45: the upper side must shrink 0.17 -> 0.05 (factor 5/17)
    target, reps, n_max = to_decide("rate", -0.5, -0.45, (-0.62, -0.28), (-0.66, -0.24), 10,
                                    1e3, 1e5)
    assert exact_verdict(-0.5, (-0.62, -0.28), (-0.66, -0.24)) == "inconclusive"
    assert target == "consistent" and reps == np.ceil(10 / (5 / 17) ** 2)
    assert n_max == pytest.approx(1e3 * 100 ** (17 / 5))


def test_an_exact_rate_inside_the_band_uses_its_lower_side_when_that_is_tighter():
    # slope -0.55: the lower side must shrink 0.17 -> 0.05, the upper only 0.17 -> 0.15
    target, reps, _ = to_decide("rate", -0.5, -0.55, (-0.72, -0.38), (-0.76, -0.34), 10, 1e3,
                                1e5)
    assert target == "consistent" and reps == np.ceil(10 / (5 / 17) ** 2)


def test_an_exact_rate_outside_the_band_projects_inconsistent():
    # slope -0.75 below the band's -0.6: the 95% upper end -0.55 must come to -0.6 (0.15/0.2)
    target, reps, _ = to_decide("rate", -0.5, -0.75, (-0.88, -0.58), (-0.9, -0.55), 9, 1e3, 1e5)
    assert target == "inconsistent" and reps == np.ceil(9 / 0.75**2)
    # and above the band
    target, reps, _ = to_decide("rate", -0.5, -0.25, (-0.42, -0.12), (-0.45, -0.1), 9, 1e3, 1e5)
    assert target == "inconsistent" and reps == np.ceil(9 / 0.75**2)


def test_an_interval_that_decides_already_needs_only_the_size_rule():
    # 95% upper end already below the edge, but 5 fits per n: the minimum replications
    target, reps, n_max = to_decide("bound", -0.125, -0.3, (-0.35, -0.25), (-0.36, -0.24), 5,
                                    1e3, 1e5)
    assert target == "shown" and reps == MIN_REPS and n_max == pytest.approx(1e5)


@pytest.mark.parametrize("args", [
    ("none", np.nan, -0.2, (-0.3, -0.1), (-0.3, -0.1), 10, 1e3, 1e5),  # no guarantee
    ("plateau", 0.0, -0.2, (-0.3, -0.1), (-0.3, -0.1), 10, 1e3, 1e5),  # judged on a half
    ("bound", -0.125, -0.125 + 0.1, (-0.1, 0.05), (-0.2, 0.1), 10, 1e3, 1e5),  # on the edge
    ("rate", -0.5, -0.5 - 0.1, (-0.7, -0.5), (-0.8, -0.4), 10, 1e3, 1e5),  # on the band end
    ("bound", -0.125, np.nan, NAN2, NAN2, 10, 1e3, 1e5),  # no slope
    ("bound", -0.125, -0.2, (-0.3, 0.0), (-0.3, 0.0), 0, 1e3, 1e5),  # no replications
    ("bound", -0.125, -0.2, (-0.3, 0.0), (-0.3, 0.0), -1, 1e3, 1e5),
    ("bound", -0.125, -0.2, (-0.3, 0.0), (-0.3, 0.0), 10, 0.0, 1e5),  # no n_min
    ("bound", -0.125, -0.2, (-0.3, 0.0), (-0.3, 0.0), 10, 1e5, 1e3),  # a reversed range
    ("bound", -0.125, -0.2, (-0.3, 0.0), (-0.3, 0.0), 10, 1e3, 1e3),  # one sample size
])
def test_nothing_is_projected_where_no_projection_makes_sense(args):
    assert to_decide(*args)[0] == ""
    assert decide_text(*to_decide(*args)) == ""


def test_decide_text_names_the_verdict_the_replications_and_the_stretched_range():
    assert decide_text("shown", 14.0, 193069.77) == "shown: ~14 fits per n or n to 1.93e5"
    assert decide_text("shown", 14.0, np.inf) == "shown: ~14 fits per n"
    assert decide_text("", np.nan, np.nan) == ""


def test_the_rate_table_projects_only_its_inconclusive_guaranteed_rates():
    cfg = design_config("topk_exact")
    # 4 fits per n: too small to decide, whatever the intervals
    df = synth_table([cfg], reps=4, n_values=(1000, 2000, 4000, 8000, 16000), seed=1,
                     sigma=0.01)
    rt = rate_table(df, theory_table([cfg]), n_boot=99)
    g = rt[rt.kind == "rate"]
    assert (g["verdict"] == "inconclusive").all()
    assert (g["decide_as"] != "").all() and (g["decide_reps"] >= MIN_REPS).all()
    # decided rows and rows without a guarantee carry no projection
    df = synth_table([cfg], reps=12, seed=2)
    rt = rate_table(df, theory_table([cfg]), n_boot=99)
    done = rt[rt["verdict"] != "inconclusive"]
    assert len(done) and (done["decide_as"] == "").all() and done["decide_reps"].isna().all()
