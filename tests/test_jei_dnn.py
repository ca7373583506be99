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
    pi = exit_probabilities(torch.tensor(g)).numpy()
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


def test_exit_heads_gate_gradients_only_reach_gates():
    torch.manual_seed(0)
    heads = ExitHeads(8, 4, 5)
    feats, head = torch.randn(6, 4, 8), torch.randn(6, 5)
    logits = heads.im_logits(feats, head)
    assert logits.shape == (6, 4, 5)
    heads.gate_values(logits).sum().backward()
    assert all(im.weight.grad is None for im in heads.ims)
    assert all(g.weight.grad is not None for g in heads.gates)


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


# -- baselines, training, end to end ---------------------------------------------------------
def test_threshold_and_oracle_exits_hand_example():
    from simstudy.neural.jei_dnn.baselines import oracle_exits, outcome, threshold_exits

    probs = np.array(
        [
            [[0.9, 0.1], [0.8, 0.2], [0.6, 0.4]],  # confident and right at once
            [[0.6, 0.4], [0.3, 0.7], [0.1, 0.9]],  # label 1: right from exit 1
            [[0.55, 0.45], [0.6, 0.4], [0.7, 0.3]],  # label 1: never right
        ]
    )
    y = np.array([0, 1, 1])
    assert threshold_exits(probs, 0.85).tolist() == [0, 2, 2]
    assert threshold_exits(probs, 0.65).tolist() == [0, 1, 2]
    assert oracle_exits(probs, y).tolist() == [0, 1, 2]
    o = outcome(probs, y, np.array([0, 1, 2]), [0.2, 0.5, 1.0])
    assert o["accuracy"] == pytest.approx(2 / 3)
    assert o["cost"] == pytest.approx((0.2 + 0.5 + 1.0) / 3)
    assert o["exit_counts"] == [1, 1, 1]


def _toy_cached(n, L=3, D=6, C=3, seed=0):
    """Features where exit l sees the label with signal growing in l."""
    from simstudy.neural.jei_dnn.train import Cached

    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (n,), generator=g)
    onehot = torch.nn.functional.one_hot(y, C).float()
    feats = torch.randn(n, L, D, generator=g)
    for l in range(L):
        feats[:, l, :C] += (1.0 + 2.0 * l) * onehot
    head = 6.0 * onehot + torch.randn(n, C, generator=g)
    return Cached(feats, head, y)


def test_warmup_learns_and_jei_training_moves_exits_with_lambda():
    from simstudy.neural.jei_dnn.baselines import exit_probs, jei_exits
    from simstudy.neural.jei_dnn.train import train_ims, train_jei

    torch.manual_seed(0)
    train, val = _toy_cached(600, seed=1), _toy_cached(300, seed=2)
    heads = ExitHeads(6, 3, 3)
    log = train_ims(heads, train, val, epochs=15, patience=5, seed=0)
    acc = (exit_probs(heads, val).argmax(-1) == val.y.numpy()[:, None]).mean(0)
    assert acc[0] > 0.6 and acc[1] > acc[0] - 0.05 and len(log["best_val_acc"]) == 2
    costs = torch.tensor([0.3, 0.6, 1.0], dtype=torch.float64)
    mean_cost = {}
    import copy

    for lam in (0.0, 5.0):
        h = copy.deepcopy(heads)
        train_jei(h, train, val, costs, lam, epochs=40, seed=0)
        ex, pi = jei_exits(h, val)
        np.testing.assert_allclose(pi.sum(1), 1.0, atol=1e-6)
        mean_cost[lam] = costs.numpy()[ex].mean()
    # a large cost weight makes the gates exit earlier than a zero one
    assert mean_cost[5.0] < mean_cost[0.0]
    with pytest.raises(ValueError, match="im_loss: must be 'weighted' or 'mean'"):
        train_jei(heads, train, val, costs, 0.1, im_loss="sum")


def test_data_splits_and_long_tail():
    from simstudy.neural.jei_dnn.data import load_data, long_tail_counts

    d = load_data("digits")
    assert len(d.train) + len(d.val) + len(d.calib) + len(d.test) == 1797
    lt = load_data("digits_lt", imbalance=10)
    counts = np.bincount(lt.train.y, minlength=10)
    assert counts[0] / counts[-1] == pytest.approx(10, rel=0.15)
    assert np.all(np.diff(counts) <= 0)
    np.testing.assert_array_equal(lt.test.y, d.test.y)  # evaluation splits stay balanced
    assert long_tail_counts(100, 10, 1.0).tolist() == [100] * 10
    with pytest.raises(ValueError, match="name: unknown data set"):
        load_data("cifar")
    with pytest.raises(ValueError, match="imbalance: must be >= 1"):
        long_tail_counts(10, 10, 0.5)


def test_quick_end_to_end(tmp_path):
    import pandas as pd

    from simstudy.neural.jei_dnn.bench import main

    out = tmp_path / "jei"
    assert main(["--quick", "-q", "--out", str(out)]) == 0
    for name in ("points.csv", "summary.md", "matched.csv", "conformal.csv"):
        assert (out / name).exists()
    for fig in ("accuracy_cost.png", "calibration_ece.png", "conformal.png", "exit_histograms.png"):
        assert (out / fig).stat().st_size > 0
    df = pd.read_csv(out / "points.csv")
    assert set(df["method"]) == {"jei", "threshold", "boosted", "oracle", "full_backbone"}
    assert df["accuracy"].between(0, 1).all() and df["cost"].between(0, 1).all()
    # resumable: a second run reuses the cached points (same numbers)
    first = sorted((out / "cache" / "points").glob("*.json"))
    assert first
    mtimes = [p.stat().st_mtime_ns for p in first]
    assert main(["--quick", "-q", "--out", str(out)]) == 0
    assert [p.stat().st_mtime_ns for p in first] == mtimes
    pd.testing.assert_frame_equal(pd.read_csv(out / "points.csv"), df)
