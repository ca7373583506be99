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
         "ci_low": [-0.6], "ci_high": [-0.4]}))
    assert np.allclose(comp["per_n"]["median_loglik_gap_strict_minus_papers"], 2.5)
    assert (comp["per_n"]["pairs"] == 5).all()
    assert np.isnan(comp["slopes"]["slope_papers"]).all()
    assert np.isfinite(comp["per_n"]["median_iter_papers"]).all()


@pytest.fixture
def fake_engine(monkeypatch):
    tables = {}
    mod = types.ModuleType("simstudy.engine")
    mod.load_results = lambda spec: tables[Path(spec).stem]
    mod.run_study = lambda *a, **k: None
    # a spec whose every task is in the table (a complete study)
    mod.load_spec = lambda spec: types.SimpleNamespace(
        tasks=lambda: [None] * len(tables[Path(spec).stem]))
    monkeypatch.setitem(sys.modules, "simstudy.engine", mod)
    return tables


def test_build_writes_tables_figures_and_readme(tmp_path, fake_engine, capsys, monkeypatch):
    spec = tmp_path / "sweep.toml"
    spec.write_text(SPEC.format(name="sweep"))
    fake_engine["sweep"] = small_table()
    out = tmp_path / "results"
    assert build.main([str(spec), "--out", str(out)]) == 0
    tables = {p.name for p in (out / "tables").iterdir()}
    for suffix in ("rates.csv", "rates.md", "summary.csv", "summary.md", "protocols.csv",
                   "protocols.md", "theory.csv", "meta.json", "cost.csv", "cost.md"):
        assert f"sweep_{suffix}" in tables
    figs = {p.name for p in (out / "figures").iterdir()}
    assert {"sweep_D2.png", "sweep_hellinger.png", "sweep_tv.png", "sweep_params_kbar2.png",
            "sweep_params_kbar3.png", "sweep_sweep.png"} <= figs
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
    assert k2.verdict.str.startswith("no guarantee").all()
    readme = (out / "README.md").read_text()
    assert md_tables_ok(readme) >= 2
    assert "simstudy report " + str(spec) in readme and "statsmodels" in readme
    links = re.findall(r"\]\(([^)]+)\)", readme)
    assert links and all((out / link).is_file() for link in links)
    # headline = strict rows only
    head = readme.split("## Headline")[1].split("##")[0]
    assert "| strict |" in head and "| papers |" not in head
    # a second study keeps the first one listed
    spec2 = tmp_path / "other.toml"
    spec2.write_text(SPEC.format(name="other"))
    fake_engine["other"] = small_table("other", seed=1)
    assert build.main([str(spec2), "--out", str(out), "--no-figures"]) == 0
    readme = (out / "README.md").read_text()
    assert "### sweep" in readme and "### other" in readme
    # a sweep kept in one spec per setting: one combined figure, linked from the README
    monkeypatch.setattr(build, "write_figures", lambda *a, **k: [])  # only the sweep: fast
    assert build.main([str(spec), str(spec2), "--out", str(out), "--sweep", "both"]) == 0
    assert (out / "figures" / "both_sweep.png").stat().st_size > 0
    assert "(figures/both_sweep.png)" in (out / "README.md").read_text()
    assert build.main([str(tmp_path / "nope.toml"), "--out", str(out)]) == 2
    assert "spec: no such file" in capsys.readouterr().err


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
