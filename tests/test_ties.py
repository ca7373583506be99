"""Tie rules on exact ties (random data never ties, so these are built on purpose).

* Top-K selection: expert i is selected when fewer than K experts beat it, j beating i when
  ``s_j > s_i`` or (``s_j == s_i`` and ``j < i``): ties go to the lower index (spec section 1).
* Voronoi cells: a fitted atom goes to the nearest true atom, exact ties to the lowest index
  (spec section 3).

Scores and coordinates are drawn from a few small dyadic values, so ties are frequent and the
arithmetic (differences, squared distances) is exact. Hypothesis runs derandomized: the same
examples every run (mutation testing needs tests that do not flicker).
"""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from simstudy.losses import voronoi_cells
from simstudy.model import MoEParams, kernels
from simstudy.model.density import active_mask

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True)
VALUES = st.sampled_from([-1.0, 0.0, 0.5, 2.0])


@st.composite
def scores_and_K(draw):
    s = draw(st.lists(VALUES, min_size=1, max_size=7))
    return np.array(s), draw(st.integers(1, len(s)))


def rule(s, K):
    """The spec's rule, by sorting on the key (-score, index)."""
    order = sorted(range(len(s)), key=lambda i: (-s[i], i))
    mask = np.zeros(len(s), dtype=bool)
    mask[order[:K]] = True
    return mask


@SETTINGS
@given(scores_and_K())
def test_select_topk_breaks_exact_ties_to_the_lower_index(case):
    s, K = case
    active = np.zeros(s.size, dtype=bool)
    kernels.select_topk(s, K, active)
    np.testing.assert_array_equal(active, rule(s, K))
    assert active.sum() == K
    # among equal scores, a selected expert's lower-indexed equals are selected too
    for i in range(s.size):
        for j in range(i):
            if s[j] == s[i] and active[i]:
                assert active[j]


@SETTINGS
@given(scores_and_K())
def test_topk_mask_and_active_mask_follow_the_same_rule(case):
    """The kernels' mask and the public numpy mask agree with the rule at x = 1 (scores s),
    x = -1 (scores -s) and x = 0 (every score ties)."""
    s, K = case
    beta1 = (s - s[0])[:, None]  # expert 0 is the reference (0, 0); shifting keeps the order
    X = np.array([[1.0], [-1.0], [0.0]])
    want = np.stack([rule(beta1[:, 0], K), rule(-beta1[:, 0], K), rule(np.zeros(s.size), K)])
    mask = np.zeros((3, s.size), dtype=bool)
    kernels.topk_mask(X, beta1, K, mask)
    np.testing.assert_array_equal(mask, want)
    k = s.size
    params = MoEParams(beta0=np.zeros(k), beta1=beta1, a=np.zeros((k, 1)), b=np.zeros(k),
                       v=np.ones(k), K=K, ref=0)
    np.testing.assert_array_equal(active_mask(params, X), want)


@st.composite
def atoms(draw):
    p = draw(st.integers(1, 3))
    coord = st.sampled_from([-1.0, 0.0, 1.0])
    true = draw(st.lists(st.lists(coord, min_size=p, max_size=p), min_size=1, max_size=5))
    fitted = draw(st.lists(st.lists(coord, min_size=p, max_size=p), min_size=1, max_size=6))
    return np.array(fitted), np.array(true)


@SETTINGS
@given(atoms())
def test_voronoi_cells_break_exact_ties_to_the_lowest_true_index(case):
    fitted, true = case
    labels = voronoi_cells(fitted, true)
    assert labels.shape == (fitted.shape[0],)
    for i, f in enumerate(fitted):
        d2 = [float(np.sum((f - t) ** 2)) for t in true]  # exact: small integers
        best = min(d2)
        assert labels[i] == d2.index(best)  # the first (lowest) index at the minimum
        assert all(d2[j] > best for j in range(labels[i]))
