"""Rate regressions recover known slopes; HC3 SEs match statsmodels; verdicts; exclusions."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from simstudy.reports.rates import fit_rate, rate_table, sensitivity, verdict
from simstudy.reports.summaries import mcse_mean, mcse_median, per_n_summary
from simstudy.reports.theory import theory_table
from tests.reports_synth import design_config, synth_table


def naive_ols_hc3(x, y):
    """Plain-numpy OLS slope with the HC3 sandwich (MacKinnon & White 1985)."""
    X = np.column_stack([np.ones_like(x), x])
    XtX_inv = np.linalg.inv(X.T @ X)
    beta = XtX_inv @ X.T @ y
    e = y - X @ beta
    h = np.einsum("ij,jk,ik->i", X, XtX_inv, X)
    meat = (X * (e**2 / (1 - h) ** 2)[:, None]).T @ X
    cov = XtX_inv @ meat @ XtX_inv
    return beta, np.sqrt(np.diag(cov))


@pytest.mark.parametrize("true_slope", [-0.5, -0.125, -0.25, 0.0])
@pytest.mark.parametrize("levels,reps", [(5, 10), (12, 30)])
def test_fit_rate_recovers_known_slope(true_slope, levels, reps):
    rng = np.random.default_rng(levels * 100 + reps)
    n = np.repeat(np.geomspace(1e3, 1e5, levels).round(), reps)
    y = 2.0 * n**true_slope * np.exp(0.3 * rng.standard_normal(n.size))
    f = fit_rate(n, y)
    lo, hi = f.conf_int().loc["log_n"]
    # recovered within 4 SE (a 1-in-15000 event when the code is right)
    assert abs(f.slope - true_slope) < 4 * f.slope_se
    assert lo < f.slope < hi
    assert f.nobs == n.size and f.n_levels == levels
    # the HC3 SE is the one a plain-numpy sandwich gives, and the interval is normal-based
    beta, se = naive_ols_hc3(np.log(n), np.log(y))
    assert np.allclose(f.params.to_numpy(), beta, rtol=1e-10, atol=1e-12)
    assert np.allclose(f.bse.to_numpy(), se, rtol=1e-10, atol=1e-14)
    z = norm.ppf(0.975)
    assert np.allclose([lo, hi], [beta[1] - z * se[1], beta[1] + z * se[1]], rtol=1e-10)
    assert "slope" in f.summary() and "HC3" in f.summary()


def test_fit_rate_detects_a_wrong_slope():
    rng = np.random.default_rng(1)
    n = np.repeat(np.geomspace(1e3, 1e5, 8).round(), 20)
    y = n**-0.3 * np.exp(0.3 * rng.standard_normal(n.size))
    f = fit_rate(n, y)
    assert f.conf_int().loc["log_n", "upper"] < -0.2  # pins the slope near -0.3
    assert verdict("rate", -0.5, *f.conf_int().loc["log_n"], f.slope, tol=0.1) == "inconsistent"


def test_fit_rate_validation():
    with pytest.raises(ValueError, match="values: metric values must be finite and > 0"):
        fit_rate([1, 2], [1.0, 0.0])
    with pytest.raises(ValueError, match="n: need at least two distinct"):
        fit_rate([5, 5, 5], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="values: need 1-d"):
        fit_rate([1, 2], [1.0])
    with pytest.raises(ValueError, match="n: sample sizes"):
        fit_rate([0, 2], [1.0, 1.0])


def test_verdict_on_hand_built_rows():
    # rate: CI overlaps [-0.6, -0.4]
    assert verdict("rate", -0.5, -0.55, -0.45, -0.5) == "consistent"
    assert verdict("rate", -0.5, -0.38, -0.30, -0.34) == "inconsistent"
    assert verdict("rate", -0.5, -0.401, -0.30, -0.35) == "consistent"
    assert verdict("rate", -0.5, -0.75, -0.61, -0.68) == "inconsistent"
    # bound n^-1/8 or faster: CI upper end <= -0.125 + 0.1
    assert verdict("bound", -0.125, -0.6, -0.4, -0.5) == "consistent"
    assert verdict("bound", -0.125, -0.09, -0.03, -0.06) == "consistent"
    assert verdict("bound", -0.125, -0.05, 0.01, -0.02) == "inconsistent"
    assert verdict("bound", -0.125, -0.05, 0.01, -0.02, tol=0.2) == "consistent"
    # the "upper" rule demands evidence; "overlap" only rules out a significantly slower slope
    assert verdict("bound", -0.125, -0.24, -0.01, -0.125) == "inconsistent"
    assert verdict("bound", -0.125, -0.24, -0.01, -0.125, bound_rule="overlap") == "consistent"
    assert verdict("bound", -0.125, 0.0, 0.1, 0.05, bound_rule="overlap") == "inconsistent"
    with pytest.raises(ValueError, match="bound_rule: unknown rule"):
        verdict("bound", -0.125, -0.2, -0.05, -0.125, bound_rule="loose")
    assert verdict("none", np.nan, -0.1, 0.1, 0.0123) == "no guarantee (slope +0.01)"
    assert verdict("fixed", np.nan, np.nan, np.nan, np.nan) == "fixed (always 0)"
    assert verdict("rate", -0.5, np.nan, np.nan, np.nan) == "no data"
    with pytest.raises(ValueError, match="kind: unknown kind 'exact'"):
        verdict("exact", -0.5, -0.6, -0.4, -0.5)
    with pytest.raises(ValueError, match="tol: the tolerance"):
        verdict("rate", -0.5, -0.6, -0.4, -0.5, tol=-1)


def test_sensitivity_drops_smallest_n():
    rng = np.random.default_rng(2)
    n = np.repeat(np.geomspace(1e3, 1e5, 10).round(), 10)
    y = n**-0.5 * np.exp(0.2 * rng.standard_normal(n.size))
    s = sensitivity(n, y)
    assert s["dropped"].tolist() == [0, 1, 2, 3, 4, 5]
    assert s["n_min"].is_monotonic_increasing
    assert np.isclose(s["slope"].iloc[0], fit_rate(n, y).slope)
    assert (abs(s["slope"] + 0.5) < 0.15).all()


def test_rate_table_on_synthetic_study_with_known_slopes():
    cfgs = [design_config("topk_exact"), design_config("topk_over", k=4, Kbar=3, extra=(0,))]
    wrong = {("topk_exact", "strict", "hellinger"): -0.2}  # a deliberately wrong rate
    df = synth_table(cfgs, protocols=("papers", "strict"), slopes=wrong, seed=3)
    rt = rate_table(df, theory_table(cfgs))
    assert set(rt["metric"][rt.label == "topk_exact"]).isdisjoint({"D2"})
    assert set(rt["metric"][rt.label == "topk_over"]).isdisjoint({"D1"})
    # rows follow the theory's order within each label: D, hellinger, tv, then per expert
    over = rt[(rt.label == "topk_over") & (rt.protocol == "strict")]["metric"].tolist()
    assert over[:4] == ["D2", "hellinger", "tv", "err_beta1_1"] and over[-1] == "mass_3"
    row = rt[(rt.label == "topk_exact") & (rt.protocol == "strict") & (rt.metric == "hellinger")]
    assert row["verdict"].item() == "inconsistent" and abs(row["slope"].item() + 0.2) < 0.08
    rest = rt[~rt.index.isin(row.index) & rt.kind.isin(["rate", "bound"])]
    assert (rest["verdict"] == "consistent").mean() > 0.95
    fixed = rt[rt.kind == "fixed"]
    assert len(fixed) == 8 and (fixed["verdict"] == "fixed (always 0)").all()
    assert fixed["excluded"].str.contains("metric <= 0").all()
    assert rt["headline"].tolist() == (rt["protocol"] == "strict").tolist()
    # the median fit agrees with the pooled fit on this noise model
    ok = rt[rt.kind == "rate"]
    assert (abs(ok["slope"] - ok["slope_median"]) < 0.15).all()
    assert (ok["sens_min"] <= ok["slope"] + 1e-12).all() and (ok["sens_max"] >= ok["slope"]
                                                              - 1e-12).all()


def test_rate_table_exclusions_are_counted():
    cfg = design_config("topk_exact")
    df = synth_table([cfg], reps=10, seed=4,
                     status_probs={"ok": 0.6, "not_converged": 0.2, "degenerate": 0.1,
                                   "error": 0.1})
    df.loc[df.index[:7], "D1"] = np.nan
    rt = rate_table(df, theory_table([cfg]))
    r = rt[rt.metric == "D1"].iloc[0]
    st = df["status"]
    usable = st.isin(["ok", "not_converged"]) & df["D1"].notna()
    assert r.n_used == usable.sum() and r.n_fits == len(df)
    assert f"error: {(st == 'error').sum()}" in r.excluded
    assert f"degenerate: {(st == 'degenerate').sum()}" in r.excluded
    nan_inc = (st.isin(["ok", "not_converged"]) & df["D1"].isna()).sum()
    assert f"NaN metric: {nan_inc}" in r.excluded
    assert np.isfinite(r.slope_ok_only)
    only_ok = rate_table(df, theory_table([cfg]), statuses=("ok",))
    assert "not_converged: " in only_ok[only_ok.metric == "D1"].iloc[0].excluded
    with pytest.raises(ValueError, match="statuses: unknown"):
        rate_table(df, statuses=("fine",))
    with pytest.raises(ValueError, match="df: the tidy table lacks"):
        rate_table(df.drop(columns="status"))


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
    s = per_n_summary(df)
    g = df[(df.n == 1000)]
    r = s[(s.metric == "D1") & (s.n == 1000)].iloc[0]
    assert r.fits == 8 and r.ok + r.error == 8 and r.used == (g.status == "ok").sum()
    assert np.isclose(r["mean"], g.loc[g.status == "ok", "D1"].mean())
    assert np.isclose(r["median"], g.loc[g.status == "ok", "D1"].median())
    assert "D2" not in set(s.metric)
    assert isinstance(s, pd.DataFrame)


def test_degenerate_fits_with_only_an_empty_expert_enter_the_rates():
    from simstudy.reports.rates import mark_empty_expert_only, rate_table

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
    row = rate_table(df).iloc[0]
    assert row["n_used"] == 19 and "degenerate: 1" in row["excluded"]
    assert abs(row["slope"] + 0.5) < 0.05
    # without the flag columns nothing is relabelled
    plain = df.drop(columns=["flag_empty_expert", "flag_var_floor", "flag_non_finite"])
    assert rate_table(plain).iloc[0]["n_used"] == 0
