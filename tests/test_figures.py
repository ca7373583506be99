"""The figures show what they claim: checked through matplotlib's objects (axes, scales,
labels, the plotted series and their values), not through the size of a PNG file."""

import numpy as np
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from simstudy.reports import figures
from simstudy.reports.rates import fit_rate
from simstudy.reports.theory import theory_table
from tests.reports_synth import design_config, synth_table

CFGS = [design_config("kbar2", k=4, Kbar=2, extra=(0,)),
        design_config("kbar3", k=4, Kbar=3, extra=(0,))]
N = (1000, 3000, 10000, 30000)


@pytest.fixture
def saved(monkeypatch):
    """The figures passed to savefig (kept alive after the module closes them); nothing is
    rendered (tests/test_reports.py writes real PNG files)."""
    out = []

    def savefig(self, path, *args, **kwargs):
        out.append((path, self))
        open(path, "wb").close()

    monkeypatch.setattr(Figure, "savefig", savefig)
    return out


@pytest.fixture(scope="module")
def table():
    return synth_table(CFGS, n_values=N, reps=5, protocols=("papers", "strict"), seed=0)


@pytest.fixture(scope="module")
def theory():
    return theory_table(CFGS)


def lines_by_style(ax, color):
    """Solid and dashed lines of one series (matched by colour)."""
    solid, dashed = [], []
    for ln in ax.get_lines():
        if to_hex(ln.get_color()) != to_hex(color):
            continue
        (dashed if ln.get_linestyle() == "--" else solid).append(ln)
    return solid, dashed


def loglog_slope(line):
    x, y = np.log(line.get_xdata()), np.log(line.get_ydata())
    return np.polyfit(x, y, 1)[0]


def test_metric_figure_axes_series_and_labels(tmp_path, saved, table, theory):
    path = tmp_path / "hellinger.png"
    assert figures.metric_figure(table, "hellinger", path, theory, title="sweep: hellinger")
    assert path.is_file() and len(saved) == 1
    (ax,) = saved[0][1].axes
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert ax.get_xlabel() == "n" and ax.get_ylabel() == "hellinger"
    assert ax.get_title() == "sweep: hellinger"
    series = [("kbar2", "papers"), ("kbar2", "strict"), ("kbar3", "papers"), ("kbar3", "strict")]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [f"{lbl} / {p}" for lbl, p in series]
    exp = {r.label: (r.kind, r.expected) for r in theory[theory.metric == "hellinger"]
           .itertuples()}
    medians = {ln.get_label(): ln for ln in ax.get_lines() if not ln.get_label().startswith("_")}
    for lbl, proto in series:
        g = table[(table.label == lbl) & (table.protocol == proto)]
        med_line = medians[f"{lbl} / {proto}"]
        # the median per n, at every n
        want = g.groupby("n")["hellinger"].median()
        np.testing.assert_array_equal(med_line.get_xdata(), want.index.to_numpy(dtype=float))
        np.testing.assert_allclose(med_line.get_ydata(), want.to_numpy(), rtol=1e-12)
        solid, dashed = lines_by_style(ax, med_line.get_color())
        # the OLS line has the fitted slope over the range of n
        (ols,) = [ln for ln in solid if ln is not med_line]
        assert loglog_slope(ols) == pytest.approx(fit_rate(g["n"], g["hellinger"]).slope,
                                                  rel=1e-9)
        assert ols.get_xdata()[0] == N[0] and ols.get_xdata()[-1] == pytest.approx(N[-1])
        # a theory guide only where the theory gives an exponent: that slope, from the median
        # at the smallest n
        kind, expected = exp[lbl]
        if kind in ("rate", "bound"):
            (guide,) = dashed
            assert loglog_slope(guide) == pytest.approx(expected, rel=1e-9)
            assert guide.get_ydata()[0] == pytest.approx(want.iloc[0], rel=1e-12)
        else:
            assert dashed == []
    # every replication as a point
    points = sum(len(c.get_offsets()) for c in ax.collections
                 if c.get_offsets().shape[0] > 0 and c.get_offsets().shape[1] == 2
                 and type(c).__name__ == "PathCollection")
    assert points == len(table)
    assert exp["kbar2"][0] == "none" and exp["kbar3"] == ("rate", -0.5)  # both cases shown


def test_metric_figure_without_data_writes_nothing(tmp_path, saved, table, theory):
    empty = table.assign(hellinger=np.nan)
    assert not figures.metric_figure(empty, "hellinger", tmp_path / "h.png", theory)
    assert saved == [] and not (tmp_path / "h.png").exists()
    # only failed fits: nothing usable either
    errors = table.assign(status="error")
    assert not figures.metric_figure(errors, "tv", tmp_path / "t.png", theory)


def test_param_panels_grid_titles_and_guides(tmp_path, saved, table, theory):
    assert figures.param_panels(table, "kbar3", tmp_path / "p.png", theory)
    fig = saved[0][1]
    assert fig.get_suptitle() == "kbar3: per-parameter errors vs n"
    axes = np.array(fig.axes).reshape(3, 5)
    titles = [[ax.get_title() for ax in row] for row in axes]
    assert titles[0][0] == "expert 1: beta1  (theory -0.125)"  # two atoms: a bound
    assert titles[0][1] == "expert 1: a  (theory -0.25)"
    assert titles[2][4] == "expert 3: mass  (theory -0.5)"
    # the reference expert's gating is fixed at the truth: those panels are off, with a note
    for c in (0, 4):
        ax = axes[1, c]
        assert not ax.axison and "no positive values" in ax.texts[0].get_text()
        assert titles[1][c].endswith("(theory fixed)")
    ax = axes[0, 1]  # err_a_1, both protocols, log-log, each with its median per n
    assert ax.get_xscale() == ax.get_yscale() == "log"
    labels = [ln.get_label() for ln in ax.get_lines() if not ln.get_label().startswith("_")]
    assert labels == ["papers", "strict"]
    g = table[(table.label == "kbar3") & (table.protocol == "strict")]
    med = next(ln for ln in ax.get_lines() if ln.get_label() == "strict")
    np.testing.assert_allclose(med.get_ydata(), g.groupby("n")["err_a_1"].median().to_numpy())
    # the bound's guide has the bound's slope
    _, dashed = lines_by_style(ax, med.get_color())
    assert loglog_slope(dashed[0]) == pytest.approx(-0.25, rel=1e-9)


def test_sweep_figure_one_column_per_label(tmp_path, saved, table, theory):
    assert figures.sweep_figure(table, tmp_path / "s.png", theory)
    axes = np.array(saved[0][1].axes).reshape(3, 2)
    assert [[ax.get_title() for ax in row] for row in axes] == [
        ["kbar2: hellinger", "kbar3: hellinger"], ["kbar2: tv", "kbar3: tv"],
        ["kbar2: D2", "kbar3: D2"]]
    for c, lbl in enumerate(("kbar2", "kbar3")):
        g = table[(table.label == lbl) & (table.protocol == "papers")]
        med = next(ln for ln in axes[2, c].get_lines() if ln.get_label() == "papers")
        np.testing.assert_allclose(med.get_ydata(), g.groupby("n")["D2"].median().to_numpy())
    # a single label is no sweep
    one = table[table.label == "kbar3"]
    assert not figures.sweep_figure(one, tmp_path / "none.png", theory)
