"""Thread limits around a fit: BLAS at one thread, numba at ``n_threads``.

A fit's BLAS calls are tiny (solves of a few dozen unknowns), where extra OpenBLAS threads
only cost: with two threads on a loaded machine one L-BFGS objective evaluation took 6.7 ms
instead of 0.033 ms. numba threads are used only by the opt-in parallel passes
(``parallel=True`` in :mod:`simstudy.model.kernels`). The limits are applied inside ``fit()``
itself, so a direct API call is as safe as a run under the study runner.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np

__all__ = ["thread_limits"]

_controller = None
_lock = threading.Lock()


def _blas_controller():
    """One threadpoolctl controller per process (creating one scans the loaded libraries,
    a few ms; limiting through it costs ~20 us)."""
    global _controller
    with _lock:
        if _controller is None:
            from threadpoolctl import ThreadpoolController

            _controller = ThreadpoolController()
        return _controller


@contextlib.contextmanager
def thread_limits(n_threads=1):
    """Hold BLAS to one thread and numba's parallel passes to ``n_threads`` in the block.

    ``n_threads`` is clipped to the threads numba was started with (``NUMBA_NUM_THREADS``);
    numba's setting is per calling thread, so concurrent fits in other threads keep theirs.
    With ``n_threads=1`` numba's threading layer is not touched (only the serial passes run).
    """
    if isinstance(n_threads, bool) or not isinstance(n_threads, int | np.integer) or n_threads < 1:
        raise ValueError(f"n_threads: expected an integer >= 1, got {n_threads!r}")
    import numba

    with _blas_controller().limit(limits=1, user_api="blas"):
        if n_threads == 1 or numba.config.DISABLE_JIT:
            yield
            return
        before = numba.get_num_threads()
        numba.set_num_threads(min(n_threads, numba.config.NUMBA_NUM_THREADS))
        try:
            yield
        finally:
            numba.set_num_threads(before)
