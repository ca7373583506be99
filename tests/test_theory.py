"""The theory table equals the spec's expectations (sections 4 and 5) for every study fit."""

from pathlib import Path

import numpy as np
import pytest

from simstudy.reports.configs import configs_from_spec
from simstudy.reports.theory import (
    FitConfig,
    ever_selected,
    expectations,
    kbar_requirement,
    rbar,
    selection_regions,
    theory_table,
)
from tests.reports_synth import design_config


def kinds(cfg):
    return {m: (e.kind, e.exponent) for m, e in expectations(cfg).items()}


def assert_half(table, metrics):
    for m in metrics:
        assert table[m] == ("rate", -0.5), m


def test_rbar_values_and_validation():
    assert [rbar(m) for m in (1, 2, 3, 4, 7)] == [1, 4, 6, None, None]
    with pytest.raises(ValueError, match="m: the number of atoms"):
        rbar(0)


def test_kbar_requirement_is_max_over_K_subsets():
    assert kbar_requirement([2, 1, 1], 2) == 3
    assert kbar_requirement([1, 3, 1, 2], 2) == 5
    assert kbar_requirement([2, 1, 1], 3) == 4
    with pytest.raises(ValueError, match="K: the true K"):
        kbar_requirement([1, 1], 3)


def test_regions_of_design_T():
    cfg = design_config("x")
    regions = selection_regions(cfg.truth, cfg.inputs)
    # x > 0: {2, 1}; x < 0: {3, 1} (0-based {1, 0} and {2, 0}), half the inputs each
    assert set(regions) == {frozenset({0, 1}), frozenset({0, 2})}
    assert all(abs(v - 0.5) < 0.01 for v in regions.values())
    k1 = design_config("x", K=1)
    # the tie at x = 0 (a null set) must not make expert 1 "selected"
    assert ever_selected(k1.truth, k1.inputs).tolist() == [False, True, True]


def test_topk_exact():
    t = kinds(design_config("topk_exact"))
    assert "D2" not in t
    assert_half(t, ["D1", "hellinger", "tv", "mass_1", "mass_3"]
                + [f"err_{p}_{j}" for p in ("beta1", "a", "b", "v") for j in (1, 3)]
                + [f"err_{p}_2" for p in ("a", "b", "v")])
    # the reference expert's gating is fixed by convention
    assert t["err_beta1_2"][0] == "fixed" and t["mass_2"][0] == "fixed"


@pytest.mark.parametrize("label", ["topk_over", "kbar3"])
def test_topk_over_and_kbar3(label):
    t = kinds(design_config(label, k=4, Kbar=3, extra=(0,)))
    assert "D1" not in t
    assert_half(t, ["D2", "hellinger", "tv", "mass_1", "mass_3", "err_a_2", "err_b_2",
                    "err_v_2", "err_beta1_3", "err_a_3", "err_b_3", "err_v_3"])
    assert t["err_beta1_1"] == ("bound", -1 / 8)
    assert t["err_b_1"] == ("bound", -1 / 8)
    assert t["err_a_1"] == ("bound", -1 / 4)
    assert t["err_v_1"] == ("bound", -1 / 4)


def test_kbar2_breaks_the_condition():
    e = expectations(design_config("kbar2", k=4, Kbar=2, extra=(0,)))
    assert all(x.kind == "none" for x in e.values())
    assert "K-bar condition fails" in e["hellinger"].reason and "= 3" in e["D2"].reason


def test_kbar4_dense_fit_of_sparse_truth_levels_off():
    e = expectations(design_config("kbar4", k=4, Kbar=4, extra=(0,)))
    assert all(x.kind == "none" for x in e.values())
    assert "level off" in e["hellinger"].reason and "dense" in e["tv"].reason


@pytest.mark.parametrize("K", [2, 3])
def test_K_sweep_K2_K3_all_half(K):
    t = kinds(design_config(f"K{K}", K=K, k=3, Kbar=K))
    assert_half(t, [m for m in t if m not in ("err_beta1_2", "mass_2")])


def test_K_sweep_K1():
    e = expectations(design_config("K1", K=1, k=3, Kbar=1))
    assert e["hellinger"].kind == "rate" and e["tv"].exponent == -0.5
    assert e["D1"].kind == "none" and "weight of the selected expert is exactly 1" in \
        e["D1"].reason
    # expert 1 (spec numbering) is never selected at K = 1: nothing about it
    for p in ("beta1", "a", "b", "v"):
        assert e[f"err_{p}_1"].kind == "none"
        assert "never selected" in e[f"err_{p}_1"].reason
    assert e["mass_1"].kind == "none"
    # gating of expert 3: no guarantee; expert parameters of 2 and 3 at n^-1/2
    assert e["err_beta1_3"].kind == "none" and e["mass_3"].kind == "none"
    for j in (2, 3):
        for p in ("a", "b", "v"):
            assert (e[f"err_{p}_{j}"].kind, e[f"err_{p}_{j}"].exponent) == ("rate", -0.5)


def test_dense_exact_and_dense_over():
    t = kinds(design_config("dense_exact", design="S"))
    assert_half(t, ["D1", "hellinger", "tv", "err_beta1_1", "err_a_1", "err_b_1", "err_v_1",
                    "mass_1", "err_a_2", "err_b_2", "err_v_2"])
    t = kinds(design_config("dense_over", design="S", k=3, Kbar=3, extra=(0,)))
    assert_half(t, ["D2", "hellinger", "tv", "mass_1", "err_a_2", "err_b_2", "err_v_2"])
    assert t["err_beta1_1"] == ("bound", -1 / 8) and t["err_a_1"] == ("bound", -1 / 4)


def test_extra_atom_on_reference_and_four_atoms():
    e = expectations(design_config("ref", k=4, Kbar=3, extra=(1,)))
    assert all(x.kind == "none" for x in e.values())
    assert "reference expert" in e["D2"].reason
    # three extra atoms on expert 3 (design S dense: K = k* so K-bar = k works): m = 4
    from simstudy.model import get_design

    d = get_design("S")
    e = expectations(FitConfig("m4", d.params, d.inputs, 5, 5, (0, 0, 0)))
    assert e["D2"].kind == "none" and "rbar(m) unknown" in e["D2"].reason
    assert e["err_b_1"].kind == "none" and e["mass_1"].kind == "rate"


def test_fitconfig_validation_messages():
    from simstudy.model import get_design

    d = get_design("T")
    with pytest.raises(ValueError, match="k: the fitted k must be"):
        FitConfig("x", d.params, d.inputs, 2, 2)
    with pytest.raises(ValueError, match="K: the fitted K-bar"):
        FitConfig("x", d.params, d.inputs, 3, 4)
    with pytest.raises(ValueError, match="extra_atoms: need k - k\\* = 1"):
        FitConfig("x", d.params, d.inputs, 4, 3)
    with pytest.raises(ValueError, match="extra_atoms: true expert indices"):
        FitConfig("x", d.params, d.inputs, 4, 3, (3,))


def test_theory_table_frame():
    cfgs = [design_config("topk_exact"), design_config("topk_over", k=4, Kbar=3, extra=(0,))]
    tab = theory_table(cfgs)
    assert list(tab["label"].unique()) == ["topk_exact", "topk_over"]
    assert len(tab) == 2 * (3 + 3 * 5)
    row = tab[(tab.label == "topk_over") & (tab.metric == "err_a_1")].iloc[0]
    assert row.kind == "bound" and np.isclose(row.expected, -0.25) and row.cell_sizes == "2,1,1"


STUDIES = Path(__file__).resolve().parents[1] / "studies"

# the kinds the spec (sections 4-5) expects per fit of each committed study:
# rate / bound / none / fixed counts over the 3 + 5 k* metrics
EXPECTED_KINDS = {
    "topk_exact": {"exact": {"rate": 16, "fixed": 2}},
    "topk_over": {"over": {"rate": 12, "bound": 4, "fixed": 2}},
    "topk_kbar_sweep": {"Kbar2": {"none": 18}, "Kbar3": {"rate": 12, "bound": 4, "fixed": 2},
                        "Kbar4": {"none": 18}},
    "topk_K_sweep": {"K1": {"none": 8, "rate": 8, "fixed": 2}, "K2": {"rate": 16, "fixed": 2},
                     "K3": {"rate": 16, "fixed": 2}},
    "dense_exact": {"exact": {"rate": 11, "fixed": 2}},
    "dense_over": {"over": {"rate": 7, "bound": 4, "fixed": 2}},
}


@pytest.mark.parametrize("study", sorted(EXPECTED_KINDS))
def test_committed_study_specs_give_the_spec_theory(study):
    path = STUDIES / f"{study}.toml"
    if not path.is_file():
        pytest.skip(f"{path} not in this checkout")
    configs = configs_from_spec(path)
    tab = theory_table(list(configs.values()))
    got = {label: {k: int(v) for k, v in g["kind"].value_counts().items()}
           for label, g in tab.groupby("label")}
    assert got == EXPECTED_KINDS[study]


def test_two_extra_atoms_on_expert_1_use_rbar3_and_derive_the_kbar_condition():
    e = expectations(design_config("over2", k=5, Kbar=4, extra=(0, 0)))
    assert (e["err_beta1_1"].kind, e["err_beta1_1"].exponent) == ("bound", -1 / 12)
    assert (e["err_b_1"].kind, e["err_b_1"].exponent) == ("bound", -1 / 12)
    assert (e["err_a_1"].kind, e["err_a_1"].exponent) == ("bound", -1 / 6)
    assert (e["err_v_1"].kind, e["err_v_1"].exponent) == ("bound", -1 / 6)
    assert (e["D2"].kind, e["D2"].exponent) == ("rate", -0.5)
    assert ("true top-2 set {1, 2} holds 3 + 1 = 4; true top-2 set {1, 3} holds 3 + 1 = 4 "
            "fitted atoms = K-bar = 4; rbar(3) = 6") in e["D2"].reason
    for j in (2, 3):
        assert e[f"err_a_{j}"].exponent == -0.5
    # K-bar = 3 is too small for 3 + 1 atoms in a region
    e = expectations(design_config("over2", k=5, Kbar=3, extra=(0, 0)))
    assert all(x.kind == "none" for x in e.values())
    assert "K-bar condition fails: K-bar=3 < max over 2-subsets of sum |A_j| = 4" in \
        e["D2"].reason
    dense = expectations(design_config("d2", design="S", k=4, Kbar=4, extra=(0, 0)))
    assert dense["err_b_1"].exponent == -1 / 12 and dense["D2"].kind == "rate"


def test_bounded_dense_fit_of_the_sparse_truth_expects_a_plateau():
    from simstudy.model import get_design

    T = get_design("T")
    e = expectations(FitConfig("b", T.params, T.inputs, 4, 4, (0,), beta1_bound=15.0))
    assert (e["hellinger"].kind, e["hellinger"].exponent) == ("plateau", 0.0)
    assert "|beta1| <= 15" in e["tv"].reason
    assert e["D2"].kind == "none" and "undefined" in e["D2"].reason
    free = expectations(FitConfig("u", T.params, T.inputs, 4, 4, (0,)))
    assert free["hellinger"].kind == "none"
    t = theory_table([FitConfig("b", T.params, T.inputs, 4, 4, (0,), beta1_bound=15.0)])
    assert (t["beta1_bound"] == 15.0).all() and (t["ref"] == 2).all()
    assert (t["cell_sizes"] == "2,1,1").all()
    with pytest.raises(ValueError, match="^beta1_bound: must be a finite number > 0"):
        FitConfig("b", T.params, T.inputs, 4, 4, (0,), beta1_bound=-1.0)
