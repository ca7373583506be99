"""Per-task seeds: functions of content (root seed, design, condition, replication, n), pinned
to the derivation documented in simstudy/engine/seeds.py, with named errors for bad input."""

import numpy as np
import pytest

from simstudy.engine.seeds import data_rng, data_seed, fit_rng, fit_seed
from simstudy.engine.spec import load_spec
from tests.test_spec import BASE, write

H = "0123456789abcdef" * 4  # a sha256-length hex digest


def state(seq):
    return tuple(seq.generate_state(4).tolist())


def test_seeds_follow_the_documented_derivation():
    """Stored studies are replayed from these seeds: the derivation must not drift. Data:
    SeedSequence(root, spawn_key=(0, int(hash[:16], 16), rep, n)); fit: spawn_key=(1, int(
    condition_id[:16], 16), rep)."""
    h64 = int(H[:16], 16)
    assert state(data_seed(2024, H, 3, 1000)) == state(
        np.random.SeedSequence(2024, spawn_key=(0, h64, 3, 1000)))
    cid = "a1b2c3d4e5f6"
    assert state(fit_seed(7, cid, 5)) == state(
        np.random.SeedSequence(7, spawn_key=(1, int(cid, 16), 5)))
    # only the first 64 bits of a hash enter
    assert state(data_seed(1, H, 0, 10)) == state(data_seed(1, H[:16] + "f" * 48, 0, 10))
    assert state(data_seed(1, H, 0, 10)) != state(data_seed(1, H[:15] + "0" + H[16:], 0, 10))
    # the generators are the default ones on those seeds
    assert data_rng(1, H, 0, 10).random() == np.random.default_rng(data_seed(1, H, 0, 10)).random()
    assert fit_rng(1, cid, 2).random() == np.random.default_rng(fit_seed(1, cid, 2)).random()


def test_data_and_fit_streams_never_coincide():
    """Same root seed, same hash, same replication: the data and fit streams differ."""
    assert state(data_seed(1, H, 0, 1)) != state(fit_seed(1, H, 0))
    h = H[:16]
    draws = {np.random.default_rng(data_seed(1, h, 0, 1)).random(),
             np.random.default_rng(fit_seed(1, h, 0)).random()}
    assert len(draws) == 2


@pytest.mark.parametrize("arg", ["root_seed", "rep", "n"])
def test_every_argument_moves_the_data_seed(arg):
    base = {"root_seed": 1, "rep": 0, "n": 10}
    moved = {**base, arg: base[arg] + 1}
    assert state(data_seed(base["root_seed"], H, base["rep"], base["n"])) != state(
        data_seed(moved["root_seed"], H, moved["rep"], moved["n"]))


def test_fit_seeds_are_distinct_across_replications_and_conditions(tmp_path):
    """Every task of a study has its own fit stream (initial noise, restarts): replications
    of one condition never share it, nor do conditions at one replication."""
    spec = load_spec(write(tmp_path, BASE.replace("replications = 2", "replications = 5")))
    tasks = spec.tasks()
    assert len(tasks) == 6 * 5
    fit_draws = [np.random.default_rng(t.fit_seed()).random() for t in tasks]
    assert len(set(fit_draws)) == len(tasks)
    by_condition = {}
    for t, draw in zip(tasks, fit_draws, strict=True):
        by_condition.setdefault(t.condition_id, set()).add(draw)
    assert all(len(d) == 5 for d in by_condition.values())
    # data: one data set per (n, rep), shared by every fit and protocol
    data = {}
    for t in tasks:
        data.setdefault((t.n, t.rep), set()).add(np.random.default_rng(t.data_seed()).random())
    assert all(len(d) == 1 for d in data.values())
    assert len({next(iter(d)) for d in data.values()}) == len(data) == 2 * 5


@pytest.mark.parametrize(
    ("call", "msg"),
    [
        (lambda: data_seed(-1, H, 0, 1), "root_seed: expected an integer >= 0"),
        (lambda: data_seed(True, H, 0, 1), "root_seed: expected an integer >= 0"),
        (lambda: data_seed(1.0, H, 0, 1), "root_seed: expected an integer >= 0"),
        (lambda: data_seed(1, H, -1, 1), "rep: expected an integer >= 0"),
        (lambda: data_seed(1, H, True, 1), "rep: expected an integer >= 0"),
        (lambda: data_seed(1, H, "0", 1), "rep: expected an integer >= 0"),
        (lambda: data_seed(1, H, 0, 0), "n: expected an integer >= 1"),
        (lambda: data_seed(1, H, 0, False), "n: expected an integer >= 1"),
        (lambda: fit_seed(-3, H, 0), "root_seed: expected an integer >= 0"),
        (lambda: fit_seed(1, H, -1), "rep: expected an integer >= 0"),
        (lambda: fit_seed(1, H, False), "rep: expected an integer >= 0"),
    ],
)
def test_bad_seed_arguments_raise_named_errors(call, msg):
    with pytest.raises(ValueError, match=msg):
        call()


def test_numpy_integers_are_accepted():
    assert state(data_seed(np.int64(1), H, np.int32(2), np.int64(3))) == state(
        data_seed(1, H, 2, 3))
    assert state(fit_seed(np.uint8(1), H, np.int64(0))) == state(fit_seed(1, H, 0))
