"""Tables, figures and the README are written and well formed (synthetic tidy tables)."""

import re
import sys
import types
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from simstudy.reports import build
from simstudy.reports.configs import configs_from_spec, configs_from_table
from simstudy.reports.tables import protocol_comparison, to_markdown
from tests.reports_synth import design_config, synth_table

SPEC = """
[study]
name = "{name}"
description = "test"
root_seed = 1
replications = 5
[design]
name = "T"
[n_grid]
values = [1000, 3000, 10000, 30000]
[[fit]]
label = "kbar2"
k = 4
K = 2
extra_atoms = [1]
protocols = ["papers", "strict"]
[[fit]]
label = "kbar3"
k = 4
K = 3
extra_atoms = [1]
protocols = ["papers", "strict"]
"""

CFGS = [design_config("kbar2", k=4, Kbar=2, extra=(0,)),
        design_config("kbar3", k=4, Kbar=3, extra=(0,))]


def md_tables_ok(text: str) -> int:
    """Every Markdown table has a header, a separator and rows with the same column count."""
    blocks, cur = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cur.append(line)
        elif cur:
            blocks.append(cur)
            cur = []
    for b in blocks:
        ncol = b[0].count("|")
        assert re.fullmatch(r"\|(---\|)+", b[1]), b[1]
        assert all(row.count("|") == ncol for row in b), b
    return len(blocks)


def small_table(name="sweep", seed=0):
    return synth_table(CFGS, n_values=(1000, 3000, 10000, 30000), reps=5,
                       protocols=("papers", "strict"), study=name, seed=seed)


def test_configs_from_spec_and_table(tmp_path):
    spec = tmp_path / "sweep.toml"
    spec.write_text(SPEC.format(name="sweep"))
    cfgs = configs_from_spec(spec)
    assert list(cfgs) == ["kbar2", "kbar3"]
    assert cfgs["kbar3"].extra_atoms == (0,) and cfgs["kbar3"].K == 3
    inferred = configs_from_table(small_table())
    assert inferred["kbar2"].extra_atoms == (0,) and inferred["kbar2"].k == 4
    bad = tmp_path / "bad.toml"
    bad.write_text(SPEC.format(name="bad").replace("extra_atoms = [1]\nprotocols = [\"papers\", "
                                                   "\"strict\"]\n[[fit]]", "extra_atoms = [4]\n"
                                                   "protocols = [\"papers\"]\n[[fit]]"))
    with pytest.raises(ValueError, match="fit 'kbar2': extra_atoms: true expert indices"):
        configs_from_spec(bad)
    # a per-fit true K (the K sweep kept in one study)
    ksweep = tmp_path / "ks.toml"
    ksweep.write_text(SPEC.format(name="ks").replace('label = "kbar2"\nk = 4\nK = 2\n'
                                                     'extra_atoms = [1]',
                                                     'label = "K1"\ntrue_K = 1\nk = 3\nK = 1'))
    ks = configs_from_spec(ksweep)
    assert ks["K1"].truth.K == 1 and ks["K1"].k == 3 and ks["kbar3"].truth.K == 2
    with pytest.raises(ValueError, match="fit 'K1': true_K"):
        configs_from_spec(ksweep.write_text(ksweep.read_text().replace("true_K = 1",
                                                                       "true_K = 5")) and ksweep)
    with pytest.raises(ValueError, match="df: the tidy table lacks"):
        configs_from_table(pd.DataFrame({"label": ["x"]}))


def test_markdown_writer():
    md = to_markdown(pd.DataFrame({"a": [1, 2], "b": [0.5, np.nan], "c": ["x|y", "z"]}))
    assert md_tables_ok(md) == 1 and "x/y" in md


def test_protocol_comparison_gap_is_matched_by_replication():
    df = small_table()
    # strict gains exactly 2.5 log-likelihood on every data set
    df.loc[df.protocol == "strict", "loglik"] = (
        df.loc[df.protocol == "papers", "loglik"].to_numpy() + 2.5)
    # the engine stores n_iter as a nullable integer; an error row has none
    df["n_iter"] = df["n_iter"].astype("Int64")
    df.loc[df.index[0], "n_iter"] = pd.NA
    comp = protocol_comparison(df, pd.DataFrame(
        {"label": ["kbar3"], "protocol": ["strict"], "metric": ["tv"], "slope": [-0.5],
         "ci95_low": [-0.6], "ci95_high": [-0.4]}))
    assert np.allclose(comp["per_n"]["median_loglik_gap_strict_minus_papers"], 2.5)
    assert (comp["per_n"]["pairs"] == 5).all()
    assert np.isnan(comp["slopes"]["slope_papers"]).all()
    assert np.isfinite(comp["per_n"]["median_iter_papers"]).all()


@pytest.fixture
def fake_engine(monkeypatch):
    tables = {}
    mod = types.ModuleType("simstudy.engine")
    mod.load_results = lambda spec, store_dir=None: tables.get(Path(spec).stem, pd.DataFrame(
        columns=["label", "protocol", "n", "rep", "status"]))
    mod.run_study = lambda *a, **k: None
    # a spec whose every task is in the table (a complete study)
    mod.load_spec = lambda spec: types.SimpleNamespace(
        tasks=lambda: [None] * len(tables.get(Path(spec).stem, [])))
    monkeypatch.setitem(sys.modules, "simstudy.engine", mod)
    return tables


def test_build_writes_data_tables_figures_and_readme(tmp_path, fake_engine, capsys):
    spec = tmp_path / "sweep.toml"
    spec.write_text(SPEC.format(name="sweep"))
    fake_engine["sweep"] = small_table()
    out = tmp_path / "results"
    assert build.main([str(spec), "--out", str(out), "--n-boot", "99"]) == 0
    assert "sweep: 80 fits from store" in capsys.readouterr().out
    tables = {p.name for p in (out / "tables").iterdir()}
    for suffix in ("rates.csv", "rates.md", "summary.csv", "summary.md", "protocols.csv",
                   "protocols.md", "theory.csv", "meta.json", "cost.csv", "cost.md",
                   "partitions.md", "diagnostics.md"):
        assert f"sweep_{suffix}" in tables, suffix
    figs = {p.name for p in (out / "figures").iterdir()}
    assert {"sweep_D2.png", "sweep_hellinger.png", "sweep_tv.png", "sweep_params_kbar2.png",
            "sweep_params_kbar3.png"} <= figs
    for p in (out / "tables").iterdir():
        assert p.stat().st_size > 0, p
    # real, non-blank images (what they show is checked in tests/test_figures.py)
    for p in (out / "figures").iterdir():
        img = plt.imread(p)
        assert img.ndim == 3 and img.shape[0] >= 400 and img.shape[1] >= 600, (p, img.shape)
        assert len(np.unique(img.reshape(-1, img.shape[2]), axis=0)) > 50, p
    for p in (out / "tables").glob("*.md"):
        assert md_tables_ok(p.read_text()) >= 1, p
    rates = pd.read_csv(out / "tables" / "sweep_rates.csv")
    k2 = rates[(rates.label == "kbar2") & (rates.metric == "hellinger")]
    assert (k2.verdict == "no guarantee").all()
    md = (out / "tables" / "sweep_rates.md").read_text()
    assert "| n range |" in md and "1e3-3e4 (4 n)" in md and "| fits per n |" in md
    # the per-fit data are written beside the tables
    data = pd.read_parquet(out / "data" / "sweep.parquet")
    assert len(data) == 80 and {"n", "rep", "D2", "err_b_1", "cell_size_1"} <= set(data.columns)
    readme = (out / "README.md").read_text()
    assert readme.startswith("# simstudy results\n\n## Headline rates")
    assert md_tables_ok(readme) >= 2
    assert "simstudy report " + str(spec) in readme and "statsmodels" in readme
    links = re.findall(r"\]\(([^)]+)\)", readme)
    assert links and all((out / link).is_file() for link in links
                         if not link.startswith("../"))
    assert "![sweep: sweep_D2](figures/sweep_D2.png)" in readme
    assert "![sweep: sweep_params_kbar3_multi](figures/sweep_params_kbar3_multi.png)" in readme
    head = readme.split("## Headline")[1].split("##")[0]
    assert "| sweep | kbar3 | D2 |" in head and "| kbar2 | hellinger | none |" in head
    # a second study keeps the first one listed
    spec2 = tmp_path / "other.toml"
    spec2.write_text(SPEC.format(name="other"))
    fake_engine["other"] = small_table("other", seed=1)
    assert build.main([str(spec2), "--out", str(out), "--no-figures", "--n-boot", "99"]) == 0
    readme = (out / "README.md").read_text()
    assert "### sweep" in readme and "### other" in readme
    assert build.main([str(tmp_path / "nope.toml"), "--out", str(out)]) == 2
    assert "spec: no such file" in capsys.readouterr().err
    assert build.main([str(spec), "--out", str(out), "--n-boot", "5"]) == 2


def test_report_rebuilds_from_the_committed_data_without_a_store(tmp_path, fake_engine,
                                                                 capsys):
    spec = tmp_path / "sweep.toml"
    spec.write_text(SPEC.format(name="sweep"))
    out = tmp_path / "results"
    # no store rows and no data: a clear error
    assert build.main([str(spec), "--out", str(out), "--no-figures", "--n-boot", "99"]) == 2
    assert "has no results" in capsys.readouterr().err
    fake_engine["sweep"] = small_table()
    assert build.main([str(spec), "--out", str(out), "--no-figures", "--n-boot", "99"]) == 0
    first = pd.read_csv(out / "tables" / "sweep_rates.csv")
    del fake_engine["sweep"]  # the store is gone
    capsys.readouterr()
    assert build.main([str(spec), "--out", str(out), "--no-figures", "--n-boot", "99",
                       "--from-data"]) == 0
    assert "from " + str(out / "data" / "sweep.parquet") in capsys.readouterr().out
    again = pd.read_csv(out / "tables" / "sweep_rates.csv")
    pd.testing.assert_frame_equal(first, again)
    # a data file of another study is refused
    other = tmp_path / "other.toml"
    other.write_text(SPEC.format(name="other"))
    (out / "data" / "sweep.parquet").rename(out / "data" / "other.parquet")
    assert build.main([str(other), "--out", str(out), "--no-figures", "--from-data"]) == 2
    assert "holds study ['sweep'], not 'other'" in capsys.readouterr().err


def test_readme_says_when_a_study_is_partial():
    from simstudy.reports.build import _completeness

    assert _completeness({"fits": 40, "planned": 40, "complete_reps": 2}) == ""
    assert _completeness({"fits": 40, "planned": None}) == ""
    text = _completeness({"fits": 12, "planned": 40, "complete_reps": 3})
    assert "of 40 planned" in text and "**partial**: 3 replications" in text


def test_cost_table_counts_fits_seconds_and_stops():
    from simstudy.reports.tables import cost_table

    df = pd.DataFrame({
        "label": ["a"] * 3, "protocol": ["strict"] * 3, "n": [100, 100, 200],
        "n_iter": [10, 30, 5], "seconds": [1.0, 3.0, 0.5],
        "stop_reason": ["strict", "stalled", "strict"],
    })
    cost = cost_table(df)
    assert list(cost["n"]) == [100, 200] and list(cost["fits"]) == [2, 1]
    row = cost.iloc[0]
    assert row["median_iter"] == 20 and row["max_s"] == 3.0 and row["total_s"] == 4.0
    assert row["stops"] in ("strict 1, stalled 1", "stalled 1, strict 1")


EXACT_AND_OVER2 = """
[study]
name = "{name}"
root_seed = 1
replications = 5
[design]
name = "T"
[n_grid]
values = [1000, 3000, 10000, 30000]
[[fit]]
label = "exact"
k = 3
K = 2
protocols = ["strict"]
[[fit]]
label = "over2"
k = 5
K = 4
extra_atoms = [1, 1]
protocols = ["strict"]
"""


def test_cross_study_m_atoms_table_figure_and_stale_outputs(tmp_path, fake_engine):
    from simstudy.reports.figures import atoms_figure

    out = tmp_path / "results"
    spec = tmp_path / "sweep.toml"  # m = 2 (kbar3)
    spec.write_text(SPEC.format(name="sweep"))
    fake_engine["sweep"] = small_table()
    spec2 = tmp_path / "mixed.toml"  # m = 1 (exact) and m = 3 (over2)
    spec2.write_text(EXACT_AND_OVER2.format(name="mixed"))
    cfgs = [design_config("exact"), design_config("over2", k=5, Kbar=4, extra=(0, 0))]
    fake_engine["mixed"] = synth_table(cfgs, n_values=(1000, 3000, 10000, 30000), reps=5,
                                       study="mixed", seed=3)
    # a stale figure listed by a previous build of "sweep" is removed by the rebuild
    (out / "tables").mkdir(parents=True)
    (out / "figures").mkdir()
    (out / "figures" / "sweep_old.png").write_bytes(b"x")
    (out / "tables" / "sweep_meta.json").write_text('{"files": ["figures/sweep_old.png"]}')
    # an older build of another study (old rate columns) is named, not summarised
    (out / "tables" / "old_meta.json").write_text('{"study": "old", "files": []}')
    (out / "tables" / "old_rates.csv").write_text("study,label,metric,slope\nold,x,D1,-0.5\n")
    assert build.main([str(spec), str(spec2), "--out", str(out), "--n-boot", "99"]) == 0
    assert not (out / "figures" / "sweep_old.png").exists()
    at = pd.read_csv(out / "tables" / "expert1_atoms.csv")
    assert sorted(set(at["m"])) == [1, 2, 3] and set(at["design"]) == {"T"}
    exp = at.set_index(["m", "param"])["expected"]
    assert exp[(1, "b")] == -0.5 and exp[(2, "b")] == -1 / 8 and exp[(3, "b")] == -1 / 12
    assert exp[(2, "a")] == -1 / 4 and exp[(3, "v")] == -1 / 6
    readme = (out / "README.md").read_text()
    assert "## Expert 1 fitted by m = 1, 2, 3 atoms" in readme
    assert "![expert 1 fitted by m atoms](figures/expert1_atoms.png)" in readme
    assert "Tables of old were written by an older simstudy" in readme
    # tables written before the decide projection still make the README (nothing projected)
    rp = out / "tables" / "mixed_rates.csv"
    r = pd.read_csv(rp)
    r.drop(columns=["decide_as", "decide_reps", "decide_n_max"]).to_csv(rp, index=False)
    build.write_readme(out, "simstudy report")
    again = (out / "README.md").read_text()
    assert "| mixed |" in again and "Tables of mixed were written" not in again
    fig = atoms_figure(at)
    titles = [ax.get_title() for ax in fig.axes if ax.axison]
    assert titles == [f"design T: expert 1, {p}" for p in ("beta1", "a", "b", "v")]
    ax = fig.axes[2]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["m = 1", "m = 2", "m = 3"]
    guide = [ln for ln in ax.get_lines() if ln.get_gid() == "theory"][0]
    assert np.allclose(guide.get_ydata(), [-0.5, -1 / 8, -1 / 12])
    # the measured slopes with their intervals
    assert sum(type(c).__name__ == "LineCollection" for c in ax.collections) == 1
