"""Trust-region Newton with boundary moves: the subproblem, monotone certified fits on every
design, the global checks, diverging slopes, the slope bound, the time budget, standard
errors and the relabelling of fits."""

import warnings

import numpy as np
import pytest

from simstudy.engine.task import fit_diagnostics
from simstudy.estimation import ConvergenceWarning, TopKMoEEM, protocol_options
from simstudy.estimation.align import align_to_truth
from simstudy.estimation.result import CONVERGED, params_vector
from simstudy.estimation.trust_region import tr_step
from simstudy.model import MoEParams, get_design, loglik, sample
from simstudy.reports.rates import METRIC_PATTERN

DES = {name: get_design(name) for name in ("T", "S", "P")}


def draw(name, n, seed):
    d = DES[name]
    return sample(d.params, n, d.inputs, np.random.default_rng(seed))


def assert_monotone(trace, rel=1e-9):
    trace = np.asarray(trace)
    assert np.all(np.diff(trace) + rel * np.abs(trace[:-1]) >= 0), np.diff(trace).min()


def strict(n, **over):
    opts = protocol_options("strict", n)
    opts.update(over)
    return opts


def quiet_fit(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y)


# -- the trust-region subproblem ----------------------------------------------------------------
def assert_global_tr_solution(g, A, radius, z, pred):
    """The Moré-Sorensen conditions: (A + mu I) z = g with mu >= 0, A + mu I positive
    semi-definite, mu (radius - |z|) = 0; they characterise the global maximiser."""
    nz = np.linalg.norm(z)
    scale = max(1e-300, float(np.abs(np.linalg.eigvalsh(A)).max()))
    assert nz <= radius * (1 + 1e-8)
    assert pred == pytest.approx(g @ z - 0.5 * z @ A @ z, rel=1e-9, abs=1e-12 * scale * radius**2)
    res = g - A @ z
    mu = (res @ z) / (z @ z)
    assert np.linalg.norm(res - mu * z) <= 1e-7 * max(np.linalg.norm(g), scale * radius)
    assert mu >= -1e-8 * scale
    assert np.linalg.eigvalsh(A)[0] + mu >= -1e-8 * scale
    if mu > 1e-9 * scale:
        assert nz == pytest.approx(radius, rel=1e-8)


def test_tr_step_satisfies_the_kkt_conditions():
    """(A + mu I) z = g, mu >= 0, A + mu I positive semi-definite, mu (radius - |z|) = 0: the
    global solution of the subproblem (Moré & Sorensen), including indefinite A and the hard
    case (g orthogonal to the eigenvector of the smallest eigenvalue)."""
    rng = np.random.default_rng(0)
    for trial in range(600):
        r = int(rng.integers(1, 7))
        B = rng.normal(size=(r, r))
        A = B @ B.T * (1.0 if trial % 3 else -0.3) + (np.diag(rng.normal(size=r))
                                                     if trial % 5 == 0 else 0.0)
        g = rng.normal(size=r)
        radius = 10 ** rng.uniform(-3, 2)
        if trial % 7 == 0:  # the hard case
            lam, Q = np.linalg.eigh(A)
            A = A - (lam[0] + 1.0) * np.outer(Q[:, 0], Q[:, 0])
            g = g - (Q[:, 0] @ g) * Q[:, 0]
        z, pred = tr_step(g, A, radius)
        assert_global_tr_solution(g, A, radius, z, pred)
        assert pred >= 0.0  # never worse than not moving


def test_tr_step_with_no_free_parameter_is_the_empty_step():
    z, pred = tr_step(np.zeros(0), np.zeros((0, 0)), 1.0)
    assert z.shape == (0,) and pred == 0.0


@pytest.mark.xfail(strict=True, reason="known bug: with A = 0 the shift floor 1e-12 * 1e-300 "
                   "is subnormal, g / shift overflows and the step is NaN; the Hessians of the "
                   "fits are never exactly 0. Fix after the study (it changes the code hash).")
def test_tr_step_on_a_flat_model_goes_to_the_boundary_along_the_gradient():
    g = np.array([3.0, -4.0])
    z, pred = tr_step(g, np.zeros((2, 2)), 0.5)
    np.testing.assert_allclose(z, 0.5 * g / 5.0, rtol=1e-12)
    assert pred == pytest.approx(2.5, rel=1e-12)


def test_tr_step_of_an_ill_conditioned_interior_maximum_is_the_exact_newton_step():
    """Eigenvalues 1e-10 and 1: the Newton step fits in the region, so it must be A^-1 g to
    full precision (a shift of 1e-12 would move its first coordinate by 1%)."""
    A = np.diag([0.5, 1e-10, 1.0])  # diagonal, so its eigen-decomposition is exact
    x = np.array([-0.2, 0.3, 0.1])
    z, _ = tr_step(A @ x, A, 1.0)
    np.testing.assert_allclose(z, x, rtol=1e-9)


@pytest.mark.parametrize("s", [1e-14, 1e-6, 1e8])
def test_tr_step_does_not_depend_on_the_scale_of_the_objective(s):
    """Maximising s (g.z - z.A.z / 2) has the same maximiser for every s > 0: the solver's
    thresholds are relative to A, not absolute."""
    rng = np.random.default_rng(11)
    for trial in range(40):
        r = int(rng.integers(1, 6))
        B = rng.normal(size=(r, r))
        A = B @ B.T * (1.0 if trial % 2 else -0.3) + 0.1 * np.eye(r)
        g = rng.normal(size=r) * (1e-2 if trial % 4 == 1 else 1.0)  # some steps fit inside
        radius = 10 ** rng.uniform(-2, 1)
        z1, p1 = tr_step(g, A, radius)
        zs, ps = tr_step(s * g, s * A, radius)
        np.testing.assert_allclose(zs, z1, rtol=1e-6, atol=1e-9 * radius)
        assert ps == pytest.approx(s * p1, rel=1e-6, abs=1e-9 * s * radius * np.abs(g).sum())


@pytest.mark.parametrize("lam_min", [-5.0, -0.3, 0.0])
@pytest.mark.parametrize("mult", [1, 2])
@pytest.mark.parametrize("s", [1.0, 1e-14])
def test_tr_step_solves_the_hard_case_for_any_smallest_eigenvalue(lam_min, mult, s):
    """g orthogonal to the eigenvector(s) of the smallest eigenvalue, and |z(mu)| < radius at
    mu = -lambda_min: the solution takes mu = -lambda_min exactly and fills the rest of the
    radius along that eigenspace, without a floating-point warning (0 / 0 would give one), at
    any scale s of the objective (the eigenspace is told apart relative to A)."""
    rng = np.random.default_rng(int(10 * (lam_min + 6)) + mult)
    for _ in range(20):
        r = int(rng.integers(mult + 1, 7))
        Q = np.linalg.qr(rng.normal(size=(r, r)))[0]
        lam = np.concatenate([np.full(mult, lam_min), lam_min + rng.uniform(0.5, 3.0, r - mult)])
        A = s * (Q @ np.diag(lam) @ Q.T)
        a = rng.normal(size=r) * 0.1
        a[:mult] = 0.0
        g = s * (Q @ a)
        rest = np.linalg.norm(a[mult:] / (lam[mult:] - lam_min))
        radius = rest * rng.uniform(1.5, 4.0)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            z, pred = tr_step(g, A, radius)
        assert_global_tr_solution(g, A, radius, z, pred)
        assert np.linalg.norm(z) == pytest.approx(radius, rel=1e-8)
        np.testing.assert_allclose(Q[:, mult:].T @ z, a[mult:] / (lam[mult:] - lam_min),
                                   rtol=1e-6, atol=1e-9 * radius)


# -- certified, monotone fits on every design -----------------------------------------------------
FITS = {
    "T_exact": ("T", 3, 2, ()),
    "T_over": ("T", 4, 3, (0,)),
    "T_Kbar2": ("T", 4, 2, (0,)),
    "S_exact": ("S", 2, 2, ()),
    "S_over": ("S", 3, 3, (0,)),
    "P_exact": ("P", 3, 2, ()),
}


@pytest.mark.parametrize("name", sorted(FITS))
def test_newton_fits_are_monotone_and_certified(name):
    design, k, K, extra = FITS[name]
    X, y = draw(design, 1000, 3)
    est = TopKMoEEM(k, K, true_params=DES[design].params, extra_atoms=extra, random_state=1,
                    **strict(1000, truth_start=False, n_data_starts=0))
    res = est.fit(X, y)
    assert res.stop_reason in ("certified", "certified_on_tie") and res.converged
    assert_monotone(res.loglik_trace)
    assert res.loglik == pytest.approx(loglik(res.params, X, y), rel=1e-12)
    assert res.loglik == pytest.approx(res.loglik_trace[-1], rel=1e-12)
    cert = res.certificate
    assert cert.grad_smooth <= 1e-6 and cert.max_gain <= cert.tol
    assert res.n_passes == sum(res.pass_counts.values())


def test_newton_reaches_the_certified_em_point_on_exact_designs():
    """Exact fits of designs T and S: Newton and the old SQUAREM-certified EM reach the same
    maximum (the same point, to the accuracy of the gradient tolerance)."""
    for design, k, K in (("T", 3, 2), ("S", 2, 2)):
        X, y = draw(design, 2000, 5)
        kw = dict(true_params=DES[design].params, random_state=2)
        nt = TopKMoEEM(k, K, **kw, **strict(2000, truth_start=False, n_data_starts=0)).fit(X, y)
        sq = TopKMoEEM(k, K, **kw, **strict(2000, truth_start=False, n_data_starts=0,
                                            acceleration="squarem")).fit(X, y)
        assert nt.stop_reason == sq.stop_reason == "certified"
        assert nt.loglik == pytest.approx(sq.loglik, rel=1e-10)
        np.testing.assert_allclose(params_vector(nt.params), params_vector(sq.params),
                                   atol=1e-3)
        assert nt.n_passes < sq.n_passes


def test_strict_protocol_keeps_the_best_start_and_says_so():
    X, y = draw("P", 1000, 0)
    truth = DES["P"].params
    res = TopKMoEEM(3, 2, true_params=truth, random_state=0, **strict(1000)).fit(X, y)
    labels = [s["label"] for s in res.starts]
    assert labels[:2] == ["near_truth", "truth"] and labels[2].startswith("data_start_")
    admissible = [s["loglik"] for s in res.starts if s["admissible"]]
    assert res.loglik == pytest.approx(max(admissible), abs=1e-9 * 1000 + 1e-9)
    assert res.loglik >= loglik(truth, X, y)  # the truth start guarantees it
    near = res.starts[0]["loglik"]
    assert res.start_gap == pytest.approx(res.loglik - near, abs=1e-6)
    assert res.start_reached_best == (res.start_gap <= 1e-9 * 1000)
    assert res.converged and res.stop_reason in CONVERGED
    assert "starts:" in res.summary()


def test_a_global_check_never_replaces_by_a_spike():
    """Over-specified fit of design T at n = 1000 (seed 1): a data-driven start ends higher
    with a spike (a variance near zero fitted to a few points); it is recorded but the kept
    fit is the admissible best."""
    X, y = draw("T", 1000, 1)
    res = TopKMoEEM(4, 3, true_params=DES["T"].params, extra_atoms=(0,), random_state=1,
                    **strict(1000)).fit(X, y)
    spikes = [s for s in res.starts if not s["admissible"]]
    assert spikes and max(s["loglik"] for s in spikes) > res.loglik
    assert not res.flags["var_small"] and res.status == "ok"
    assert res.loglik == pytest.approx(max(s["loglik"] for s in res.starts if s["admissible"]),
                                       abs=1e-6)


# -- diverging slopes, the slope bound ------------------------------------------------------------
def test_dense_fit_of_the_sparse_truth_ends_diverging_quickly():
    """K-bar = 4 = k on design T: no finite maximum; the fit must stop as "diverging" within
    100 passes of its start, not at a cap, and never as certified."""
    for seed in (1, 2):
        X, y = draw("T", 2000, seed)
        res = quiet_fit(TopKMoEEM(4, 4, true_params=DES["T"].params, extra_atoms=(0,),
                                  random_state=seed,
                                  **strict(2000, truth_start=False, n_data_starts=0)), X, y)
        assert res.stop_reason == "diverging" and not res.converged
        assert res.status == "not_converged"
        assert res.n_passes <= 100
        assert_monotone(res.loglik_trace)
        assert np.abs(res.params.beta1).max() > 50


def test_beta1_bound_is_enforced_and_certified_on_the_bound():
    X, y = draw("T", 2000, 1)
    bound = 15.0
    res = TopKMoEEM(4, 4, true_params=DES["T"].params, extra_atoms=(0,), random_state=1,
                    beta1_bound=bound,
                    **strict(2000, truth_start=False, n_data_starts=0)).fit(X, y)
    assert np.abs(res.params.beta1).max() <= bound + 1e-12
    assert res.stop_reason == "certified_on_bound" and res.converged
    assert res.certificate.n_bound >= 1 and res.certificate.grad_projected <= 1e-6
    assert np.isclose(np.abs(res.params.beta1).max(), bound)
    assert_monotone(res.loglik_trace)


def test_max_seconds_stops_with_a_timeout_outcome():
    X, y = draw("P", 2000, 0)
    with pytest.warns(ConvergenceWarning, match="timeout"):
        res = TopKMoEEM(3, 2, true_params=DES["P"].params, random_state=0, max_seconds=1e-4,
                        **strict(2000)).fit(X, y)
    assert res.stop_reason == "timeout" and res.status == "timeout" and not res.converged
    assert np.all(np.isfinite(params_vector(res.params)))


# -- standard errors ------------------------------------------------------------------------------
def _fd_information(est, res):
    """Minus the Jacobian of the analytic score (central differences), in free parameters."""
    lik = est._lik
    p = res.params
    theta = lik.pack(p.beta0, p.beta1, p.a, p.b, p.v)
    J = np.zeros((lik.m, lik.m))
    for u in range(lik.m):
        h = 1e-5
        tp, tm = theta.copy(), theta.copy()
        tp[u] += h
        tm[u] -= h
        J[:, u] = (lik.grad(tp)[1] - lik.grad(tm)[1]) / (2 * h)
    return -(J + J.T) / 2


def test_standard_errors_match_the_observed_information_and_cover_the_truth():
    X, y = draw("T", 5000, 11)
    truth = DES["T"].params
    est = TopKMoEEM(3, 2, true_params=truth, random_state=3,
                    **strict(5000, truth_start=False, n_data_starts=0))
    res = est.fit(X, y)
    assert res.information == "ok" and res.cov is not None
    se_fd = np.sqrt(np.diag(np.linalg.inv(_fd_information(est, res))))
    lik = est._lik
    se_free = np.sqrt(np.diag(res.cov))
    np.testing.assert_allclose(se_free, se_fd, rtol=1e-4)
    names = list(res.names)
    assert len(names) == len(res.bse) == res.conf_int().shape[0]
    ref = truth.ref + 1
    assert np.isnan(res.bse[names.index(f"beta0_{ref}")])  # fixed by convention
    j = names.index("v_1")
    assert res.bse[j] == pytest.approx(res.params.v[0] * se_free[lik.logv[0]], rel=1e-12)
    ci = res.conf_int(0.05)
    free = np.isfinite(ci[:, 0])
    assert np.all(ci[free, 0] < params_vector(res.params)[free])
    assert np.all(ci[names.index("v_1")] > 0)
    # with 13 free parameters, all but (rarely) one 95% interval cover the truth here
    covers = (ci[free, 0] <= params_vector(truth)[free]) & (params_vector(truth)[free]
                                                            <= ci[free, 1])
    assert covers.sum() >= free.sum() - 1
    with pytest.raises(ValueError, match="alpha: must lie in"):
        res.conf_int(1.5)
    assert "std err" in res.summary()


def test_over_specified_information_is_reported_singular():
    X, y = draw("T", 5000, 2)
    res = TopKMoEEM(4, 3, true_params=DES["T"].params, extra_atoms=(0,), random_state=2,
                    **strict(5000, truth_start=False, n_data_starts=0)).fit(X, y)
    assert res.information == "singular" and res.cov is None
    assert np.all(np.isnan(res.bse))
    assert "singular" in res.summary()


def test_fit_diagnostics_record_the_truth_the_starts_and_coverage():
    X, y = draw("T", 2000, 4)
    truth = DES["T"].params
    res = TopKMoEEM(3, 2, true_params=truth, random_state=4, **strict(2000)).fit(X, y)
    m = fit_diagnostics(res, truth, X, y)
    assert m["loglik_truth"] == pytest.approx(loglik(truth, X, y))
    assert m["loglik_gap"] == pytest.approx(res.loglik - m["loglik_truth"])
    assert m["loglik_gap"] >= 0 and m["n_starts"] == len(res.starts)
    assert m["start_reached_best"] in (0.0, 1.0) and m["best_start"] == res.best_start
    assert m["n_passes"] == res.n_passes and m["cert_tol"] == pytest.approx(2000 * 1e-9)
    covers = {key: val for key, val in m.items() if key.startswith("cover_")}
    assert len(covers) == 13 and set(covers.values()) <= {0.0, 1.0}
    assert not [key for key in m if METRIC_PATTERN.match(key)]  # diagnostics, not rates


# -- relabelling ----------------------------------------------------------------------------------
def test_align_to_truth_undoes_a_permutation_and_a_translation():
    truth = DES["T"].params
    perm = [2, 1, 0]  # the reference (index 1) stays; the others swap
    beta0 = truth.beta0[perm] - truth.beta0[perm][0]
    beta1 = truth.beta1[perm] - truth.beta1[perm][0]
    moved = MoEParams(beta0, beta1, truth.a[perm], truth.b[perm], truth.v[perm], K=2, ref=0)
    X, y = draw("T", 500, 0)
    assert loglik(moved, X, y) == pytest.approx(loglik(truth, X, y), rel=1e-12)
    back = align_to_truth(moved, truth)
    assert back.ref == truth.ref
    np.testing.assert_allclose(params_vector(back), params_vector(truth), atol=1e-12)


def test_continuation_reaches_a_higher_maximum_than_scans_alone_on_design_P():
    """Design P, n = 1000 (the data of benchmarks/bench_boundary.py, replication 4): from the
    same near-truth start, exact scans alone stop at a certified piece maximum 36 below the
    true parameters' log-likelihood; the smoothed-selection path first ends above it."""
    design = DES["P"]
    X, y = sample(design.params, 1000, design.inputs, np.random.default_rng(504))
    l_true = loglik(design.params, X, y)
    kw = dict(true_params=design.params, random_state=4)
    scans = TopKMoEEM(3, 2, **kw, **strict(1000, truth_start=False, n_data_starts=0,
                                            continuation=False)).fit(X, y)
    cont = TopKMoEEM(3, 2, **kw, **strict(1000, truth_start=False, n_data_starts=0)).fit(X, y)
    assert scans.stop_reason == cont.stop_reason == "certified"
    assert scans.loglik < l_true - 10 and cont.loglik >= l_true
    assert cont.pass_counts["smooth"] > 0 and scans.pass_counts["smooth"] == 0
    assert_monotone(cont.loglik_trace)


def test_data_started_strict_fits_start_from_the_truth_only_with_its_experts(tmp_path):
    from simstudy.engine import load_spec
    from simstudy.engine.task import fit_options, run_task

    (tmp_path / "datastart.toml").write_text(
        '[study]\nname = "datastart"\nroot_seed = 3\nreplications = 1\n[design]\nname = "T"\n'
        '[n_grid]\nvalues = [300]\n[em]\nmax_iter = 30\n'
        '[[fit]]\nlabel = "exact"\nk = 3\nK = 2\ninit = "data"\nprotocols = ["strict"]\n'
        '[[fit]]\nlabel = "over"\nk = 4\nK = 3\nextra_atoms = [1]\ninit = "data"\n'
        'protocols = ["strict"]\n')
    spec = load_spec(tmp_path / "datastart.toml")
    for task in spec.tasks():
        opts = fit_options(task)
        assert opts["truth_start"] == (task.fit["k"] == 3)
        assert ("true_params" in opts) == (task.fit["k"] == 3)
        out = run_task(task)
        assert out["status"] != "error", out["message"]


def test_em_warm_up_stops_short_of_a_tie_that_flips_the_selection():
    from simstudy.estimation.em import _tie_cap

    # d = 1, K = 2 of 3: slopes -1, 0 (reference), -3; the step moves expert 0 up through 0
    beta1 = np.array([-1.0, 0.0, -3.0])
    cap = _tie_cap(beta1, np.array([2.0, 0.0, 0.0]), 2, 1.0)
    assert 0.5 - 1e-9 < cap < 0.5  # the tie with the reference is at t = 0.5, a margin short
    # crossing expert 2 at x < 0 changes nothing for K = 2 of 3 here: both stay selected
    assert _tie_cap(beta1, np.array([0.0, 0.0, 1.5]), 3, 1.0) == 1.0
    # already at the margin and still approaching: no step
    assert _tie_cap(np.array([-1e-13, 0.0, -3.0]), np.array([1.0, 0.0, 0.0]), 2, 1.0) == 0.0
    # moving away from the tie is free
    assert _tie_cap(beta1, np.array([-1.0, 0.0, 0.0]), 2, 1.0) == 1.0
