"""Rate regressions: quantile slopes and bootstrap intervals against plain references, the
exclusion and partition rules, the curvature and log-factor columns, small studies."""

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from simstudy.reports.quantreg import boot_rng, stratified_indices
from simstudy.reports.rates import (
    fit_rate,
    fit_rates,
    log_factor_shift,
    mark_empty_expert_only,
    partition_table,
    rate_table,
)
from simstudy.reports.summaries import diagnostic_summary, mcse_mean, mcse_median, per_n_summary
from simstudy.reports.theory import theory_table
from tests.naive_rates import bisection_line, percentile_ci, stratified_bootstrap_slopes
from tests.reports_synth import design_config, synth_table


def sample(slope, levels=8, reps=20, sigma=0.3, seed=0, df=None):
    rng = np.random.default_rng(seed)
    n = np.repeat(np.geomspace(1e3, 1e5, levels).round(), reps)
    e = rng.standard_t(df, n.size) if df else rng.standard_normal(n.size)
    return n, 2.0 * n**slope * np.exp(sigma * e)


@pytest.mark.parametrize("true_slope", [-0.5, -0.125, 0.0])
def test_median_regression_recovers_slope_and_matches_statsmodels(true_slope):
    n, y = sample(true_slope, seed=int(100 * -true_slope))
    f = fit_rate(n, y, n_boot=199)
    direct = sm.QuantReg(np.log(y), sm.add_constant(np.log(n))).fit(q=0.5)
    assert f.slope == pytest.approx(direct.params[1], abs=1e-9)
    lo, hi = f.ci(0.95)
    assert lo < f.slope < hi and lo < true_slope < hi
    lo9, hi9 = f.ci(0.90)
    assert lo < lo9 < hi9 < hi
    assert f.nobs == n.size and f.n_levels == 8 and f.reps_min == f.reps_max == 20
    assert "quantile regression (q = 0.5)" in f.summary()
    f9 = fit_rate(n, y, q=0.9, n_boot=199)
    assert f9.q == 0.9 and abs(f9.slope - true_slope) < 0.15


def test_bootstrap_draws_match_a_plain_loop_with_the_same_resamples():
    n, y = sample(-0.3, levels=5, reps=6, seed=4)
    f = fit_rate(n, y, n_boot=40, seed=9, key=("s", "l", "p", "m"))
    # the same resamples, refitted by plain-numpy bisection one by one
    order = np.argsort(n, kind="stable")
    ns, ys = n[order], y[order]
    groups = [np.flatnonzero(ns == v) for v in np.unique(ns)]
    idx = stratified_indices(groups, 40, boot_rng(9, "s", "l", "p", "m"))
    plain = [bisection_line(np.log(ns[i]), np.log(ys[i]), 0.5)[1] for i in idx]
    np.testing.assert_allclose(f.draws[:, 1], plain, atol=1e-6)
    assert f.ci(0.9) == pytest.approx(percentile_ci(plain, 0.9), abs=1e-6)


def test_bootstrap_interval_has_about_the_right_width():
    # an independent plain bootstrap (own resamples) gives an interval of the same width
    n, y = sample(-0.5, levels=6, reps=15, seed=11)
    f = fit_rate(n, y, n_boot=400, seed=1)
    plain = stratified_bootstrap_slopes(n, y, 0.5, 150, np.random.default_rng(5))
    assert 0.6 < np.std(f.draws[:, 1]) / np.std(plain) < 1.6


def test_bootstrap_is_seeded_and_named():
    n, y = sample(-0.5, seed=2)
    a = fit_rate(n, y, n_boot=99, seed=3, key=("x",))
    b = fit_rate(n, y, n_boot=99, seed=3, key=("x",))
    c = fit_rate(n, y, n_boot=99, seed=3, key=("y",))
    assert np.array_equal(a.draws, b.draws) and not np.array_equal(a.draws, c.draws)
    assert a.ci(0.95) == b.ci(0.95)


def test_median_regression_ignores_a_heavy_tail_that_moves_ols():
    n, y = sample(-0.5, levels=10, reps=20, seed=6)
    y = y.copy()
    y[np.flatnonzero(n == n.min())[:3]] *= 1e6  # three atoms jumping cells at small n
    ols = np.polyfit(np.log(n), np.log(y), 1)[0]
    f = fit_rate(n, y, n_boot=99)
    assert ols < -0.6 and abs(f.slope + 0.5) < 0.05


def test_upper_half_and_curvature_see_a_bending_chord():
    # slope -0.8 below n = 1e4, -0.2 above: a chord still bending
    rng = np.random.default_rng(8)
    n = np.repeat(np.geomspace(1e3, 1e5, 12).round(), 20)
    logy = np.where(n < 1e4, -0.8 * np.log(n / 1e4), -0.2 * np.log(n / 1e4))
    y = np.exp(logy + 0.1 * rng.standard_normal(n.size))
    fits = fit_rates(n, y, n_boot=199)
    assert abs(fits.upper.slope + 0.2) < 0.05 and abs(fits.lower.slope + 0.8) < 0.05
    assert fits.upper.n_min == pytest.approx(np.unique(n)[6])
    assert fits.curvature == pytest.approx(fits.upper.slope - fits.lower.slope)
    lo, hi = fits.curvature_ci()
    assert 0.4 < lo < fits.curvature < hi
    # a straight line has no curvature
    n2, y2 = sample(-0.5, levels=12, reps=20, seed=9)
    lo, hi = fit_rates(n2, y2, n_boot=199).curvature_ci()
    assert lo < 0 < hi


def test_log_factor_chord_over_1e3_1e5_is_minus_0445():
    assert -0.5 + log_factor_shift(1e3, 1e5) == pytest.approx(-0.4445, abs=5e-4)
    # the chord of sqrt(log n / n) itself
    n = np.array([1e3, 1e5])
    chord = np.diff(np.log(np.sqrt(np.log(n) / n))) / np.diff(np.log(n))
    assert -0.5 + log_factor_shift(1e3, 1e5) == pytest.approx(chord[0], rel=1e-12)
    assert log_factor_shift(1e3, 1e6) < log_factor_shift(1e3, 1e5)
    with pytest.raises(ValueError, match="need 1 < n_min < n_max"):
        log_factor_shift(1e5, 1e3)


def test_fit_rate_validation():
    with pytest.raises(ValueError, match="values: metric values must be finite and > 0"):
        fit_rate([1, 2], [1.0, 0.0])
    with pytest.raises(ValueError, match="n: need at least two distinct"):
        fit_rate([5, 5, 5], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="values: need 1-d"):
        fit_rate([1, 2], [1.0])
    with pytest.raises(ValueError, match="n: sample sizes"):
        fit_rate([0, 2], [1.0, 1.0])
    with pytest.raises(ValueError, match="alpha: must lie in"):
        fit_rate([1e3, 1e4, 1e3, 1e4], [1.0, 0.5, 1.1, 0.4], n_boot=20).conf_int(0.0)


def test_rate_table_on_synthetic_study_with_known_slopes():
    cfgs = [design_config("topk_exact"), design_config("topk_over", k=4, Kbar=3, extra=(0,))]
    wrong = {("topk_exact", "strict", "hellinger"): -0.2}  # a deliberately wrong rate
    df = synth_table(cfgs, protocols=("papers", "strict"), slopes=wrong, seed=3, reps=12,
                     n_values=(1000, 2000, 4000, 8000, 16000, 32000, 64000, 128000))
    rt = rate_table(df, theory_table(cfgs), n_boot=199)
    assert set(rt["metric"][rt.label == "topk_exact"]).isdisjoint({"D2"})
    assert set(rt["metric"][rt.label == "topk_over"]).isdisjoint({"D1"})
    over = rt[(rt.label == "topk_over") & (rt.protocol == "strict")]["metric"].tolist()
    assert over[:4] == ["D2", "hellinger", "tv", "err_beta1_1"] and over[-1] == "mass_3"
    row = rt[(rt.label == "topk_exact") & (rt.protocol == "strict") & (rt.metric == "hellinger")]
    assert row["verdict"].item() == "inconsistent" and abs(row["slope"].item() + 0.2) < 0.08
    guaranteed = rt[~rt.index.isin(row.index) & rt.kind.isin(["rate", "bound"])]
    decided = guaranteed["verdict"].isin(["consistent", "shown"]).mean()
    assert decided > 0.8 and (guaranteed["verdict"] != "inconsistent").mean() > 0.97
    fixed = rt[rt.kind == "fixed"]
    assert len(fixed) == 8 and (fixed["verdict"] == "fixed").all()
    assert fixed["excluded"].str.contains("metric <= 0").all()
    assert rt["headline"].tolist() == (rt["protocol"] == "strict").tolist()
    r = rt[(rt.metric == "D1") & (rt.protocol == "strict")].iloc[0]
    assert (r.n_min, r.n_max, r.n_levels, r.reps_min, r.reps_max) == (1000, 128000, 8, 12, 12)
    assert r.ci90_low > r.ci95_low and r.ci90_high < r.ci95_high
    assert r.upper_n_min == 16000 and np.isfinite(r.curvature) and np.isfinite(r.slope_q90)
    assert r.log_share == pytest.approx(log_factor_shift(1000, 128000) / 0.1)


def test_a_study_too_small_to_decide_says_inconclusive():
    # the example: 3 replications at n in {500, 1000, 2000}
    cfg = design_config("topk_exact")
    df = synth_table([cfg], reps=3, n_values=(500, 1000, 2000), seed=1, sigma=0.01)
    rt = rate_table(df, theory_table([cfg]), n_boot=99)
    g = rt[rt.kind == "rate"]
    assert (g["verdict"] == "inconclusive").all()
    assert g["note"].str.contains("too small to decide: 3 sample sizes").all()
    # enough sample sizes but 4 fits per n: still too small
    df = synth_table([cfg], reps=4, n_values=(1000, 2000, 4000, 8000, 16000), seed=1,
                     sigma=0.01)
    rt = rate_table(df, theory_table([cfg]), n_boot=99)
    assert (rt.loc[rt.kind == "rate", "verdict"] == "inconclusive").all()
    assert rt.loc[rt.kind == "rate", "note"].str.contains("usable replications").all()


def test_rate_table_exclusions_are_counted():
    cfg = design_config("topk_exact")
    df = synth_table([cfg], reps=10, seed=4,
                     status_probs={"ok": 0.6, "not_converged": 0.2, "degenerate": 0.1,
                                   "error": 0.1})
    df.loc[df.index[:7], "D1"] = np.nan
    rt = rate_table(df, theory_table([cfg]), n_boot=99)
    r = rt[rt.metric == "D1"].iloc[0]
    st = df["status"]
    usable = st.isin(["ok", "not_converged"]) & df["D1"].notna()
    assert r.n_used == usable.sum() and r.n_fits == len(df)
    assert f"error: {(st == 'error').sum()}" in r.excluded
    assert f"degenerate: {(st == 'degenerate').sum()}" in r.excluded
    nan_inc = (st.isin(["ok", "not_converged"]) & df["D1"].isna()).sum()
    assert f"NaN metric: {nan_inc}" in r.excluded
    only_ok = rate_table(df, theory_table([cfg]), statuses=("ok",), n_boot=99)
    assert "not_converged: " in only_ok[only_ok.metric == "D1"].iloc[0].excluded
    with pytest.raises(ValueError, match="statuses: unknown"):
        rate_table(df, statuses=("fine",))
    with pytest.raises(ValueError, match="df: the tidy table lacks"):
        rate_table(df.drop(columns="status"))


def test_fits_with_another_partition_are_counted_beside_the_cell_rates():
    cfg = design_config("over", k=4, Kbar=3, extra=(0,))
    df = synth_table([cfg], reps=10, seed=5)
    df["ref_atom_cell"] = 2.0
    # 7 fits whose extra atom moved to expert 3's cell, 3 with the reference atom elsewhere
    moved = df.index[::9][:7]
    df.loc[moved, ["cell_size_1", "cell_size_3"]] = [1, 2]
    df.loc[moved, "err_b_1"] = 50.0  # nonsense values that must not enter the rate
    refmoved = df.index[5::17][:3]
    df.loc[refmoved, "ref_atom_cell"] = 1.0
    th = theory_table([cfg])
    rt = rate_table(df, th, n_boot=99)
    odd = len(set(moved) | set(refmoved))
    for m in ("D2", "err_b_1", "mass_3"):
        r = rt[rt.metric == m].iloc[0]
        assert r.n_other_partition == odd and r.n_used == len(df) - odd
        assert f"other partition: {odd}" in r.excluded
    assert abs(rt[rt.metric == "err_b_1"].iloc[0].slope - (-0.25 - 0.15 / 2)) < 0.2
    # the density does not depend on the cells: every fit
    assert rt[rt.metric == "hellinger"].iloc[0].n_used == len(df)
    pt = partition_table(df, th)
    assert pt["fits"].sum() == len(df) and pt["as designed"].sum() == len(df) - odd
    assert pt["others"].str.contains("1,1,2").any()
    assert pt["others"].str.contains(r"\(reference atom in cell 1\)").any()
    assert (pt["designed"] == "2,1,1").all()


def test_summaries_and_mcse():
    rng = np.random.default_rng(5)
    x = rng.normal(size=400)
    assert np.isclose(mcse_mean(x), x.std(ddof=1) / 20)
    # for a normal sample the median's SE is about sqrt(pi/2) sd / sqrt(R)
    assert 0.7 < mcse_median(x) / (np.sqrt(np.pi / 2) / 20) < 1.3
    assert np.isnan(mcse_mean([1.0])) and np.isnan(mcse_median([1.0]))
    with pytest.raises(ValueError, match="n_boot"):
        mcse_median(x, n_boot=2)
    cfg = design_config("topk_exact")
    df = synth_table([cfg], reps=8, seed=6, status_probs={"ok": 0.8, "error": 0.2})
    s = per_n_summary(df, theory_table([cfg]))
    g = df[(df.n == 1000)]
    r = s[(s.metric == "D1") & (s.n == 1000)].iloc[0]
    assert r.fits == 8 and r.ok + r.error == 8 and r.used == (g.status == "ok").sum()
    assert np.isclose(r["mean"], g.loc[g.status == "ok", "D1"].mean())
    assert np.isclose(r["median"], g.loc[g.status == "ok", "D1"].median())
    assert "D2" not in set(s.metric)
    # a fixed quantity summarises as 0 (it is excluded from the rates only for the log)
    assert (s.loc[s.metric == "mass_2", "median"] == 0).all()
    assert isinstance(s, pd.DataFrame)


def test_diagnostic_summary():
    cfg = design_config("over", k=4, Kbar=3, extra=(0,))
    df = synth_table([cfg], reps=6, seed=2)
    df["wmin_1"] = np.exp(-np.log(df["n"]) / 3)
    df["max_abs_beta1"] = 10.0
    d = diagnostic_summary(df, theory_table([cfg]))
    w = d[d.diagnostic == "wmin_1"].sort_values("n")
    assert np.allclose(w["median"], np.exp(-np.log(w["n"]) / 3)) and (w["used"] == 6).all()
    assert (d.loc[d.diagnostic == "max_abs_beta1", "median"] == 10).all()


def test_degenerate_fits_with_only_an_empty_expert_enter_the_rates():
    rng = np.random.default_rng(0)
    n = np.repeat([1000, 4000, 16000, 64000], 5)
    df = pd.DataFrame({
        "study": "s", "label": "K1", "protocol": "strict", "n": n, "rep": np.tile(range(5), 4),
        "status": "degenerate", "flag_empty_expert": True, "flag_var_floor": False,
        "flag_non_finite": False, "hellinger": n ** -0.5 * np.exp(0.1 * rng.standard_normal(20)),
    })
    df.loc[0, "flag_var_floor"] = True  # a collapsed variance stays excluded
    marked = mark_empty_expert_only(df)
    assert marked.loc[0, "status"] == "degenerate"
    assert (marked.loc[1:, "status"] == "empty_expert").all()
    row = rate_table(df, n_boot=99).iloc[0]
    assert row["n_used"] == 19 and "degenerate: 1" in row["excluded"]
    assert abs(row["slope"] + 0.5) < 0.05
    # without the flag columns nothing is relabelled
    plain = df.drop(columns=["flag_empty_expert", "flag_var_floor", "flag_non_finite"])
    assert rate_table(plain, n_boot=99).iloc[0]["n_used"] == 0
