"""Figures, inspected through matplotlib objects: axes, series, labels, ticks, colours."""

import matplotlib.colors as mcolors
import numpy as np
import pytest

from simstudy.reports.factorial import factorial_table
from simstudy.reports.figures import (
    OKABE_ITO,
    divergence_figure,
    factorial_figure,
    metric_figure,
    param_figure,
)
from simstudy.reports.rates import rate_table
from simstudy.reports.theory import theory_table
from tests.reports_synth import design_config, synth_table

CFGS = [design_config("exact"), design_config("over", k=4, Kbar=3, extra=(0,))]
PROTOCOLS = ("papers", "strict", "shrinking_strict", "fixed_tol")


@pytest.fixture(scope="module")
def study():
    df = synth_table(CFGS, protocols=PROTOCOLS, reps=10, seed=1)
    # the exact fit's hellinger lives on another scale than the over-specified one's
    df.loc[df.label == "exact", "hellinger"] *= 1e-3
    # a narrow range: values within a factor 1.5
    df.loc[df.label == "over", "tv"] = 0.2 * (1 + 0.4 * np.random.default_rng(0).random(
        (df.label == "over").sum()))
    th = theory_table(CFGS)
    return df, th, rate_table(df, th, n_boot=99)


def drawn_tick_labels(ax, axis="y"):
    ax.figure.canvas.draw()
    ticks = ax.get_yticklabels() if axis == "y" else ax.get_xticklabels()
    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    return [t.get_text() for t, v in zip(ticks, (ax.get_yticks() if axis == "y"
                                                  else ax.get_xticks()), strict=True)
            if t.get_text() and lo <= v <= hi]


def legend_texts(ax):
    leg = ax.get_legend()
    return [t.get_text() for t in leg.get_texts()] if leg else []


def test_metric_figure_facets_legends_ticks_and_palette(study):
    df, th, rates = study
    fig = metric_figure(df, "hellinger", rates, th, title="t")
    axes = [ax for ax in fig.axes if ax.axison]
    assert [ax.get_title() for ax in axes] == ["exact: hellinger", "over: hellinger"]
    for ax in axes:
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        assert len(drawn_tick_labels(ax, "y")) >= 2 and len(drawn_tick_labels(ax, "x")) >= 2
        texts = legend_texts(ax)
        # one entry per protocol with its fitted slope, strict first, and the theory
        label = ax.get_title().split(":")[0]
        r = rates[(rates.label == label) & (rates.metric == "hellinger")
                  & (rates.protocol == "strict")].iloc[0]
        assert texts[0] == (f"strict: slope {r.slope:+.2f} [{r.ci95_low:+.2f}, "
                            f"{r.ci95_high:+.2f}]")
        assert "theory: n^-0.5 (dashed)" in texts
        assert sum(t.split(":")[0] in PROTOCOLS for t in texts) == 4
        # replications are visible points, in the colour-blind-safe palette
        pts = [c for c in ax.collections if c.get_offsets().shape[0] > 10]
        assert len(pts) == 4 and all(c.get_alpha() >= 0.4 for c in pts)
        safe = {mcolors.to_hex(c) for c in OKABE_ITO}
        assert {mcolors.to_hex(c.get_facecolor()[0][:3]) for c in pts} <= safe
        dashed = [ln for ln in ax.get_lines() if ln.get_gid() == "theory"]
        assert len(dashed) == 4
        # the fitted line has the table's slope
        solid = [ln for ln in ax.get_lines() if ln.get_label().startswith("strict:")][0]
        x, y = solid.get_data()
        assert np.polyfit(np.log(x), np.log(y), 1)[0] == pytest.approx(r.slope)
    # each facet has its own y axis
    hi0, lo1 = axes[0].get_ylim()[1], axes[1].get_ylim()[0]
    assert hi0 < lo1


def test_the_headline_protocol_is_drawn_above_the_others(study):
    # a protocol whose values coincide with strict's must not hide it (shrinking_strict's
    # D2 on topk_over did)
    df, th, rates = study
    fig = metric_figure(df, "hellinger", rates, th)
    for ax in (a for a in fig.axes if a.axison):
        fitted = {ln.get_label().split(":")[0]: ln.get_zorder() for ln in ax.get_lines()
                  if ln.get_label().split(":")[0] in PROTOCOLS}
        assert set(fitted) == set(PROTOCOLS)
        assert fitted["strict"] > max(z for p, z in fitted.items() if p != "strict")
        pts = [c.get_zorder() for c in ax.collections if c.get_offsets().shape[0] > 10]
        assert max(pts) == pts[0] and len(set(pts)) == len(pts)  # strict's points first


def test_narrow_range_panel_still_has_readable_y_ticks(study):
    df, th, rates = study
    fig = metric_figure(df, "tv", rates, th)
    ax = [a for a in fig.axes if a.get_title() == "over: tv"][0]
    labels = drawn_tick_labels(ax, "y")
    assert len(labels) >= 2 and all(lab.replace(".", "").isdigit() for lab in labels)


def test_param_figure_layout(study):
    df, th, rates = study
    fig = param_figure(df, "over", rates, th)
    titles = [ax.get_title() for ax in fig.axes if ax.axison]
    assert "expert 1: beta1" in titles and "expert 3: mass" in titles
    assert "expert 2: beta1" not in titles  # fixed at the truth: a text panel
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "expert 2: beta1\nfixed at the truth" in texts
    ax = [a for a in fig.axes if a.get_title() == "expert 1: b"][0]
    entries = legend_texts(ax)
    # the base protocols only, and the bound of a multiply-fitted expert
    assert [e.split(":")[0] for e in entries] == ["strict", "theory", "papers"]
    assert "theory: n^-0.125 or faster (dashed)" in entries
    only = param_figure(df, "over", rates, th, experts=[1])
    assert {ax.get_title().split(":")[0] for ax in only.axes if ax.axison} == {"expert 1"}


def test_factorial_and_divergence_figures(study):
    df, th, _ = study
    fac = factorial_table(df, th, n_boot=99)
    fig = factorial_figure(fac, "over")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()][:3] == ["D2", "hellinger", "tv"]
    # papers - strict, start effect, stop effect: one set of interval bars each
    assert sum(type(c).__name__ == "LineCollection" for c in ax.collections) == 3
    assert legend_texts(ax)[0] == "papers - strict"
    dense = design_config("dense", k=4, Kbar=4, extra=(0,))
    ddf = synth_table([dense], reps=5, seed=2)
    fig = divergence_figure(ddf, ["dense"])
    assert fig.axes[0].get_title() == "dense: max |beta1| (divergence)"
    assert factorial_figure(fac, "nope") is None
    assert metric_figure(df, "D1", None, th).axes[0].get_title() == "exact: D1"


def test_interval_marks_draw_an_estimate_outside_its_own_interval():
    # a median-regression slope can lie outside its percentile-bootstrap interval; the
    # figure must draw it (matplotlib's errorbar refuses negative error lengths)
    import matplotlib.pyplot as plt

    from simstudy.reports.figures import interval_marks

    fig, ax = plt.subplots()
    interval_marks(ax, [1.0, 2.0, 3.0], [-0.30, -0.10, -0.2], [-0.25, -0.40, np.nan],
                   [-0.05, -0.20, np.nan], marker="o", color="k", ms=5, lw=1, capsize=2,
                   label="slope")
    segs = ax.collections[0].get_segments()
    assert len(segs) == 2  # the third interval is missing: no bar
    assert np.allclose(segs[0][:, 1], [-0.25, -0.05]) and np.allclose(segs[1][:, 1], [-0.4, -0.2])
    est = [ln for ln in ax.get_lines() if ln.get_label() == "slope"][0]
    assert np.allclose(est.get_ydata(), [-0.30, -0.10, -0.2])
    plt.close(fig)
