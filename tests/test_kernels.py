"""Every numba kernel against the plain-numpy references of tests/naive.py."""

import numpy as np
import pytest

from simstudy.model import kernels
from tests import naive

CASES = [(d, k, K) for d in (1, 2, 3) for k in range(1, 6) for K in range(1, k + 1)]
N = 40


def data(seed, k, d, n=N):
    rng = np.random.default_rng(seed)
    ref = int(rng.integers(k))
    params = naive.random_params(rng, k, d, ref=ref)
    X = rng.uniform(-1, 1, (n, d))
    y = rng.normal(0, 2, n)
    return X, y, params, ref


def seed_of(d, k, K):
    return 1000 * d + 10 * k + K


@pytest.mark.parametrize("d,k,K", CASES)
def test_topk_and_loglik_match_naive(d, k, K):
    X, y, (beta0, beta1, a, b, v), _ = data(seed_of(d, k, K), k, d)
    mask = np.zeros((N, k), dtype=bool)
    kernels.topk_mask(X, beta1, K, mask)
    np.testing.assert_array_equal(mask, naive.active(X, beta1, K))
    assert np.all(mask.sum(axis=1) == K)
    out = np.empty(N)
    kernels.log_density_points(X, y, beta0, beta1, a, b, v, K, out)
    ref_ld = naive.log_density(X, y, beta0, beta1, a, b, v, K)
    np.testing.assert_allclose(out, ref_ld, rtol=1e-12, atol=1e-12)
    ll = kernels.loglik(X, y, beta0, beta1, a, b, v, K)
    assert ll == pytest.approx(ref_ld.sum(), rel=1e-12)


@pytest.mark.parametrize("d,k,K", CASES)
def test_e_step_and_statistics_match_naive(d, k, K):
    X, y, (beta0, beta1, a, b, v), ref = data(seed_of(d, k, K) + 1, k, d)
    R = np.empty((N, k))
    mask = np.empty((N, k), dtype=bool)
    ll = kernels.e_step(X, y, beta0, beta1, a, b, v, K, R, mask)
    R0, mask0, ll0 = naive.e_step(X, y, beta0, beta1, a, b, v, K)
    np.testing.assert_array_equal(mask, mask0)
    np.testing.assert_allclose(R, R0, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(R.sum(axis=1), 1.0, rtol=1e-12)
    assert ll == pytest.approx(ll0, rel=1e-12)

    p = d + 1
    XtX, Xty, sr, syy = np.empty((k, p, p)), np.empty((k, p)), np.empty(k), np.empty(k)
    kernels.expert_stats(X, y, R, XtX, Xty, sr, syy)
    for got, want in zip((XtX, Xty, sr, syy), naive.expert_stats(X, y, R0), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)

    ng = (k - 1) * p
    g, H = np.empty(ng), np.empty((ng, ng))
    Q = kernels.gating_grad_hess(X, R, mask, beta0, beta1, ref, g, H)
    g0, H0, Q0 = naive.gating_grad_hess(X, R0, mask0, beta0, beta1, ref)
    np.testing.assert_allclose(g, g0, rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(H, H0, rtol=1e-10, atol=1e-11)
    assert Q == pytest.approx(Q0, rel=1e-10, abs=1e-10)

    # the fused pass gives the same statistics without storing R
    grad = np.empty(kernels.n_free(k, d))
    XtX2, Xty2, sr2, syy2 = np.empty_like(XtX), np.empty_like(Xty), np.empty(k), np.empty(k)
    g2, H2 = np.empty(ng), np.empty((ng, ng))
    ll2 = kernels.em_pass(X, y, beta0, beta1, a, b, v, K, ref, XtX2, Xty2, sr2, syy2, g2, H2, grad)
    assert ll2 == pytest.approx(ll0, rel=1e-12)
    for got, want in ((XtX2, XtX), (Xty2, Xty), (sr2, sr), (syy2, syy), (g2, g), (H2, H)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("d,k,K", [c for c in CASES if c[0] < 3 or c[1] in (2, 5)])
def test_observed_gradient_matches_finite_differences(d, k, K):
    X, y, (beta0, beta1, a, b, v), ref = data(seed_of(d, k, K) + 2, k, d, n=25)
    grad = np.empty(kernels.n_free(k, d))
    kernels.obs_grad(X, y, beta0, beta1, a, b, v, K, ref, grad)
    fd = naive.obs_grad_fd(X, y, beta0, beta1, a, b, v, K, ref)
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-5)
    # the fused pass returns the same gradient
    p = d + 1
    ng = (k - 1) * p
    grad2 = np.empty_like(grad)
    kernels.em_pass(
        X, y, beta0, beta1, a, b, v, K, ref,
        np.empty((k, p, p)), np.empty((k, p)), np.empty(k), np.empty(k),
        np.empty(ng), np.empty((ng, ng)), grad2,
    )  # fmt: skip
    np.testing.assert_allclose(grad2, grad, rtol=1e-10, atol=1e-10)


def test_ties_go_to_the_lower_index():
    s = np.array([1.0, 2.0, 2.0, 2.0, 0.5])
    act = np.empty(5, dtype=bool)
    kernels.select_topk(s, 2, act)
    np.testing.assert_array_equal(act, [False, True, True, False, False])
    kernels.select_topk(s, 4, act)
    np.testing.assert_array_equal(act, [True, True, True, True, False])


def test_kernels_stable_for_extreme_logits():
    """Huge logits and far-off y must not overflow (everything goes through log-sum-exp)."""
    X = np.array([[1.0], [-1.0]])
    y = np.array([1e3, -1e3])
    beta0 = np.array([0.0, 800.0, -800.0])
    beta1 = np.array([[0.0], [700.0], [-700.0]])
    a = np.zeros((3, 1))
    b = np.zeros(3)
    v = np.array([1.0, 1e-3, 10.0])
    for K in (1, 2, 3):
        ll = kernels.loglik(X, y, beta0, beta1, a, b, v, K)
        assert np.isfinite(ll)
        assert ll == pytest.approx(naive.loglik(X, y, beta0, beta1, a, b, v, K), rel=1e-12)


HESS_CASES = [(d, k, K) for d in (1, 2, 3) for k in range(1, 6) for K in range(1, k + 1)
              if d < 3 or k in (1, 4, 5)] + [(5, 3, 2), (5, 3, 3), (2, 8, 3), (1, 8, 8)]


@pytest.mark.parametrize("d,k,K", HESS_CASES)
def test_observed_hessian_matches_naive(d, k, K):
    X, y, (beta0, beta1, a, b, v), ref = data(seed_of(d, k, K) + 3, k, d, n=30)
    m = kernels.n_free(k, d)
    grad, H = np.full(m, np.nan), np.full((m, m), np.nan)  # the kernel must zero them
    ll = kernels.obs_hess(X, y, beta0, beta1, a, b, v, K, ref, grad, H)
    assert ll == pytest.approx(naive.loglik(X, y, beta0, beta1, a, b, v, K), rel=1e-12)
    g0, H0 = naive.obs_hess(X, y, beta0, beta1, a, b, v, K, ref)
    scale = np.max(np.abs(H0))
    np.testing.assert_allclose(grad, g0, rtol=1e-11, atol=1e-11 * np.max(np.abs(g0)))
    np.testing.assert_allclose(H, H0, rtol=1e-11, atol=1e-12 * scale)
    np.testing.assert_array_equal(H, H.T)
    g1 = np.empty(m)
    kernels.obs_grad(X, y, beta0, beta1, a, b, v, K, ref, g1)
    np.testing.assert_allclose(grad, g1, rtol=1e-12, atol=1e-12 * np.max(np.abs(g1)))


@pytest.mark.parametrize("d,k,K", [(1, 3, 2), (1, 4, 4), (2, 4, 3), (3, 5, 2), (5, 3, 3),
                                   (2, 1, 1), (1, 6, 1)])
def test_observed_hessian_matches_finite_differences_of_the_gradient(d, k, K):
    """Columns of H against central differences of obs_grad (the selection must not move)."""
    X, y, (beta0, beta1, a, b, v), ref = data(seed_of(d, k, K) + 4, k, d, n=40)
    m = kernels.n_free(k, d)
    grad, H = np.empty(m), np.empty((m, m))
    kernels.obs_hess(X, y, beta0, beta1, a, b, v, K, ref, grad, H)
    theta = naive.pack(beta0, beta1, a, b, v, ref)
    mask0 = naive.active(X, beta1, K)
    h = 1e-6
    fd = np.empty((m, m))
    gp, gm = np.empty(m), np.empty(m)
    for u in range(m):
        tp, tm = theta.copy(), theta.copy()
        tp[u] += h
        tm[u] -= h
        for th, g in ((tp, gp), (tm, gm)):
            P = naive.unpack(th, k, d, ref)
            assert np.array_equal(naive.active(X, P[1], K), mask0)
            kernels.obs_grad(X, y, *P, K, ref, g)
        fd[:, u] = (gp - gm) / (2 * h)
    np.testing.assert_allclose(H, fd, rtol=1e-6, atol=1e-6 * np.max(np.abs(H)))


# -- the blocked passes against the scalar kernels they replaced (tests/scalar_kernels.py) -------
MULTI_CHUNK = kernels.BLOCK * kernels.CHUNK_BLOCKS + 3 * kernels.BLOCK // 2  # 2 chunks, ragged
BLOCKED_CASES = (
    [(d, k, K, 37) for d in (1, 2, 3, 5) for k in range(1, 9) for K in sorted({1, (k + 1) // 2, k})]
    + [(1, 4, 3, 1), (2, 3, 2, 2), (3, 5, 5, kernels.BLOCK), (1, 2, 1, kernels.BLOCK + 1)]
    + [(1, 4, 3, MULTI_CHUNK), (2, 6, 2, MULTI_CHUNK), (5, 3, 3, MULTI_CHUNK)]
)  # fmt: skip


def _all_passes(mod, X, y, P, K, ref, **kw):
    n, d = X.shape
    k = P[0].shape[0]
    p = d + 1
    ng, nf = (k - 1) * p, kernels.n_free(k, d)
    out = {}
    pts = np.full(n, np.nan)
    mod.log_density_points(X, y, *P, K, pts, **kw)
    out["points"] = pts
    out["loglik"] = mod.loglik(X, y, *P, K, **kw)
    bufs = [np.full(s, np.nan) for s in ((k, p, p), (k, p), k, k, ng, (ng, ng), nf)]
    out["em_loglik"] = mod.em_pass(X, y, *P, K, ref, *bufs, **kw)
    for name, buf in zip(("XtX", "Xty", "sr", "syy", "g", "H", "em_grad"), bufs, strict=True):
        out[name] = buf
    out["grad"] = np.full(nf, np.nan)
    out["grad_loglik"] = mod.obs_grad(X, y, *P, K, ref, out["grad"], **kw)
    out["hess_grad"], out["hess"] = np.full(nf, np.nan), np.full((nf, nf), np.nan)
    out["hess_loglik"] = mod.obs_hess(X, y, *P, K, ref, out["hess_grad"], out["hess"], **kw)
    return out


@pytest.mark.parametrize("d,k,K,n", BLOCKED_CASES)
def test_blocked_passes_equal_the_scalar_kernels(d, k, K, n):
    """Every output to 1e-12 relative to the largest entry of its array (entries near zero,
    such as a gradient at a stationary point, are judged on that scale)."""
    from tests import scalar_kernels

    X, y, P, ref = data(seed_of(d, k, K) + 5 + n, k, d, n=n)
    got = _all_passes(kernels, X, y, P, K, ref)
    want = _all_passes(scalar_kernels, X, y, P, K, ref)
    for name, w in want.items():
        g = got[name]
        assert np.all(np.isfinite(g)), name
        scale = max(float(np.max(np.abs(w))), 1e-300) if np.size(w) else 1.0
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12 * scale, err_msg=name)
    np.testing.assert_array_equal(got["hess"], got["hess"].T)


@pytest.mark.parametrize("d,k,K", [(1, 4, 3), (2, 5, 2), (3, 3, 3)])
def test_parallel_passes_are_bit_identical_to_the_serial_ones(d, k, K):
    """The chunk partition depends on n only, so prange over chunks changes nothing."""
    X, y, P, ref = data(seed_of(d, k, K) + 6, k, d, n=2 * MULTI_CHUNK + 17)
    serial = _all_passes(kernels, X, y, P, K, ref)
    parallel = _all_passes(kernels, X, y, P, K, ref, parallel=True)
    for name, s in serial.items():
        np.testing.assert_array_equal(parallel[name], s, err_msg=name)


def test_non_finite_parameters_give_non_finite_passes():
    """The EM's non_finite outcome relies on NaN reaching the log-likelihood."""
    X, y, (beta0, beta1, a, b, v), ref = data(11, 3, 2, n=300)
    for bad in ("beta0", "a", "v"):
        arrays = {"beta0": beta0.copy(), "beta1": beta1, "a": a.copy(), "b": b, "v": v.copy()}
        arrays[bad].flat[1] = np.nan
        P = (arrays["beta0"], arrays["beta1"], arrays["a"], arrays["b"], arrays["v"])
        assert np.isnan(kernels.loglik(X, y, *P, 2)), bad
        grad = np.empty(kernels.n_free(3, 2))
        assert np.isnan(kernels.obs_grad(X, y, *P, 2, ref, grad)), bad


@pytest.mark.parametrize("design_name,k,K,extra", [("T", 4, 3, [0]), ("T", 3, 3, []),
                                                   ("S", 3, 2, [0])])
def test_em_trace_with_blocked_kernels_equals_the_scalar_kernels(monkeypatch, design_name, k,
                                                                 K, extra):
    """The rewrite does not change the EM: the same fit run on the scalar kernels gives the
    same log-likelihood trace and parameters to round-off."""
    import warnings

    from simstudy.estimation import ConvergenceWarning, TopKMoEEM
    from simstudy.model import get_design, sample
    from tests import scalar_kernels

    design = get_design(design_name)
    X, y = sample(design.params, 3000, design.inputs, np.random.default_rng(4))

    def fit():
        est = TopKMoEEM(k, K, true_params=design.params, extra_atoms=extra, tol=1e-12,
                        max_iter=40, random_state=1)  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return est.fit(X, y)

    new = fit()
    for name in ("em_pass", "loglik", "obs_grad"):
        scalar = getattr(scalar_kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, f=scalar: f(*a[:-1]))  # drop `parallel`
    old = fit()
    assert new.n_iter == old.n_iter
    np.testing.assert_allclose(new.loglik_trace, old.loglik_trace, rtol=1e-12)
    # an over-specified fit has flat directions that magnify round-off in the parameters
    tol = 1e-5 if extra else 1e-9
    np.testing.assert_allclose(new.params.atoms(), old.params.atoms(), rtol=tol, atol=tol)
