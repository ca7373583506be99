"""Spec validation at its boundaries: the smallest allowed value is accepted, the next one
down is refused with a named error, a missing required key is named, and what is parsed is
what is stored. (Found by mutation testing: off-by-one checks the error-message tests let
through.)"""

import dataclasses

import pytest

from simstudy.engine.spec import SpecError, content_hash, load_spec
from tests.test_spec import BASE, INLINE, spec_error, write


def refused(tmp_path, text, needles):
    """The spec is refused with a message holding every needle."""
    err = spec_error(tmp_path, text)
    for needle in needles:
        assert needle in str(err), (needle, str(err))


def parsed(tmp_path, old, new, text=BASE):
    assert old in text, old
    return load_spec(write(tmp_path, text.replace(old, new, 1)))


@pytest.mark.parametrize(
    ("old", "new", "check"),
    [
        ("values = [100, 300]", "values = [2, 300]", lambda s: s.n_values == (2, 300)),
        ("values = [100, 300]", "min = 2\nmax = 10\nnum = 2", lambda s: s.n_values == (2, 10)),
        ("values = [100, 300]", "min = 500\nmax = 500\nnum = 1", lambda s: s.n_values == (500,)),
        ("max_iter = 50", "max_iter = 1", lambda s: s.em == {"max_iter": 1}),
        ("max_iter = 50", "tol = 0.5\ngrad_tol = 2.0\nvar_floor = 1e-9",
         lambda s: s.em == {"tol": 0.5, "grad_tol": 2.0, "var_floor": 1e-9}),
        ("max_iter = 50", 'acceleration = "squarem"', lambda s: s.em["acceleration"] == "squarem"),
        ("max_iter = 50", 'acceleration = "lbfgs"\ngrad_tol = 1e-6',
         lambda s: s.em["acceleration"] == "lbfgs"),
        ("max_iter = 50", 'acceleration = "none"', lambda s: s.em["acceleration"] is None),
        ("init_noise = 0.1", "n_init = 1", lambda s: s.fits[1].n_init == 1),
        ("init_noise = 0.1", "n_init = 2", lambda s: s.fits[1].n_init == 2),
        ("init_noise = 0.1", "init_noise = 0", lambda s: s.fits[1].init_noise == 0.0),
        ("K = 2\nprotocols", "K = 1\nprotocols", lambda s: s.fits[0].K == 1),
        ("K = 2\nprotocols", "K = 3\nprotocols", lambda s: s.fits[0].K == 3),
        ("replications = 2", "replications = 1", lambda s: s.replications == 1),
        ("root_seed = 11", "root_seed = 0", lambda s: s.root_seed == 0),
        ("extra_atoms = [1]", "extra_atoms = [3]", lambda s: s.fits[1].extra_atoms == (3,)),
        ("replications = 2", 'replications = 2\nmetrics = ["err_a_1", "mass_3", "D1"]',
         lambda s: s.metrics == ("err_a_1", "mass_3", "D1")),
    ],
)
def test_boundary_values_are_accepted(tmp_path, old, new, check):
    assert check(parsed(tmp_path, old, new))


@pytest.mark.parametrize(
    ("old", "new", "needles"),
    [
        ("max_iter = 50", "max_iter = 0", ["key 'em.max_iter'", ">= 1"]),
        ("max_iter = 50", "tol = 0.0", ["key 'em.tol'", "> 0"]),
        ("max_iter = 50", "grad_tol = 0", ["key 'em.grad_tol'", "> 0"]),
        ("max_iter = 50", "var_floor = -1e-9", ["key 'em.var_floor'", "> 0"]),
        ("values = [100, 300]", "min = 100\nmax = 200\nnum = 1", ["key 'n_grid.num'",
                                                               "needs min == max"]),
        ("values = [100, 300]", "min = 2\nmax = 10\nnum = 0", ["key 'n_grid.num'", ">= 1"]),
        # a fit needs at least two points
        ("values = [100, 300]", "values = [1, 300]", ["key 'n_grid.values'", ">= 2"]),
        ("values = [100, 300]", "min = 1\nmax = 10\nnum = 2", ["key 'n_grid", ">= 2"]),
        ("values = [100, 300]", "min = 300\nmax = 100\nnum = 2", ["key 'n_grid.max'", ">= min"]),
        ("values = [100, 300]", "values = []", ["key 'n_grid.values'", "at least one"]),
        ("values = [100, 300]", "values = [100, 300]\nmin = 10", ["key 'n_grid.min'",
                                                                "either values"]),
        ("values = [100, 300]", "values = [100, 300]\nnum = 3", ["key 'n_grid.num'",
                                                               "either values"]),
        ("K = 2\nprotocols", "K = 0\nprotocols", ["key 'fit[0].K'", "1 <= K <= k"]),
        ("label = \"exact\"\nk = 3", "label = \"exact\"\nk = 0", ["key 'fit[0].k'", ">= 1"]),
        ("extra_atoms = [1]", "extra_atoms = [0]", ["key 'fit[1].extra_atoms'", "1..3"]),
        ('label = "exact"', 'label = ""', ["key 'fit[0].label'", "non-empty"]),
        ("replications = 2", 'replications = 2\nmetrics = ["err_a_0"]',
         ["key 'study.metrics'", "unknown metric 'err_a_0'"]),
        ("replications = 2", 'replications = 2\nmetrics = ["D3_1"]',
         ["key 'study.metrics'", "unknown metric 'D3_1'"]),
        # a missing required key is named, never a default or a traceback
        ('name = "{name}"\n', "", ["key 'study.name'", "missing required key"]),
        ("replications = 2\n", "", ["key 'study.replications'", "missing required key"]),
        ('label = "exact"\n', "", ["key 'fit[0].label'", "missing required key"]),
        ('protocols = ["strict"]\n', "", ["key 'fit[1].protocols'", "missing required key"]),
        ("K = 2\nprotocols", "protocols", ["key 'fit[0].K'", "missing required key"]),
        ("values = [100, 300]", "min = 10\nmax = 100", ["key 'n_grid.num'",
                                                       "missing required key"]),
        ("values = [100, 300]", "max = 100\nnum = 2", ["key 'n_grid.min'",
                                                      "missing required key"]),
        ("[design]\nname = \"T\"\n", "[design]\n", ["key 'design.name'", "missing required key"]),
        ("[[fit]]", "[[fitx]]", ["unknown key"]),
    ],
)
def test_values_past_the_boundary_are_refused(tmp_path, old, new, needles):
    assert old in BASE, old
    refused(tmp_path, BASE.replace(old, new, 1), needles)


@pytest.mark.parametrize(
    ("old", "new", "needles"),
    [
        ("[design.inputs]\nlaw = \"uniform\"\nd = 1\nlow = -1.0\nhigh = 1.0\n", "",
         ["key 'design.inputs'", "needs both"]),
        ("[design.params]", "[design.paramsx]", ["unknown key", "design.paramsx"]),
        ("b = [0.0, 1.0]\n", "", ["key 'design.params.b'", "missing required key"]),
        ("v = [0.5, 0.5]\n", "", ["key 'design.params.v'", "missing required key"]),
        ("low = -1.0\n", "", ["key 'design.inputs.low'", "missing required key"]),
        ("\nd = 1\n", "\n", ["key 'design.inputs.d'", "missing required key"]),
        # an error raised by the parameters names the parameter's own key
        ("beta0 = [0.0, 1.0]", "beta0 = [0.5, 1.0]", ["key 'design.params.ref'", "reference"]),
    ],
)
def test_inline_design_keys(tmp_path, old, new, needles):
    assert old in INLINE, old
    refused(tmp_path, INLINE.replace(old, new, 1), needles)


def test_inline_inputs_accept_integer_bounds(tmp_path):
    """low = -1 (a TOML integer) is a number like -1.0."""
    spec = parsed(tmp_path, "low = -1.0", "low = -1", text=INLINE)
    assert spec.design.inputs.low == -1.0 and isinstance(spec.design.inputs.low, float)


def test_hashes_and_lookups(tmp_path):
    spec = load_spec(write(tmp_path, BASE))
    full = content_hash({"a": 1})
    assert len(full) == 64 and content_hash({"a": 1}, 12) == full[:12]
    assert spec.spec_hash == content_hash(spec.content(), 16)
    conds = spec.conditions()
    for c in conds:
        assert c.condition_id == content_hash(c.content, 12)
        # true_K enters a fit's content only when given, so other ids never move
        assert "true_K" not in c.content["fit"]
    task = spec.make_task(conds[0], 0)
    assert spec.design.hash == task.design_hash == content_hash(spec.design.content())
    over = next(c for c in conds if c.label == "over")
    assert (over.k, over.K, over.init) == (4, 3, "near_truth")
    # lookup by id or by a unique prefix; unknown and ambiguous prefixes are named errors
    assert spec.condition(over.condition_id) is not None
    assert spec.condition(over.condition_id[:8]).condition_id == over.condition_id
    with pytest.raises(SpecError, match="no condition with id 'zzz'"):
        spec.condition("zzz")
    with pytest.raises(SpecError, match=r"\d+ conditions with id ''"):
        spec.condition("")


def test_true_K_enters_the_content_when_given(tmp_path):
    text = BASE.replace('label = "exact"\nk = 3', 'label = "exact"\ntrue_K = 2\nk = 3')
    spec = load_spec(write(tmp_path, text))
    exact = next(c for c in spec.conditions() if c.label == "exact")
    assert exact.content["fit"]["true_K"] == 2


def test_parsed_spec_objects_are_immutable(tmp_path):
    """Specs are shared by the runner, its workers and the reports: nothing may edit them."""
    spec = load_spec(write(tmp_path, BASE))
    for obj, name in ((spec, "name"), (spec.design, "name"), (spec.fits[0], "k"),
                      (spec.conditions()[0], "n"), (spec.tasks()[0], "rep")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, name, 0)


@pytest.mark.parametrize(
    ("old", "new", "needles"),
    [
        ('name = "{name}"', 'name = "zzz"', ["key 'study.name'", "file stem 'study1'"]),
        ("k = 4\nK = 3\nextra_atoms = [1]", "k = 5\nK = 3\nextra_atoms = [1]",
         ["key 'fit[1].extra_atoms'", "k = 5 must equal k* + len(extra_atoms) = 3 + 1"]),
    ],
)
def test_more_refusals(tmp_path, old, new, needles):
    refused(tmp_path, BASE.replace(old, new, 1), needles)


def test_fit_must_be_a_non_empty_array_of_tables(tmp_path):
    head = BASE[:BASE.index("[[fit]]")]
    for fits in ("fit = []\n", "fit = 3\n"):
        # a top-level key must come before the first table
        err = spec_error(tmp_path, fits + head)
        assert "key 'fit'" in str(err) and "at least one" in str(err), str(err)


def test_condition_settings_are_the_fit_settings(tmp_path):
    """The protocol settings recorded in a condition (and hashed into its id) are the ones its
    fit gets: e.g. the papers protocol's single start for an exact fit (k = k*), five starts
    for an over-specified one."""
    from simstudy.engine.task import fit_options

    text = BASE.replace('protocols = ["strict"]', 'protocols = ["papers", "strict"]')
    spec = load_spec(write(tmp_path, text))
    for cond in spec.conditions():
        opts = fit_options(spec.make_task(cond, 0))
        recorded = cond.content["protocol_settings"]
        for key in ("tol", "grad_tol", "acceleration", "noise_schedule"):
            assert recorded[key] == opts[key] or key in spec.em, (cond.label, key)
        if cond.fit.n_init is None:
            assert recorded["n_init"] == opts["n_init"], cond.label
    papers = {c.label: c.content["protocol_settings"]["n_init"] for c in spec.conditions()
              if c.protocol == "papers"}
    assert papers == {"exact": 1, "over": 5}


ONE_EXPERT = INLINE.replace("beta0 = [0.0, 1.0]", "beta0 = [0.0]").replace(
    "beta1 = [[0.0], [2.0]]", "beta1 = [[0.0]]").replace("a = [[1.0], [-1.0]]", "a = [[1.0]]"
    ).replace("b = [0.0, 1.0]", "b = [0.0]").replace("v = [0.5, 0.5]", "v = [0.5]").replace(
    "K = 2\nref = 0", "K = 1\nref = 0").replace("k = 2\nK = 2", "k = 1\nK = 1")


def test_a_single_expert_fit_is_allowed(tmp_path):
    spec = load_spec(write(tmp_path, ONE_EXPERT))
    assert spec.design.params.k == 1 and spec.fits[0].k == 1 and spec.fits[0].K == 1


@pytest.mark.parametrize(
    ("old", "new", "needles"),
    [
        ("high = 1.0\n", "", ["key 'design.inputs.high'", "missing required key"]),
        ("d = 1\nlow", "d = 2\nlow", ["key 'design.inputs.d'", "d=2"]),
        ('protocols = ["strict"]', 'protocols = ["strict", 1]',
         ["key 'fit[0].protocols'", "array of strings"]),
    ],
)
def test_inline_refusals(tmp_path, old, new, needles):
    refused(tmp_path, INLINE.replace(old, new, 1), needles)


def test_inputs_of_lower_dimension_than_the_parameters_are_refused(tmp_path):
    two_d = INLINE.replace("beta1 = [[0.0], [2.0]]", "beta1 = [[0.0, 0.0], [2.0, 1.0]]").replace(
        "a = [[1.0], [-1.0]]", "a = [[1.0, 0.0], [-1.0, 0.0]]")
    refused(tmp_path, two_d, ["key 'design.inputs.d'", "d=2"])


def test_max_is_required_and_canonical_json_is_canonical(tmp_path):
    from simstudy.engine.spec import canonical_json

    refused(tmp_path, BASE.replace("values = [100, 300]", "min = 10\nnum = 2"),
            ["key 'n_grid.max'", "missing required key"])
    assert canonical_json({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})
    spec = load_spec(write(tmp_path, BASE))
    t = spec.tasks()[3]
    assert t.key == (t.condition_id, t.rep)
