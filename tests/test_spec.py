"""Study spec parsing, validation messages, expansion and condition ids."""

from __future__ import annotations

import numpy as np
import pytest

from simstudy.engine.seeds import data_seed
from simstudy.engine.spec import SpecError, load_spec

BASE = """
[study]
name = "{name}"
description = "test study"
root_seed = 11
replications = 2

[design]
name = "T"

[n_grid]
values = [100, 300]

[em]
max_iter = 50

[[fit]]
label = "exact"
k = 3
K = 2
protocols = ["papers", "strict"]

[[fit]]
label = "over"
k = 4
K = 3
extra_atoms = [1]
init_noise = 0.1
protocols = ["strict"]
"""

INLINE = """
[study]
name = "{name}"
root_seed = 1
replications = 1

[design]
name = "mine"
[design.params]
beta0 = [0.0, 1.0]
beta1 = [[0.0], [2.0]]
a = [[1.0], [-1.0]]
b = [0.0, 1.0]
v = [0.5, 0.5]
K = 2
ref = 0
[design.inputs]
law = "uniform"
d = 1
low = -1.0
high = 1.0

[n_grid]
values = [50]

[[fit]]
label = "exact"
k = 2
K = 2
protocols = ["strict"]
"""


def write(tmp_path, text, name="study1"):
    path = tmp_path / f"{name}.toml"
    path.write_text(text.replace("{name}", name))
    return path


def spec_error(tmp_path, text, name="study1") -> SpecError:
    path = write(tmp_path, text, name)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    err = info.value
    assert isinstance(err, ValueError)
    assert f"{name}.toml" in str(err), str(err)  # every message names the file
    return err


def test_valid_spec_expands(tmp_path):
    spec = load_spec(write(tmp_path, BASE))
    assert spec.name == "study1" and spec.replications == 2 and spec.n_values == (100, 300)
    assert spec.design.params.k == 3 and spec.design.params.K == 2
    conds = spec.conditions()
    # exact x 2 protocols x 2 n + over x 1 protocol x 2 n
    assert len(conds) == 6
    assert len({c.condition_id for c in conds}) == 6
    assert len(spec.tasks()) == 12
    over = [c for c in conds if c.label == "over"][0]
    assert over.k == 4 and over.K == 3 and over.fit.extra_atoms == (1,)
    task = spec.make_task(over, 1)
    assert task.fit["extra_atoms"] == [0]  # 0-based for the estimator
    assert task.em == {"max_iter": 50}
    assert task.truth() == spec.design.params


def test_log_grid(tmp_path):
    text = BASE.replace("values = [100, 300]", "min = 1000\nmax = 100000\nnum = 20")
    spec = load_spec(write(tmp_path, text))
    n = np.array(spec.n_values)
    assert len(n) == 20 and n[0] == 1000 and n[-1] == 100000
    assert np.all(np.diff(n) > 0)
    np.testing.assert_allclose(np.diff(np.log(n)), np.log(100) / 19, rtol=0.01)


def test_inline_design(tmp_path):
    spec = load_spec(write(tmp_path, INLINE))
    assert spec.design.name == "mine" and spec.design.params.k == 2
    assert spec.design.inputs.low == -1.0


def test_design_K_override(tmp_path):
    spec = load_spec(write(tmp_path, BASE.replace('name = "T"', 'name = "T"\nK = 3')))
    assert spec.design.params.K == 3


@pytest.mark.parametrize(
    ("old", "new", "needles"),
    [
        # unknown keys, at every level, name the key path and the allowed keys
        ("[em]", "[extra]\nx = 1\n[em]", ["key 'extra'", "unknown key", "allowed keys",
                                          "study"]),
        ("replications = 2", "replications = 2\nseed = 3",
         ["key 'study.seed'", "allowed keys: description, metrics, name"]),
        ('label = "over"', 'label = "over"\ncolour = "red"', ["key 'fit[1].colour'",
                                                              "allowed keys", "extra_atoms"]),
        ("max_iter = 50", "max_iter = 50\nspeed = 2", ["key 'em.speed'", "allowed keys",
                                                        "grad_tol"]),
        ("values = [100, 300]", "values = [100, 300]\nstep = 2", ["key 'n_grid.step'",
                                                                   "allowed keys"]),
        # wrong types
        ("replications = 2", 'replications = "2"', ["key 'study.replications'",
                                                    "expected an integer", "string"]),
        ("k = 3", "k = 3.5", ["key 'fit[0].k'", "expected an integer"]),
        ("max_iter = 50", "tol = true", ["key 'em.tol'", "expected a number", "boolean"]),
        ('protocols = ["strict"]', 'protocols = "strict"', ["key 'fit[1].protocols'",
                                                           "expected an array"]),
        ("values = [100, 300]", "values = [100, 3.5]", ["key 'n_grid.values'",
                                                        "array of integers"]),
        # impossible values
        ("K = 2\nprotocols", "K = 4\nprotocols", ["key 'fit[0].K'", "1 <= K <= k = 3"]),
        ("values = [100, 300]", "values = [0, 300]", ["key 'n_grid.values'", ">= 2"]),
        ("values = [100, 300]", "min = 0\nmax = 10\nnum = 3", ["key 'n_grid.min'", ">= 2"]),
        ("values = [100, 300]", "min = 10\nmax = 12\nnum = 5", ["key 'n_grid.num'",
                                                              "not distinct"]),
        ("values = [100, 300]", "values = [100, 100]", ["key 'n_grid.values'", "duplicate"]),
        ("replications = 2", "replications = 0", ["key 'study.replications'", ">= 1"]),
        ("root_seed = 11", "root_seed = -1", ["key 'study.root_seed'", ">= 0"]),
        ("max_iter = 50", "tol = -1e-6", ["key 'em.tol'", "> 0"]),
        ("max_iter = 50", 'acceleration = "turbo"', ["key 'em.acceleration'",
                                                     "allowed: none, squarem, lbfgs"]),
        ("extra_atoms = [1]", "extra_atoms = [4]", ["key 'fit[1].extra_atoms'",
                                                    "numbered 1..3"]),
        ("extra_atoms = [1]", "extra_atoms = [1, 3]", ["key 'fit[1].extra_atoms'",
                                                       "k = 4 must equal k* + len"]),
        ("extra_atoms = [1]", "extra_atoms = [2]", ["key 'fit[1].extra_atoms'",
                                                    "reference expert"]),
        ("init_noise = 0.1", "init_noise = -0.1", ["key 'fit[1].init_noise'", ">= 0"]),
        ("init_noise = 0.1", "n_init = 0", ["key 'fit[1].n_init'", ">= 1"]),
        # unknown names
        ('protocols = ["strict"]', 'protocols = ["fast"]', ["key 'fit[1].protocols'",
                                                           "unknown protocol 'fast'",
                                                           "allowed: papers, strict"]),
        ('protocols = ["strict"]', 'protocols = ["strict", "strict"]', ["duplicate protocol"]),
        ('protocols = ["strict"]', "protocols = []", ["key 'fit[1].protocols'",
                                                      "at least one"]),
        ("init_noise = 0.1", 'init = "random"', ["key 'fit[1].init'", "unknown init",
                                                 "allowed: near_truth, data"]),
        ('name = "T"', 'name = "Q"', ["key 'design.name'", "unknown design 'Q'",
                                      "allowed: P, S, T"]),
        ('name = "T"', 'name = "S"\nK = 3', ["key 'design.K'", "design S"]),
        ('name = "T"', 'name = "T"\nK = 5', ["key 'design.K'", "K"]),
        ("replications = 2", 'replications = 2\nmetrics = ["D1", "speed"]',
         ["key 'study.metrics'", "unknown metric 'speed'", "hellinger"]),
        ("replications = 2", 'replications = 2\nmetrics = ["err_a_4"]',
         ["key 'study.metrics'", "unknown metric 'err_a_4'", "j = 1..3"]),
        # duplicates and identities
        ('label = "over"', 'label = "exact"', ["key 'fit[1].label'", "duplicate label 'exact'"]),
        ('name = "{name}"', 'name = "other"', ["key 'study.name'", "file stem 'study1'"]),
        ("[[fit]]\nlabel = \"over\"", "[[xfit]]\nlabel = \"over\"", ["key 'xfit'",
                                                                    "unknown key"]),
        ("[n_grid]\nvalues = [100, 300]", "", ["missing required section [n_grid]"]),
        ("root_seed = 11", "", ["key 'study.root_seed'", "missing required key"]),
        ("label = \"exact\"\nk = 3", "label = \"exact\"", ["key 'fit[0].k'", "missing"]),
    ],
)
def test_validation_errors(tmp_path, old, new, needles):
    assert old in BASE
    err = spec_error(tmp_path, BASE.replace(old, new, 1))
    for needle in needles:
        assert needle in str(err), (needle, str(err))


def test_error_carries_file_and_key(tmp_path):
    err = spec_error(tmp_path, BASE.replace("replications = 2", "replications = 0"))
    assert err.file.endswith("study1.toml") and err.key == "study.replications"


def test_identical_fits_rejected(tmp_path):
    text = BASE + '\n[[fit]]\nlabel = "again"\nk = 3\nK = 2\nprotocols = ["strict"]\n'
    err = spec_error(tmp_path, text)
    assert "same settings as fit 'exact'" in str(err) and "fit[2]" in str(err)


@pytest.mark.parametrize(
    ("old", "new", "needles"),
    [
        ("v = [0.5, 0.5]", "v = [0.5, -0.5]", ["key 'design.params.v'", "> 0"]),
        ("v = [0.5, 0.5]", "v = [0.5, 0.0]", ["key 'design.params.v'", "> 0"]),
        ("ref = 0", "ref = 0\nalpha = 1", ["key 'design.params.alpha'", "allowed keys"]),
        ("high = 1.0", "high = 1.0\nmode = 2", ["key 'design.inputs.mode'", "allowed keys"]),
        ('law = "uniform"', 'law = "normal"', ["key 'design.inputs.law'", "uniform"]),
        ("\nd = 1", "\nd = 2", ["key 'design.inputs.d'", "d=2"]),
        ("beta0 = [0.0, 1.0]", "beta0 = [0.5, 1.0]", ["design.params", "reference"]),
        ('name = "mine"', 'name = "T"', ["key 'design.name'", "built-in design"]),
        ("K = 2\nref = 0", "K = 3\nref = 0", ["design.params", "K"]),
        ("low = -1.0", "low = 2.0", ["design.inputs", "low < high"]),
        ("[design.inputs]", "[design.other]", ["unknown key", "design.other"]),
    ],
)
def test_inline_design_errors(tmp_path, old, new, needles):
    assert old in INLINE
    err = spec_error(tmp_path, INLINE.replace(old, new, 1))
    for needle in needles:
        assert needle in str(err), (needle, str(err))


def test_invalid_toml_and_missing_file(tmp_path):
    err = spec_error(tmp_path, BASE.replace("k = 3", "k = = 3"))
    assert "invalid TOML" in str(err)
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec(tmp_path / "absent.toml")


def ids_by_content(spec):
    return {(c.label, c.protocol, c.n): c.condition_id for c in spec.conditions()}


def test_condition_ids_ignore_labels_and_order(tmp_path):
    a = load_spec(write(tmp_path, BASE, "s1"))
    # rename labels, swap the two fits, reorder keys inside tables and sections
    i_exact = BASE.index('[[fit]]\nlabel = "exact"')
    i_over = BASE.index('[[fit]]\nlabel = "over"')
    exact_block, over_block = BASE[i_exact:i_over], BASE[i_over:]
    head = BASE[:BASE.index("[[fit]]")]
    head = head.replace("[em]\nmax_iter = 50\n", "")
    swapped = ("[em]\nmax_iter = 50\n\n" + over_block.replace('"over"', '"renamed"')
               .replace("k = 4\nK = 3", "K = 3\nk = 4") + "\n"
               + exact_block.replace('"exact"', '"other"') + head)
    b = load_spec(write(tmp_path, swapped, "s2"))
    ida, idb = ids_by_content(a), ids_by_content(b)
    rename = {"exact": "other", "over": "renamed"}
    assert {rename[k[0]] + str(k[1:]): v for k, v in ida.items()} == {
        k[0] + str(k[1:]): v for k, v in idb.items()}
    # the spec hash does see the labels
    assert a.spec_hash != b.spec_hash


def test_condition_ids_follow_content(tmp_path):
    a = ids_by_content(load_spec(write(tmp_path, BASE, "s1")))
    more_n = ids_by_content(load_spec(write(tmp_path, BASE.replace("[100, 300]", "[100, 300, 900]"),
                                            "s2")))
    assert {k: v for k, v in more_n.items() if k[2] != 900} == a
    for old, new in [("root_seed = 11", "root_seed = 12"), ("max_iter = 50", "max_iter = 51"),
                     ('name = "T"', 'name = "T"\nK = 3'), ("init_noise = 0.1", "init_noise = 0.2")]:
        changed = ids_by_content(load_spec(write(tmp_path, BASE.replace(old, new), "s3")))
        moved = [k for k in a if a[k] != changed[k]]
        assert moved, (old, new)
        if old.startswith("init_noise"):  # only the fit that changed
            assert {k[0] for k in moved} == {"over"}
        else:
            assert len(moved) == len(a)


def test_seeds_common_random_numbers(tmp_path):
    spec = load_spec(write(tmp_path, BASE))
    tasks = spec.tasks()
    by_key = {}
    for t in tasks:
        by_key.setdefault((t.n, t.rep), []).append(t)
    for (_n, _rep), group in by_key.items():
        # every fit/protocol at (n, rep) sees the same data, each has its own fit seed
        draws = {np.random.default_rng(t.data_seed()).random() for t in group}
        assert len(draws) == 1
        fit_draws = {np.random.default_rng(t.fit_seed()).random() for t in group}
        assert len(fit_draws) == len(group)
    data_draws = {np.random.default_rng(g[0].data_seed()).random() for g in by_key.values()}
    assert len(data_draws) == len(by_key)
    # a task's seeds are functions of content: another study with other fits, labels and [em]
    # settings over the same design and root seed draws the same data at (n, rep), and the
    # same fit stream for a condition of the same content; another root seed moves both
    t = tasks[0]
    other = load_spec(write(tmp_path, BASE.replace('label = "exact"', 'label = "renamed"')
                            .replace("max_iter = 50", "max_iter = 60"), "s2"))
    twin = next(u for u in other.tasks() if (u.n, u.rep) == (t.n, t.rep))
    assert twin.condition_id != t.condition_id  # the [em] override is part of the condition
    assert (twin.data_seed().generate_state(4) == t.data_seed().generate_state(4)).all()
    renamed = load_spec(write(tmp_path, BASE.replace('label = "exact"', 'label = "renamed"'),
                              "s3")).tasks()[0]
    assert renamed.condition_id == t.condition_id and renamed.label != t.label
    assert (renamed.fit_seed().generate_state(4) == t.fit_seed().generate_state(4)).all()
    reseeded = load_spec(write(tmp_path, BASE.replace("root_seed = 11", "root_seed = 12"),
                               "s4")).tasks()[0]
    assert (reseeded.data_seed().generate_state(4) != t.data_seed().generate_state(4)).any()
    assert (reseeded.fit_seed().generate_state(4) != t.fit_seed().generate_state(4)).any()
    with pytest.raises(ValueError, match="rep: expected an integer >= 0"):
        data_seed(1, t.design_hash, -1, 10)
    with pytest.raises(ValueError, match="n: expected an integer >= 1"):
        data_seed(1, t.design_hash, 0, 0)


K_SWEEP = BASE.replace('label = "exact"\nk = 3', 'label = "K1"\ntrue_K = 1\nk = 3').replace(
    'label = "over"\nk = 4\nK = 3\nextra_atoms = [1]\ninit_noise = 0.1',
    'label = "K3"\ntrue_K = 3\nk = 3\nK = 3\ninit_noise = 0.1')


def test_per_fit_true_K(tmp_path):
    spec = load_spec(write(tmp_path, K_SWEEP))
    conds = spec.conditions()
    assert {(c.label, c.true_K, c.design_name) for c in conds} == {("K1", 1, "T_K1"),
                                                                  ("K3", 3, "T_K3")}
    task = {c.label: spec.make_task(c, 0) for c in conds if c.n == 100}
    assert task["K1"].truth().K == 1 and task["K3"].truth().K == 3
    # different true models: different data seeds at the same (n, rep)
    assert task["K1"].design_hash != task["K3"].design_hash
    draws = {lbl: np.random.default_rng(t.data_seed()).random() for lbl, t in task.items()}
    assert draws["K1"] != draws["K3"]
    # a fit without true_K keeps the study's design, and its condition ids do not move
    plain = load_spec(write(tmp_path, BASE, "s2"))
    again = load_spec(write(tmp_path, BASE.replace('label = "exact"\nk = 3',
                                                   'label = "exact"\ntrue_K = 2\nk = 3'), "s3"))
    assert ids_by_content(plain)["over", "strict", 100] == ids_by_content(again)["over",
                                                                                 "strict", 100]


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        (K_SWEEP.replace("true_K = 1", "true_K = 4"), ["key 'fit[0].true_K'", "K"]),
        (K_SWEEP.replace("true_K = 1", 'true_K = "1"'), ["key 'fit[0].true_K'",
                                                         "expected an integer"]),
        (K_SWEEP.replace('name = "T"', 'name = "S"').replace("k = 3\nK = 1", "k = 2\nK = 1"),
         ["key 'fit[0].true_K'", "design S"]),
        (INLINE.replace('label = "exact"', 'label = "exact"\ntrue_K = 1'),
         ["key 'fit[0].true_K'", "only with a named design"]),
    ],
)
def test_true_K_errors(tmp_path, text, needles):
    err = spec_error(tmp_path, text)
    for needle in needles:
        assert needle in str(err), (needle, str(err))


# -- every problem at once, types, estimator options, size limits (issue 13) --------------------
def test_every_problem_is_reported_at_once(tmp_path):
    text = (BASE.replace("replications = 2", "replications = 0")
            .replace("values = [100, 300]", "values = [100, 1]")
            .replace("label = \"over\"", "label = \"over\"\ncolour = \"red\"")
            .replace("max_iter = 50", "max_iter = 50\ntol = -1.0"))
    err = spec_error(tmp_path, text)
    keys = [p.key for p in err.problems]
    assert keys == ["study.replications", "n_grid.values", "em.tol", "fit[1].colour"], keys
    assert str(err).count("key '") == 4 and "4 problems" in str(err)
    assert "\n" not in str(err)


@pytest.mark.parametrize(
    ("old", "new", "needles"),
    [
        ("v = [0.5, 0.5]", "v = [true, 0.5]",
         ["key 'design.params.v'", "expected numbers, got a boolean (true) at [0]"]),
        ("b = [0.0, 1.0]", 'b = [0.0, "3"]',
         ["key 'design.params.b'", "expected numbers, got a string ('3') at [1]"]),
        ("beta1 = [[0.0], [2.0]]", "beta1 = [[0.0], [false]]",
         ["key 'design.params.beta1'", "at [1][0]"]),
        ("a = [[1.0], [-1.0]]", "a = [1.0, -1.0]",
         ["key 'design.params.a'", "array of arrays"]),
        # a short beta0 is beta0's fault, not beta1's
        ("beta0 = [0.0, 1.0]", "beta0 = [0.0]",
         ["key 'design.params.beta0'", "has 1 entries", "k = 2"]),
        ("b = [0.0, 1.0]", "b = [0.0, 1.0, 2.0]", ["key 'design.params.b'", "has 3 entries"]),
        ("a = [[1.0], [-1.0]]", "a = [[1.0, 0.0], [-1.0, 0.0]]",
         ["key 'design.params.a'", "rows of length 2", "d = 1"]),
    ],
)
def test_inline_arrays_are_numbers_of_the_right_shape(tmp_path, old, new, needles):
    assert old in INLINE
    err = spec_error(tmp_path, INLINE.replace(old, new, 1))
    for needle in needles:
        assert needle in str(err), (needle, str(err))
    assert len(err.problems) == 1, str(err)


def test_sample_sizes_the_fit_cannot_take_are_refused(tmp_path):
    err = spec_error(tmp_path, BASE.replace("values = [100, 300]", "values = [1]"))
    assert "key 'n_grid.values'" in str(err) and "at least 2 data points" in str(err)


def test_estimator_options_are_checked_at_validation(tmp_path):
    # papers has no grad_tol: with lbfgs the fit would fail in every task
    err = spec_error(tmp_path, BASE.replace("max_iter = 50", 'acceleration = "lbfgs"'))
    assert "key 'em.acceleration'" in str(err) and "needs grad_tol" in str(err)
    assert "fit 'exact' with protocol 'papers'" in str(err)
    # strict has one, so a study of strict fits only is fine
    ok = BASE.replace("max_iter = 50", 'acceleration = "lbfgs"').replace(
        'protocols = ["papers", "strict"]', 'protocols = ["strict"]')
    assert load_spec(write(tmp_path, ok)).em["acceleration"] == "lbfgs"
    fixed = BASE.replace("max_iter = 50", 'acceleration = "lbfgs"\ngrad_tol = 1e-5')
    assert load_spec(write(tmp_path, fixed)).em["grad_tol"] == 1e-5
    # a run with a custom task function brings its own fit: not checked
    path = write(tmp_path, BASE.replace("max_iter = 50", 'acceleration = "lbfgs"'))
    assert load_spec(path, estimator_checks=False).em["acceleration"] == "lbfgs"


def test_size_limits_are_named_and_can_be_raised(tmp_path):
    import time

    t0 = time.perf_counter()
    err = spec_error(tmp_path, BASE.replace("values = [100, 300]",
                                            "min = 100\nmax = 1000\nnum = 1000000000"))
    assert time.perf_counter() - t0 < 5  # refused before anything is allocated
    assert "key 'n_grid.num'" in str(err) and "[limits] n_values = 1000000000" in str(err)
    err = spec_error(tmp_path, BASE.replace("replications = 2", "replications = 1000000000"))
    assert "exceed the limit of 10000" in str(err) and "[limits] replications" in str(err)
    err = spec_error(tmp_path, BASE.replace("values = [100, 300]", "values = [100, 1000000000]"))
    assert "[limits] n = 1000000000" in str(err)
    big = BASE.replace("replications = 2", "replications = 200000") + (
        "\n[limits]\nreplications = 200000\n")
    err = spec_error(tmp_path, big)
    assert "6 conditions x 200000 replications = 1200000 tasks exceed the limit of 1000000" \
        in str(err) and "[limits] tasks = 1200000" in str(err)
    spec = load_spec(write(tmp_path, big + "tasks = 1200000\n"))
    assert spec.n_tasks() == 1_200_000 and spec.n_tasks(max_reps=3) == 18
    # tasks are made lazily: the first ones cost nothing like the whole study
    import tracemalloc

    tracemalloc.start()
    first = [t for _, t in zip(range(10), spec.iter_tasks(), strict=False)]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(first) == 10 and peak < 5_000_000
    # limits do not change what is computed: the same hash as without them
    plain = load_spec(write(tmp_path, BASE.replace("replications = 2", "replications = 200000")
                            + "\n[limits]\nreplications = 200000\ntasks = 1200000\n"))
    assert plain.spec_hash == spec.spec_hash


@pytest.mark.parametrize("content", [bytes(range(256)) * 4, b"\x89PNG\r\n\x1a\n" + b"\xff" * 99])
def test_a_binary_file_names_the_file(tmp_path, content):
    path = tmp_path / "picture.toml"
    path.write_bytes(content)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(path) in str(info.value) and "text" in str(info.value)


def test_a_folder_or_unreadable_spec(tmp_path):
    folder = tmp_path / "dir.toml"
    folder.mkdir()
    with pytest.raises(SpecError, match="is a folder"):
        load_spec(folder)


def test_list_names_the_bad_key_and_survives_binary_files(tmp_path, capsys):
    from simstudy.cli import main

    studies = tmp_path / "studies"
    studies.mkdir()
    write(studies, BASE.replace("replications = 2", "replications = 2\ncolour = 1"), "typo")
    (studies / "blob.toml").write_bytes(bytes(range(256)))
    write(studies, BASE, "good")
    assert main(["list", "--studies-dir", str(studies), "--store-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    typo = next(line for line in out if line.startswith("typo"))
    assert "INVALID: key 'study.colour': unknown key" in typo
    blob = next(line for line in out if line.startswith("blob"))
    assert "INVALID: not a text file" in blob
    good = next(line for line in out if line.startswith("good")).split()
    assert good[1:4] == ["6", "12", "0"]
