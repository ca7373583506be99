"""The full-study projection prices missing tasks by the mean cost of the stored ones."""

import numpy as np
import pandas as pd
import pytest

from benchmarks.study_cost import _law, _price


def test_power_law_of_mean_seconds_recovers_exponent_and_scale():
    rng = np.random.default_rng(0)
    ns = np.repeat([1000, 10_000, 100_000], 5)
    noise = np.exp(rng.normal(0, 0.01, ns.size))
    df = pd.DataFrame({"n": ns, "seconds": 2e-5 * ns ** 0.9 * noise})
    log_a, b = _law(df)
    assert b == pytest.approx(0.9, abs=0.02)
    assert np.exp(log_a + b * np.log(1e6)) == pytest.approx(2e-5 * 1e6 ** 0.9, rel=0.1)


def test_single_n_is_scaled_linearly():
    df = pd.DataFrame({"n": [1000, 1000], "seconds": [1.0, 3.0]})
    log_a, b = _law(df)
    assert b == 1.0 and np.exp(log_a + np.log(4000)) == pytest.approx(8.0)


def test_missing_tasks_cost_the_mean_at_their_n_not_the_median():
    # heavy tail at n = 1000: one fit in four takes 100 s; the mean (25.75 s) prices the rest
    have = pd.DataFrame({"n": [1000] * 4 + [2000] * 2, "seconds": [1, 1, 1, 100, 4, 4]})
    want = pd.DataFrame({"n": [1000] * 8 + [2000] * 2 + [4000]})
    _, rest = _price(want, have)
    law_4000 = 25.75 * (4000 / 1000) ** (np.log(4 / 25.75) / np.log(2))
    assert rest == pytest.approx(4 * 25.75 + 0 + law_4000)


def test_nothing_missing_costs_nothing():
    have = pd.DataFrame({"n": [1000, 1000, 5000], "seconds": [1.0, 2.0, 9.0]})
    assert _price(have[["n"]], have)[1] == 0.0
