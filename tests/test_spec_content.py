"""What a condition is made of: every setting that changes a fit reaches the fit and its
condition id (otherwise the store would mix fits made under different settings)."""

import warnings

import numpy as np
import pytest

import simstudy.estimation
from simstudy.engine.spec import load_spec
from simstudy.engine.task import fit_options, generate
from simstudy.estimation import ConvergenceWarning, TopKMoEEM
from tests.test_spec import BASE, ids_by_content, write

N_INIT = BASE.replace("init_noise = 0.1", "init_noise = 0.1\nn_init = 3")


def over_task(spec, protocol="strict", n=100, rep=0):
    cond = next(c for c in spec.conditions()
                if (c.label, c.protocol, c.n) == ("over", protocol, n))
    return spec.make_task(cond, rep)


def test_n_init_reaches_the_fit(tmp_path):
    """A fit's n_init overrides the protocol's number of starts, in fit_options and in the
    fit that run_task makes from them."""
    spec = load_spec(write(tmp_path, N_INIT))
    assert spec.fits[1].n_init == 3 and spec.fits[0].n_init is None
    task = over_task(spec)
    opts = fit_options(task)
    assert opts["n_init"] == 3
    assert simstudy.estimation.protocol_options("strict", 100)["n_init"] == 1
    # without the key the protocol's value stands
    exact = spec.make_task(next(c for c in spec.conditions() if c.label == "exact"), 0)
    assert fit_options(exact)["n_init"] == simstudy.estimation.protocol_options(
        exact.protocol, exact.n, over_specified=False)["n_init"]
    X, y = generate(task)
    est = TopKMoEEM(task.fit["k"], task.fit["K"], random_state=np.random.default_rng(
        task.fit_seed()), **{**opts, "max_iter": 2, "acceleration": None, "grad_tol": None})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = est.fit(X, y)
    assert res.n_init == 3 and 0 <= res.best_restart < 3


def test_n_init_is_part_of_the_condition_id(tmp_path):
    """Changing n_init moves the ids of that fit's conditions only."""
    plain = ids_by_content(load_spec(write(tmp_path, BASE, "s1")))
    three = ids_by_content(load_spec(write(tmp_path, N_INIT, "s2")))
    four = ids_by_content(load_spec(write(tmp_path, N_INIT.replace("n_init = 3", "n_init = 4"),
                                          "s3")))
    for key in plain:
        if key[0] == "over":
            assert len({plain[key], three[key], four[key]}) == 3, key
        else:
            assert plain[key] == three[key] == four[key], key


def _retuned(monkeypatch, which):
    """Make protocol_options return a 10x looser tol for the protocols in ``which``."""
    original = simstudy.estimation.protocol_options

    def retuned(name, n, **kw):
        opts = dict(original(name, n, **kw))
        if name in which:
            opts["tol"] *= 10
        return opts

    monkeypatch.setattr(simstudy.estimation, "protocol_options", retuned)


@pytest.mark.parametrize("which", [("papers", "strict"), ("strict",), ("papers",)])
def test_retuning_a_protocol_moves_its_condition_ids(tmp_path, monkeypatch, which):
    """The protocol's resolved settings are part of each condition: retuning a protocol's
    tolerance changes the id of every condition run under it (and of no other), so a store
    never mixes fits made before and after."""
    path = write(tmp_path, BASE)
    before = ids_by_content(load_spec(path))
    strict_tol = simstudy.estimation.protocol_options("strict", 100)["tol"]
    _retuned(monkeypatch, which)
    after = ids_by_content(load_spec(path))
    assert after.keys() == before.keys()
    for key in before:
        moved = after[key] != before[key]
        assert moved == (key[1] in which), key
    # the retuned setting is what the fit gets too
    factor = 10 if "strict" in which else 1
    assert fit_options(over_task(load_spec(path)))["tol"] == pytest.approx(factor * strict_tol)
