"""`simstudy check`: each failure mode (inconsistent, undecided, became undecided, drift, no
data) fails, a consistent decided table passes."""

import functools
import json
import sys
import types

import numpy as np
import pandas as pd
import pytest

from simstudy.reports import check
from simstudy.reports.check import check_failures, make_reference, read_reference
from simstudy.reports.rates import RATE_COLUMNS, rate_table
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
N_VALUES = (1000, 2000, 4000, 8000, 16000, 32000)


def table(slopes=None, seed=0, protocols=("strict",), reps=16, sigma=0.15):
    df, rates = _table(tuple(sorted((slopes or {}).items())), seed, protocols, reps, sigma)
    return df.copy(), rates.copy()


@functools.lru_cache(maxsize=16)
def _table(slopes, seed, protocols, reps, sigma):
    df = synth_table(CFGS, protocols=protocols, slopes=dict(slopes), seed=seed, reps=reps,
                     n_values=N_VALUES, study="ci", sigma=sigma)
    return df, rate_table(df, theory_table(CFGS), n_boot=99)


def row(**kw):
    """One hand-built rate row (the columns check_failures reads)."""
    r = dict.fromkeys(RATE_COLUMNS, np.nan)
    r.update(study="ci", label="exact", protocol="strict", metric="D1", kind="rate",
             expected=-0.5, n_used=100, excluded="", note="", headline=True, slope=-0.5,
             ci90_low=-0.55, ci90_high=-0.45, ci95_low=-0.56, ci95_high=-0.44,
             verdict="consistent")
    r.update(kw)
    return r


def rates_of(*rows):
    return pd.DataFrame(list(rows), columns=RATE_COLUMNS)


def test_consistent_decided_table_passes_without_and_with_its_reference():
    _, rates = table()
    head = rates[rates.headline & rates.metric.isin(["D1", "D2", "hellinger", "tv"])]
    assert (head.verdict == "consistent").all()
    assert check_failures(rates, None) == []
    assert check_failures(rates, make_reference(rates)) == []


def test_inconsistent_headline_fails():
    fails = check_failures(rates_of(row(verdict="inconsistent", slope=-0.25)), None)
    assert len(fails) == 1 and fails[0].startswith("theory: ci/exact/strict/D1: slope -0.250")
    # a real table with a wrong rate
    _, rates = table(slopes={("topk_exact", "strict", "D1"): -0.25})
    fails = check_failures(rates, None)
    assert any(f.startswith("theory: ci/topk_exact/strict/D1") for f in fails)


def test_inconsistent_bound_fails():
    fails = check_failures(rates_of(row(metric="err_a_1", kind="bound", expected=-0.25,
                                        verdict="inconsistent", slope=0.05)), None)
    assert len(fails) == 1 and "err_a_1" in fails[0] and "<= -0.250" in fails[0]


def test_undecided_headline_distance_fails_but_an_undecided_parameter_does_not():
    fails = check_failures(rates_of(row(verdict="inconclusive", note="too small to decide: x")),
                           None)
    assert len(fails) == 1 and fails[0].startswith("undecided: ci/exact/strict/D1: "
                                                   "inconclusive (too small to decide: x)")
    assert check_failures(rates_of(row(metric="err_b_1", verdict="inconclusive")), None) == []
    # a real study with huge noise: the distances are not decided
    _, noisy = table(reps=3, sigma=2.0)
    fails = check_failures(noisy, None)
    assert any(f.startswith("undecided: ci/topk_exact/strict/hellinger") for f in fails)


def test_a_rate_that_becomes_inconclusive_fails_against_its_reference():
    before = rates_of(row(metric="err_b_1", kind="bound", expected=-0.125, verdict="shown"))
    ref = make_reference(before)
    now = rates_of(row(metric="err_b_1", kind="bound", expected=-0.125, verdict="inconclusive"))
    fails = check_failures(now, ref)
    assert fails == ["undecided: ci/exact/strict/err_b_1: now inconclusive, the reference says "
                     "shown (slope -0.500 95% CI [-0.560, -0.440])"]
    # a headline distance that was consistent says so too
    fails = check_failures(rates_of(row(verdict="inconclusive")), make_reference(rates_of(row())))
    assert len(fails) == 1 and fails[0].endswith("; the reference says consistent")


def test_non_headline_protocol_is_not_gated():
    _, rates = table(slopes={("topk_exact", "papers", "D1"): -0.08},
                     protocols=("papers", "strict"))
    assert check_failures(rates, None) == []
    r = rates[(rates.protocol == "papers") & (rates.metric == "D1")
              & (rates.label == "topk_exact")]
    assert r.verdict.item() == "inconsistent" and not r.headline.item()


def test_all_fits_excluded_is_a_failure_not_a_pass():
    df, _ = table()
    df.loc[df.label == "topk_exact", "status"] = "error"
    rates = rate_table(df, theory_table(CFGS), n_boot=99)
    fails = check_failures(rates, None)
    assert any(f.startswith("undecided: ci/topk_exact/strict/D1: no data") for f in fails)
    assert any("topk_exact/strict/err_a_1: no usable slope" in f for f in fails)


def test_drifted_reference_fails():
    rates = rates_of(row(), row(metric="tv", slope=-0.52))
    ref = make_reference(rates)
    ref["rows"][1]["slope"] += 0.11
    fails = check_failures(rates, ref, tolerance=0.1)
    assert len(fails) == 1 and fails[0].startswith("drift: ci/exact/strict/tv: slope -0.520 "
                                                   "moved -0.110")
    assert check_failures(rates, ref, tolerance=0.12) == []
    ref["rows"].append({"study": "ci", "label": "gone", "protocol": "strict", "metric": "tv",
                        "slope": -0.5})
    assert any("gone/strict/tv: row missing" in f for f in check_failures(rates, ref, 0.25))
    ref["rows"] = ref["rows"][:1]
    nos = rates_of(row(slope=np.nan, verdict="no data"))
    assert any("no slope now" in f for f in check_failures(nos, ref))
    with pytest.raises(ValueError, match="tolerance: must be finite"):
        check_failures(rates, ref, tolerance=np.nan)


def test_reference_roundtrip_and_validation(tmp_path):
    _, rates = table()
    p = check.write_reference(make_reference(rates, "abc"), tmp_path / "r.json")
    ref = read_reference(p)
    assert ref["spec_hash"] == "abc" and len(ref["rows"]) == int(np.isfinite(rates.slope).sum())
    assert {"verdict", "ci95"} <= set(ref["rows"][0])
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
    args = [str(spec), "--reference", str(ref), "--no-progress", "--jobs", "1", "--n-boot",
            "99"]
    # no reference yet: fail and say how to create it
    assert check.main(args) == 1
    assert "--update-reference" in capsys.readouterr().out
    assert check.main([*args, "--update-reference"]) == 0
    assert ref.is_file() and fake_engine["runs"][-1] == (str(spec), 1)
    assert check.main(args) == 0
    assert "PASS" in capsys.readouterr().out
    # same data with a drifted code path: one slope moves -> exit 1
    fake_engine["df"], _ = table(seed=1, slopes={("topk_exact", "strict", "hellinger"): -0.62})
    assert check.main(args) == 1
    out = capsys.readouterr().out
    assert "drift: ci/topk_exact/strict/hellinger" in out and "FAIL" in out
    # usage errors: exit 2 with a one-line message
    assert check.main([str(tmp_path / "missing.toml")]) == 2
    assert "spec: no such file" in capsys.readouterr().err
    assert check.main([*args, "--tolerance", "-1"]) == 2
    assert check.main([*args, "--n-boot", "5"]) == 2
