"""Routers and the sparse MoE layer against plain-numpy references (spec neural.md section 1)."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from simstudy.neural.routers import (  # noqa: E402
    VARIANTS,
    DenseMaskedMoE,
    Router,
    SparseMoE,
    cv_squared,
    load_balancing_loss,
    noisy_topk_load,
    route,
)

pytestmark = pytest.mark.torch
torch.set_num_threads(1)


# -- plain numpy references -----------------------------------------------------------------
def np_softmax(z):
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


def np_route(logits, k, variant, sel=None):
    """Per-token loop: (T, E) dense weight matrix."""
    T, E = logits.shape
    out = np.zeros((T, E))
    for t in range(T):
        z = logits[t]
        if variant == "dense_softmax":
            out[t] = np_softmax(z)
            continue
        if variant == "softmax_topk":
            p = np_softmax(z)
            keep = np.argsort(-p, kind="stable")[:k]
            out[t, keep] = p[keep]
            continue
        s = z if sel is None else sel[t]
        keep = np.argsort(-s, kind="stable")[:k]
        out[t, keep] = np_softmax(z[keep])
    return out


def np_moe(h, W, w1, b1, w2, b2):
    """Per-token, per-selected-expert loop of the MoE output."""
    out = np.zeros_like(h)
    for t in range(h.shape[0]):
        for e in np.flatnonzero(W[t]):
            u = h[t] @ w1[e] + b1[e]
            gelu = 0.5 * u * (1 + np.array([math.erf(x / math.sqrt(2)) for x in u]))
            out[t] += W[t, e] * (gelu @ w2[e] + b2[e])
    return out


SIZES = [(5, 4, 1), (13, 8, 2), (32, 8, 4), (17, 64, 2), (9, 3, 3)]


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "noisy_topk"])
@pytest.mark.parametrize("T,E,k", SIZES)
def test_route_matches_numpy(variant, T, E, k):
    rng = np.random.default_rng(T * E + k)
    logits = rng.normal(size=(T, E)) * 2
    idx, w = route(torch.tensor(logits), k, variant)
    got = torch.zeros(T, E, dtype=torch.float64).scatter(1, idx, w).numpy()
    np.testing.assert_allclose(got, np_route(logits, k, variant), atol=1e-12)
    if variant in ("topk_softmax", "dense_softmax"):
        np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-12)
    else:
        assert np.all(got.sum(1) <= 1 + 1e-12)


def test_route_selection_logits_match_model_gating():
    """Selection on beta1.x, weights with beta1.x + beta0: the statistical model's gating."""
    from simstudy.model import gating_weights, get_design

    design = get_design("T")
    p = design.params
    X = design.inputs.sample(200, np.random.default_rng(0))
    slope = torch.tensor(X @ p.beta1.T)
    idx, w = route(slope + torch.tensor(p.beta0), p.K, selection_logits=slope, stable=True)
    got = torch.zeros(200, p.k, dtype=torch.float64).scatter(1, idx, w).numpy()
    np.testing.assert_allclose(got, gating_weights(p, X), atol=1e-12)
    # selecting on the full logits would differ somewhere on this design
    idx2, w2 = route(slope + torch.tensor(p.beta0), p.K, stable=True)
    got2 = torch.zeros(200, p.k, dtype=torch.float64).scatter(1, idx2, w2).numpy()
    assert not np.allclose(got2, got)


@pytest.mark.parametrize("T,E,k", SIZES)
def test_topk_softmax_equals_softmax_topk_renormalised(T, E, k):
    rng = np.random.default_rng(7 + T)
    logits = torch.tensor(rng.normal(size=(T, E)))
    i1, w1 = route(logits, k, "topk_softmax", stable=True)
    i2, w2 = route(logits, k, "softmax_topk", stable=True)
    assert torch.equal(i1, i2)  # softmax is monotone: same selected set
    torch.testing.assert_close(w1, w2 / w2.sum(1, keepdim=True), rtol=1e-12, atol=1e-12)


def test_stable_ties_go_to_lower_index():
    logits = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.0]], dtype=torch.float64)
    idx, _ = route(logits, 2, stable=True)
    assert idx.tolist() == [[1, 2]]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(
    "T,E,k,hidden,ffn", [(7, 4, 1, 6, 5), (20, 8, 2, 8, 12), (33, 16, 4, 5, 3)]
)
def test_sparse_equals_dense_masked_and_numpy(variant, T, E, k, hidden, ffn):
    torch.manual_seed(T + E)
    sparse = SparseMoE(hidden, ffn, E, k, variant, router_bias=True).double().eval()
    dense = DenseMaskedMoE(hidden, ffn, E, k, variant, router_bias=True).double().eval()
    dense.load_state_dict(sparse.state_dict())
    h = torch.randn(T, hidden, dtype=torch.float64)
    ys, rs = sparse(h)
    yd, rd = dense(h)
    torch.testing.assert_close(ys, yd, rtol=1e-10, atol=1e-10)
    W = rs.dense().detach().numpy()
    ex = sparse.experts
    ref = np_moe(h.numpy(), W, *(p.detach().numpy() for p in (ex.w1, ex.b1, ex.w2, ex.b2)))
    np.testing.assert_allclose(ys.detach().numpy(), ref, rtol=1e-9, atol=1e-9)
    # in float32 the two layers agree to float tolerance too
    sparse32 = SparseMoE(hidden, ffn, E, k, variant).eval()
    dense32 = DenseMaskedMoE(hidden, ffn, E, k, variant).eval()
    dense32.load_state_dict(sparse32.state_dict())
    h32 = h.float()
    torch.testing.assert_close(sparse32(h32)[0], dense32(h32)[0], rtol=1e-5, atol=1e-5)


def test_noisy_training_same_routing_gives_same_output():
    """With the noise drawn once, sparse and dense mixing of the same decisions agree."""
    torch.manual_seed(3)
    sparse = SparseMoE(8, 6, 8, 2, "noisy_topk").double().train()
    dense = DenseMaskedMoE(8, 6, 8, 2, "noisy_topk").double()
    dense.load_state_dict(sparse.state_dict())
    h = torch.randn(25, 8, dtype=torch.float64)
    r = sparse.router(h)
    torch.testing.assert_close(sparse._mix(h, r), dense._mix(h, r), rtol=1e-10, atol=1e-10)


def test_sparse_layer_never_runs_unselected_experts():
    torch.manual_seed(0)
    layer = SparseMoE(4, 3, 8, 1).double().eval()
    with torch.no_grad():
        layer.router.gate.weight.zero_()
        layer.router.gate.weight[5] = 1.0  # expert 5 wins on positive tokens
    calls = []
    orig = layer.experts.expert

    def spy(e, h):
        calls.append((e, h.shape[0]))
        return orig(e, h)

    layer.experts.expert = spy
    h = torch.rand(10, 4, dtype=torch.float64) + 0.1
    layer(h)
    assert calls == [(5, 10)]


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_reach_router_and_experts(variant):
    torch.manual_seed(1)
    layer = SparseMoE(6, 5, 8, 2, variant).train()
    h = torch.randn(40, 6)
    y, r = layer(h)
    (y.pow(2).mean() + r.aux_loss).backward()
    assert layer.router.gate.weight.grad is not None
    assert layer.router.gate.weight.grad.abs().sum() > 0
    for p in (layer.experts.w1, layer.experts.w2):
        assert p.grad.abs().sum() > 0
    if variant == "noisy_topk":
        # the smooth load estimator makes the balancing loss differentiable in the noise net
        assert layer.router.noise.weight.grad.abs().sum() > 0


def test_cv_squared_hand_cases():
    assert float(cv_squared(torch.full((8,), 3.0))) == 0.0
    # all tokens to one expert of E: cv^2 = E - 1
    for E in (2, 4, 8):
        x = torch.zeros(E)
        x[0] = 10.0
        assert float(cv_squared(x)) == pytest.approx(E - 1, rel=1e-6)
    x = torch.tensor([1.0, 3.0])  # mean 2, var 1
    assert float(cv_squared(x)) == pytest.approx(0.25)


def test_load_balancing_loss_uniform_routing_is_zero():
    E, T = 4, 8
    # each expert gets the same tokens and weight: importance and load uniform
    importance = torch.full((E,), T / E)
    load = torch.full((E,), 2.0 * T / E)
    assert float(load_balancing_loss(importance, load)) == 0.0
    # eval-mode noisy router with a uniform, symmetric assignment
    router = Router(E, E, 1, "noisy_topk").eval()
    with torch.no_grad():
        router.gate.weight.copy_(torch.eye(E))
    h = torch.eye(E).repeat(2, 1)  # token t prefers expert t mod E
    with torch.no_grad():
        assert float(router(h).aux_loss) == pytest.approx(0.0, abs=1e-12)
    # all tokens collapse onto one expert: (E-1) + (E-1)
    h_bad = torch.zeros(T, E)
    h_bad[:, 0] = 1.0
    with torch.no_grad():
        assert float(router(h_bad).aux_loss) == pytest.approx(2 * (E - 1), rel=1e-5)


def test_noisy_load_estimator_matches_monte_carlo():
    """P(x, i): chance that expert i stays in the top k when only its noise is redrawn."""
    rng = np.random.default_rng(0)
    T, E, k = 6, 5, 2
    clean = rng.normal(size=(T, E))
    std = rng.uniform(0.5, 1.5, size=(T, E))
    noisy = clean + rng.normal(size=(T, E)) * std
    got = noisy_topk_load(torch.tensor(clean), torch.tensor(noisy), torch.tensor(std), k).numpy()
    draws = 100_000
    ref = np.zeros(E)
    for t in range(T):
        for i in range(E):
            others = np.delete(noisy[t], i)
            kth = np.sort(others)[::-1][k - 1]
            ref[i] += np.mean(clean[t, i] + rng.normal(size=draws) * std[t, i] > kth)
    np.testing.assert_allclose(got, ref, atol=4 * np.sqrt(T * 0.25 / draws))


def test_invalid_arguments_raise_named_errors():
    with pytest.raises(ValueError, match="variant: unknown router variant 'top2'"):
        Router(4, 4, 2, "top2")
    with pytest.raises(ValueError, match="k: must be an integer with 1 <= k <= n_experts = 4"):
        Router(4, 4, 5)
    with pytest.raises(ValueError, match="k: must be an integer"):
        route(torch.zeros(3, 4), 0)
    with pytest.raises(ValueError, match="hidden: must be an integer >= 1"):
        Router(0, 4, 1)
    with pytest.raises(ValueError, match="n_experts: must be an integer >= 1"):
        SparseMoE(4, 4, 0, 1)
    with pytest.raises(ValueError, match="ffn: must be an integer >= 1"):
        SparseMoE(4, 0, 4, 1)
    with pytest.raises(ValueError, match="logits: expected shape"):
        route(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="selection_logits: shape"):
        route(torch.zeros(3, 4), 1, selection_logits=torch.zeros(3, 5))
    with pytest.raises(ValueError, match="selection_logits: only"):
        route(torch.zeros(3, 4), 1, "softmax_topk", selection_logits=torch.zeros(3, 4))


# -- bridge and benchmark --------------------------------------------------------------------
def test_torch_moe_loglik_matches_numpy_model():
    from simstudy.model import MoEParams, get_design, loglik, sample
    from simstudy.neural.bridge import TorchTopKMoE

    rng = np.random.default_rng(5)
    design = get_design("T")
    for n in (7, 100, 2000):
        X, y = sample(design.params, n, design.inputs, rng)
        m = TorchTopKMoE(design.params)
        got = float(m.log_density(torch.tensor(X), torch.tensor(y)).sum().detach())
        assert got == pytest.approx(loglik(design.params, X, y), rel=1e-12)
        assert m.to_params() == design.params
    # a random d = 3, k = 5, K = 2 model too
    p = MoEParams(
        beta0=np.r_[rng.normal(size=2), 0.0, rng.normal(size=2)],
        beta1=np.vstack([rng.normal(size=(2, 3)), np.zeros((1, 3)), rng.normal(size=(2, 3))]),
        a=rng.normal(size=(5, 3)),
        b=rng.normal(size=5),
        v=rng.uniform(0.1, 1, size=5),
        K=2,
        ref=2,
    )
    X = rng.uniform(-1, 1, size=(300, 3))
    y = rng.normal(size=300)
    got = float(TorchTopKMoE(p).log_density(torch.tensor(X), torch.tensor(y)).sum().detach())
    assert got == pytest.approx(loglik(p, X, y), rel=1e-12)


def test_adam_fit_improves_loglik_and_keeps_reference_fixed():
    from simstudy.estimation.init import near_truth_start
    from simstudy.model import MoEParams, get_design, loglik, sample
    from simstudy.neural.bridge import fit_adam

    design = get_design("T")
    X, y = sample(design.params, 2000, design.inputs, np.random.default_rng(0))
    parts = near_truth_start(design.params, 3, [], 0.2, None, 2000, np.random.default_rng(1))
    start = MoEParams(*parts[:5], K=2, ref=parts[5])
    res = fit_adam(X, y, start, max_iter=400)
    assert res.loglik == pytest.approx(loglik(res.params, X, y), rel=1e-10)
    assert res.loglik > loglik(start, X, y)
    assert res.params.beta0[1] == 0.0 and np.all(res.params.beta1[1] == 0.0)
    with pytest.raises(ValueError, match="lr: must be > 0"):
        fit_adam(X, y, start, lr=0.0)
    with pytest.raises(ValueError, match="max_iter: must be an integer >= 1"):
        fit_adam(X, y, start, max_iter=0)


def test_peak_memory_measures_allocations():
    from simstudy.neural.routers_bench import peak_forward_memory

    def fn():
        a = torch.empty(250_000)  # 1 MB
        b = torch.empty(500_000)  # 2 MB
        del a, b
        c = torch.empty(1_000_000)  # 4 MB after the others are gone
        del c

    assert peak_forward_memory(fn) == 4_000_000


def test_routers_benchmark_quick(tmp_path):
    import pandas as pd

    from simstudy.neural.routers_bench import main

    assert main(["--quick", "-q", "--out", str(tmp_path)]) == 0
    df = pd.read_csv(tmp_path / "throughput.csv")
    assert len(df) == 4 and (tmp_path / "throughput.png").exists()
    assert (df["rel_diff"] < 1e-5).all()
    assert (df["memory_ratio"] < 1).all()  # the sparse layer never holds E outputs per token
    assert (tmp_path / "throughput.md").read_text().startswith("| E | K |")
    bridge = pd.read_csv(tmp_path / "bridge.csv")
    assert set(bridge["method"]) == {"EM", "Adam"}
    assert bridge["D1"].notna().all() and (bridge["hellinger"] > 0).all()
    # both fits start from the same near-truth point and land near the same likelihood
    ll = bridge.set_index("method")["loglik"]
    assert abs(ll["EM"] - ll["Adam"]) < 5.0
