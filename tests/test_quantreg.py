"""The exact quantile-regression line of the bootstrap, against slow references."""

import numpy as np
import pytest
import statsmodels.api as sm

from simstudy.reports.quantreg import boot_rng, check_loss, qr_line, stratified_indices
from tests.naive_rates import bisection_line, brute_force_line
from tests.naive_rates import check_loss as naive_check_loss


def design(rng, levels=5, reps=4, slope=-0.3, df=3):
    n = np.repeat(np.geomspace(1e3, 1e5, levels), reps)
    x = np.log(n)
    y = 1.0 + slope * x + 0.5 * rng.standard_t(df, size=x.size)
    return x, y


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("q", [0.5, 0.9, 0.25])
def test_matches_brute_force_over_pairs_of_points(seed, q):
    rng = np.random.default_rng(seed)
    x, y = design(rng, levels=int(rng.integers(2, 6)), reps=int(rng.integers(1, 6)))
    best, _, _ = brute_force_line(x, y, q)
    a, b = qr_line(x, y, q)
    assert naive_check_loss(x, y, a, b, q) == pytest.approx(best, rel=1e-10, abs=1e-12)
    assert check_loss(x, y, a, b, q) == pytest.approx(naive_check_loss(x, y, a, b, q))


@pytest.mark.parametrize("seed", range(5))
def test_matches_plain_bisection_and_statsmodels_on_study_sized_data(seed):
    rng = np.random.default_rng(100 + seed)
    x, y = design(rng, levels=24, reps=40)
    for q in (0.5, 0.9):
        a, b = qr_line(x, y, q)
        a0, b0 = bisection_line(x, y, q)
        res = sm.QuantReg(y, sm.add_constant(x)).fit(q=q)
        f = check_loss(x, y, a, b, q)
        assert f <= check_loss(x, y, a0, b0, q) + 1e-9
        assert f <= check_loss(x, y, *res.params, q) + 1e-9
        # the optimum is unique here: the slopes agree
        assert b == pytest.approx(b0, abs=1e-6) and b == pytest.approx(res.params[1], abs=1e-4)


def test_rows_are_solved_independently_and_duplicates_are_fine():
    rng = np.random.default_rng(7)
    x, y = design(rng, levels=6, reps=8)
    groups = [np.flatnonzero(x == v) for v in np.unique(x)]
    idx = stratified_indices(groups, 30, rng)
    A, B = qr_line(x[idx[0]], y[idx], 0.5)
    for r in (0, 11, 29):  # resamples carry duplicated points
        best, _, _ = brute_force_line(x[idx[r]], y[idx[r]], 0.5)
        assert check_loss(x[idx[r]], y[idx[r]], A[r], B[r], 0.5) == pytest.approx(best,
                                                                                 rel=1e-10)


def test_far_start_is_bracketed():
    rng = np.random.default_rng(3)
    x, y = design(rng, levels=5, reps=5, slope=4.0)
    best, _, _ = brute_force_line(x, y, 0.5)
    a, b = qr_line(x, y, 0.5, start=-30.0, width=0.01)  # 34 away: the bracket must double
    assert check_loss(x, y, a, b, 0.5) == pytest.approx(best, rel=1e-10)
    assert b > 3.0


def test_validation():
    x = np.log([1e3, 1e3, 1e4])
    with pytest.raises(ValueError, match=r"^Y: need shape \(B, 3\)"):
        qr_line(x, np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"^q: the quantile must lie in \(0, 1\)"):
        qr_line(x, np.zeros(3), q=1.0)
    with pytest.raises(ValueError, match="^Y: abscissae and responses must be finite"):
        qr_line(x, [0.0, np.nan, 1.0])
    with pytest.raises(ValueError, match="^x: need at least two distinct abscissae"):
        qr_line(np.zeros(3), np.arange(3.0))
    with pytest.raises(RuntimeError, match="did not converge"):
        qr_line(x, [0.0, 1.0, 2.0], max_steps=2)


def test_stratified_indices_keep_every_stratum_and_are_reproducible():
    groups = [np.array([0, 1, 2]), np.array([3, 4]), np.array([], dtype=int), np.array([5])]
    a = stratified_indices(groups, 50, boot_rng(1, "s", "m"))
    b = stratified_indices(groups, 50, boot_rng(1, "s", "m"))
    c = stratified_indices(groups, 50, boot_rng(1, "s", "other"))
    assert a.shape == (50, 6) and np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.isin(a[:, :3], [0, 1, 2]).all() and np.isin(a[:, 3:5], [3, 4]).all()
    assert (a[:, 5] == 5).all()
    assert len(np.unique(a[:, 0])) == 3  # draws with replacement cover the stratum
    with pytest.raises(ValueError, match="^n_boot: need an integer >= 1"):
        stratified_indices(groups, 0, boot_rng(0))
