"""The committed study specs, the factorial protocols and the fit keys the rate studies use
(extra atoms repeated on one expert, a bounded-slope fit)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from simstudy.engine.spec import SpecError, load_spec
from simstudy.engine.task import fit_options

STUDIES = Path(__file__).resolve().parents[1] / "studies"

SPEC = """
[study]
name = "{name}"
root_seed = 11
replications = 2
[design]
name = "T"
[n_grid]
values = [100, 300]
[[fit]]
label = "over"
k = {k}
K = {K}
extra_atoms = {extra}
{more}
protocols = {protocols}
"""


def write(tmp_path, name="s", k=4, K=3, extra="[1]", more="",
          protocols='["papers", "strict", "shrinking_strict", "fixed_tol"]'):
    p = tmp_path / f"{name}.toml"
    p.write_text(SPEC.format(name=name, k=k, K=K, extra=extra, more=more, protocols=protocols))
    return p


def test_every_committed_study_loads():
    for path in sorted(STUDIES.glob("*.toml")):
        spec = load_spec(path)
        assert spec.name == path.stem and spec.n_tasks() > 0


def test_factorial_protocols_are_accepted_and_resolved(tmp_path):
    spec = load_spec(write(tmp_path))
    conds = spec.conditions()
    assert {c.protocol for c in conds} == {"papers", "strict", "shrinking_strict", "fixed_tol"}
    assert len({c.condition_id for c in conds}) == len(conds)
    task = spec.make_task(next(c for c in conds if c.protocol == "shrinking_strict"), 0)
    opts = fit_options(task)
    assert opts["noise_schedule"] == "papers" and opts["grad_tol"] == 1e-6
    with pytest.raises(SpecError, match="unknown protocol 'loose'; allowed: papers, strict, "
                                        "shrinking_strict, fixed_tol"):
        load_spec(write(tmp_path, protocols='["loose"]'))


def test_two_extra_atoms_on_one_expert(tmp_path):
    spec = load_spec(write(tmp_path, k=5, K=4, extra="[1, 1]"))
    task = spec.make_task(spec.conditions()[0], 0)
    assert task.fit["extra_atoms"] == [0, 0] and fit_options(task)["extra_atoms"] == (0, 0)
    with pytest.raises(SpecError, match="expert 2 is the reference expert"):
        load_spec(write(tmp_path, k=5, K=4, extra="[1, 2]"))
    with pytest.raises(SpecError, match=r"k = 4 must equal k\* \+ len\(extra_atoms\) = 3 \+ 2"):
        load_spec(write(tmp_path, k=4, K=3, extra="[1, 1]"))


def test_two_extra_atoms_start_on_the_expert_and_split_its_mass():
    from simstudy.estimation.init import near_truth_start
    from simstudy.model import get_design

    T = get_design("T").params
    beta0, beta1, a, b, v, ref = near_truth_start(T, 5, [0, 0], 0.0, None, 100,
                                                  np.random.default_rng(0))
    assert np.exp(beta0[[0, 3, 4]]).sum() == pytest.approx(np.exp(T.beta0[0]))
    assert np.allclose(beta1[[0, 3, 4]], T.beta1[0]) and np.allclose(b[[3, 4]], T.b[0])
    assert ref == T.ref


def test_bounded_slope_fit_reaches_the_estimator(tmp_path):
    spec = load_spec(write(tmp_path, K=4, more="beta1_bound = 20.0"))
    task = spec.make_task(spec.conditions()[0], 0)
    assert fit_options(task)["beta1_bound"] == 20.0
    plain = load_spec(write(tmp_path, name="p", K=4))
    assert spec.conditions()[0].condition_id != plain.conditions()[0].condition_id


def test_bounded_slope_must_be_positive(tmp_path):
    with pytest.raises(SpecError, match="beta1_bound': must be > 0, got -1.0"):
        load_spec(write(tmp_path, K=4, more="beta1_bound = -1.0"))
