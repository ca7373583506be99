"""Thread limits inside fit(): BLAS at one thread, numba threads only for the opt-in parallel
passes, and a fit with n_threads > 1 equal to the serial one to the bit."""

import warnings

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from simstudy.estimation import ConvergenceWarning, TopKMoEEM
from simstudy.model import get_design, kernels, sample
from simstudy.model.threads import thread_limits


def _blas_threads():
    return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}


def test_thread_limits_hold_blas_to_one_thread_and_restore():
    before = _blas_threads()
    with thread_limits(1):
        assert _blas_threads() <= {1}
    assert _blas_threads() == before


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True, None])
def test_thread_limits_reject_bad_counts(bad):
    with pytest.raises(ValueError, match="n_threads"):
        with thread_limits(bad):
            pass


def test_fit_limits_blas_inside(monkeypatch):
    seen = []
    real = kernels.em_pass

    def spy(*args):
        seen.append(_blas_threads())
        return real(*args)

    monkeypatch.setattr(kernels, "em_pass", spy)
    design = get_design("T")
    X, y = sample(design.params, 300, design.inputs, np.random.default_rng(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        TopKMoEEM(3, 2, true_params=design.params, max_iter=3, random_state=0).fit(X, y)
    assert seen and all(s <= {1} for s in seen)


def test_parallel_fit_is_bit_identical_to_the_serial_fit():
    design = get_design("T")
    n = 2 * kernels.BLOCK * kernels.CHUNK_BLOCKS + 123  # three chunks
    X, y = sample(design.params, n, design.inputs, np.random.default_rng(1))
    fits = []
    for n_threads in (1, 2):
        est = TopKMoEEM(4, 3, true_params=design.params, extra_atoms=[0], max_iter=15,
                        tol=1e-12, random_state=3, n_threads=n_threads)  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            fits.append(est.fit(X, y))
    np.testing.assert_array_equal(fits[0].loglik_trace, fits[1].loglik_trace)
    np.testing.assert_array_equal(fits[0].params.atoms(), fits[1].params.atoms())


def test_n_threads_is_validated():
    design = get_design("T")
    X, y = sample(design.params, 50, design.inputs, np.random.default_rng(2))
    with pytest.raises(ValueError, match="n_threads"):
        TopKMoEEM(3, 2, true_params=design.params, n_threads=0).fit(X, y)
