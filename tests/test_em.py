"""The generalized EM estimator: one iteration vs plain numpy, monotonicity, recovery,
acceleration, degenerate outcomes and option validation."""

import json
import warnings

import numpy as np
import pytest

from simstudy.estimation import ConvergenceWarning, FitResult, TopKMoEEM, protocol_options
from simstudy.model import MoEParams, UniformBox, get_design, kernels, loglik, sample
from tests import naive

DES_T = get_design("T")
DES_S = get_design("S")


def draw(design, n, seed):
    return sample(design.params, n, design.inputs, np.random.default_rng(seed))


def assert_monotone(trace, rel=1e-9):
    trace = np.asarray(trace)
    drops = np.diff(trace) + rel * np.abs(trace[:-1])
    assert np.all(drops >= 0), f"log-likelihood decreased: min step {np.diff(trace).min()}"


def fit_quiet(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y)


# -- one iteration against tests/naive.py ---------------------------------------------------------
ITER_CASES = [(1, 1, 1), (1, 3, 2), (1, 3, 3), (2, 4, 2), (2, 2, 2), (3, 5, 3), (1, 4, 1)]


@pytest.mark.parametrize("d,k,K", ITER_CASES)
def test_one_em_iteration_equals_plain_numpy(d, k, K):
    rng = np.random.default_rng(7 * d + 11 * k + K)
    ref = int(rng.integers(k))
    beta0, beta1, a, b, v = naive.random_params(rng, k, d, ref=ref, scale=1.5)
    X = rng.uniform(-1, 1, (150, d))
    y = rng.normal(0, 2, 150)
    est = TopKMoEEM(k, K, init="data")
    est._check_options()
    est._prepare(X, y)
    est._set_ref(ref)
    out = est._em_step(est._pack(beta0, beta1, a, b, v))
    got = est._unpack(out.theta)
    *want, l_want = naive.em_iteration(X, y, beta0, beta1, a, b, v, K, ref)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-7, atol=1e-9)
    assert out.loglik_out == pytest.approx(l_want, rel=1e-10)
    assert out.loglik_in == pytest.approx(naive.loglik(X, y, beta0, beta1, a, b, v, K), rel=1e-12)
    assert out.loglik_out >= out.loglik_in - 1e-9 * abs(out.loglik_in)


# -- monotonicity over whole runs ---------------------------------------------------------------
def _random_sparse_truth():
    rng = np.random.default_rng(3)
    beta0, beta1, a, b, v = naive.random_params(rng, 4, 2, ref=2, scale=3.0)
    return MoEParams(beta0, beta1, a, b, v, K=2, ref=2)


MONO_RUNS = {
    "T_exact": (DES_T, dict(k=3, K=2)),
    "T_over": (DES_T, dict(k=4, K=3, extra_atoms=[0])),
    "T_over_K2": (DES_T, dict(k=4, K=2, extra_atoms=[0])),
    "T_dense_misspecified": (DES_T, dict(k=4, K=4, extra_atoms=[2])),
    "S_exact": (DES_S, dict(k=2, K=2)),
    "S_over": (DES_S, dict(k=3, K=3, extra_atoms=[0])),
}


@pytest.mark.parametrize("acceleration", [None, "squarem", "lbfgs"])
@pytest.mark.parametrize("name", sorted(MONO_RUNS))
def test_loglik_never_decreases(name, acceleration):
    design, kw = MONO_RUNS[name]
    X, y = draw(design, 800, 5)
    est = TopKMoEEM(
        true_params=design.params,
        init_noise=0.3,
        tol=1e-9,
        grad_tol=1e-7 if acceleration == "lbfgs" else None,
        max_iter=60,
        acceleration=acceleration,
        random_state=0,
        **kw,
    )
    res = fit_quiet(est, X, y)
    assert res.n_iter > 1
    assert_monotone(res.loglik_trace)
    assert res.loglik == pytest.approx(res.loglik_trace[-1], rel=1e-12)
    assert res.loglik == pytest.approx(loglik(res.params, X, y), rel=1e-10)


def test_loglik_never_decreases_sparse_d2_and_data_starts():
    truth = _random_sparse_truth()
    X, y = sample(truth, 600, UniformBox(2), np.random.default_rng(1))
    for acceleration in (None, "squarem"):
        est = TopKMoEEM(4, 2, init="data", n_init=2, max_iter=40, acceleration=acceleration,
                        random_state=4)  # fmt: skip
        res = fit_quiet(est, X, y)
        assert_monotone(res.loglik_trace)
        assert res.params.ref == 0


# -- recovery ------------------------------------------------------------------------------------
def _observed_information_se(est, theta):
    """Standard errors from the observed information: minus the Jacobian of the analytic
    score (active sets held), by central differences of the gradient kernel."""
    m = theta.size
    J = np.zeros((m, m))
    h = 1e-5
    g = np.zeros_like(theta)
    for u in range(m):
        tp, tm = theta.copy(), theta.copy()
        tp[u] += h
        tm[u] -= h
        kernels.obs_grad(est._X, est._y, *est._unpack(tp), est._K, est._ref, g)
        gp = g.copy()
        kernels.obs_grad(est._X, est._y, *est._unpack(tm), est._K, est._ref, g)
        J[:, u] = (gp - g) / (2 * h)
    info = -(J + J.T) / 2
    return np.sqrt(np.diag(np.linalg.inv(info)))


@pytest.mark.slow  # minutes without the JIT (n up to 20000, many iterations)
@pytest.mark.parametrize("design,k,K", [(DES_T, 3, 2), (DES_S, 2, 2)], ids=["T_exact", "S_dense"])
def test_parameter_recovery_within_asymptotic_standard_errors(design, k, K):
    """Exact fits at n = 20000 recover every free parameter within 4.5 standard errors.

    The MLE is asymptotically normal with covariance the inverse Fisher information, which we
    estimate by the observed information at the fit (minus the Hessian of the log-likelihood in
    the free parameters: gating blocks, expert blocks, log variances). |theta_hat - theta*| <=
    4.5 SE for all 13 (T) or 7 (S) parameters fails by chance with probability below
    13 * P(|Z| > 4.5) < 1e-4, while a bias of a few SE (a wrong M-step, a wrong gradient, a
    missed selection) fails it. The SEs are also sanity-checked against the n^-1/2 scale.
    """
    X, y = draw(design, 20000, 2024)
    est = TopKMoEEM(k, K, true_params=design.params, tol=1e-12, grad_tol=1e-7, max_iter=3000,
                    acceleration="squarem", init_noise=0.1, random_state=1)  # fmt: skip
    res = est.fit(X, y)
    assert res.stop_reason == "certified" and res.status == "ok"
    theta_hat = est._pack(res.params.beta0, res.params.beta1, res.params.a, res.params.b,
                          res.params.v)  # fmt: skip
    t = design.params
    theta_true = est._pack(t.beta0, t.beta1, t.a, t.b, t.v)
    se = _observed_information_se(est, theta_hat)
    assert np.all(se > 0) and np.all(se < 5.0 / np.sqrt(20000) * 20)
    z = (theta_hat - theta_true) / se
    assert np.max(np.abs(z)) < 4.5, z
    assert res.loglik >= loglik(t, X, y)  # the MLE beats the truth on its own data


# -- acceleration ---------------------------------------------------------------------------------
@pytest.mark.slow  # minutes without the JIT (n up to 20000, many iterations)
def test_squarem_and_plain_em_reach_the_same_maximum_over_specified():
    X, y = draw(DES_T, 1000, 11)
    kw = dict(k=4, K=3, extra_atoms=[0], true_params=DES_T.params, init_noise=0.1,
              tol=1e-13, grad_tol=1e-5, random_state=3)  # fmt: skip
    plain = fit_quiet(TopKMoEEM(max_iter=60000, **kw), X, y)
    fast = fit_quiet(TopKMoEEM(max_iter=20000, acceleration="squarem", **kw), X, y)
    polished = fit_quiet(TopKMoEEM(max_iter=20000, acceleration="lbfgs", **kw), X, y)
    for res in (plain, fast, polished):
        assert res.stop_reason == "certified" and res.grad_norm <= 1e-5
        assert_monotone(res.loglik_trace)
    assert fast.loglik == pytest.approx(plain.loglik, rel=1e-6)
    assert polished.loglik == pytest.approx(plain.loglik, rel=1e-6)
    assert fast.n_em_steps < plain.n_em_steps
    assert polished.n_polish_evals > 0 and polished.n_em_steps < plain.n_em_steps


# -- protocols, result, randomness ----------------------------------------------------------------
@pytest.mark.slow  # minutes without the JIT (n up to 20000, many iterations)
def test_papers_protocol_stops_early_and_result_serialises():
    X, y = draw(DES_T, 10000, 8)
    opts = protocol_options("papers", 10000)
    est = TopKMoEEM(4, 3, true_params=DES_T.params, extra_atoms=[0], random_state=5, **opts)
    res = est.fit(X, y)
    assert isinstance(res, FitResult) and est.result_ is res and est.params_ is res.params
    assert res.stop_reason == "tol" and res.converged and res.status == "ok"
    assert res.n_init == 5 and 0 <= res.best_restart < 5
    assert res.n_iter < 50
    assert_monotone(res.loglik_trace)
    d = json.loads(json.dumps(res.to_dict()))
    assert d["stop_reason"] == "tol" and d["status"] == "ok"
    assert set(d["flags"]) == {"var_floor", "empty_expert", "non_finite"}
    assert MoEParams.from_dict(d["params"]) == res.params
    assert "status=ok" in res.summary()


def test_near_truth_start_layout():
    """Extra atoms are appended after the k* atoms, split the gating mass, ref stays (0, 0)."""
    est = TopKMoEEM(5, 3, true_params=DES_T.params, extra_atoms=[2, 0], init_noise=0.0,
                    max_iter=1)  # fmt: skip
    est._check_options()
    X, y = draw(DES_T, 50, 1)
    est._prepare(X, y)
    p0 = est._to_params(est._initialize(np.random.default_rng(0), 0))
    t = DES_T.params
    assert p0.ref == t.ref == 1
    np.testing.assert_allclose(p0.beta1[:, 0], [-5, 0, -10, -10, -5])
    np.testing.assert_allclose(p0.beta0, [0.5 - np.log(2), 0, 1 - np.log(2), 1 - np.log(2),
                                          0.5 - np.log(2)])  # fmt: skip
    np.testing.assert_allclose(p0.v, [0.2, 0.3, 0.25, 0.25, 0.2])
    # papers schedule: gating noise is one scalar per atom, the reference gating untouched
    est = TopKMoEEM(3, 2, true_params=t, noise_schedule="papers")
    est._check_options()
    est._prepare(X, y)
    p1 = est._to_params(est._initialize(np.random.default_rng(0), 0))
    assert p1.beta0[1] == 0.0 and p1.beta1[1, 0] == 0.0
    np.testing.assert_allclose(p1.beta0 - t.beta0, p1.beta1[:, 0] - t.beta1[:, 0], atol=1e-15)
    np.testing.assert_allclose(p1.a[:, 0] - t.a[:, 0], p1.b - t.b, atol=1e-15)
    assert np.all(p1.v >= t.v) and np.all(p1.v - t.v < 0.005 * 50**-0.25 * 6)


def test_random_state_kinds():
    """Every accepted kind of random_state drives the start: an int, a SeedSequence and a
    Generator seeded alike give the same fit (numpy derives one stream from each); another
    seed, and None (fresh entropy), give another start and so another fit."""
    X, y = draw(DES_S, 500, 2)

    def fit(rs):
        est = TopKMoEEM(2, 2, true_params=DES_S.params, random_state=rs, max_iter=20)
        return fit_quiet(est, X, y).params

    same = [fit(3), fit(np.random.SeedSequence(3)), fit(np.random.default_rng(3))]
    assert same[0] == same[1] == same[2]
    assert fit(4) != same[0]
    assert fit(None) != same[0] and fit(None) != fit(None)


def test_same_seed_same_fit():
    X, y = draw(DES_T, 800, 2)
    fits = [TopKMoEEM(3, 2, true_params=DES_T.params, random_state=9, n_init=2).fit(X, y)
            for _ in range(2)]  # fmt: skip
    assert fits[0].params == fits[1].params


@pytest.mark.slow  # minutes without the JIT (n up to 20000, many iterations)
def test_data_start_finds_the_dense_maximum():
    X, y = draw(DES_S, 3000, 4)
    near = TopKMoEEM(2, 2, true_params=DES_S.params, tol=1e-10, random_state=0).fit(X, y)
    data = fit_quiet(TopKMoEEM(2, 2, init="data", n_init=6, tol=1e-10, random_state=0), X, y)
    assert_monotone(data.loglik_trace)
    assert data.loglik == pytest.approx(near.loglik, rel=1e-6)


def test_protocol_options():
    papers = protocol_options("papers", 1000)
    strict = protocol_options("strict", 1000)
    assert papers["tol"] == 1e-6 and papers["max_iter"] == 2000
    assert papers["noise_schedule"] == "papers" and papers["n_init"] == 5
    assert protocol_options("papers", 1000, over_specified=False)["n_init"] == 1
    assert strict["acceleration"] == "newton" and strict["grad_tol"] > 0
    assert strict["max_iter"] >= 5000 and strict["noise_schedule"] is None
    assert strict["truth_start"] is True and strict["n_data_starts"] >= 1
    assert not papers.get("truth_start", False) and not papers.get("n_data_starts", 0)
    for opts in (papers, strict):
        TopKMoEEM(3, 2, true_params=DES_T.params, **opts)._check_options()
    with pytest.raises(ValueError, match="name: unknown protocol 'fast'"):
        protocol_options("fast", 10)
    with pytest.raises(ValueError, match="n: the sample size"):
        protocol_options("strict", 0)


# -- degenerate outcomes are flagged, never raised -----------------------------------------------
def test_variance_floor_is_flagged():
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (200, 1))
    y = 2.0 * X[:, 0] + 1.0  # noise-free: the variance goes to the floor
    res = fit_quiet(TopKMoEEM(1, 1, init="data", var_floor=1e-4, random_state=0), X, y)
    assert res.flags["var_floor"] and res.status == "degenerate"
    # the floor is relative to the scale of the data
    assert res.params.v[0] == pytest.approx(1e-4 * np.var(y))
    assert res.flags["var_small"]


def test_empty_expert_is_flagged():
    truth = DES_S.params.replace(beta0=[-80.0, 0.0])  # expert 0 never gets any mass
    X, y = sample(truth, 1000, DES_S.inputs, np.random.default_rng(0))
    res = fit_quiet(TopKMoEEM(2, 2, true_params=truth, random_state=0, max_iter=50), X, y)
    assert res.flags["empty_expert"] and res.status == "degenerate"
    assert np.all(np.isfinite(res.params.atoms()))


def test_non_finite_stops_and_keeps_last_finite_params():
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (100, 1))
    y = 1e160 * rng.normal(size=100)  # squares overflow in the expert step
    truth = DES_T.params
    # (without the JIT the kernels run on numpy scalars, which warn on the overflow)
    with pytest.warns(ConvergenceWarning, match="non_finite"), np.errstate(all="ignore"):
        res = TopKMoEEM(3, 2, true_params=truth, random_state=0).fit(X, y)
    assert res.stop_reason == "non_finite" and res.flags["non_finite"]
    assert res.status == "degenerate" and not res.converged
    assert np.all(np.isfinite(res.params.atoms()))


def test_max_iter_warns_and_reports():
    X, y = draw(DES_T, 500, 1)
    with pytest.warns(ConvergenceWarning, match="max_iter"):
        res = TopKMoEEM(3, 2, true_params=DES_T.params, tol=1e-15, max_iter=3).fit(X, y)
    assert res.stop_reason == "max_iter" and res.n_iter == 3 and res.status == "not_converged"
    assert res.loglik_trace.shape == (4,)


def test_K1_keeps_the_gating_and_is_monotone():
    """With K = 1 the likelihood does not depend on beta0 and is piecewise constant in beta1:
    the gating must stay exactly at its (noisy) start while the experts are fitted."""
    truth = get_design("T", K=1).params
    X, y = sample(truth, 1000, DES_T.inputs, np.random.default_rng(0))
    est = TopKMoEEM(3, 1, true_params=truth, init_noise=0.1, random_state=0, max_iter=100)
    res = fit_quiet(est, X, y)
    assert_monotone(res.loglik_trace)
    assert res.stop_reason == "tol"
    # the start of the fit: restart 0 of the generator that fit() seeds from random_state
    start = est._to_params(est._initialize(np.random.default_rng(0), 0))
    assert not np.array_equal(start.beta1, truth.beta1)  # the noise moved the gating
    np.testing.assert_array_equal(res.params.beta0, start.beta0)
    np.testing.assert_array_equal(res.params.beta1, start.beta1)
    # ... while the experts moved away from their start
    assert np.max(np.abs(res.params.a - start.a)) > 1e-3


# -- validation ----------------------------------------------------------------------------------
T = DES_T.params
BAD_OPTIONS = [
    (dict(k=2, K=3), "K: must satisfy 1 <= K <= k = 2"),
    (dict(k=0, K=1), "k: must be >= 1"),
    (dict(k=2.5, K=1), "k: expected an integer"),
    (dict(k=3, K=True), "K: expected a number"),
    (dict(k=3, K=2, tol=0.0), "tol: must be > 0"),
    (dict(k=3, K=2, tol=float("nan")), "tol: must be finite"),
    (dict(k=3, K=2, grad_tol=-1.0), "grad_tol: must be > 0"),
    (dict(k=3, K=2, max_iter=0), "max_iter: must be >= 1"),
    (dict(k=3, K=2, n_init=0), "n_init: must be >= 1"),
    (dict(k=3, K=2, var_floor=0.0), "var_floor: must be > 0"),
    (dict(k=3, K=2, init_noise=-0.1), "init_noise: must be >= 0"),
    (dict(k=3, K=2, acceleration="anderson"), "acceleration: unknown method 'anderson'"),
    (dict(k=3, K=2, init="kmeans"), "init: unknown start 'kmeans'"),
    (dict(k=3, K=2, acceleration="lbfgs"), "acceleration: 'lbfgs' runs to strict .* grad_tol"),
    (dict(k=3, K=2, acceleration="newton"), "acceleration: 'newton' runs to strict .* grad_tol"),
    (dict(k=3, K=2, n_data_starts=-1), "n_data_starts: must be >= 0"),
    (dict(k=3, K=2, n_data_starts=1.5), "n_data_starts: expected an integer"),
    (dict(k=3, K=2, truth_start="yes"), "truth_start: expected True or False"),
    (dict(k=3, K=2, max_seconds=0.0), "max_seconds: must be > 0"),
    (dict(k=3, K=2, beta1_bound=-1.0), "beta1_bound: must be > 0"),
    (dict(k=3, K=2, scan_radius=0.0), "scan_radius: must be > 0"),
    (dict(k=3, K=2, scan_tol=-1e-9), "scan_tol: must be > 0"),
    (dict(k=3, K=2, newton_switch=0.0), "newton_switch: must be > 0"),
    (dict(k=3, K=2, continuation="yes"), "continuation: expected .auto., True or False"),
    (dict(k=4, K=2, init="data", truth_start=True),
     r"truth_start: with init='data' the fit must have the truth's k\* = 3"),
    (dict(k=3, K=2, noise_schedule="fast"), "noise_schedule: unknown schedule 'fast'"),
    (dict(k=3, K=2, random_state="x"), "random_state: expected None"),
    (dict(k=3, K=2, true_params=None), "true_params: init='near_truth' needs the true"),
    (dict(k=4, K=3, extra_atoms=[5]), r"extra_atoms: entries must be true expert indices"),
    (dict(k=4, K=3, extra_atoms=[1]), "extra_atoms: the reference expert 1 cannot"),
    (dict(k=5, K=3, extra_atoms=[0]), r"extra_atoms: k = 5 must equal the true k\* = 3"),
    (dict(k=4, K=3, extra_atoms="a"), "extra_atoms: expected a sequence of integers"),
    (dict(k=4, K=3, extra_atoms=[0.5]), "extra_atoms: expected integers"),
    (dict(k=4, K=3, init="data", extra_atoms=[0]), "extra_atoms: only meaningful"),
]


@pytest.mark.parametrize("kw,msg", BAD_OPTIONS, ids=[m[:24] for _, m in BAD_OPTIONS])
def test_invalid_options_raise_named_errors(kw, msg):
    kw = {"true_params": T, **kw}
    X, y = draw(DES_T, 50, 0)
    with pytest.raises(ValueError, match=msg):
        TopKMoEEM(**kw).fit(X, y)


@pytest.mark.parametrize(
    "X,y,msg",
    [
        (np.zeros(10), np.zeros(10), "X: expected a 2-d array"),
        (np.zeros((10, 2)), np.zeros(10), "X: expected 1 columns"),
        (np.zeros((10, 1)), np.zeros(9), "y: has 9 entries but X has 10 rows"),
        (np.zeros((10, 1)), np.zeros((10, 1)), "y: expected a 1-d array"),
        (np.full((10, 1), np.nan), np.zeros(10), "X: contains non-finite"),
        (np.zeros((10, 1)), np.full(10, np.inf), "y: contains non-finite"),
        (np.zeros((1, 1)), np.zeros(1), "X: needs at least 2 rows"),
    ],
)
def test_malformed_data_raise_named_errors(X, y, msg):
    with pytest.raises(ValueError, match=msg):
        TopKMoEEM(3, 2, true_params=T).fit(X, y)


def test_strict_em_stalls_at_a_tie_where_newton_certifies_on_the_tie():
    """Design T, k = 4, K-bar = 2, n = 1000 (seed 0): the two atoms near expert 1 take turns
    across x = 0 and climb onto a tie of their slopes, where crossing flips the selection.
    Strict EM (the old "lbfgs" optimiser) must stop as "stalled" within STALL_ITER flat
    iterations, uncertified, not crawl on to max_iter; trust-region Newton holds the tie and
    ends "certified_on_tie" higher, with the projected gradient below grad_tol and the tie's
    multipliers pointing across it."""
    from simstudy.estimation.base import STALL_ITER

    D = get_design("T")
    X, y = sample(D.params, 1000, D.inputs, np.random.default_rng(0))
    opts = protocol_options("strict", 1000, over_specified=True)
    opts.update(truth_start=False, n_data_starts=0)
    with pytest.warns(ConvergenceWarning, match="stalled"):
        em = TopKMoEEM(4, 2, true_params=D.params, extra_atoms=(0,), random_state=0,
                       **{**opts, "acceleration": "lbfgs"}).fit(X, y)
    assert em.stop_reason == "stalled" and not em.converged
    assert em.status == "not_converged"
    assert em.grad_norm > opts["grad_tol"]
    assert em.n_iter < opts["max_iter"] // 10
    tail = em.loglik_trace[-STALL_ITER - 1 :]
    assert np.all(np.abs(np.diff(tail)) <= opts["tol"] * np.abs(tail[:-1]))
    assert_monotone(em.loglik_trace)

    nt = TopKMoEEM(4, 2, true_params=D.params, extra_atoms=(0,), random_state=0,
                   **opts).fit(X, y)
    assert nt.stop_reason == "certified_on_tie" and nt.converged and nt.status == "ok"
    cert = nt.certificate
    assert cert.ties and cert.grad_projected <= opts["grad_tol"]
    assert cert.min_multiplier >= -opts["grad_tol"]
    i, j = cert.ties[0]
    assert nt.params.beta1[i, 0] == pytest.approx(nt.params.beta1[j, 0], abs=1e-7)
    assert nt.loglik > em.loglik + 1.0
    assert_monotone(nt.loglik_trace)
