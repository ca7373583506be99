"""The full-study projection prices missing tasks by the power law of the stored ones."""

import numpy as np
import pandas as pd
import pytest

from benchmarks.study_cost import _law


def test_power_law_of_median_seconds_recovers_exponent_and_scale():
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
