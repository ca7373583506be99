"""The certificate's small decision rules on hand-built cases, each on its boundary (the
divergence probe's thresholds, the box's held coordinates, KKT multipliers, nudges into a
piece): the design-level certificate tests let mutants of these comparisons through."""

import numpy as np
import pytest

from simstudy.estimation.certificate import bound_held, diverging, multipliers, nudges


class FakeLik:
    """Score scale = max |theta| (and max |step|); the log-likelihood is ``level`` everywhere
    off the start; a box [lower, upper]."""

    def __init__(self, level=1.0, lower=None, upper=None):
        self.level = level
        self.lower, self.upper = lower, upper

    def sharpness(self, theta):
        return float(np.max(np.abs(theta)))

    def score_scale(self, s):
        return float(np.max(np.abs(s)))

    def loglik(self, theta):
        return self.level


H = -np.eye(2)  # Jacobi-scaled Newton step = the gradient itself


def probe(theta, g, level=1.0, l0=0.0, min_score=1.0):
    return diverging(FakeLik(level), np.asarray(theta, float), l0, np.asarray(g, float), H,
                     min_score)


def test_probe_says_diverging_when_a_long_uphill_step_sharpens_the_gates():
    assert probe([5.0, 0.0], [10.0, 0.0]) is True


def test_no_probe_at_or_below_the_minimum_score_scale():
    assert probe([1.0, 0.0], [10.0, 0.0]) is False  # exactly min_score: not probed
    assert probe([0.5, 0.0], [10.0, 0.0]) is False


def test_beyond_a_hundred_times_the_minimum_scale_no_probe_is_needed():
    assert probe([100.5, 0.0], [0.0, 0.0]) is True
    # exactly 100 x min_score: still probed, and this short step says no
    assert probe([100.0, 0.0], [0.5, 0.0]) is False


def test_a_step_of_at_most_one_score_unit_is_not_divergence():
    assert probe([5.0, 0.0], [0.0, 1.0]) is False  # exactly one unit
    assert probe([5.0, 0.0], [0.0, 1.5]) is False  # longer, but does not sharpen (below)


def test_a_step_that_does_not_sharpen_the_gates_is_not_divergence():
    assert probe([5.0, 0.0], [0.0, 3.0]) is False  # sharpness stays 5
    assert probe([5.0, 0.0], [-3.0, 0.0]) is False  # sharpness falls to 2


def test_a_step_that_does_not_raise_l_is_not_divergence():
    assert probe([5.0, 0.0], [10.0, 0.0], level=0.0) is False  # equal to l0
    assert probe([5.0, 0.0], [10.0, 0.0], level=-1.0) is False
    assert probe([5.0, 0.0], [10.0, 0.0], level=np.inf) is False  # non-finite


def test_bound_held_only_where_the_gradient_points_out_of_the_box():
    lik = FakeLik(lower=np.array([-1.0, -1.0, -1.0, -1.0]), upper=np.array([1.0, 1.0, 1.0, 1.0]))
    theta = np.array([-1.0, -1.0, 1.0, 0.0])
    g = np.array([-2.0, 0.0, 3.0, 5.0])
    assert bound_held(lik, theta, g).tolist() == [True, False, True, False]
    assert bound_held(lik, theta, -g).tolist() == [False, False, False, False]


def test_multipliers_solve_the_kkt_system_on_the_free_coordinates():
    g = np.array([2.0, 3.0, -1.0])
    lam, res = multipliers(np.zeros((0, 3)), g, np.zeros(3, bool))
    assert lam.shape == (0,) and res.tolist() == g.tolist()
    normals = np.array([[1.0, 0.0, 0.0]])
    lam, res = multipliers(normals, g, np.zeros(3, bool))
    assert lam == pytest.approx([-2.0]) and res == pytest.approx([0.0, 3.0, -1.0])
    lam, res = multipliers(normals, g, np.array([False, False, True]))
    assert res == pytest.approx([0.0, 3.0])


def test_nudges_step_into_the_piece_from_its_end_and_keep_the_end_last():
    lik = FakeLik()
    theta, delta = np.array([2.0]), np.array([1.0])
    assert nudges(lik, theta, delta, 0.5, 0.5, 0.5) == [0.5]  # empty piece
    assert nudges(lik, theta, delta, 0.7, 0.5, 1.0) == [0.7]  # not an end
    lo = nudges(lik, theta, delta, 0.5, 0.5, 1.0)
    assert lo[-1] == 0.5 and all(0.5 < t < 1.0 for t in lo[:-1])
    assert lo[0] == pytest.approx(0.5 + 2e-10) and lo[1] == pytest.approx(0.5 + 0.5e-6)
    hi = nudges(lik, theta, delta, 1.0, 0.5, 1.0)
    assert hi[-1] == 1.0 and all(0.5 < t < 1.0 for t in hi[:-1])
    assert hi[2] == pytest.approx(1.0 - 0.5e-3)
