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
from simstudy.neural.phatgoose.base import build_base  # noqa: E402
from simstudy.neural.phatgoose.baselines import (  # noqa: E402
    best_individual,
    build_retrieval,
    expert_task_matrix,
    oracle,
    retrieval_predict,
)
from simstudy.neural.phatgoose.digits import (  # noqa: E402
    HELD_IN,
    HELD_OUT,
    DigitsFamily,
    Task,
    get_task,
    load_split,
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
from simstudy.neural.phatgoose.tokens import TokenFamily, TokenTask  # noqa: E402
from simstudy.neural.phatgoose.train import (  # noqa: E402
    TrainConfig,
    train_base,
    train_expert,
    train_gate,
)
from simstudy.neural.transformer import patchify  # noqa: E402

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


TINY_TOKENS = TokenFamily(n_train=64, n_test=32, n_base=256)


def tiny_model(family=None):
    return build_base(family or DIGITS, width=16, depth=1, heads=2, mlp_ratio=2)


DIGITS = DigitsFamily()


def digit_inputs(n):
    return patchify(torch.rand(n, 8, 8), 2)


@pytest.mark.parametrize("family", [DIGITS, TINY_TOKENS], ids=["digits", "tokens"])
def test_fresh_lora_equals_base(family):
    torch.manual_seed(0)
    model = tiny_model(family)
    x = digit_inputs(6) if family is DIGITS else torch.randint(0, family.vocab, (6, 12))
    with torch.no_grad():
        want = model(x)
    attach_lora(model, rank=2, exclude=family.lora_exclude)
    names = {m.name for m in lora_modules(model)}
    assert "embed" not in names  # a lookup (tokens) or excluded (digits' constant patches)
    assert {"head", "blocks.0.attn.q", "blocks.0.mlp.fc2"} <= names
    i = add_expert(model, torch.Generator().manual_seed(0))
    assert float(lora_modules(model)[0].A[i].detach().std()) > 0  # A is random, B = 0
    with torch.no_grad(), use_mode(model, Single(i)):
        got = model(x)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-6)
    assert all(float(m.B[i].abs().max()) == 0 for m in lora_modules(model))
    assert all(not p.requires_grad for p in model.parameters())


def _model_with_experts(n_experts, seed=0, exclude=()):
    torch.manual_seed(seed)
    model = tiny_model()
    attach_lora(model, rank=2, exclude=exclude)
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
    x = digit_inputs(5)
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
        model(digit_inputs(3))
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
    x = digit_inputs(4)
    x[0, :5] = 0.0  # constant (zero) patches: counted for the embedding module
    with torch.no_grad(), use_mode(model, Single(1)), capture_inputs(model) as means:
        model(x)
    # the patch embedding sees the raw 2x2 patches: its mean input is the mean patch
    np.testing.assert_allclose(means["embed"].numpy(), x.reshape(-1, 4).mean(0).numpy(),
                               atol=1e-6)
    assert means.constant["embed"] == 5
    assert all(v == 0 for k, v in means.constant.items() if k != "embed")
    router = average_activation_router([means, means], [0, 1])
    assert router.vectors["head"].shape == (2, 16)


def test_attach_lora_excludes_named_modules():
    model = tiny_model()
    mods = attach_lora(model, 2, exclude=("embed",))
    assert "embed" not in {m.name for m in mods}
    assert isinstance(model.embed, torch.nn.Linear)
    with pytest.raises(ValueError, match="exclude: no module named"):
        attach_lora(tiny_model(), 2, exclude=("nope",))


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
    p = patchify(x, 2)
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
        (lambda: TrainConfig(gate_steps=0), "gate_steps: must be a positive integer"),
        (lambda: TrainConfig(multitask_steps=0), "multitask_steps: must be a positive"),
        (lambda: TrainConfig(expert_lr=-1.0), "expert_lr: must be positive"),
        (lambda: TokenFamily(template_fraction=1.0), "template_fraction: must lie in"),
        (lambda: TokenFamily(symbols=8), "symbols: must equal n_labels"),
        (lambda: TokenFamily(held_out=((0,),)), "held_out: each mixture needs 2-3"),
        (lambda: TokenFamily(held_out=((0, 9),)), "held_out: each mixture needs 2-3"),
        (lambda: TokenFamily(n_train=0), "n_train: must be an integer >= 1"),
        (lambda: TokenFamily().sample((7,), 3, np.random.default_rng(0)), "domains: must be"),
        (lambda: TokenFamily().task_data(TokenTask("d0", (0,)), "val"), "split: must be"),
        (lambda: DIGITS.task_data(HELD_IN[0], "val"), "split: must be"),
        (lambda: distribution_entropy(np.array([1.0])), "p: need a 1-d distribution"),
        (lambda: routing_summary({}), "stats: no routing statistics"),
    ],
)
def test_invalid_parameters_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()




# ---------------------------------------------------------------- the per-token family
def naive_token_labels(fam, x):
    """Per-sequence, per-position loop implementing the family's rules from the token ids."""
    tab, S, T0 = fam.tables, fam.symbols, fam.first_template
    y = np.zeros_like(x)
    gov = np.zeros_like(x)
    for n in range(x.shape[0]):
        g = None
        for t in range(x.shape[1]):
            tok = x[n, t]
            if tok < T0:
                g, s = divmod(int(tok), S)
                lab = tab["perm"][g, s]
                if t > 0 and x[n, t - 1] >= T0:
                    lab = (lab + tab["shift"][g, x[n, t - 1] - T0]) % fam.n_labels
            else:
                assert g is not None, "a sequence must start with a domain token"
                lab = tab["tmpl_label"][g, tok - T0]
            y[n, t], gov[n, t] = lab, g
    return y, gov


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.7])
@pytest.mark.parametrize("domains", [(0,), (2, 5), (1, 3, 4)])
def test_token_family_labels_match_a_loop(fraction, domains):
    fam = TokenFamily(template_fraction=fraction, seed=4)
    d = fam.sample(domains, 200, np.random.default_rng(1))
    y, gov = naive_token_labels(fam, d["x"])
    np.testing.assert_array_equal(d["y"], y)
    np.testing.assert_array_equal(d["domain"], gov)
    np.testing.assert_array_equal(d["template"], d["x"] >= fam.first_template)
    dom_tok = d["x"][~d["template"]] // fam.symbols
    assert set(np.unique(dom_tok)) == set(domains)
    share = d["template"][:, 1:].mean()
    assert abs(share - fraction) < 0.03
    assert not d["template"][:, 0].any()


def test_token_family_tables_and_tasks():
    fam = TokenFamily(seed=0)
    tab = fam.tables
    assert all(sorted(p) == list(range(10)) for p in tab["perm"])
    assert tab["shift"].min() >= 1  # a shift of 0 would make the previous token irrelevant
    assert not np.array_equal(tab["perm"], tab["base_perm"])
    assert [t.domains for t in fam.held_in_tasks] == [(g,) for g in range(6)]
    assert all(t.held_out and 2 <= len(t.domains) <= 3 for t in fam.held_out_tasks)
    assert TokenFamily(seed=1).tables["perm"].tolist() != tab["perm"].tolist()
    a = fam.task_data(fam.held_in_tasks[0], "train")
    b = fam.task_data(fam.held_in_tasks[0], "test")
    assert a["x"].shape == (4096, 12) and b["x"].shape == (1024, 12)
    assert not np.array_equal(a["x"][:1024], b["x"])  # independent draws per split
    np.testing.assert_array_equal(a["x"], fam.task_data(fam.held_in_tasks[0], "train")["x"])


def test_base_task_uses_its_own_tables_and_mixes_domains():
    fam = TokenFamily(seed=2)
    d = fam.base_sample(300, np.random.default_rng(0))
    base = TokenFamily(seed=2)
    # relabel with the base tables through the loop reference
    object.__setattr__(base, "tables", {**fam.tables, "perm": fam.tables["base_perm"],
                                        "shift": fam.tables["base_shift"],
                                        "tmpl_label": fam.tables["base_tmpl_label"]})
    y, _ = naive_token_labels(base, d["x"])
    np.testing.assert_array_equal(d["y"], y)
    doms = [set(row[row < fam.first_template] // fam.symbols) for row in d["x"]]
    assert max(len(s) for s in doms) == 3 and min(len(s) for s in doms) == 1


def test_raw_embedding_is_bag_of_tokens():
    fam = TokenFamily()
    x = np.array([[0, 0, 61, 5], [60, 60, 60, 1]])
    e = fam.raw_embedding(x)
    assert e.shape == (2, fam.vocab)
    assert e[0, 0] == 2 and e[0, 61] == 1 and e[0, 5] == 1 and e[1, 60] == 3
    np.testing.assert_array_equal(e.sum(axis=1), [4, 4])


def test_router_records_per_token_accuracy_by_group():
    torch.manual_seed(0)
    v = {"m": torch.randn(3, 5)}
    router = VectorRouter(v, [0, 1, 2], record=True)
    u = torch.randn(4, 6, 5)
    tgt = torch.randint(0, 3, (4, 6))
    grp = torch.randint(0, 2, (4, 6))
    router.set_targets(tgt, grp, n_groups=2)
    w, _ = router.weights("m", u)
    top1 = w.argmax(-1)
    st = router.stats["m"]
    for g in (0, 1):
        sel = grp == g
        assert float(st["count"][g]) == int(sel.sum())
        assert float(st["hits"][g]) == int((top1 == tgt)[sel].sum())
    # one target per example tiles over its tokens
    router.reset_stats()
    router.set_targets(torch.tensor([0, 1, 2, 0]))
    router.weights("m", u)
    want = (top1 == torch.tensor([0, 1, 2, 0])[:, None]).sum()
    assert float(router.stats["m"]["hits"][0]) == int(want)
    with pytest.raises(ValueError, match="groups: shape"):
        router.set_targets(tgt, grp[:2])


def test_retrieval_on_raw_tokens_routes_whole_sequences():
    fam = TINY_TOKENS
    torch.manual_seed(0)
    model = tiny_model(fam)
    attach_lora(model, 2)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        i = add_expert(model, g)
        for m in lora_modules(model):
            m.B[i].data.normal_(generator=g)
    stores = [fam.raw_embedding(fam.task_data(t, "train")["x"]) for t in fam.held_in_tasks[:2]]
    router = build_retrieval(stores, [0, 1])
    test = fam.task_data(fam.held_in_tasks[1], "test")
    pred, assigned = retrieval_predict(model, router, torch.as_tensor(test["x"]),
                                       fam.raw_embedding(test["x"]))
    assert pred.shape == test["y"].shape
    assert (assigned == 1).all()  # the bag of tokens reveals the domain
    with torch.no_grad(), use_mode(model, Single(1)):
        want = model(torch.as_tensor(test["x"])).argmax(-1)
    assert torch.equal(pred, want)


# ---------------------------------------------------------------- the cache is data
def test_load_stage_refuses_a_crafted_pickle(tmp_path):
    import pickle

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "base.pt"
    with open(bad, "wb") as fh:
        pickle.dump({"state": Evil()}, fh, protocol=2)
    with pytest.raises(ValueError, match="is not a data-only stage file"):
        bench.load_stage(bad)
    assert not marker.exists()  # the payload never ran
    good = tmp_path / "good.pt"
    bench.save_stage({"gate": {"m": torch.ones(3)}, "seconds": 1.5, "tag": "x"}, good)
    st = bench.load_stage(good)
    assert st["seconds"] == 1.5 and torch.equal(st["gate"]["m"], torch.ones(3))


# ---------------------------------------------------------------- small training runs
def test_experts_specialise_and_gates_train_on_the_token_family():
    fam = TokenFamily(n_train=1024, n_test=256, n_base=2048, seed=1)
    cfg = TrainConfig(width=16, depth=1, heads=2, batch=64, base_steps=150, expert_steps=120,
                      gate_steps=15, gate_batch=128)
    torch.manual_seed(0)
    model = build_base(fam, cfg.width, cfg.depth, cfg.heads, cfg.mlp_ratio)
    g = torch.Generator().manual_seed(0)
    d = fam.base_data()
    train_base(model, cfg, torch.as_tensor(d["x"]), torch.as_tensor(d["y"]), g)
    attach_lora(model, cfg.rank)
    tasks = fam.held_in_tasks[:3]
    experts, test = [], []
    for t in tasks:
        tr = fam.task_data(t, "train")
        x, y = torch.as_tensor(tr["x"]), torch.as_tensor(tr["y"])
        i, _ = train_expert(model, cfg, x, y, g)
        train_gate(model, i, cfg, x, y, g)
        experts.append(i)
        te = fam.task_data(t, "test")
        test.append((torch.as_tensor(te["x"]), torch.as_tensor(te["y"])))
    mat = expert_task_matrix(model, experts, test)
    assert (mat.argmax(axis=0) == np.arange(3)).all(), mat
    assert (np.diag(mat) - np.sort(mat, axis=0)[-2] > 0.1).all(), mat
    assert all(float(m.gate[i].abs().max()) > 0 for m in lora_modules(model) for i in experts)
    x, y = test[0]
    with torch.no_grad(), use_mode(model, Off()):
        base_acc = float((model(x).argmax(-1) == y).float().mean())
    assert base_acc < mat[0, 0] - 0.2


def test_quick_end_to_end_and_resume(tmp_path, monkeypatch):
    tiny = bench.Plan(
        seeds=2, fractions=(0.3, 0.0), gate_sweep=(3,),
        tokens=TrainConfig(width=8, depth=1, heads=2, batch=32, base_steps=10, expert_steps=6,
                           gate_steps=2, gate_batch=32, multitask_steps=6,
                           retrieval_per_task=8),
        digits_cfg=TrainConfig(width=8, depth=1, heads=2, batch=32, base_steps=5,
                               expert_steps=3, gate_steps=2, gate_batch=32,
                               multitask_steps=3, retrieval_per_task=5),
        family={"n_train": 64, "n_test": 32, "n_base": 128})
    monkeypatch.setattr(bench, "QUICK", tiny)
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = ["--quick", "--out", str(out), "--cache", str(cache), "--jobs", "1"]
    assert bench.main(argv) == 0
    for f in ("README.md", "heldout_accuracy.csv", "heldout_accuracy.md", "heldin_accuracy.md",
              "token_types.md", "routing_accuracy.md", "template_sweep.md", "gate_steps.md",
              "compute.md", "digits_control.md", "expert_task_matrix.md", "accuracy.png",
              "template_sweep.png", "gate_steps.png", "routing_accuracy.png",
              "digits_control.png"):
        assert (out / f).stat().st_size > 0, f
    evals = sorted(cache.glob("tokens/*/seed*/eval-*.json"))
    assert len(evals) == 4  # 2 fractions x 2 seeds
    bases = sorted(cache.glob("tokens/base-*/seed*/base.pt"))
    assert len(bases) == 2  # one base per seed serves both fractions
    main = [json.loads(p.read_text()) for p in evals]
    main = [r for r in main if r["main"]][0]
    assert set(main["accuracy"]) == set(bench.METHODS)
    assert set(main["gate_sweep"]) == {"3"}
    assert sum(main["constant_input_tokens"].values()) == 0
    acc = main["routing"]["phatgoose"]["d0"]["module_accuracy"]
    assert set(acc) == set(main["modules"])
    assert all(0 <= a <= 1 for v in acc.values() for a in v if np.isfinite(a))
    # resume: drop one evaluation only; the cached stages must give identical numbers
    path = [p for p in evals if json.loads(p.read_text())["main"]][0]
    first = json.loads(path.read_text())
    path.unlink()
    assert bench.main(argv + ["--no-figures"]) == 0
    again = json.loads(path.read_text())
    assert again["accuracy"] == first["accuracy"]
    assert again["gate_sweep"] == first["gate_sweep"]
    readme = (out / "README.md").read_text()
    assert "In plain words" in readme and "Average Activation" in readme
    assert "smoke test" in readme
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert len(runs) == 2
    run = json.loads((out / "run.json").read_text())
    assert run == runs[-1] and run["units"] == 6  # 2 fractions x 2 seeds + 2 digits seeds
    # the second invocation loaded every training stage, yet reports their cost
    assert run["stage_seconds"]["total"] > 0
    assert "single-thread seconds" in readme


def test_stage_seconds_counts_a_shared_base_once():
    def unit(family, seed, base):
        return {"family": family, "seed": seed,
                "timings": {"base": base, "experts": {"a": 1.0, "b": 2.0},
                            "gates": {"100": {"a": 0.5, "b": 0.5}, "30": {"a": 0.25}},
                            "multitask": 4.0}}

    # two template fractions of tokens seed 0 share one base (10 s); digits seed 0 has its own
    st = bench.stage_seconds([unit("tokens", 0, 10.0), unit("tokens", 0, 10.0),
                              unit("digits", 0, 3.0)])
    assert st == {"base": 13.0, "experts": 9.0, "gates": 3.75, "multitask": 12.0,
                  "total": 37.75}
