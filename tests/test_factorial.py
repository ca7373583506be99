"""The protocol factorial: composed protocols, and the decomposition of papers - strict."""

import numpy as np
import pytest

from simstudy.estimation.protocols import COMPOSED, PROTOCOLS, START_KEYS, protocol_options
from simstudy.reports.factorial import factorial_table
from simstudy.reports.theory import theory_table
from tests.reports_synth import design_config, synth_table


@pytest.mark.parametrize("over", [True, False])
def test_composed_protocols_take_the_start_of_one_and_the_rest_of_the_other(over):
    assert set(PROTOCOLS) == {"papers", "strict", "shrinking_strict", "fixed_tol"}
    for n in (1000, 54321):
        papers = protocol_options("papers", n, over_specified=over)
        strict = protocol_options("strict", n, over_specified=over)
        for name, (start_from, rest_from) in COMPOSED.items():
            got = protocol_options(name, n, over_specified=over)
            start = {"papers": papers, "strict": strict}[start_from]
            rest = {"papers": papers, "strict": strict}[rest_from]
            assert set(got) == set(rest)
            for key, value in got.items():
                assert value == (start[key] if key in START_KEYS else rest[key]), (name, key)
    s = protocol_options("shrinking_strict", 1000)
    assert s["noise_schedule"] == "papers" and s["grad_tol"] == 1e-6 and s["n_init"] == 1
    f = protocol_options("fixed_tol", 1000)
    assert f["init_noise"] == 0.1 and f["noise_schedule"] is None and f["tol"] == 1e-6
    assert f["n_init"] == 5 and protocol_options("fixed_tol", 1000, over_specified=False)[
        "n_init"] == 1
    with pytest.raises(ValueError, match="^name: unknown protocol 'loose'"):
        protocol_options("loose", 100)


def test_composed_protocols_follow_changes_of_the_base_protocols(monkeypatch):
    import simstudy.estimation.protocols as prot

    base = prot.protocol_options

    def changed(name, n, *, over_specified=True):
        out = base(name, n, over_specified=over_specified)
        if name == "strict":  # e.g. a new certificate setting and a new tolerance
            out = {**out, "certify": True, "grad_tol": 1e-8}
        return out

    monkeypatch.setattr(prot, "protocol_options", changed)
    s = changed("shrinking_strict", 1000)
    assert s["certify"] is True and s["grad_tol"] == 1e-8 and s["noise_schedule"] == "papers"
    assert "certify" not in changed("fixed_tol", 1000)


def test_decomposition_recovers_known_start_and_stop_effects():
    cfg = design_config("over", k=4, Kbar=3, extra=(0,))
    # hellinger slopes by protocol: start effect +0.2, stop effect +0.1, no interaction
    slopes = {("over", "strict", "hellinger"): -0.5,
              ("over", "shrinking_strict", "hellinger"): -0.3,
              ("over", "fixed_tol", "hellinger"): -0.4,
              ("over", "papers", "hellinger"): -0.2}
    df = synth_table([cfg], protocols=("papers", "strict", "shrinking_strict", "fixed_tol"),
                     slopes=slopes, reps=15, sigma=0.1, seed=2)
    fac = factorial_table(df, theory_table([cfg]), n_boot=199)
    r = fac[fac.metric == "hellinger"].iloc[0]
    assert r.total == pytest.approx(r.start + r.stop, abs=1e-12)  # exact, by construction
    assert abs(r.total - 0.3) < 0.06 and abs(r.start - 0.2) < 0.06 and abs(r.stop - 0.1) < 0.06
    assert abs(r.interaction) < 0.06
    assert r.start_low < r.start < r.start_high and r.start_low > 0.1
    assert r.stop_low < 0.1 < r.stop_high
    assert r.pairs == len(df) // 4 and r.n_levels == 6 and r.reps_min == 15
    assert r.slope_papers == pytest.approx(-0.2, abs=0.06)
    # fixed metrics get no row; a study without all four protocols gets none
    assert "err_beta1_2" not in set(fac.metric)
    assert factorial_table(df[df.protocol != "fixed_tol"], theory_table([cfg])).empty


def test_decomposition_uses_only_replications_every_protocol_can_use():
    cfg = design_config("over", k=4, Kbar=3, extra=(0,))
    df = synth_table([cfg], protocols=("papers", "strict", "shrinking_strict", "fixed_tol"),
                     reps=6, seed=3)
    drop = df.index[(df.protocol == "papers") & (df.rep == 0)]
    df.loc[drop, "status"] = "error"
    fac = factorial_table(df, theory_table([cfg]), n_boot=99)
    assert (fac["pairs"] == 5 * 6).all() and (fac["reps_max"] == 5).all()
    assert np.isfinite(fac["total"]).all()
