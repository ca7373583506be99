"""Voronoi cells, D1 / D2, per-parameter errors, cell masses and compute_metrics.

Checked against the plain-Python references in tests/naive_losses.py (the max over K-subsets
written literally with itertools.combinations) and on hand-built cases whose values are worked
out by hand below.
"""

import itertools
import math

import numpy as np
import pytest

from simstudy.losses import (
    cell_sizes,
    compute_metrics,
    metric_keys,
    rbar,
    sum_of_k_largest,
    voronoi_cells,
    voronoi_losses,
)
from simstudy.model import MoEParams, UniformBox, get_design
from tests.naive_losses import naive_cells, naive_losses, random_fit, random_truth

T = get_design("T")  # experts 0, 1 (reference), 2 here = experts 1, 2, 3 of the spec


def fit_T(owners=(0, 1, 2), **deltas):
    """Design T's atoms copied per ``owners`` (mass split), then ``deltas`` added per field."""
    t = T.params
    owners = list(owners)
    copies = [owners.count(j) for j in owners]
    fields = {
        "beta0": np.array([t.beta0[j] - math.log(c) for j, c in zip(owners, copies, strict=True)]),
        "beta1": t.beta1[owners].copy(),
        "a": t.a[owners].copy(),
        "b": t.b[owners].copy(),
        "v": t.v[owners].copy(),
    }
    for name, delta in deltas.items():
        fields[name] = fields[name] + np.asarray(delta, dtype=float).reshape(fields[name].shape)
    ref = owners.index(t.ref)
    fields["beta0"][ref] = 0.0
    K = min(t.K + len(owners) - t.k, len(owners))
    return MoEParams(**fields, K=K, ref=ref)


def assert_same(a, b, rtol=1e-12, atol=1e-14):
    np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=rtol, atol=atol)


# -- against the naive reference --------------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_matches_naive_reference_on_random_fits(seed):
    rng = np.random.default_rng(seed)
    k_star = int(rng.integers(1, 5))
    d = int(rng.integers(1, 4))
    truth = random_truth(rng, k_star, d, K=int(rng.integers(1, k_star + 1)))
    extra = int(rng.integers(0, 4))
    if rng.random() < 0.7:  # every true expert owns an atom, plus extras
        owners = list(range(k_star)) + list(rng.integers(0, k_star, extra))
    else:  # arbitrary owners: empty and crowded cells happen
        owners = list(rng.integers(0, k_star, k_star + extra))
    fitted = random_fit(rng, truth, owners, scale=float(rng.choice([0.01, 0.3, 2.0])))

    ref = naive_losses(fitted, truth)
    got = voronoi_losses(fitted, truth)
    assert got.kind == ref["kind"]
    assert got.labels.tolist() == ref["labels"] == naive_cells(fitted, truth)
    assert got.cell_size.tolist() == ref["sizes"]
    assert_same(got.mass, ref["masses"])
    for p, name in enumerate(("beta1", "a", "b", "v")):
        assert_same(got.err[name], [e[p] for e in ref["errs"]], rtol=1e-10)
        assert_same(got.heavy[name], [e[p] for e in ref["heavy"]])
        assert_same(got.umax[name], [e[p] for e in ref["umax"]])
    assert_same(got.wmin, ref["wmin"])
    assert got.max_abs_beta1 == pytest.approx(ref["max_abs_beta1"], rel=1e-12)
    if math.isnan(ref["value"]):
        assert math.isnan(got.value)
        assert got.note != ""
    else:
        assert got.value == pytest.approx(ref["value"], rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("seed", range(20))
def test_sum_of_k_largest_is_the_max_over_k_subsets(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 7))
    terms = rng.exponential(1.0, n)
    for K in range(1, n + 1):
        literal = max(sum(terms[list(L)]) for L in itertools.combinations(range(n), K))
        assert sum_of_k_largest(terms, K) == pytest.approx(literal, rel=1e-13)
    assert sum_of_k_largest(terms, n) == pytest.approx(terms.sum(), rel=1e-13)  # dense: all
    terms[0] = np.nan
    assert math.isnan(sum_of_k_largest(terms, 1))


def test_sum_of_k_largest_rejects_bad_K():
    with pytest.raises(ValueError, match=r"^K: must satisfy 1 <= K <= 3, got 4"):
        sum_of_k_largest([1.0, 2.0, 3.0], 4)


# -- Voronoi cells ---------------------------------------------------------------------------


def test_cells_ties_go_to_the_lowest_true_index():
    assert voronoi_cells([[1.0, 0.0]], [[0.0, 0.0], [2.0, 0.0]]).tolist() == [0]
    assert voronoi_cells([[1.0, 0.0]], [[2.0, 0.0], [0.0, 0.0]]).tolist() == [0]
    assert voronoi_cells([[1.9, 0.0], [0.2, 0.0]], [[0.0, 0.0], [2.0, 0.0]]).tolist() == [1, 0]


def test_cell_sizes_count_atoms_per_true_expert():
    assert cell_sizes([0, 2, 0, 0], 4).tolist() == [3, 0, 1, 0]


def test_cells_validate_shapes():
    with pytest.raises(ValueError, match=r"^fitted_atoms: has 3 coordinates per atom"):
        voronoi_cells(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"^true_atoms: expected a non-empty"):
        voronoi_cells(np.zeros((2, 3)), np.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"^fitted_atoms: expected a non-empty"):
        voronoi_cells(np.zeros(3), np.zeros((2, 3)))


def test_rbar_values_and_validation():
    assert [rbar(m) for m in (1, 2, 3, 4, 7)] == [1, 4, 6, None, None]
    with pytest.raises(ValueError, match=r"^m: the number of atoms in a cell must be an integer"):
        rbar(0)


# -- hand-built cases ------------------------------------------------------------------------


def test_fit_equal_to_truth_has_zero_losses():
    out = compute_metrics(T.params, T.params, T.inputs)
    assert out["D1"] == 0.0
    assert out["hellinger"] < 1e-12 and out["tv"] < 1e-12
    for j in (1, 2, 3):
        for key in ("err_beta1", "err_a", "err_b", "err_v", "mass"):
            assert out[f"{key}_{j}"] == 0.0
        assert out[f"cell_size_{j}"] == 1.0
    assert out["loss_note"] == ""


def test_d1_is_linear_in_one_intercept_with_slope_exp_beta0():
    # b of spec expert 1 (beta0* = 0.5), a singly fitted expert: D1 = exp(0.5) |delta|
    for delta in (1e-4, 0.01, 0.3, -0.2):
        out = compute_metrics(fit_T(b=[delta, 0.0, 0.0]), T.params, T.inputs)
        assert out["D1"] == pytest.approx(math.exp(0.5) * abs(delta), rel=1e-12)
        assert out["err_b_1"] == pytest.approx(abs(delta), rel=1e-12)
        assert out["err_b_2"] == 0.0 and out["mass_1"] == 0.0
        assert out["hellinger"] > 0 and out["tv"] > 0


def test_k_subset_max_drops_the_smallest_term():
    # terms: expert 1: e^0.5 * 0.1 = 0.1649, expert 2 (ref): 1 * 0.3, expert 3: e^1 * 0.05 = 0.136
    fitted = fit_T(b=[0.1, 0.3, 0.05])
    out = compute_metrics(fitted, T.params, T.inputs)
    expected = math.exp(0.5) * 0.1 + 0.3  # K = 2: experts 1 and 2, not 3
    assert out["D1"] == pytest.approx(expected, rel=1e-12)
    assert out["D1"] < math.exp(0.5) * 0.1 + 0.3 + math.exp(1.0) * 0.05
    # dense truth (K = k* = 3): the sum over all experts
    dense = T.params.replace(K=3)
    dense_fit = fitted.replace(K=3)
    full = math.exp(0.5) * 0.1 + 0.3 + math.exp(1.0) * 0.05
    assert voronoi_losses(dense_fit, dense).value == pytest.approx(full, rel=1e-12)
    # K = 1: only the largest term
    assert voronoi_losses(fitted, T.params.replace(K=1)).value == pytest.approx(0.3, rel=1e-12)


def test_duplicated_atom_uses_rbar2_exponents_hand_computed():
    t = T.params
    # atoms 0 and 3 share spec expert 1; weights exp(beta0) = 1.0 and 0.5
    beta0 = [0.0, 0.0, t.beta0[2], math.log(0.5)]
    fitted = MoEParams(
        beta0=beta0,
        beta1=[[-5.0 + 0.1], [0.0], [-10.0], [-5.0 - 0.2]],
        a=[[1.0 + 0.2], [-1.0], [1.0], [1.0 + 0.1]],
        b=[0.0 - 0.1, 3.0, -3.0, 0.0 + 0.3],
        v=[0.2 + 0.04, 0.3, 0.25, 0.2 - 0.01],
        K=3,
        ref=1,
    )
    # r = rbar(2) = 4: |Dbeta1|^4 + |Da|^2 + |Db|^4 + |Dv|^2 per atom, weighted
    t1 = 1.0 * (0.1**4 + 0.2**2 + 0.1**4 + 0.04**2) + 0.5 * (0.2**4 + 0.1**2 + 0.3**4 + 0.01**2)
    assert t1 == pytest.approx(0.0517, rel=1e-12)  # = 0.0418 + 0.5 * 0.0198
    m1 = abs(1.5 - math.exp(0.5))
    out = compute_metrics(fitted, t, T.inputs)
    assert set(out) == set(metric_keys(3, "D2"))
    assert out["D2"] == pytest.approx(t1 + m1, rel=1e-10)
    assert out["cell_size_1"] == 2.0 and out["cell_size_2"] == 1.0 and out["cell_size_3"] == 1.0
    assert out["mass_1"] == pytest.approx(m1, rel=1e-12)
    # headline errors: weighted power means, s = rbar(2) = 4 for beta1 and b, 2 for a and v
    assert out["err_beta1_1"] == pytest.approx((6e-4) ** 0.25, rel=1e-10)  # (1e-4+.5*16e-4)/1.5
    assert out["err_a_1"] == pytest.approx(0.03**0.5, rel=1e-10)  # (0.04 + 0.5 * 0.01) / 1.5
    assert out["err_b_1"] == pytest.approx((4.15e-3 / 1.5) ** 0.25, rel=1e-10)
    assert out["err_v_1"] == pytest.approx(0.0011**0.5, rel=1e-10)  # (16e-4 + .5e-4) / 1.5
    # diagnostics: the heaviest atom (weight 1.0), the unweighted max, the lightest weight
    assert [out[f"heavy_{p}_1"] for p in ("beta1", "a", "b", "v")] == pytest.approx(
        [0.1, 0.2, 0.1, 0.04], rel=1e-10)
    assert [out[f"umax_{p}_1"] for p in ("beta1", "a", "b", "v")] == pytest.approx(
        [0.2, 0.2, 0.3, 0.04], rel=1e-10)
    assert out["wmin_1"] == pytest.approx(0.5, rel=1e-12) and out["wmin_2"] == 1.0
    assert out["ref_atom_cell"] == 2.0 and out["max_abs_beta1"] == pytest.approx(10.0)
    assert out["err_b_2"] == 0.0 and out["mass_3"] == pytest.approx(0.0, abs=1e-15)
    assert out["loss_note"] == ""


def test_three_atoms_use_rbar3_exponents():
    fitted = fit_T(owners=(0, 1, 2, 0, 0), b=[0.1, 0.0, 0.0, -0.2, 0.3], v=[0.02, 0, 0, 0, 0])
    vl = voronoi_losses(fitted, T.params)
    w = math.exp(0.5) / 3  # the mass of expert 1 split in three
    t1 = w * (0.1**6 + 0.02**3) + w * 0.2**6 + w * 0.3**6
    assert vl.cell_size.tolist() == [3, 1, 1]
    assert vl.T[0] == pytest.approx(t1, rel=1e-10)
    assert vl.value == pytest.approx(t1 + vl.mass[0], rel=1e-10)


def test_three_atom_cell_errors_use_s6_and_s3_hand_computed():
    # three atoms on spec expert 1, each weight e^0.5 / 3: s = 6 for beta1 and b, 3 for a and v
    fitted = fit_T(owners=(0, 1, 2, 0, 0), b=[0.1, 0.0, 0.0, -0.2, 0.3],
                   a=[0.1, 0.0, 0.0, 0.0, 0.2])
    out = compute_metrics(fitted, T.params, T.inputs)
    assert out["err_b_1"] == pytest.approx(((0.1**6 + 0.2**6 + 0.3**6) / 3) ** (1 / 6), rel=1e-10)
    assert out["err_a_1"] == pytest.approx(((0.1**3 + 0.2**3) / 3) ** (1 / 3), rel=1e-10)
    assert out["err_beta1_1"] == 0.0 and out["umax_b_1"] == pytest.approx(0.3)
    assert out["heavy_b_1"] == pytest.approx(0.1)  # equal weights: the first atom


def test_fading_atom_leaves_the_weighted_error_to_the_heavy_atom():
    # spec expert 1 fitted by a heavy atom (b off by 0.01) and a light one (b off by 1.0)
    t = T.params
    for log_w, bound in ((-2.0, 0.53), (-8.0, 0.12), (-20.0, 0.0104)):
        fitted = MoEParams(beta0=[0.5, 0.0, 1.0, log_w], beta1=t.beta1[[0, 1, 2, 0]],
                           a=t.a[[0, 1, 2, 0]], b=[0.01, 3.0, -3.0, 1.0],
                           v=t.v[[0, 1, 2, 0]], K=3, ref=1)  # fmt: skip
        out = compute_metrics(fitted, t, T.inputs)
        w1, w2 = math.exp(0.5), math.exp(log_w)
        e = ((w1 * 0.01**4 + w2 * 1.0) / (w1 + w2)) ** 0.25
        assert out["err_b_1"] == pytest.approx(e, rel=1e-10) and e < bound
        assert out["umax_b_1"] == pytest.approx(1.0) and out["heavy_b_1"] == pytest.approx(0.01)
        assert out["wmin_1"] == pytest.approx(w2, rel=1e-12)


def test_power_mean_does_not_overflow_and_validates():
    from simstudy.losses import power_mean

    assert power_mean([800.0, 790.0], [1e200, 1e200], 6) == pytest.approx(1e200)
    assert power_mean([0.0, 0.0], [0.0, 0.0], 4) == 0.0
    assert power_mean([0.0, math.log(3.0)], [2.0, 0.0], 2) == pytest.approx(1.0)  # (4/4)^(1/2)
    assert math.isnan(power_mean([0.0], [math.nan], 1))
    with pytest.raises(ValueError, match="^s: the power must be > 0"):
        power_mean([0.0], [1.0], 0)
    with pytest.raises(ValueError, match="^log_weights: need one weight per value"):
        power_mean([0.0, 1.0], [1.0], 1)


def test_param_exponents():
    from simstudy.losses import param_exponent

    assert [param_exponent(p, 1) for p in ("beta1", "a", "b", "v")] == [1, 1, 1, 1]
    assert [param_exponent(p, 2) for p in ("beta1", "a", "b", "v")] == [4, 2, 4, 2]
    assert [param_exponent(p, 3) for p in ("beta1", "a", "b", "v")] == [6, 3, 6, 3]
    assert param_exponent("a", 4) is None
    with pytest.raises(ValueError, match="^p: unknown parameter 'mass'"):
        param_exponent("mass", 2)


def test_dense_fit_of_a_sparse_truth_is_undefined_with_the_reason():
    # K-bar = k = 4 on design T (K = 2 < k* = 3): slopes diverge, cell losses mean nothing
    fitted = fit_T(owners=(0, 1, 2, 0), beta1=[-0.5, 0.0, -0.3, 0.4]).replace(K=4)
    out = compute_metrics(fitted, T.params, T.inputs)
    assert math.isnan(out["D2"])
    for j in (1, 2, 3):
        for key in ("err_beta1", "err_a", "err_b", "err_v", "mass", "heavy_b", "umax_b", "wmin"):
            assert math.isnan(out[f"{key}_{j}"]), key
    assert "dense fit (K-bar = k = 4) of a sparse truth (K = 2 < k* = 3)" in out["loss_note"]
    assert "gating slopes diverge (max |beta1| = 10.3)" in out["loss_note"]
    assert out["max_abs_beta1"] == pytest.approx(10.3)
    assert out["cell_size_1"] == 2.0  # the realised cells are still recorded
    assert 0.0 < out["hellinger"] < 1.0 and 0.0 < out["tv"] < 1.0
    # the same fit with K-bar = 3 (sparse) is defined
    assert math.isfinite(compute_metrics(fitted.replace(K=3), T.params, T.inputs)["D2"])
    # a dense truth fitted densely is an ordinary (dense) fit
    dense = T.params.replace(K=3)
    assert math.isfinite(compute_metrics(fit_T().replace(K=3), dense, T.inputs)["D1"])


def test_empty_cell_gives_nan_and_reason():
    # k = k* = 3 but two atoms on spec expert 1, none on expert 3
    fitted = fit_T(owners=(0, 1, 0), b=[0.1, 0.0, -0.1])
    out = compute_metrics(fitted, T.params, T.inputs)
    assert math.isnan(out["D1"])
    assert "empty cell: true expert 3 has no fitted atom (D1 undefined)" in out["loss_note"]
    assert out["cell_size_3"] == 0.0 and out["cell_size_1"] == 2.0
    for key in ("err_beta1_3", "err_a_3", "err_b_3", "err_v_3"):
        assert math.isnan(out[key])
    assert out["mass_3"] == pytest.approx(math.exp(1.0), rel=1e-12)  # no mass where it should be
    assert out["err_b_1"] == pytest.approx(0.1, rel=1e-10)
    assert 0.0 < out["hellinger"] <= 1.0 and 0.0 < out["tv"] <= 1.0


def test_four_atom_cell_gives_nan_and_reason():
    fitted = fit_T(owners=(0, 1, 2, 0, 0, 0), b=[0.1, 0.0, 0.0, 0.1, -0.1, 0.2])
    out = compute_metrics(fitted, T.params, T.inputs)
    assert math.isnan(out["D2"])
    assert ("cell of true expert 1 has 4 atoms: rbar(4) is unknown (D2 and its per-parameter "
            "errors undefined)") in out["loss_note"]
    assert out["cell_size_1"] == 4.0
    assert math.isnan(out["err_b_1"])  # no power s without rbar(4)
    assert out["umax_b_1"] == pytest.approx(0.2, rel=1e-10)  # the diagnostics stay defined
    assert out["err_b_2"] == 0.0


def test_reference_cell_with_two_atoms_is_flagged():
    fitted = fit_T(owners=(0, 1, 2, 1), b=[0.0, 0.1, 0.0, -0.1])
    out = compute_metrics(fitted, T.params, T.inputs)
    assert (
        "reference cell: true expert 2 (the reference) holds 2 fitted atoms" in (out["loss_note"])
    )
    assert math.isfinite(out["D2"]) and out["cell_size_2"] == 2.0


def test_fitted_reference_outside_the_reference_cell_is_flagged():
    truth = MoEParams(beta0=[0.3, 0.0], beta1=[[0.5], [0.0]], a=[[5.0], [-5.0]], b=[5.0, -5.0],
                      v=[1.0, 1.0], K=2, ref=1)  # fmt: skip
    # the fitted reference (atom 1, gating pinned at 0) carries expert 1's expert parameters
    fitted = MoEParams(beta0=[0.0, -0.3], beta1=[[0.0], [-0.5]], a=[[5.0], [-5.0]],
                       b=[5.0, -5.0], v=[1.0, 1.0], K=2, ref=0)  # fmt: skip
    vl = voronoi_losses(fitted, truth)
    assert vl.labels.tolist() == [0, 1]
    assert vl.note == (
        "fitted reference atom 1 lies in the cell of true expert 1, not in the reference cell 2"
    )
    assert math.isfinite(vl.value)


def test_degenerate_fit_never_raises():
    t = T.params
    fitted = MoEParams(
        beta0=[800.0, 0.0, -800.0],
        beta1=[[-5.0], [0.0], [1e6]],
        a=[[1.0], [-1.0], [1e8]],
        b=[0.0, 3.0, -3.0],
        v=[1e-12, 0.3, 1e10],
        K=2,
        ref=1,
    )
    out = compute_metrics(fitted, t, T.inputs)
    assert set(out) == set(metric_keys(3, "D1"))
    assert 0.0 <= out["hellinger"] <= 1.0 and 0.0 <= out["tv"] <= 1.0
    assert not math.isnan(out["mass_1"])


# -- compute_metrics contract ----------------------------------------------------------------


@pytest.mark.parametrize("owners, kind", [((0, 1, 2), "D1"), ((0, 1, 2, 0), "D2")])
def test_compute_metrics_keys_and_types(owners, kind):
    out = compute_metrics(fit_T(owners=owners), T.params, T.inputs)
    assert list(out) == metric_keys(3, kind)
    assert all(isinstance(v, float) for k, v in out.items() if k != "loss_note")
    assert isinstance(out["loss_note"], str)


def test_compute_metrics_on_design_S():
    S = get_design("S")
    fitted = S.params.replace(b=S.params.b + [0.05, 0.0])
    out = compute_metrics(fitted, S.params, S.inputs)
    assert list(out) == metric_keys(2, "D1")
    assert out["D1"] == pytest.approx(math.exp(-8.0) * 0.05, rel=1e-12)  # dense: sum over all


def test_metric_keys_rejects_unknown_kind():
    with pytest.raises(ValueError, match=r"^kind: must be 'D1' or 'D2', got 'D3'"):
        metric_keys(3, "D3")


def test_compute_metrics_validates_inputs():
    t = T.params
    two_d = MoEParams(
        beta0=[0.5, 0.0, 1.0],
        beta1=np.zeros((3, 2)) + [[1, 1], [0, 0], [2, 2]],
        a=np.ones((3, 2)),
        b=t.b,
        v=t.v,
        K=2,
        ref=1,
    )
    with pytest.raises(ValueError, match=r"^fitted: input dimension d=2 differs from the truth's"):
        compute_metrics(two_d, t, T.inputs)
    small = MoEParams(beta0=[0.0, 1.0], beta1=[[0.0], [1.0]], a=[[1.0], [1.0]], b=[0, 1],
                      v=[1, 1], K=1, ref=0)  # fmt: skip
    with pytest.raises(ValueError, match=r"^fitted: has k=2 experts, fewer than the truth's k\*=3"):
        compute_metrics(small, t, T.inputs)
    with pytest.raises(ValueError, match=r"^inputs: input law has d=2, the truth has d=1"):
        compute_metrics(t, t, UniformBox(2))
    with pytest.raises(ValueError, match=r"^fitted: expected MoEParams, got dict"):
        compute_metrics(t.to_dict(), t, T.inputs)
    with pytest.raises(ValueError, match=r"^truth: expected MoEParams, got str"):
        compute_metrics(t, "T", T.inputs)
