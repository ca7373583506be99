"""Loss inputs are validated in every direction (found by mutation testing: each check was
tested from one side only)."""

import numpy as np
import pytest

from simstudy.losses import compute_metrics, rbar, voronoi_cells
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
    ],
)
def test_voronoi_cells_refuse_malformed_atoms(fitted, true, msg):
    with pytest.raises(ValueError, match=msg):
        voronoi_cells(fitted, true)


@pytest.mark.parametrize("bad", [True, 2.5, 0, -3])
def test_rbar_refuses_non_integers_and_booleans(bad):
    with pytest.raises(ValueError, match="^m: the number of atoms in a cell"):
        rbar(bad)
