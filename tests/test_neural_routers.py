"""Routers and the sparse MoE layer against plain-numpy references (spec neural.md section 1)."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from simstudy.neural.routers import (  # noqa: E402
    VARIANTS,
    ActiveFlopsFFN,
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

    def spy(e, h, *rest):
        calls.append((e, h.shape[0]))
        return orig(e, h, *rest)

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


def test_router_select_on_slope_matches_model_gating():
    from simstudy.model import MoEParams, gating_weights

    rng = np.random.default_rng(3)
    for d, k, K in ((1, 3, 2), (3, 5, 2), (2, 4, 3)):
        beta0 = rng.normal(size=k) * 2
        beta1 = rng.normal(size=(k, d)) * 3
        beta0[0], beta1[0] = 0.0, 0.0
        p = MoEParams(beta0=beta0, beta1=beta1, a=np.zeros((k, d)), b=np.zeros(k),
                      v=np.ones(k), K=K, ref=0)
        X = rng.uniform(-1, 1, size=(200, d))
        for variant in ("topk_softmax", "noisy_topk"):
            r = Router(d, k, K, variant, bias=True, select_on_slope=True).double().eval()
            with torch.no_grad():
                r.gate.weight.copy_(torch.tensor(beta1))
                r.gate.bias.copy_(torch.tensor(beta0))
                got = r(torch.tensor(X)).dense().numpy()
            np.testing.assert_allclose(got, gating_weights(p, X), rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="select_on_slope: needs bias=True"):
        Router(2, 4, 2, bias=False, select_on_slope=True)
    with pytest.raises(ValueError, match="select_on_slope"):
        Router(2, 4, 2, "softmax_topk", bias=True, select_on_slope=True)


def test_noisy_router_with_slope_selection_trains_noise_and_balances():
    torch.manual_seed(0)
    r = Router(3, 4, 2, "noisy_topk", bias=True, select_on_slope=True).train()
    h = torch.randn(64, 3)
    out = r(h)
    assert out.aux_loss > 0
    out.aux_loss.backward()
    assert r.noise.weight.grad is not None and r.noise.weight.grad.abs().sum() > 0


def test_sharing_layers_hold_the_same_weights():
    torch.manual_seed(0)
    sparse = SparseMoE(8, 16, 4, 2)
    dense = DenseMaskedMoE.sharing(sparse)
    assert dense.router is sparse.router and dense.experts is sparse.experts
    h = torch.randn(30, 8)
    with torch.no_grad():
        torch.testing.assert_close(sparse(h)[0], dense(h)[0], rtol=1e-5, atol=1e-6)


def test_active_flops_ffn_is_router_plus_one_wide_ffn():
    torch.manual_seed(1)
    base = ActiveFlopsFFN(8, 16, 4, 2)
    assert base.ffn.w1.shape == (1, 8, 32)  # inner width K * ffn
    h = torch.randn(10, 8, requires_grad=True)
    out, r = base(h)
    ref = torch.nn.functional.gelu(h @ base.ffn.w1[0] + base.ffn.b1[0]) @ base.ffn.w2[0] \
        + base.ffn.b2[0]
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    # the router's backward runs (its gradient is zero, its output being multiplied by 0)
    assert base.router.gate.weight.grad is not None


# -- benchmark machinery ---------------------------------------------------------------------
def test_peak_memory_measures_allocations():
    from simstudy.neural.routers_bench import peak_forward_memory

    def fn():
        a = torch.empty(250_000)  # 1 MB
        b = torch.empty(500_000)  # 2 MB
        del a, b
        c = torch.empty(1_000_000)  # 4 MB after the others are gone
        del c

    assert peak_forward_memory(fn) == 4_000_000


def test_quiet_profiler_drops_only_profiler_lines(capfd):
    import os

    from simstudy.neural.routers_bench import quiet_profiler

    with quiet_profiler():
        os.write(2, b"STAGE:2026-12-01 08:37:11 8445:8445 SyncActivityProfilerHandler.cpp:51] "
                    b"Completed Stage: Warm Up\n")
        os.write(2, b"USDT:2026-12-01 08:37:11 8445:8445 SyncActivityProfilerHandler.cpp:52] "
                    b"profiler_start\n")
        os.write(2, b"a real error message\n")
    err = capfd.readouterr().err
    assert "a real error message" in err
    assert "SyncActivityProfilerHandler" not in err


def test_time_alternated_rotates_the_order():
    from simstudy.neural.routers_bench import time_alternated

    calls = []
    fns = {n: (lambda n=n: calls.append(n)) for n in "abc"}
    out = time_alternated(fns, runs=6, min_run_s=1e-9, warmup=0)
    assert set(out) == set("abc") and all(v.shape == (6,) and (v > 0).all() for v in out.values())
    # after calibration (one call each: every call is slower than 1e-9 s), one per round
    rounds = calls[-18:]
    firsts = [rounds[3 * r] for r in range(6)]
    assert firsts == ["a", "b", "c", "a", "b", "c"]
    for r in range(6):
        assert sorted(rounds[3 * r : 3 * r + 3]) == ["a", "b", "c"]


def test_summarise_runs_forms_ratios_within_rounds():
    from simstudy.neural.routers_bench import summarise_runs

    # the machine slows down over the rounds: the per-round ratio stays 4, the ratio of the
    # separate medians would not
    slow = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    times = {"sparse": slow, "dense_masked": 4 * slow, "dense_ffn": 0.5 * slow}
    row = summarise_runs(times, tokens=100, E=8, K=1)
    assert row["speedup"] == pytest.approx(4.0)
    assert row["speedup_q25"] == pytest.approx(4.0) and row["speedup_q75"] == pytest.approx(4.0)
    assert row["dispatch_efficiency"] == pytest.approx(0.5)
    assert row["ffn_speedup"] == pytest.approx(8.0)
    assert row["efficiency"] == pytest.approx(0.5)
    assert row["tps_sparse"] == pytest.approx(100 / 4.0)
    assert row["tps_sparse_q25"] == pytest.approx(100 / 8.0)
    # a skipped dense-masked layer gives NaN ratios, not an error
    row = summarise_runs({"sparse": slow, "dense_ffn": slow}, tokens=100, E=8, K=1)
    assert math.isnan(row["speedup"]) and row["dispatch_efficiency"] == pytest.approx(1.0)


def test_consistency_flags_a_dense_masked_spread():
    import pandas as pd

    from simstudy.neural.routers_bench import consistency

    rows = []
    for K, tps in ((1, 100.0), (2, 104.0), (4, 300.0)):
        rows.append({"pass": "forward", "E": 8, "hidden": 64, "tokens": 512, "K": K,
                     "tps_dense_masked": tps, "tps_dense_masked_q25": tps * 0.9,
                     "tps_dense_masked_q75": tps * 1.1, "dense_masked_skipped": False})
    for K, tps in ((1, 50.0), (2, 55.0)):
        rows.append({"pass": "forward", "E": 8, "hidden": 128, "tokens": 512, "K": K,
                     "tps_dense_masked": tps, "tps_dense_masked_q25": tps,
                     "tps_dense_masked_q75": tps, "dense_masked_skipped": False})
    # spread 1.4 with wide, overlapping IQRs across K: noise, not a K-dependent cost
    for K, (tps, lo, hi) in ((1, (100.0, 70.0, 150.0)), (2, (140.0, 120.0, 160.0))):
        rows.append({"pass": "forward", "E": 8, "hidden": 256, "tokens": 512, "K": K,
                     "tps_dense_masked": tps, "tps_dense_masked_q25": lo,
                     "tps_dense_masked_q75": hi, "dense_masked_skipped": False})
    c = consistency(pd.DataFrame(rows), tol=0.25).set_index("hidden")
    assert c.loc[64, "spread"] == pytest.approx(3.0) and not c.loc[64, "ok"]
    assert c.loc[64, "verdict"] == "inconsistent" and not c.loc[64, "iqr_overlap"]
    assert c.loc[128, "spread"] == pytest.approx(1.1) and c.loc[128, "ok"]
    assert c.loc[128, "verdict"] == "ok"
    assert c.loc[64, "max_rel_iqr"] == pytest.approx(0.2)
    assert c.loc[256, "spread"] == pytest.approx(1.4) and not c.loc[256, "ok"]
    assert c.loc[256, "verdict"] == "noise" and c.loc[256, "iqr_overlap"]


def test_dense_masked_flop_count():
    from simstudy.neural.routers_bench import dense_masked_gflop

    assert dense_masked_gflop(64, 256, 256, 1000, "forward") == pytest.approx(
        4 * 1000 * 256 * 256 * 64 / 1e9)
    assert dense_masked_gflop(8, 16, 32, 10, "forward_backward") == pytest.approx(
        3 * 4 * 10 * 16 * 32 * 8 / 1e9)


def test_routers_benchmark_tiny_run(tmp_path, capfd):
    import json

    import pandas as pd

    from simstudy.neural.routers_bench import main

    args = ["-q", "--out", str(tmp_path), "--experts", "4", "--k", "1,2", "--hidden", "16",
            "--tokens", "64", "--sweep-tokens", "64,128", "--sweep-experts", "4",
            "--sweep-hidden", "16", "--runs", "5", "--min-run", "0.0005", "--dense-cap", "0"]
    assert main(args) == 0
    grid = pd.read_csv(tmp_path / "throughput.csv")
    assert len(grid) == 2 and (grid["runs"] == 5).all()
    assert (grid["rel_diff"] < 1e-5).all()
    assert (grid["memory_ratio"] < 1).all()  # the sparse layer never holds E outputs per token
    assert (grid["speedup_q25"] <= grid["speedup"]).all()
    assert (grid["speedup"] <= grid["speedup_q75"]).all()
    sweep = pd.read_csv(tmp_path / "tokens.csv")
    assert set(sweep["pass"]) == {"forward", "forward_backward"} and len(sweep) == 4
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert len(runs) == 6 * 3 * 5  # configurations x layers x runs
    cons = pd.read_csv(tmp_path / "consistency.csv")
    assert len(cons) == 1 and cons["K"].iloc[0] == "1/2"
    for name in ("throughput.png", "tokens.png", "efficiency.png", "throughput.md"):
        assert (tmp_path / name).exists()
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["runs"] == 5 and len(run["load_start"]) == 3
    assert "SyncActivityProfilerHandler" not in capfd.readouterr().err
    readme = (tmp_path / "README.md").read_text()
    assert "Noise check" in readme and "Not run yet: `python -m simstudy neural bridge`" in readme
    with pytest.raises(ValueError, match="runs: at least 5"):
        main(args[:-6] + ["--runs", "3"])


def test_dense_cap_skips_only_the_dense_masked_timing():
    from simstudy.neural.routers_bench import benchmark_config

    row, raw = benchmark_config(4, 2, 16, 600, "forward", 5, 1e-4, dense_cap_gflop=1e-6)
    assert row["dense_masked_skipped"] and math.isnan(row["speedup"])
    assert set(raw["layer"]) == {"sparse", "dense_ffn"}
    assert row["rel_diff"] < 1e-5  # still checked against the reference on 512 tokens


def test_group_times_every_k_in_the_same_rounds_on_shared_weights():
    from simstudy.neural.routers_bench import _layers, benchmark_group

    layers = _layers(8, [1, 2, 4], 16, 16, seed=0)
    experts = {id(m.experts) for (n, _), m in layers.items() if n != "dense_ffn"}
    gates = {id(m.router.gate) for m in layers.values()}
    assert len(experts) == 1 and len(gates) == 1
    assert [layers["sparse", K].router.k for K in (1, 2, 4)] == [1, 2, 4]
    rows, raw = benchmark_group(8, [1, 2, 4], 16, 128, "forward", 5, 1e-4, memory=False)
    assert [r["K"] for r in rows] == [1, 2, 4]
    assert all(r["rel_diff"] < 1e-5 for r in rows)
    assert len(raw) == 3 * 3 * 5
    assert set(raw.groupby(["layer", "K"]).size()) == {5}


def test_neural_cli_bad_option_is_one_line(capsys):
    from simstudy.neural.cli import main

    assert main(["bridge", "--reps", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "simstudy neural bridge: reps: must be >= 1, got 0"


@pytest.mark.parametrize("E,K,T", [(8, 2, 50), (16, 1, 7), (4, 4, 33)])
def test_sparse_backward_matches_dense_masked(E, K, T):
    torch.manual_seed(E + K)
    sparse = SparseMoE(6, 5, E, K).double()
    dense = DenseMaskedMoE.sharing(sparse)
    h = torch.randn(T, 6, dtype=torch.float64, requires_grad=True)
    g = torch.randn(T, 6, dtype=torch.float64)
    params = [h, *sparse.parameters()]
    gs = torch.autograd.grad(sparse(h)[0], params, g, allow_unused=True)
    gd = torch.autograd.grad(dense(h)[0], params, g, allow_unused=True)
    for a, b in zip(gs, gd, strict=True):
        a = torch.zeros_like(b) if a is None else a
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
