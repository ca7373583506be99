"""PHATGOOSE proxy: routing scores, gates, LoRA modes, baselines, tasks and an end-to-end run.

Numerics are checked against plain-numpy references written here, on random inputs of several
sizes, and against hand-computed examples.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from simstudy.neural.phatgoose import bench  # noqa: E402
from simstudy.neural.phatgoose.analysis import (  # noqa: E402
    distribution_entropy,
    routing_summary,
)
from simstudy.neural.phatgoose.base import TinyViT, patchify  # noqa: E402
from simstudy.neural.phatgoose.baselines import (  # noqa: E402
    best_individual,
    expert_task_matrix,
    oracle,
)
from simstudy.neural.phatgoose.lora import (  # noqa: E402
    LoRALinear,
    Merged,
    Off,
    Routed,
    Single,
    add_expert,
    attach_lora,
    capture_inputs,
    lora_modules,
    use_mode,
)
from simstudy.neural.phatgoose.routing import (  # noqa: E402
    RetrievalRouter,
    VectorRouter,
    arrow_router,
    arrow_scores,
    average_activation_router,
    phatgoose_router,
    standardised_scores,
    top_k_softmax,
    top_right_singular_vector,
)
from simstudy.neural.phatgoose.tasks import (  # noqa: E402
    HELD_IN,
    HELD_OUT,
    Task,
    get_task,
    load_split,
)
from simstudy.neural.phatgoose.train import (  # noqa: E402
    TrainConfig,
    to_tensors,
    train_base,
    train_expert,
    train_gate,
)

pytestmark = pytest.mark.torch
torch.set_num_threads(1)
SIZES = [(1, 3, 2), (5, 8, 3), (17, 48, 6)]  # (tokens, d, experts)


# ---------------------------------------------------------------- plain-numpy references
def np_standardise(x):
    x = np.asarray(x, dtype=float)
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-12)


def np_phatgoose_weights(u, v, k):
    """Loop-over-tokens reference: standardised scores, top-k, softmax over the k."""
    w = np.zeros((u.shape[0], v.shape[0]))
    for t in range(u.shape[0]):
        s = np.array([np_standardise(u[t]) @ np_standardise(v[i]) / math.sqrt(u.shape[1])
                      for i in range(v.shape[0])])
        top = np.argsort(-s, kind="stable")[: min(k, len(s))]
        e = np.exp(s[top] - s[top].max())
        w[t, top] = e / e.sum()
    return w


def np_routed_output(W, b, As, Bs, r, weights, u):
    out = u @ W.T + b
    for i in range(len(As)):
        out = out + weights[:, [i]] * ((u @ As[i].T) @ Bs[i].T / r)
    return out


def random_lora_linear(d_in, d_out, n_experts, rank=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = LoRALinear(torch.nn.Linear(d_in, d_out), rank, name="m")
    for _ in range(n_experts):
        i = m.add_expert(g)
        m.B[i].data.normal_(generator=g)
        m.A[i].data.normal_(generator=g)
        m.gate[i].data.normal_(generator=g)
    return m


# ---------------------------------------------------------------- routing scores
def test_standardised_scores_hand_example():
    # u = (1,2,3) standardises to (-sqrt(1.5), 0, sqrt(1.5)); v1 = (3,2,1) to its negative, so
    # score 1 = -3/sqrt(3) = -sqrt(3); v2 = (0,0,6) standardises to (-1/sqrt2, -1/sqrt2, sqrt2),
    # dot = sqrt(0.75) + sqrt(3) = 1.5 sqrt(3), score 2 = 1.5
    u = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    v = torch.tensor([[3.0, 2.0, 1.0], [0.0, 0.0, 6.0]], dtype=torch.float64)
    s = standardised_scores(u, v)
    np.testing.assert_allclose(s.numpy(), [[-math.sqrt(3.0), 1.5]], atol=1e-9)
    # top-2 of 2: softmax over (-sqrt3, 1.5)
    w = top_k_softmax(s, 2).numpy()[0]
    e = math.exp(1.5 + math.sqrt(3.0))
    np.testing.assert_allclose(w, [1 / (1 + e), e / (1 + e)], atol=1e-12)


def test_arrow_scores_hand_example():
    u = torch.tensor([[1.0, -2.0]])
    v = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    np.testing.assert_allclose(arrow_scores(u, v, temperature=2.0).numpy(), [[0.5, 0.5]])


def test_top_k_softmax_hand_example():
    w = top_k_softmax(torch.tensor([[1.0, 3.0, 2.0]]), 2).numpy()[0]
    e = math.e
    np.testing.assert_allclose(w, [0.0, e / (e + 1), 1 / (e + 1)], rtol=1e-6)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("shape", [(4, 5), (3, 7, 8)])
def test_top_k_weights_sum_to_one(k, shape):
    s = torch.randn(*shape, generator=torch.Generator().manual_seed(k))
    w = top_k_softmax(s, k)
    np.testing.assert_allclose(w.sum(-1).numpy(), 1.0, atol=1e-6)
    assert ((w > 0).sum(-1) == min(k, shape[-1])).all()
    # the kept experts are the k largest scores
    assert (w.topk(min(k, shape[-1]), dim=-1).indices.sort(-1).values
            == s.topk(min(k, shape[-1]), dim=-1).indices.sort(-1).values).all()


@pytest.mark.parametrize("n,d,m", SIZES)
def test_vector_router_matches_numpy(n, d, m):
    rng = np.random.default_rng(n + d + m)
    u, v = rng.normal(size=(n, d)), rng.normal(size=(m, d))
    router = VectorRouter({"x": torch.from_numpy(v)}, list(range(m)), top_k=2)
    w, experts = router.weights("x", torch.from_numpy(u))
    assert experts == tuple(range(m))
    np.testing.assert_allclose(w.numpy(), np_phatgoose_weights(u, v, 2), atol=1e-10)


@pytest.mark.parametrize("n,d,m", SIZES)
def test_routed_lora_linear_matches_numpy(n, d, m):
    mod = random_lora_linear(d, d + 1, m, seed=d).double()
    router = phatgoose_router(mod, list(range(m)))
    u = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mod.mode = Routed(router)
    got = mod(u).detach().numpy()
    gates = np.stack([g.detach().numpy() for g in mod.gate])
    weights = np_phatgoose_weights(u.numpy(), gates, 2)
    want = np_routed_output(mod.base.weight.detach().numpy(), mod.base.bias.detach().numpy(),
                            [a.detach().numpy() for a in mod.A],
                            [b.detach().numpy() for b in mod.B], mod.rank, weights, u.numpy())
    np.testing.assert_allclose(got, want, atol=1e-10)


def test_router_records_statistics():
    rng = np.random.default_rng(0)
    router = VectorRouter({"x": torch.from_numpy(rng.normal(size=(3, 4)))}, [0, 1, 2],
                          record=True)
    u = torch.from_numpy(rng.normal(size=(10, 4)))
    w, _ = router.weights("x", u)
    st = router.stats["x"]
    assert st["n"] == 10
    np.testing.assert_allclose(st["weight_sum"].numpy(), w.sum(0).numpy())
    assert float(st["top1"].sum()) == 10


# ---------------------------------------------------------------- gates and LoRA modes
def test_zero_gate_vector_gives_one_half():
    m = LoRALinear(torch.nn.Linear(5, 3), rank=2)
    i = m.add_expert(torch.Generator().manual_seed(0))
    m.B[i].data.normal_()
    u = torch.randn(7, 5)
    np.testing.assert_allclose(m.gate_value(i, u).detach().numpy(), 0.5)
    m.mode = Single(i, gated=True)
    want = m.base(u) + 0.5 * m.lora(i, u)
    np.testing.assert_allclose(m(u).detach().numpy(), want.detach().numpy(), atol=1e-6)


def test_fresh_lora_equals_base():
    torch.manual_seed(0)
    model = TinyViT(width=16, depth=1, heads=2)
    x = torch.rand(6, 8, 8)
    with torch.no_grad():
        want = model(x)
    attach_lora(model, rank=2)
    i = add_expert(model, torch.Generator().manual_seed(0))
    assert float(lora_modules(model)[0].A[i].detach().std()) > 0  # A is random, B = 0
    with torch.no_grad(), use_mode(model, Single(i)):
        got = model(x)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-6)
    assert all(float(m.B[i].abs().max()) == 0 for m in lora_modules(model))
    assert all(not p.requires_grad for p in model.parameters())


def _model_with_experts(n_experts, seed=0):
    torch.manual_seed(seed)
    model = TinyViT(width=16, depth=1, heads=2)
    attach_lora(model, rank=2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(n_experts):
        i = add_expert(model, g)
        for m in lora_modules(model):
            m.B[i].data.normal_(generator=g)
            m.A[i].data.normal_(generator=g)
            m.gate[i].data.normal_(generator=g)
    return model


def test_one_expert_moe_equals_that_expert():
    model = _model_with_experts(1)
    x = torch.rand(5, 8, 8)
    with torch.no_grad():
        with use_mode(model, Single(0)):
            want = model(x)
        for router in (phatgoose_router(model, [0]), arrow_router(model, [0])):
            with use_mode(model, Routed(router)):
                np.testing.assert_allclose(model(x).numpy(), want.numpy(), atol=1e-6)
        with use_mode(model, Merged((0,))):
            np.testing.assert_allclose(model(x).numpy(), want.numpy(), atol=1e-5)


def test_merged_equals_uniform_mixture():
    m = random_lora_linear(6, 4, 3).double()
    u = torch.randn(9, 6, dtype=torch.float64)
    m.mode = Merged((0, 1, 2))
    want = m.base(u) + sum(m.lora(i, u) for i in range(3)) / 3
    np.testing.assert_allclose(m(u).detach().numpy(), want.detach().numpy(), atol=1e-10)


def test_routed_model_uses_only_top2_experts():
    model = _model_with_experts(4)
    router = phatgoose_router(model, [0, 1, 2, 3], record=True)
    with torch.no_grad(), use_mode(model, Routed(router)):
        model(torch.rand(3, 8, 8))
    assert set(router.stats) == {m.name for m in lora_modules(model)}
    for name, st in router.stats.items():
        # the head sees one pooled token per example, every other module 16 patch tokens
        assert st["n"] == (3 if name == "head" else 3 * 16)
        np.testing.assert_allclose(float(st["weight_sum"].sum()), st["n"], rtol=1e-5)


@pytest.mark.parametrize("d_out,d_in", [(3, 5), (8, 4), (6, 6)])
def test_arrow_vector_is_top_right_singular_vector(d_out, d_in):
    rng = np.random.default_rng(d_in)
    delta = rng.normal(size=(d_out, d_in))
    v = top_right_singular_vector(torch.from_numpy(delta)).numpy()
    _, s, vt = np.linalg.svd(delta)
    assert abs(abs(v @ vt[0]) - 1) < 1e-10
    np.testing.assert_allclose(np.linalg.norm(delta @ v), s[0], rtol=1e-10)


def test_average_activation_vectors_are_mean_inputs():
    model = _model_with_experts(2)
    x = torch.rand(4, 8, 8)
    with torch.no_grad(), use_mode(model, Single(1)), capture_inputs(model) as means:
        model(x)
    # the patch embedding sees the raw 2x2 patches: its mean input is the mean patch
    np.testing.assert_allclose(means["embed"].numpy(),
                               patchify(x).reshape(-1, 4).mean(0).numpy(), atol=1e-6)
    router = average_activation_router([means, means], [0, 1])
    assert router.vectors["head"].shape == (2, 16)


def test_retrieval_nearest_neighbour():
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    r = RetrievalRouter(keys, torch.tensor([4, 7, 9]))
    got = r.assign(torch.tensor([[5.0, 0.1], [0.2, 3.0], [2.0, 2.1]]))
    assert got.tolist() == [4, 7, 9]


def test_oracle_and_best_individual():
    mat = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.6]])
    rows, acc = oracle(mat)
    assert rows.tolist() == [0, 1, 1] and acc.tolist() == [0.9, 0.8, 0.6]
    r, accs = best_individual(mat)
    assert r == 1 and accs.tolist() == [0.2, 0.8, 0.6]


# ---------------------------------------------------------------- analysis
def test_entropy_and_routing_summary():
    assert distribution_entropy(np.array([0.25] * 4)) == pytest.approx(1.0)
    assert distribution_entropy(np.array([1.0, 0, 0])) == pytest.approx(0.0)
    stats = {"a": {"weight_sum": np.array([6.0, 4.0, 0.0]), "top1": np.array([6.0, 4, 0]),
                   "n": 10},
             "b": {"weight_sum": np.array([0.0, 5.0, 5.0]), "top1": np.array([0.0, 10, 0]),
                   "n": 10}}
    s = routing_summary(stats, oracle=1, constituents=[0])
    assert s["oracle_agreement"] == pytest.approx((0.4 + 1.0) / 2)
    assert s["constituent_mass"] == pytest.approx((0.6 + 0.0) / 2)
    h_a = -(0.6 * np.log(0.6) + 0.4 * np.log(0.4)) / np.log(3)
    assert s["entropy"]["a"] == pytest.approx(h_a)
    assert s["mean_entropy"] == pytest.approx((h_a + np.log(2) / np.log(3)) / 2)


# ---------------------------------------------------------------- tasks and model
def test_task_operations():
    x = np.arange(64, dtype=np.float32).reshape(1, 8, 8) / 64
    y = np.array([8])
    xr, yr = get_task("rot90").apply(x, y)
    np.testing.assert_array_equal(xr[0], np.rot90(x[0]))
    _, ys = get_task("label_shift").apply(x, y)
    assert ys.tolist() == [1]
    xi, _ = get_task("invert+flip_lr").apply(x, y)
    np.testing.assert_allclose(xi[0], (1 - x[0])[:, ::-1])
    assert {t.name for t in HELD_OUT}.isdisjoint({t.name for t in HELD_IN})
    assert all(t.held_out and len(t.ops) == 2 for t in HELD_OUT)


def test_patchify_matches_loop():
    x = torch.rand(2, 8, 8)
    p = patchify(x)
    assert p.shape == (2, 16, 4)
    for r in range(4):
        for c in range(4):
            np.testing.assert_array_equal(p[:, 4 * r + c].numpy(),
                                          x[:, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2]
                                          .reshape(2, 4).numpy())


def test_split_is_disjoint_and_stratified():
    sp = load_split(seed=3)
    assert len(sp.y_train) + len(sp.y_test) == 1797
    counts = np.bincount(sp.y_test, minlength=10) / np.bincount(
        np.concatenate([sp.y_train, sp.y_test]), minlength=10)
    assert np.all(np.abs(counts - 0.3) < 0.01)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: LoRALinear(torch.nn.Linear(2, 2), rank=0), "rank: must be a positive"),
        (lambda: top_k_softmax(torch.zeros(1, 3), 0), "k: must be a positive"),
        (lambda: VectorRouter({}, [0], score="cosine"), "score: must be one of"),
        (lambda: VectorRouter({}, [0], top_k=0), "top_k: must be a positive"),
        (lambda: VectorRouter({}, [0], temperature=0.0), "temperature: must be positive"),
        (lambda: VectorRouter({}, []), "experts: need at least one"),
        (lambda: VectorRouter({"m": torch.zeros(2, 3)}, [0]), "vectors: module 'm'"),
        (lambda: Task("x", ("spin",)), "ops: unknown operation 'spin'"),
        (lambda: get_task("nope"), "name: unknown task 'nope'"),
        (lambda: load_split(test_fraction=1.0), "test_fraction: must lie in"),
        (lambda: TrainConfig(rank=0), "rank: must be a positive integer"),
        (lambda: TrainConfig(gate_steps=0), "gate_steps: must be a positive integer or None"),
        (lambda: TrainConfig(expert_lr=-1.0), "expert_lr: must be positive"),
        (lambda: TinyViT(width=10, heads=4), "heads: width 10 is not divisible"),
        (lambda: distribution_entropy(np.array([1.0])), "p: need a 1-d distribution"),
        (lambda: routing_summary({}), "stats: no routing statistics"),
    ],
)
def test_invalid_parameters_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------- small training runs
def test_experts_are_specialised_and_gates_train():
    torch.manual_seed(0)
    cfg = TrainConfig(width=32, base_steps=250, expert_steps=150, rank=4)
    sp = load_split(seed=0)
    tasks = [get_task(n) for n in ("rot90", "flip_ud", "label_shift")]
    g = torch.Generator().manual_seed(0)
    xb, yb = to_tensors(*get_task("base").apply(sp.x_train, sp.y_train))
    model, _ = train_base(cfg, xb, yb, g)
    attach_lora(model, cfg.rank)
    experts, test = [], {}
    for t in tasks:
        x, y = to_tensors(*t.apply(sp.x_train, sp.y_train))
        i, _ = train_expert(model, cfg, x, y, g)
        train_gate(model, i, replace_gate(cfg), x, y, g)
        experts.append(i)
        test[t.name] = to_tensors(*t.apply(sp.x_test, sp.y_test))
    mat = expert_task_matrix(model, experts, test)
    # each task is solved best by its own expert, by a clear margin
    assert (mat.argmax(axis=0) == np.arange(len(tasks))).all(), mat
    assert (np.diag(mat) - np.sort(mat, axis=0)[-2] > 0.1).all(), mat
    # the gates moved away from zero, and the gated expert still solves its task
    assert all(float(m.gate[i].abs().max()) > 0 for m in lora_modules(model) for i in experts)
    x, y = test["rot90"]
    with torch.no_grad(), use_mode(model, Single(0, gated=True)):
        assert float((model(x).argmax(1) == y).float().mean()) > 0.5
    with torch.no_grad(), use_mode(model, Off()):
        assert float((model(x).argmax(1) == y).float().mean()) < mat[0, 0] - 0.2


def replace_gate(cfg):
    return TrainConfig(**{**cfg.to_dict(), "gate_steps": 15})


def test_quick_end_to_end_and_resume(tmp_path, monkeypatch):
    tiny = TrainConfig(width=16, heads=2, depth=1, base_steps=20, expert_steps=10,
                       multitask_steps=10, retrieval_per_task=5)
    monkeypatch.setattr(bench, "QUICK", tiny)
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = ["--quick", "--seeds", "2", "--out", str(out), "--cache", str(cache)]
    assert bench.main(argv) == 0
    for f in ("README.md", "heldout_accuracy.csv", "heldout_accuracy.md", "heldin_accuracy.csv",
              "routing.csv", "compute.csv", "expert_task_matrix.csv", "heldout_accuracy.png",
              "routing_phatgoose.png"):
        assert (out / f).stat().st_size > 0, f
    evals = sorted(cache.glob("*/seed*/eval.json"))
    assert len(evals) == 2
    first = json.loads(evals[0].read_text())
    assert set(first["accuracy"]) == set(bench.METHODS)
    assert set(first["accuracy"]["phatgoose"]) == {"base", *(t.name for t in HELD_IN),
                                                   *(t.name for t in HELD_OUT)}
    assert first["steps"]["gate"] == 1  # a tenth of 10 expert steps
    # resume: drop the evaluation only; the cached stages must give identical numbers
    evals[0].unlink()
    assert bench.main(argv + ["--no-figures"]) == 0
    again = json.loads(evals[0].read_text())
    assert again["accuracy"] == first["accuracy"]
    assert "PHATGOOSE" in (out / "README.md").read_text()
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert [r["fresh_seeds"] for r in runs] == [2, 1]
    half = again["diagnostics"]["own_expert_half_weight"]
    assert set(half) == {t.name for t in HELD_IN} and all(0 <= v <= 1 for v in half.values())
    long_gates = again["diagnostics"]["long_gates"]
    assert long_gates["gate_steps"] == 10 * first["steps"]["gate"]
    assert set(long_gates["accuracy"]) == set(first["accuracy"]["phatgoose"])
    assert len(list(cache.glob("*/seed0/gate-long-rot90.pt"))) == 1
