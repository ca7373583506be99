"""`simstudy check`: fails on a wrong rate or a drifted reference, passes when consistent."""

import json
import sys
import types

import numpy as np
import pytest

from simstudy.reports import check
from simstudy.reports.check import check_failures, make_reference, read_reference
from simstudy.reports.rates import rate_table
from simstudy.reports.theory import theory_table
from tests.reports_synth import design_config, synth_table

SPEC = """
[study]
name = "ci"
description = "test"
root_seed = 1
replications = 12
[design]
name = "T"
[n_grid]
values = [1000, 3000, 10000, 30000]
[[fit]]
label = "topk_exact"
k = 3
K = 2
protocols = ["strict"]
[[fit]]
label = "topk_over"
k = 4
K = 3
extra_atoms = [1]
protocols = ["strict"]
"""

CFGS = [design_config("topk_exact"), design_config("topk_over", k=4, Kbar=3, extra=(0,))]


def table(slopes=None, seed=0, protocols=("strict",)):
    df = synth_table(CFGS, protocols=protocols, slopes=slopes, seed=seed, reps=12,
                     n_values=(1000, 3000, 10000, 30000), study="ci")
    return df, rate_table(df, theory_table(CFGS))


def test_consistent_table_passes_without_and_with_its_reference():
    _, rates = table()
    assert check_failures(rates, None) == []
    assert check_failures(rates, make_reference(rates)) == []


def test_wrong_rate_fails_on_theory():
    _, rates = table(slopes={("topk_exact", "strict", "D1"): -0.25})
    fails = check_failures(rates, None)
    assert len(fails) == 1 and fails[0].startswith("theory: ci/topk_exact/strict/D1")


def test_slow_bound_violated_fails():
    _, rates = table(slopes={("topk_over", "strict", "err_a_1"): 0.05})
    fails = check_failures(rates, None)
    assert any("topk_over/strict/err_a_1" in f and "<= -0.250" in f for f in fails)


def test_papers_protocol_is_not_gated_when_strict_exists():
    _, rates = table(slopes={("topk_exact", "papers", "D1"): -0.08},
                     protocols=("papers", "strict"))
    assert check_failures(rates, None) == []
    row = rates[(rates.protocol == "papers") & (rates.metric == "D1")
                & (rates.label == "topk_exact")]
    assert row.verdict.item() == "inconsistent" and not row.headline.item()


def test_all_fits_excluded_is_a_failure_not_a_pass():
    df, _ = table()
    df.loc[df.label == "topk_exact", "status"] = "error"
    rates = rate_table(df, theory_table(CFGS))
    fails = check_failures(rates, None)
    assert any("topk_exact/strict/D1: no usable slope" in f for f in fails)


def test_drifted_reference_fails():
    _, rates = table()
    ref = make_reference(rates)
    for row in ref["rows"]:
        if row["label"] == "topk_exact" and row["metric"] == "tv":
            row["slope"] += 0.2
    fails = check_failures(rates, ref, tolerance=0.15)
    assert len(fails) == 1 and "reference: ci/topk_exact/strict/tv" in fails[0]
    assert check_failures(rates, ref, tolerance=0.25) == []
    ref["rows"].append({"study": "ci", "label": "gone", "protocol": "strict", "metric": "tv",
                        "slope": -0.5})
    assert any("gone/strict/tv: row missing" in f for f in check_failures(rates, ref, 0.25))
    with pytest.raises(ValueError, match="tolerance: must be finite"):
        check_failures(rates, ref, tolerance=np.nan)


def test_reference_roundtrip_and_validation(tmp_path):
    _, rates = table()
    p = check.write_reference(make_reference(rates, "abc"), tmp_path / "r.json")
    ref = read_reference(p)
    assert ref["spec_hash"] == "abc" and len(ref["rows"]) == int(np.isfinite(rates.slope).sum())
    (tmp_path / "bad.json").write_text(json.dumps({"rows": [{"slope": 1}]}))
    with pytest.raises(ValueError, match="lacks key"):
        read_reference(tmp_path / "bad.json")
    (tmp_path / "bad2.json").write_text("[]")
    with pytest.raises(ValueError, match="not a rate reference"):
        read_reference(tmp_path / "bad2.json")


@pytest.fixture
def fake_engine(monkeypatch):
    """simstudy.engine stand-in: run_study records calls, load_results returns a table."""
    state = {"df": None, "runs": []}
    mod = types.ModuleType("simstudy.engine")
    mod.run_study = lambda spec, jobs=None, progress=True, **kw: state["runs"].append(
        (str(spec), jobs))
    mod.load_results = lambda spec, store_dir=None: state["df"]
    monkeypatch.setitem(sys.modules, "simstudy.engine", mod)
    return state


def test_main_exit_codes(tmp_path, fake_engine, capsys):
    spec = tmp_path / "ci.toml"
    spec.write_text(SPEC)
    ref = tmp_path / "ref.json"
    fake_engine["df"], _ = table(seed=1)
    args = [str(spec), "--reference", str(ref), "--no-progress", "--jobs", "1"]
    # no reference yet: fail and say how to create it
    assert check.main(args) == 1
    assert "--update-reference" in capsys.readouterr().out
    assert check.main([*args, "--update-reference"]) == 0
    assert ref.is_file() and fake_engine["runs"][-1] == (str(spec), 1)
    assert check.main(args) == 0
    assert "PASS" in capsys.readouterr().out
    # same data with a drifted code path: one slope moves -> exit 1
    fake_engine["df"], _ = table(seed=1, slopes={("topk_exact", "strict", "hellinger"): -0.75})
    assert check.main(args) == 1
    out = capsys.readouterr().out
    assert "topk_exact/strict/hellinger" in out and "FAIL" in out
    # usage errors: exit 2 with a one-line message
    assert check.main([str(tmp_path / "missing.toml")]) == 2
    assert "spec: no such file" in capsys.readouterr().err
    assert check.main([*args, "--tolerance", "-1"]) == 2


def test_imprecise_rate_fails_and_missing_metric_column_is_no_data():
    df, _ = table()
    # 2 replications only and huge noise: the CI overlaps anything
    noisy = synth_table(CFGS, slopes=None, seed=2, reps=2, sigma=3.0,
                        n_values=(1000, 3000, 10000, 30000), study="ci")
    fails = check_failures(rate_table(noisy, theory_table(CFGS)), None)
    assert any(f.startswith("precision: ci/topk_exact/strict/") for f in fails)
    rates = rate_table(df.drop(columns="tv"), theory_table(CFGS))
    row = rates[(rates.label == "topk_exact") & (rates.metric == "tv")]
    assert row.verdict.item() == "no data" and "metric column missing" in row.excluded.item()
    fails = check_failures(rates, None)
    assert any("topk_exact/strict/tv: no usable slope" in f for f in fails)
    with pytest.raises(ValueError, match="max_halfwidth"):
        check_failures(rates, None, max_halfwidth=0)
