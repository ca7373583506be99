"""The theory table's inputs, regions and reasons: validation of a fitted configuration, the
selection regions on asymmetric supports and in d = 2, and reasons that name the right
experts and exponents (found by mutation testing: design T is symmetric, so a rule that picks
the bottom K experts gives the same regions there)."""

import dataclasses

import numpy as np
import pytest

from simstudy.model import MoEParams, UniformBox, get_design
from simstudy.reports.theory import (
    Expectation,
    FitConfig,
    ever_selected,
    expectations,
    kbar_requirement,
    rbar,
    selection_regions,
)

T = get_design("T")


def test_fit_config_validation_names_the_allowed_range():
    with pytest.raises(ValueError, match=r"^extra_atoms: true expert indices must lie in \[0, 2\]"):
        FitConfig("x", T.params, T.inputs, k=4, K=3, extra_atoms=(3,))
    with pytest.raises(ValueError, match="^K: the fitted K-bar must satisfy 1 <= K <= k = 3"):
        FitConfig("x", T.params, T.inputs, k=3, K=0)
    with pytest.raises(ValueError, match="^K: the fitted K-bar"):
        FitConfig("x", T.params, T.inputs, k=3, K=2.5)
    with pytest.raises(ValueError, match="^k: the fitted k must be an integer >= k. = 3"):
        FitConfig("x", T.params, T.inputs, k=2, K=2)
    with pytest.raises(ValueError, match="^extra_atoms: need k - k. = 1 entries"):
        FitConfig("x", T.params, T.inputs, k=4, K=3)
    cfg = FitConfig("x", T.params, T.inputs, k=3, K=1)  # K-bar = 1 is allowed
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.k = 4


def test_rbar_refuses_non_integers_and_booleans():
    for bad in (True, 2.5, 0, -1):
        with pytest.raises(ValueError, match="m: the number of atoms in a cell"):
            rbar(bad)
    assert rbar(2.0) == 4


def test_regions_on_an_asymmetric_support():
    """Design T on [-1, 0.5]: x < 0 selects {1, 3} (2/3 of the inputs), x > 0 selects {1, 2}
    (1/3); on [0.2, 1] only {1, 2} (experts numbered from 1 here, 0-based in the sets)."""
    r = selection_regions(T.params, UniformBox(1, -1.0, 0.5))
    assert set(r) == {frozenset({0, 2}), frozenset({0, 1})}
    assert r[frozenset({0, 2})] == pytest.approx(2 / 3, abs=0.01)
    assert r[frozenset({0, 1})] == pytest.approx(1 / 3, abs=0.01)
    assert selection_regions(T.params, UniformBox(1, 0.2, 1.0)) == {frozenset({0, 1}): 1.0}


def test_a_short_region_is_found_by_the_grid():
    """In d = 1 the scores beta1 x are lines through 0, so the regions are the two half-lines.
    On [-0.005, 1] the region x < 0 holds 0.5% of the inputs: 16 quasi-random points miss
    it, the regular grid over the support (end points included) must not."""
    law = UniformBox(1, -0.005, 1.0)
    assert np.all(law.quasi_random(16, seed=0) > 0)  # the quasi-random points alone miss it
    regions = selection_regions(T.params, law, m=16)
    assert set(regions) == {frozenset({0, 1}), frozenset({0, 2})}
    assert 0 < regions[frozenset({0, 2})] < 0.02
    T1 = get_design("T", K=1)
    assert ever_selected(T1.params, law, m=16).tolist() == [False, True, True]
    with pytest.raises(ValueError, match="m: the input sample size must be an integer >= 16"):
        selection_regions(T.params, law, m=15)
    assert len(selection_regions(T.params, T.inputs, m=16)) == 2  # m = 16 is allowed


def test_regions_in_two_dimensions():
    """d = 2: the quasi-random sample alone (no grid); the top-2 sets of three experts."""
    truth = MoEParams(beta0=[0.0, 0.0, 0.0], beta1=[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]],
                      a=np.zeros((3, 2)), b=[0.0] * 3, v=[1.0] * 3, K=2, ref=0)
    r = selection_regions(truth, UniformBox(2, -1.0, 1.0), m=1024)
    # x1, x2 > 0: {2, 3}; x1 > 0 > x2: {1, 2}; x2 > 0 > x1: {1, 3}; both < 0: {1, 2} or
    # {1, 3} by the sign of x1 - x2
    assert set(r) == {frozenset({1, 2}), frozenset({0, 1}), frozenset({0, 2})}
    assert r[frozenset({1, 2})] == pytest.approx(0.25, abs=0.02)
    assert r[frozenset({0, 1})] == pytest.approx(0.375, abs=0.02)


def test_reasons_name_the_experts_and_exponents():
    over = expectations(FitConfig("o", T.params, T.inputs, k=4, K=3, extra_atoms=(0,)))
    assert over["D2"].reason == (
        "D2 at n^-1/2 (|A_1|=2, |A_2|=1, |A_3|=1; true top-2 set {1, 2} holds 2 + 1 = 3; "
        "true top-2 set {1, 3} holds 2 + 1 = 3 fitted atoms = K-bar = 3; rbar(2) = 4)")
    assert "n^-1/8" in over["err_beta1_1"].reason and "n^-1/8" in over["err_b_1"].reason
    assert "n^-1/4" in over["err_a_1"].reason and "n^-1/4" in over["err_v_1"].reason
    for p in ("beta1", "a", "b", "v"):
        assert over[f"err_{p}_3"].reason == "expert 3 fitted by one atom: n^-1/2"
    assert over["mass_3"].reason == "cell mass at n^-1/2"
    exact = expectations(FitConfig("e", T.params, T.inputs, k=3, K=2))
    assert exact["D1"].reason == "D1 at n^-1/2"
    assert over["D2"].has_guarantee and over["err_a_1"].has_guarantee
    assert not over["err_beta1_2"].has_guarantee  # fixed at the truth


def test_reasons_of_refusals_name_the_experts():
    ref = expectations(FitConfig("r", T.params, T.inputs, k=4, K=3, extra_atoms=(1,)))
    assert "reference expert 2" in ref["D2"].reason and not ref["D2"].has_guarantee
    T1 = get_design("T", K=1)
    k1 = expectations(FitConfig("k1", T1.params, T1.inputs, k=3, K=1))
    assert "expert(s) [1] never selected" in k1["D1"].reason
    many = expectations(FitConfig("m", T.params, T.inputs, k=6, K=5, extra_atoms=(0, 0, 0)))
    assert many["D2"].kind == "none"
    assert "rbar(m) unknown for m >= 4 (expert(s) [1])" in many["D2"].reason
    assert "rbar(4) unknown" in many["err_a_1"].reason


def test_expectation_guarantee_flag():
    for kind, flag in (("rate", True), ("bound", True), ("none", False), ("fixed", False)):
        assert Expectation("m", kind, -0.5, "r").has_guarantee is flag


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        (dict(k=3.5, K=2), "^k: the fitted k must be an integer"),
        (dict(k=4, K=3, extra_atoms=(0, 2)), "^extra_atoms: need k - k. = 1 entries"),
        (dict(k=4, K=3, extra_atoms=(5,)), r"^extra_atoms: true expert indices must lie in"),
        (dict(k=4, K=3, extra_atoms=(-1,)), r"^extra_atoms: true expert indices must lie in"),
    ],
)
def test_fit_config_refusals(kw, msg):
    with pytest.raises(ValueError, match=msg):
        FitConfig("x", T.params, T.inputs, **kw)


def test_small_validations():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Expectation("m", "rate", -0.5, "r").kind = "none"
    with pytest.raises(ValueError, match="m: the input sample size must be an integer >= 16"):
        selection_regions(T.params, T.inputs, m=16.5)
    assert kbar_requirement([2, 1, 1], 1) == 2
    for bad in (0, 4):
        with pytest.raises(ValueError, match="K: the true K must satisfy 1 <= K <= k. = 3"):
            kbar_requirement([2, 1, 1], bad)
