"""Exact quantile regression of a line, vectorised over bootstrap resamples.

The rate of a loss is the slope of log(loss) on log(n) by quantile regression (spec section 4).
statsmodels' ``QuantReg`` gives the point estimate and its results object; its confidence
intervals come from bootstrapping replications within each n, which needs hundreds of refits
per rate. :func:`qr_line` solves all of them at once and exactly.

How. For a line ``y ~ a + b x`` the check loss ``f(a, b) = sum rho_q(y - a - b x)`` is jointly
convex, so ``f(b) = min_a f(a, b)`` is convex and piecewise linear in ``b``. For fixed ``b`` the
best ``a`` is an order statistic of the residuals ``r = y - b x``: the ``ceil(q N)``-th smallest,
``r_(k)``, with ``x_(k)`` its abscissa. Away from the kinks ``f'(b) = sum_i psi_q(u_i)
(x_(k) - x_i)`` with ``u = r - r_(k)`` and ``psi_q(u) = q - 1{u < 0}`` (the point on the line
contributes nothing). ``f'`` is non-decreasing, and a bisection on its sign converges to the
minimiser; each step is one quickselect and one pass over a row (numba kernel in
:mod:`simstudy.reports.quantreg_kernels`). ``tests/test_quantreg.py`` checks it against a
brute-force search over lines through pairs of points, a plain-numpy bisection and statsmodels.

:func:`stratified_indices` draws the resamples: within each sample size, replications are drawn
with replacement, so every resample keeps the design (the same number of fits at every n) and
therefore the same abscissae column by column.
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np

__all__ = ["qr_line", "check_loss", "stratified_indices", "boot_rng"]


def check_loss(x, y, a, b, q: float) -> float:
    """``sum rho_q(y - a - b x)`` with ``rho_q(u) = u (q - 1{u < 0})``."""
    u = np.asarray(y, dtype=float) - a - b * np.asarray(x, dtype=float)
    return float(np.sum(u * (q - (u < 0))))


def _order_index(q: float, N: int) -> int:
    # 0-based index of the ceil(qN)-th smallest value; guards qN landing a hair above an integer
    return min(max(int(math.ceil(q * N - 1e-9)) - 1, 0), N - 1)


def qr_line(x, Y, q: float = 0.5, *, tol: float = 1e-5, start=None, width: float = 0.25,
            max_steps: int = 200):
    """Quantile-regression line of every row of ``Y`` on the shared abscissae ``x``.

    Parameters
    ----------
    x : array_like, shape (N,)
        Abscissae (log n), with at least two distinct values.
    Y : array_like, shape (B, N) or (N,)
        Responses (log loss), finite; one regression per row.
    q : float, default=0.5
        The quantile, in (0, 1).
    tol : float, default=1e-5
        Width of the final bracket of every slope, before the slope snaps to the exact
        vertex (the line through two data points) next to it.
    start : array_like, shape (B,), optional
        First guess of every slope (default: each row's least-squares slope); the bracket
        starts at ``start +- width`` and doubles outwards until it holds the minimiser.
    width : float, default=0.25
    max_steps : int, default=200
        Bracketing and bisection steps allowed per row (a safeguard; about 20 are used).

    Returns
    -------
    intercepts, slopes : ndarray, shape (B,) (floats for a 1-d ``Y``)

    Raises
    ------
    ValueError
        For bad shapes, non-finite values, fewer than two distinct x or q outside (0, 1).
    RuntimeError
        If a row needs more than ``max_steps`` steps.
    """
    from simstudy.reports.quantreg_kernels import qr_rows

    x = np.ascontiguousarray(x, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    one = Y.ndim == 1
    Y = np.ascontiguousarray(Y[None, :] if one else Y)
    if x.ndim != 1 or Y.ndim != 2 or Y.shape[1] != x.size:
        raise ValueError(f"Y: need shape (B, {x.size}) for {x.size} abscissae, got {Y.shape}")
    if not (0.0 < q < 1.0):
        raise ValueError(f"q: the quantile must lie in (0, 1), got {q}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(Y))):
        raise ValueError("Y: abscissae and responses must be finite")
    if np.unique(x).size < 2:
        raise ValueError(f"x: need at least two distinct abscissae, got {np.unique(x).size}")
    if not (tol > 0 and width > 0):
        raise ValueError(f"tol, width: must be > 0, got {tol}, {width}")
    B, N = Y.shape
    if start is None:
        xc = x - x.mean()
        start = (Y - Y.mean(axis=1, keepdims=True)) @ xc / (xc @ xc)
    start = np.ascontiguousarray(np.broadcast_to(np.asarray(start, dtype=np.float64), (B,)))
    a, b = np.empty(B), np.empty(B)
    failed = qr_rows(x, Y, float(q), _order_index(q, N), start, float(width), float(tol),
                     int(max_steps), a, b)
    if failed:
        raise RuntimeError(f"qr_line: {failed} of {B} rows did not converge in {max_steps} "
                           "steps")
    if one:
        return float(a[0]), float(b[0])
    return a, b


def stratified_indices(groups, n_boot: int, rng) -> np.ndarray:
    """Bootstrap resamples within strata: shape (n_boot, N), N = total size of ``groups``.

    Parameters
    ----------
    groups : list of int arrays
        Positions (into the data) of the members of each stratum (one stratum per n).
    n_boot : int
        Resamples.
    rng : numpy.random.Generator

    Returns
    -------
    ndarray of int
        Row b lists, stratum by stratum and in the order of ``groups``, positions drawn with
        replacement from that stratum (as many as it has members).
    """
    if isinstance(n_boot, bool) or int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot: need an integer >= 1 resamples, got {n_boot!r}")
    parts = []
    for g in groups:
        g = np.asarray(g, dtype=np.intp)
        if g.size == 0:
            continue
        parts.append(g[rng.integers(0, g.size, size=(int(n_boot), g.size))])
    return np.concatenate(parts, axis=1)


def boot_rng(seed: int, *keys) -> np.random.Generator:
    """A generator seeded by ``seed`` and the ``keys`` naming one rate (reproducible, and
    independent of the order in which rates are computed)."""
    digest = hashlib.sha256(json.dumps([int(seed), *map(str, keys)]).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))
