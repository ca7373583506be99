"""Loss inputs are validated in every direction, and the Voronoi loss's notes and per-cell
terms hold on odd fits (found by mutation testing: each check was tested from one side only)."""

import dataclasses

import numpy as np
import pytest

from simstudy.losses import compute_metrics, rbar, sum_of_k_largest, voronoi_cells, voronoi_losses
from simstudy.model import MoEParams, UniformBox, get_design

T = get_design("T")


def test_input_law_dimension_must_match_the_truth():
    with pytest.raises(ValueError, match=r"^inputs: input law has d=2, the truth has d=1"):
        compute_metrics(T.params, T.params, UniformBox(2))
    t2 = MoEParams(beta0=[0.0], beta1=[[0.0, 0.0]], a=[[1.0, 1.0]], b=[0.0], v=[1.0], K=1)
    with pytest.raises(ValueError, match=r"^inputs: input law has d=1, the truth has d=2"):
        compute_metrics(t2, t2, UniformBox(1))
    assert compute_metrics(t2, t2, UniformBox(2), m=4)["hellinger"] == 0.0


@pytest.mark.parametrize(
    ("fitted", "true", "msg"),
    [
        (np.zeros((2, 3, 1)), np.zeros((2, 3)), "^fitted_atoms: expected a non-empty"),
        (np.zeros((0, 3)), np.zeros((2, 3)), "^fitted_atoms: expected a non-empty"),
        (np.zeros((2, 3)), np.zeros(3), "^true_atoms: expected a non-empty"),
        (np.zeros((2, 3)), np.zeros((2, 3, 1)), "^true_atoms: expected a non-empty"),
        (np.zeros((2, 3)), np.zeros((0, 3)), "^true_atoms: expected a non-empty"),
        (np.zeros((2, 4)), np.zeros((2, 3)),
         "^fitted_atoms: has 4 coordinates per atom, true_atoms has 3$"),
    ],
)
def test_voronoi_cells_refuse_malformed_atoms(fitted, true, msg):
    with pytest.raises(ValueError, match=msg):
        voronoi_cells(fitted, true)


@pytest.mark.parametrize("bad", [True, 2.5, 0, -3])
def test_rbar_refuses_non_integers_and_booleans(bad):
    with pytest.raises(ValueError, match="^m: the number of atoms in a cell"):
        rbar(bad)


def test_fit_and_truth_dimensions_must_match_both_ways():
    t2 = MoEParams(beta0=[0.0], beta1=[[0.0, 0.0]], a=[[1.0, 1.0]], b=[0.0], v=[1.0], K=1)
    one = MoEParams(beta0=[0.0], beta1=[[0.0]], a=[[1.0]], b=[0.0], v=[1.0], K=1)
    with pytest.raises(ValueError, match=r"^fitted: input dimension d=1 differs .* d=2"):
        voronoi_losses(one, t2)
    with pytest.raises(ValueError, match=r"^fitted: input dimension d=2 differs .* d=1"):
        voronoi_losses(t2, one)


def test_sum_of_k_largest_bounds():
    assert sum_of_k_largest([3.0, 1.0, 2.0], 1) == 3.0
    assert sum_of_k_largest([3.0, 1.0, 2.0], 3) == 6.0
    for bad in (0, 4):
        with pytest.raises(ValueError, match=r"^K: must satisfy 1 <= K <= 3"):
            sum_of_k_largest([3.0, 1.0, 2.0], bad)


def fit(atoms, ref):
    """A fitted design-T-like model with the given atoms (beta1, a, b, v) and reference."""
    atoms = np.asarray(atoms, dtype=float)
    beta1 = atoms[:, :1].copy()
    beta0 = np.zeros(len(atoms))
    beta1[ref] = 0.0
    return MoEParams(beta0=beta0, beta1=beta1, a=atoms[:, 1:2], b=atoms[:, 2], v=atoms[:, 3],
                     K=2, ref=ref)


def test_exact_fit_with_a_doubled_and_an_empty_cell():
    """k = k* = 3 with two atoms near true expert 1, none near the reference expert 2: D1
    keeps the plain per-cell term (no rbar exponents, even for the doubled cell), is undefined
    (an empty cell), and the notes say so without claiming the empty reference cell holds
    several atoms."""
    fitted = fit([[-5, 1, 0, 0.2], [0, 5, 0, 0.2], [-10, 1, -3, 0.25]], ref=1)
    vl = voronoi_losses(fitted, T.params)
    assert vl.kind == "D1" and vl.labels.tolist() == [0, 0, 2]
    assert vl.cell_size.tolist() == [2, 0, 1]
    np.testing.assert_allclose(vl.T[[0, 2]], vl.E1[[0, 2]])
    assert np.isnan(vl.value)
    notes = " | ".join(vl.notes)
    assert "empty cell: true expert 2 has no fitted atom" in notes
    assert "holds" not in notes  # the reference cell is empty, not crowded
    assert "fitted reference atom 2 lies in the cell of true expert 1" in notes


def test_fitted_reference_atom_in_a_higher_cell_is_noted():
    """The fitted reference atom (gating 0) sits in the cell of true expert 3 (above the true
    reference 2): noted like a lower one."""
    fitted = fit([[-5, 1, 0, 0.2], [0, 1, -30, 0.25], [0, -1, 3, 0.3]], ref=1)
    vl = voronoi_losses(fitted, T.params)
    assert vl.labels.tolist() == [0, 2, 1]
    assert any("fitted reference atom 2 lies in the cell of true expert 3, not in the "
               "reference cell 2" in n for n in vl.notes), vl.notes
    with pytest.raises(dataclasses.FrozenInstanceError):
        vl.value = 0.0


def test_distance_arguments_at_their_boundaries():
    from simstudy.losses import density_distances_at, input_sample

    assert input_sample(T.inputs, 1).shape == (1, 1)  # m = 1 is allowed
    t = T.params
    X = np.zeros((1, 1))
    h, tv = density_distances_at(t, t, X, nodes=2)  # the fewest nodes allowed
    assert h[0] == 0.0 and tv[0] == 0.0
    for bad in (True, 1, 2.5):
        with pytest.raises(ValueError, match="^nodes: Gauss-Legendre nodes per panel must be"):
            density_distances_at(t, t, X, nodes=bad)
    t2 = MoEParams(beta0=[0.0], beta1=[[0.0, 0.0]], a=[[1.0, 1.0]], b=[0.0], v=[1.0], K=1)
    with pytest.raises(ValueError, match=r"^fitted: input dimension d=1 differs .* d=2"):
        density_distances_at(t, t2, np.zeros((1, 2)))
