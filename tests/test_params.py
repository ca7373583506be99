"""Validation of MoEParams, input laws and designs: every rule raises a named ValueError."""

import numpy as np
import pytest

from simstudy.model import MoEParams, UniformBox, design_S, design_T, get_design


def good(**over):
    kw = dict(
        beta0=[0.5, 0.0, 1.0],
        beta1=[[-5.0], [0.0], [-10.0]],
        a=[[1.0], [-1.0], [1.0]],
        b=[0.0, 3.0, -3.0],
        v=[0.2, 0.3, 0.25],
        K=2,
        ref=1,
    )
    kw.update(over)
    return kw


def test_valid_params_have_shapes():
    p = MoEParams(**good())
    assert (p.k, p.d, p.K, p.ref) == (3, 1, 2, 1)
    assert not p.dense
    assert p.atoms().shape == (3, 4)
    assert MoEParams.from_dict(p.to_dict()) == p


@pytest.mark.parametrize(
    "over, match",
    [
        ({"beta1": [[-5.0, 1.0], [0.0, 0.0], [-10.0, 0.0]]}, r"^a: expected shape \(3, 2\)"),
        ({"a": [[1.0], [-1.0]]}, r"^a: expected shape \(3, 1\)"),
        ({"b": [0.0, 3.0]}, r"^b: expected shape \(3,\)"),
        ({"v": [0.2, 0.0, 0.25]}, r"^v: variances must be > 0, got v\[1\] = 0.0"),
        ({"v": [0.2, -1.0, 0.25]}, r"^v: variances must be > 0"),
        ({"b": [0.0, np.nan, 1.0]}, r"^b: contains non-finite"),
        ({"beta0": [np.inf, 0.0, 1.0]}, r"^beta0: contains non-finite"),
        ({"K": 0}, r"^K: must satisfy 1 <= K <= k = 3"),
        ({"K": 4}, r"^K: must satisfy 1 <= K <= k = 3"),
        ({"K": 1.5}, r"^K: must be an integer"),
        ({"ref": 3}, r"^ref: must be an expert index in \[0, 2\]"),
        ({"ref": 0}, r"^ref: the reference expert 0 must have gating"),
        ({"beta1": [[-5.0], [0.1], [-10.0]]}, r"^ref: the reference expert 1 must have gating"),
        ({"beta1": [-5.0, 0.0, -10.0]}, r"^beta1: expected a 2-d array"),
        ({"v": "abc"}, r"^v: cannot be converted"),
    ],
)
def test_invalid_params_name_the_parameter(over, match):
    with pytest.raises(ValueError, match=match):
        MoEParams(**good(**over))


def test_replace_and_from_dict_reject_unknown_keys():
    p = MoEParams(**good())
    with pytest.raises(ValueError, match="unknown field"):
        p.replace(gamma=1)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['gamma'\]"):
        MoEParams.from_dict({**p.to_dict(), "gamma": 1})
    with pytest.raises(ValueError, match=r"missing key\(s\) \['v'\]"):
        MoEParams.from_dict({k: v for k, v in p.to_dict().items() if k != "v"})


def test_params_are_read_only():
    p = MoEParams(**good())
    with pytest.raises(ValueError):
        p.v[0] = 1.0


def test_input_law_validation():
    with pytest.raises(ValueError, match="^d: the input dimension"):
        UniformBox(0)
    with pytest.raises(ValueError, match="^low/high"):
        UniformBox(1, 1.0, -1.0)
    with pytest.raises(ValueError, match="^n: the sample size"):
        UniformBox(1).sample(0, np.random.default_rng(0))
    x = UniformBox(2, 0.0, 1.0).quasi_random(64)
    assert x.shape == (64, 2) and x.min() >= 0 and x.max() <= 1


def test_designs_match_the_spec():
    T = design_T()
    assert T.params.ref == 1 and T.params.K == 2 and T.inputs.low == -1.0
    S = design_S()
    assert S.params.dense and S.inputs.low == 0.0
    assert get_design("T", K=1).params.K == 1
    with pytest.raises(ValueError,
                       match=r"design: unknown design 'Q'; allowed: \['P', 'S', 'T'\]"):
        get_design("Q")
    with pytest.raises(ValueError, match="^K: design S is dense"):
        get_design("S", K=1)
    with pytest.raises(ValueError, match="^K: design P has a fixed true K = 2"):
        get_design("P", K=3)


def test_design_P_has_the_spec_parameters_and_region_masses():
    """Design P (spec section 5): d = 2, X ~ U[-1, 1]^2, top-2 of 3, region masses about
    0.36 {1, 2}, 0.27 {1, 3}, 0.37 {2, 3} (spec numbering; 0-based {0, 1}, {0, 2}, {1, 2})."""
    from simstudy.model import active_mask, get_design

    P = get_design("P")
    assert P.params.ref == 1 and P.params.K == 2 and P.params.d == 2 and P.inputs.d == 2
    np.testing.assert_array_equal(P.params.beta1, [[3, -2], [0, 0], [-2, -4]])
    np.testing.assert_array_equal(P.params.beta0, [0.4, 0.0, -0.3])
    x = P.inputs.quasi_random(2**14)
    mask = active_mask(P.params, x)
    masses = {tuple(np.flatnonzero(row)): 0 for row in mask}
    for row in mask:
        masses[tuple(np.flatnonzero(row))] += 1 / len(mask)
    assert masses[(0, 1)] == pytest.approx(0.36, abs=0.01)
    assert masses[(0, 2)] == pytest.approx(0.27, abs=0.01)
    assert masses[(1, 2)] == pytest.approx(0.37, abs=0.01)
