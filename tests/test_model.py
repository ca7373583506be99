"""Model semantics: top-K gating properties, numpy API vs kernels, and sampling."""

import numpy as np
import pytest
from scipy import stats
from scipy.special import softmax

from simstudy.model import (
    MoEParams,
    UniformBox,
    active_mask,
    gating_weights,
    get_design,
    kernels,
    log_density,
    loglik,
    sample,
)
from tests import naive


def random_model(seed, k, d, K, scale=2.0):
    rng = np.random.default_rng(seed)
    ref = int(rng.integers(k))
    beta0, beta1, a, b, v = naive.random_params(rng, k, d, ref=ref, scale=scale)
    return MoEParams(beta0, beta1, a, b, v, K=K, ref=ref), rng


SMALL = [(d, k, K) for d in (1, 2, 3) for k in (1, 2, 4, 5) for K in sorted({1, k // 2 + 1, k})]


@pytest.mark.parametrize("d,k", [(1, 1), (1, 3), (2, 4), (3, 5)])
def test_topk_with_K_equal_k_is_ordinary_softmax(d, k):
    params, rng = random_model(10 * d + k, k, d, k)
    X = rng.uniform(-1, 1, (200, d))
    w = gating_weights(params, X)
    np.testing.assert_allclose(w, softmax(X @ params.beta1.T + params.beta0, axis=1), rtol=1e-12)
    assert active_mask(params, X).all()


@pytest.mark.parametrize("d,k,K", SMALL)
def test_beta0_never_changes_the_active_set(d, k, K):
    params, rng = random_model(100 * d + 10 * k + K, k, d, K)
    X = rng.uniform(-1, 1, (300, d))
    shift = rng.normal(0, 5, k) * (np.arange(k) != params.ref)
    shifted = params.replace(beta0=params.beta0 + shift)
    np.testing.assert_array_equal(active_mask(params, X), active_mask(shifted, X))
    w = gating_weights(params, X)
    assert np.all(w[~active_mask(params, X)] == 0)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-12)
    assert np.all((w > 0).sum(axis=1) == K)


@pytest.mark.parametrize("d,k,K", SMALL)
def test_gating_is_translation_invariant(d, k, K):
    params, rng = random_model(200 * d + 10 * k + K, k, d, K)
    X = rng.uniform(-1, 1, (300, d))
    y = rng.normal(0, 2, 300)
    t0, t1 = rng.normal(), rng.normal(0, 3, d)
    b0, b1 = params.beta0 + t0, params.beta1 + t1
    w0 = gating_weights(params, X)
    # the shifted model has no reference at (0, 0): compare through the kernels directly
    out = np.empty(300)
    kernels.log_density_points(X, y, b0, b1, params.a, params.b, params.v, K, out)
    np.testing.assert_allclose(out, log_density(params, X, y), rtol=1e-10)
    mask = np.empty((300, k), dtype=bool)
    kernels.topk_mask(X, b1, K, mask)
    np.testing.assert_array_equal(mask, w0 > 0)


@pytest.mark.parametrize("d,k,K", SMALL)
def test_numpy_api_matches_kernels(d, k, K):
    params, rng = random_model(300 * d + 10 * k + K, k, d, K)
    X = rng.uniform(-1, 1, (250, d))
    y = rng.normal(0, 2, 250)
    mask = np.empty((250, k), dtype=bool)
    kernels.topk_mask(X, params.beta1, K, mask)
    np.testing.assert_array_equal(mask, active_mask(params, X))
    R = np.empty((250, k))
    ll = kernels.e_step(X, y, params.beta0, params.beta1, params.a, params.b, params.v, K, R, mask)
    assert ll == pytest.approx(loglik(params, X, y), rel=1e-12)


@pytest.mark.parametrize("name,K", [("T", 2), ("T", 1), ("T", 3), ("S", None)])
def test_sampled_latent_frequencies_match_gating_weights(name, K):
    """Per x-bin, the counts of Z are multinomial with the average gating weights of the bin.

    Pearson chi-square over (bin, expert) cells with positive expected count; the test fails
    with probability 1e-4 for a correct sampler.
    """
    design = get_design(name, K)
    n = 60000
    X, y, z = sample(design.params, n, design.inputs, np.random.default_rng(5), return_z=True)
    w = gating_weights(design.params, X)
    assert np.all(w[np.arange(n), z] > 0)  # never an unselected expert
    edges = np.linspace(design.inputs.low, design.inputs.high, 11)
    bins = np.clip(np.digitize(X[:, 0], edges) - 1, 0, 9)
    chi2, dof = 0.0, 0
    for bb in range(10):
        sel = bins == bb
        expected = w[sel].sum(axis=0)
        observed = np.bincount(z[sel], minlength=design.k)
        keep = expected > 1e-9
        chi2 += np.sum((observed[keep] - expected[keep]) ** 2 / expected[keep])
        dof += int(keep.sum()) - 1
        assert np.all(observed[~keep] == 0)
    if dof == 0:  # K = 1: Z is a function of X, the counts must match exactly
        assert chi2 == 0.0
    else:
        assert chi2 < stats.chi2.ppf(1 - 1e-4, dof), (chi2, dof)
    # and y | z is the expert's Gaussian
    for i in range(design.k):
        sel = z == i
        if sel.sum() > 100:
            resid = (y[sel] - X[sel] @ design.params.a[i] - design.params.b[i]) / np.sqrt(
                design.params.v[i]
            )
            assert stats.kstest(resid, "norm").pvalue > 1e-4


def test_sample_validates_rng_and_inputs():
    params = get_design("T").params
    with pytest.raises(ValueError, match="rng: expected a numpy.random.Generator"):
        sample(params, 10, UniformBox(1), 3)
    with pytest.raises(ValueError, match="inputs: input law has d=2"):
        sample(params, 10, UniformBox(2), np.random.default_rng(0))
