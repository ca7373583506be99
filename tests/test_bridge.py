"""The router-gated Gaussian MoE of the bridge, its Adam fit and the EM from shared starts."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from simstudy.model import MoEParams, get_design, loglik, sample  # noqa: E402
from simstudy.neural.bridge import (  # noqa: E402
    RouterMoE,
    fit_adam,
    fit_em,
    kmeans_start,
    random_start,
    regauge,
    time_to_tolerance,
)

pytestmark = pytest.mark.torch
torch.set_num_threads(1)


def random_params(rng, d=3, k=5, K=2, ref=2):
    beta0 = rng.normal(size=k)
    beta1 = rng.normal(size=(k, d)) * 2
    beta0[ref], beta1[ref] = 0.0, 0.0
    return MoEParams(beta0=beta0, beta1=beta1, a=rng.normal(size=(k, d)), b=rng.normal(size=k),
                     v=rng.uniform(0.1, 1, size=k), K=K, ref=ref)


def model_loglik(m, X, y):
    m.eval()
    with torch.no_grad():
        nll, aux = m(torch.tensor(X), torch.tensor(y))
    return -float(nll) * len(y), float(aux)


def np_softmax_topk_loglik(p, X, y):
    """Per-observation loop: softmax over all k, keep the K largest (no renormalisation)."""
    total = 0.0
    for x, t in zip(X, y, strict=True):
        z = p.beta1 @ x + p.beta0
        w = np.exp(z - z.max())
        w /= w.sum()
        keep = np.argsort(-w, kind="stable")[: p.K]
        dens = [w[i] * math.exp(-0.5 * (t - p.a[i] @ x - p.b[i]) ** 2 / p.v[i])
                / math.sqrt(2 * math.pi * p.v[i]) for i in keep]
        total += math.log(sum(dens))
    return total


@pytest.mark.parametrize("variant", ["topk_softmax", "noisy_topk"])
def test_router_moe_is_the_statistical_model(variant):
    rng = np.random.default_rng(5)
    design = get_design("T")
    for n in (7, 500):
        X, y = sample(design.params, n, design.inputs, rng)
        got, aux = model_loglik(RouterMoE(design.params, variant), X, y)
        assert got == pytest.approx(loglik(design.params, X, y), rel=1e-12)
    p = random_params(rng)
    X = rng.uniform(-1, 1, size=(300, 3))
    y = rng.normal(size=300)
    m = RouterMoE(p, variant)
    assert model_loglik(m, X, y)[0] == pytest.approx(loglik(p, X, y), rel=1e-12)
    q = m.to_params()
    for f in ("beta0", "beta1", "a", "b", "v"):
        np.testing.assert_allclose(getattr(q, f), getattr(p, f), rtol=1e-14, atol=1e-15)
    assert (q.K, q.ref) == (p.K, p.ref)


def test_softmax_topk_is_a_sub_density_without_renormalisation():
    rng = np.random.default_rng(2)
    p = random_params(rng, d=2, k=4, K=2, ref=0)
    X = rng.uniform(-1, 1, size=(40, 2))
    y = rng.normal(size=40)
    got, _ = model_loglik(RouterMoE(p, "softmax_topk"), X, y)
    assert got == pytest.approx(np_softmax_topk_loglik(p, X, y), rel=1e-10)
    assert got < loglik(p, X, y)  # the kept weights sum to less than one


def test_noisy_topk_trains_with_noise_and_an_auxiliary_loss():
    design = get_design("T")
    X, y = sample(design.params, 200, design.inputs, np.random.default_rng(0))
    m = RouterMoE(design.params, "noisy_topk").train()
    torch.manual_seed(0)
    nll1, aux = m(torch.tensor(X), torch.tensor(y))
    nll2, _ = m(torch.tensor(X), torch.tensor(y))
    assert aux > 0 and float(nll1.detach()) != float(nll2.detach())  # noise redrawn per call
    (nll1 + aux).backward()
    assert m.router.noise.weight.grad.abs().sum() > 0


def test_regauge_keeps_the_model_and_picks_the_reference_nearest_the_truth():
    rng = np.random.default_rng(1)
    truth = get_design("T").params
    fit = random_params(rng, d=1, k=4, K=2, ref=0)
    fit = fit.replace(a=np.vstack([fit.a[:2], truth.a[[truth.ref]] + 0.01, fit.a[3:]]),
                      b=np.r_[fit.b[:2], truth.b[truth.ref], fit.b[3:]],
                      v=np.r_[fit.v[:2], truth.v[truth.ref], fit.v[3:]])
    g = regauge(fit, truth)
    assert g.ref == 2 and g.beta0[2] == 0.0 and np.all(g.beta1[2] == 0.0)
    X = rng.uniform(-1, 1, size=(500, 1))
    y = rng.normal(size=500)
    assert loglik(g, X, y) == pytest.approx(loglik(fit, X, y), rel=1e-12)


@pytest.mark.parametrize("maker", [random_start, kmeans_start])
def test_starts_are_valid_and_seeded(maker):
    design = get_design("T")
    X, y = sample(design.params, 300, design.inputs, np.random.default_rng(0))
    a = maker(X, y, 4, 2, np.random.default_rng(3))
    b = maker(X, y, 4, 2, np.random.default_rng(3))
    assert a == b and a.k == 4 and a.K == 2
    assert a.beta0[a.ref] == 0 and np.all(a.beta1[a.ref] == 0)
    assert np.isfinite(loglik(a, X, y))


def test_time_to_tolerance():
    trace = [(0.0, -3.0), (1.0, -2.0), (2.5, -1.5), (4.0, -1.4)]
    assert time_to_tolerance(trace, -1.6) == 2.5
    assert time_to_tolerance(trace, -3.0) == 0.0
    assert math.isnan(time_to_tolerance(trace, -1.0))


@pytest.mark.parametrize("variant", ["topk_softmax", "softmax_topk", "noisy_topk"])
def test_adam_fit_improves_and_reports_the_statistical_loglik(variant):
    design = get_design("T")
    X, y = sample(design.params, 600, design.inputs, np.random.default_rng(0))
    start = kmeans_start(X, y, 3, 2, np.random.default_rng(1))
    res = fit_adam(X, y, start, variant, max_steps=120, eval_every=20, seed=4)
    assert res.loglik == pytest.approx(loglik(res.params, X, y), rel=1e-10)
    assert res.loglik > loglik(start, X, y)
    assert res.params.ref == start.ref
    times = [t for t, _ in res.trace]
    assert times == sorted(times) and res.trace[0][1] == pytest.approx(loglik(start, X, y) / 600)
    assert res.n_steps <= 120 and res.n_evals == len(res.trace)
    again = fit_adam(X, y, start, variant, max_steps=120, eval_every=20, seed=4)
    assert again.loglik == res.loglik  # seeded: minibatches and noise replay


def test_adam_fit_rejects_bad_settings():
    design = get_design("T")
    X, y = sample(design.params, 50, design.inputs, np.random.default_rng(0))
    with pytest.raises(ValueError, match="lr: must be > 0"):
        fit_adam(X, y, design.params, lr=0.0)
    with pytest.raises(ValueError, match="max_steps: must be an integer >= 1"):
        fit_adam(X, y, design.params, max_steps=0)
    with pytest.raises(ValueError, match="variant: unknown bridge variant"):
        fit_adam(X, y, design.params, "dense_softmax")
    with pytest.raises(ValueError, match="init: expected MoEParams"):
        RouterMoE("T")


def test_em_from_a_shared_start():
    design = get_design("T")
    X, y = sample(design.params, 1000, design.inputs, np.random.default_rng(0))
    start = random_start(X, y, 4, 2, np.random.default_rng(2))
    em = fit_em(X, y, start, max_iter=100)
    lls = [v for _, v in em.trace]
    assert lls[0] == pytest.approx(loglik(start, X, y) / 1000, rel=1e-10)  # starts there
    assert np.all(np.diff(lls) >= -1e-9)  # EM never lowers the log-likelihood
    assert em.loglik == pytest.approx(loglik(em.params, X, y), rel=1e-10)
    assert em.params.k == 4 and isinstance(em.stop_reason, str)


def test_bridge_benchmark_tiny_run(tmp_path):
    import pandas as pd

    from simstudy.neural.bridge_bench import main

    assert main(["-q", "--out", str(tmp_path), "--n", "300", "--reps", "1",
                 "--random-starts", "1", "--kmeans-starts", "1", "--adam-steps", "40",
                 "--em-iter", "50"]) == 0
    fits = pd.read_csv(tmp_path / "bridge_fits.csv")
    assert len(fits) == 2 * 2 * 4  # fit sizes x starts x methods
    assert set(fits["method"]) == {"EM", "topk_softmax", "softmax_topk", "noisy_topk"}
    assert set(fits["loss_kind"]) == {"D1", "D2"}
    for _, g in fits.groupby("fit"):
        assert g["reached_best"].any() and (g["gap_per_obs"] >= -1e-12).all()
    summary = pd.read_csv(tmp_path / "bridge_summary.csv")
    assert ((summary["reach_best"] >= 0) & (summary["reach_best"] <= 1)).all()
    assert (tmp_path / "bridge_losses.png").exists() and (tmp_path / "bridge_reach.png").exists()
    readme = (tmp_path / "README.md").read_text()
    assert "reaches the best optimum" in readme.replace("*", "")
    assert "Not run yet: `python -m simstudy neural routers`" in readme
