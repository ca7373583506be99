"""The line-scan kernels and the exact scan against the references of tests/naive_scan.py."""

import numpy as np
import pytest

from simstudy.estimation import scan
from simstudy.model import kernels_scan
from tests import naive, naive_scan

CASES = [(1, 2, 1), (1, 3, 2), (1, 4, 3), (2, 3, 2), (2, 4, 2), (3, 5, 3), (2, 3, 3), (1, 4, 4)]


def problem(d, k, K, n=60, seed=0):
    rng = np.random.default_rng(1000 * d + 10 * k + K + seed)
    ref = int(rng.integers(k))
    params = naive.random_params(rng, k, d, ref=ref)
    X = rng.uniform(-1, 1, (n, d))
    y = rng.normal(0, 2, n)
    dbeta1 = rng.normal(0, 1, (k, d))
    dbeta0 = rng.normal(0, 0.5, k)
    dbeta1[ref] = 0.0
    dbeta0[ref] = 0.0
    return X, y, params, dbeta0, dbeta1


@pytest.mark.parametrize("d,k,K", CASES)
def test_selection_mask_matches_sorting(d, k, K):
    rng = np.random.default_rng(k + K)
    for _ in range(50):
        s = rng.integers(-2, 3, k).astype(float)  # many exact ties: the lower index wins
        want = naive_scan.mask_bits(naive.active(np.ones((1, 1)), s[:, None], K)[0])
        assert kernels_scan.selection_mask(s, K) == want


@pytest.mark.parametrize("d,k,K", CASES)
def test_line_breaks_match_reference(d, k, K):
    X, _, (beta0, beta1, a, b, v), dbeta0, dbeta1 = problem(d, k, K)
    t_lo, t_hi = -0.7, 0.4
    got, passes = scan.list_events(X, beta1, dbeta1, K, t_lo, t_hi)
    pt, t, side, before, after = got
    mine = {(int(p), int(sd), round(float(tt), 9), int(bb), int(aa))
            for p, tt, sd, bb, aa in zip(pt, t, side, before, after, strict=True)}
    want = naive_scan.events(X, beta1, dbeta1, K, t_lo, t_hi)
    assert mine == want
    assert len(mine) == pt.size  # no duplicates
    if K == k:
        assert pt.size == 0  # dense gating: nothing is ever unselected
    else:
        assert pt.size > 0  # the interval is long enough to cross boundaries


def test_line_breaks_capacity_is_grown():
    X, _, (beta0, beta1, a, b, v), dbeta0, dbeta1 = problem(2, 4, 2, n=400)
    ev = [np.empty(1, dtype=np.int64), np.empty(1), np.empty(1, dtype=np.int8),
          np.empty(1, dtype=np.int64), np.empty(1, dtype=np.int64)]
    count = kernels_scan.line_breaks(X, beta1, dbeta1, 2, -1.0, 1.0, *ev)
    got, passes = scan.list_events(X, beta1, dbeta1, 2, -1.0, 1.0)
    assert count > 1 and got[0].size == count


@pytest.mark.parametrize("d,k,K", CASES)
def test_line_nodes_and_events_match_reference(d, k, K):
    X, y, params, dbeta0, dbeta1 = problem(d, k, K)
    nodes = np.array([-0.3, -0.01, 0.0, 0.02, 0.25])
    out = np.empty(nodes.size)
    l0 = kernels_scan.line_nodes(X, y, *params, K, dbeta0, dbeta1, nodes, out)
    mask0 = naive.active(X, params[1], K)
    base = naive_scan.line_loglik(X, y, params, dbeta0, dbeta1, 0.0, K, mask0)
    assert l0 == pytest.approx(naive.loglik(X, y, *params, K), rel=1e-12)
    want = [naive_scan.line_loglik(X, y, params, dbeta0, dbeta1, t, K, mask0) - base
            for t in nodes]
    np.testing.assert_allclose(out, want, rtol=1e-9, atol=1e-9)

    (pt, t, side, before, after), _ = scan.list_events(X, params[1], dbeta1, K, -0.7, 0.4)
    ev = np.empty((pt.size, nodes.size))
    kernels_scan.line_events(X, y, *params, dbeta0, dbeta1, nodes, pt, before, after, ev)
    for q in range(pt.size):
        x, yy = X[pt[q] : pt[q] + 1], y[pt[q] : pt[q] + 1]
        for m, tm in enumerate(nodes):
            ma = naive_scan.mask_array(int(after[q]), 1, k)
            mb = naive_scan.mask_array(int(before[q]), 1, k)
            want = (naive_scan.line_loglik(x, yy, params, dbeta0, dbeta1, tm, K, ma)
                    - naive_scan.line_loglik(x, yy, params, dbeta0, dbeta1, tm, K, mb))
            assert ev[q, m] == pytest.approx(want, rel=1e-9, abs=1e-9)


def test_line_nodes_survive_underflowing_densities():
    """A point far out in y with tiny variances and logits 800 apart: the weighted densities
    all underflow in the fast path; the full log-sum-exp path must give the right value."""
    X = np.array([[0.3], [-0.5], [0.8]])
    y = np.array([0.1, -0.2, 30.0])
    params = (np.array([0.0, 400.0, -400.0]), np.array([[0.0], [1.0], [2.0]]),
              np.array([[0.0], [0.5], [1.0]]), np.array([0.0, 1.0, 25.0]),
              np.array([1e-4, 1e-4, 1e-4]))
    dbeta0, dbeta1 = np.array([0.0, 0.3, -0.2]), np.array([[0.0], [0.5], [1.0]])
    nodes = np.array([-0.1, 0.1])
    out = np.empty(2)
    l0 = kernels_scan.line_nodes(X, y, *params, 3, dbeta0, dbeta1, nodes, out)
    assert np.isfinite(l0) and np.all(np.isfinite(out))
    assert l0 == pytest.approx(naive.loglik(X, y, *params, 3), rel=1e-12)
    mask0 = naive.active(X, params[1], 3)
    base = naive_scan.line_loglik(X, y, params, dbeta0, dbeta1, 0.0, 3, mask0)
    want = [naive_scan.line_loglik(X, y, params, dbeta0, dbeta1, t, 3, mask0) - base
            for t in nodes]
    np.testing.assert_allclose(out, want, rtol=1e-9, atol=1e-12 * abs(l0))


@pytest.mark.parametrize("d,k,K", [(1, 3, 2), (2, 3, 2), (2, 4, 3), (3, 4, 2)])
def test_boundary_pairs_find_points_on_boundaries(d, k, K):
    X, _, (beta0, beta1, a, b, v), _, _ = problem(d, k, K, n=30)
    # put point 0 exactly on a boundary: its K-th and (K+1)-th scores equal
    s = beta1 @ X[0]
    order = np.argsort(-s, kind="stable")
    i, j = order[K - 1], order[K]
    beta1 = beta1.copy()
    ref = int(np.flatnonzero(np.all(beta1 == 0, axis=1))[0])
    mover = j if j != ref else i
    other = i if mover == j else j
    # shift the mover's slope along x_0 so that its score equals the other's
    x0 = X[0]
    beta1[mover] += (s[other] - s[mover]) * x0 / (x0 @ x0)
    out = [np.empty(64, dtype=np.int64) for _ in range(3)]
    count = kernels_scan.boundary_pairs(X, beta1, K, 1e-12, *out)
    pts = set(out[0][:count].tolist())
    assert 0 in pts
    sel = naive.active(X, beta1, K)
    for q in range(count):
        p, ii, jj = out[0][q], out[1][q], out[2][q]
        assert sel[p, ii] and not sel[p, jj]
        assert beta1[ii] @ X[p] - beta1[jj] @ X[p] <= 1e-12


@pytest.mark.parametrize("d,k,K", [(1, 3, 2), (2, 3, 2), (2, 4, 2), (1, 4, 3)])
def test_scan_line_finds_the_maximum_of_the_piecewise_function(d, k, K):
    X, y, params, dbeta0, dbeta1 = problem(d, k, K, n=80, seed=3)
    t_lo, t_hi = -0.3, 0.3
    tol = 1e-8
    res = scan.scan_line(X, y, params, (dbeta0, dbeta1), K, t_lo, t_hi, tol, force=True)
    best, t_best = naive_scan.brute_force_max(X, y, params, dbeta0, dbeta1, K, t_lo, t_hi)
    # never below the brute force (which samples a grid and both sides of every breakpoint)
    assert res.gain_best >= best - 1e-6
    assert res.gain_best <= best + 1e-6 + 1e-3 * abs(best)  # and not a phantom value
    assert res.cleared == (res.gain_best <= tol)
    assert res.n_events == len(naive_scan.events(X, params[1], dbeta1, K, t_lo, t_hi))
    # the reported piece's limit is attained just inside the piece
    lo, hi = res.piece
    inside = min(max(res.t_best, lo + 1e-9 * (hi - lo)), hi - 1e-9 * (hi - lo))
    l0 = naive_scan.line_loglik(X, y, params, dbeta0, dbeta1, 0.0, K)
    got = naive_scan.line_loglik(X, y, params, dbeta0, dbeta1, inside, K) - l0
    assert got == pytest.approx(res.gain_best, abs=1e-6)


def test_scan_line_clears_a_line_through_a_maximum():
    """At the maximum over a line of the function itself, the scan must clear; shifted off it
    by a known amount, it must find the gain back."""
    X, y, params, dbeta0, dbeta1 = problem(2, 3, 2, n=80, seed=4)
    res = scan.scan_line(X, y, params, (dbeta0, dbeta1), 2, -0.3, 0.3, 1e-8, force=True)
    beta0, beta1, a, b, v = params
    lo, hi = res.piece
    t = min(max(res.t_best, lo + 1e-9 * (hi - lo)), hi - 1e-9 * (hi - lo))
    at_max = (beta0 + t * dbeta0, beta1 + t * dbeta1, a, b, v)
    again = scan.scan_line(X, y, at_max, (dbeta0, dbeta1), 2, -0.3 - t, 0.3 - t, 1e-6,
                           force=True)
    assert again.cleared and again.gain_best <= 1e-6
    assert res.gain_best > 1e-3  # the test point was not already at the maximum


def test_scan_line_without_events_is_smooth():
    X, y, params, dbeta0, dbeta1 = problem(1, 3, 3, n=40)
    res = scan.scan_line(X, y, params, (dbeta0, dbeta1), 3, -0.1, 0.1, 1e-8)
    assert res.smooth and res.n_events == 0 and res.n_passes == 1


def test_chebyshev_helpers_interpolate_polynomials_exactly():
    nodes = scan.lobatto_nodes(-0.2, 0.5, 9)
    f = 3 - 2 * nodes + 5 * nodes**3 - nodes**8
    coef = scan.cheb_coefficients(f)
    xs = np.linspace(-0.2, 0.5, 7)
    got = scan.cheb_values(np.tile(coef, (7, 1)), (xs - 0.15) / 0.35)
    np.testing.assert_allclose(got, 3 - 2 * xs + 5 * xs**3 - xs**8, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("d,k,K", CASES + [(2, 3, 1)])
def test_smoothed_loglik_and_gradient_match_reference(d, k, K):
    X, y, params, _, _ = problem(d, k, K, n=50, seed=5)
    ref = int(np.flatnonzero(np.all(params[1] == 0, axis=1) & (params[0] == 0))[0])
    tau = 0.2
    g = np.zeros(naive.pack(*params, ref).size)
    ll = kernels_scan.smooth_loglik_grad(X, y, *params, K, ref, tau, g)
    assert ll == pytest.approx(naive_scan.smooth_loglik(X, y, *params, K, tau), rel=1e-12)
    theta = naive.pack(*params, ref)
    fd = np.zeros_like(theta)
    for u in range(theta.size):
        tp, tm = theta.copy(), theta.copy()
        tp[u] += 1e-6
        tm[u] -= 1e-6
        fd[u] = (naive_scan.smooth_loglik(X, y, *naive.unpack(tp, k, d, ref), K, tau)
                 - naive_scan.smooth_loglik(X, y, *naive.unpack(tm, k, d, ref), K, tau)) / 2e-6
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-6)


def test_smoothed_loglik_tends_to_the_hard_one():
    X, y, params, _, _ = problem(2, 4, 2, n=200, seed=6)
    hard = naive.loglik(X, y, *params, 2)
    gaps = [abs(naive_scan.smooth_loglik(X, y, *params, 2, tau) - hard)
            for tau in (0.3, 0.03, 0.003, 3e-5)]
    assert gaps[-1] < 1e-2 and all(a >= b for a, b in zip(gaps, gaps[1:], strict=False))
