"""Exact one-dimensional scans of the piecewise-smooth observed log-likelihood.

Along ``theta + t delta`` (t in ``[t_lo, t_hi]``, ``t_lo <= 0 <= t_hi``; delta moves the
gating parameters only) the log-likelihood is

    l(t) - l(0) = F_0(t) + sum over the events e met between 0 and t of f_e(t),

where F_0 is the sum over all points of ``l_n(t) - l_n(0)`` with every point's selection held
at t = 0 (analytic in t) and f_e the change one point's selection change makes (analytic
too). :mod:`simstudy.model.kernels_scan` lists the events and evaluates F_0 and every f_e at
Chebyshev-Lobatto nodes; here they become Chebyshev series on the whole interval (error
estimated from the last coefficients and refined until it is below the tolerance), so the
function on every piece between consecutive breakpoints is a known polynomial. A
branch-and-bound over the pieces (values at the ends plus a bound on the second derivative
times width^2 / 8) then finds the maximum to within ``tol`` and proves, or refutes, that no t
in the interval raises l by more than ``tol``: breakpoints included, both sides of each (the
function at a breakpoint equals one of its two one-sided limits).

Costs: one pass to list the events, ``n_nodes`` held evaluations of every point (one pass of
the kernel), and ``n_nodes`` evaluations of each event's point; the branch-and-bound works on
the series only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simstudy.model import kernels_scan

__all__ = ["LineScan", "scan_line", "lobatto_nodes", "cheb_coefficients", "cheb_values"]

#: Chebyshev-Lobatto node counts tried in turn until the series' tail is below the tolerance
NODE_COUNTS = (7, 13, 25)
#: at most this many events per scan: beyond it the interval is cut (and the result says so)
MAX_EVENTS = 20000


@dataclass
class LineScan:
    """Result of one exact line scan (see the module docstring).

    Attributes
    ----------
    t_best, gain_best : float
        The best t found and its predicted gain l(t) - l(0) (0.0 at t = 0 when nothing is
        higher).
    piece : tuple of float
        The piece (between consecutive breakpoints) whose closure holds ``t_best``: the value
        ``gain_best`` is that piece's limit, so a caller nudges into it if the tie rule at a
        breakpoint picks the other side.
    cleared : bool
        True when the scan proves that no t in ``[t_lo, t_hi]`` has l(t) > l(0) + tol.
    smooth : bool
        True when no point's selection changes on the interval (nothing else was computed).
    n_events : int
        Selection changes on the interval; ``n_events_at_zero`` of them at t = 0 exactly on the
        right (``[0]``) and left (``[1]``) side (a point on a boundary).
    t_lo, t_hi : float
        The interval actually covered (cut when more than MAX_EVENTS events lie in it).
    series_error : float
        Estimated error of the Chebyshev series (added to every bound).
    n_passes : int
        Full-data evaluations spent (event listing, plus one per node);
        ``n_event_passes`` of them listing the events.
    """

    t_best: float = 0.0
    gain_best: float = 0.0
    piece: tuple = (0.0, 0.0)
    cleared: bool = True
    smooth: bool = True
    n_events: int = 0
    n_events_at_zero: tuple = (0, 0)
    t_lo: float = 0.0
    t_hi: float = 0.0
    series_error: float = 0.0
    n_passes: int = 0
    n_event_passes: int = 0


def lobatto_nodes(t_lo: float, t_hi: float, m: int) -> np.ndarray:
    """Chebyshev-Lobatto nodes of ``[t_lo, t_hi]`` (m >= 2), from t_hi down to t_lo."""
    mid, half = 0.5 * (t_lo + t_hi), 0.5 * (t_hi - t_lo)
    return mid + half * np.cos(np.pi * np.arange(m) / (m - 1))


def cheb_coefficients(values: np.ndarray) -> np.ndarray:
    """Chebyshev coefficients of the interpolant through values at :func:`lobatto_nodes`
    (last axis), by the discrete cosine transform of type I."""
    values = np.asarray(values, dtype=np.float64)
    m = values.shape[-1]
    j = np.arange(m)
    w = np.ones(m)
    w[0] = w[-1] = 0.5
    T = np.cos(np.pi * np.outer(j, j) / (m - 1)) * w  # T[k, j]
    c = (2.0 / (m - 1)) * values @ T.T
    c[..., 0] *= 0.5
    c[..., -1] *= 0.5
    return c


def cheb_values(coef: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Evaluate rows of Chebyshev coefficients ``coef`` (p, m) at ``x`` (p,) on [-1, 1]
    (one point per row), by Clenshaw's recurrence."""
    b1 = np.zeros_like(x)
    b2 = np.zeros_like(x)
    for k in range(coef.shape[1] - 1, 0, -1):
        b1, b2 = 2.0 * x * b1 - b2 + coef[:, k], b1
    return x * b1 - b2 + coef[:, 0]


def _second_derivative_bound(coef: np.ndarray) -> np.ndarray:
    """Upper bound of |p''| on [-1, 1] for each row: sum_k |c_k| k^2 (k^2 - 1) / 3."""
    k = np.arange(coef.shape[1], dtype=np.float64)
    return np.abs(coef) @ (k * k * (k * k - 1.0) / 3.0)


def _direction_arrays(direction):
    dbeta0, dbeta1 = direction
    return (np.ascontiguousarray(dbeta0, dtype=np.float64),
            np.ascontiguousarray(dbeta1, dtype=np.float64))


def list_events(X, beta1, dbeta1, K, t_lo, t_hi):
    """Events on ``(t_lo, t_hi)`` as arrays (pt, t, side, before, after) and the passes spent."""
    n = X.shape[0]
    cap = max(256, n // 64)
    passes = 0
    while True:
        ev = (np.empty(cap, dtype=np.int64), np.empty(cap), np.empty(cap, dtype=np.int8),
              np.empty(cap, dtype=np.int64), np.empty(cap, dtype=np.int64))
        count = kernels_scan.line_breaks(X, beta1, dbeta1, K, t_lo, t_hi, *ev)
        passes += 1
        if count <= cap:
            return tuple(arr[:count] for arr in ev), passes
        cap = int(count)


def _cut(events, t_lo, t_hi, max_events):
    """Shrink the interval so that at most ``max_events`` events remain (nearest first)."""
    t = events[1]
    if t.size <= max_events:
        return events, t_lo, t_hi
    cut = np.sort(np.abs(t))[max_events]
    keep = np.abs(t) < cut
    t_hi = min(t_hi, cut) if t_hi > 0 else t_hi
    t_lo = max(t_lo, -cut) if t_lo < 0 else t_lo
    return tuple(arr[keep] for arr in events), t_lo, t_hi


def _pieces(ev_t, ev_side, side, t_end, coef_all, coef_ev, merge):
    """Pieces of one side: arrays (lo, hi, coef), signed times (``side`` +1 or -1).

    Events at (nearly) the same time are merged into one breakpoint; the coefficients of a
    piece are those of F_0 plus all events met before it, moving away from 0.
    """
    sel = np.flatnonzero(ev_side == side)
    dist = np.abs(ev_t[sel])
    order = np.argsort(dist, kind="stable")
    dist, sel = dist[order], sel[order]
    if dist.size:
        starts = np.flatnonzero(np.concatenate([[True], np.diff(dist) > merge]))
        steps = np.add.reduceat(coef_ev[sel], starts, axis=0)
        coef = coef_all + np.vstack([np.zeros_like(coef_all), np.cumsum(steps, axis=0)])
        bounds = np.concatenate([[0.0], dist[starts], [abs(t_end)]])
    else:
        coef = coef_all[None, :]
        bounds = np.array([0.0, abs(t_end)])
    lo, hi = bounds[:-1], bounds[1:]
    keep = hi > lo  # drop the empty piece before an event at exactly 0
    a, b = side * lo[keep], side * hi[keep]
    return np.minimum(a, b), np.maximum(a, b), coef[keep]


def scan_line(X, y, arrays, direction, K, t_lo, t_hi, tol, *, force=False,
              max_events=MAX_EVENTS) -> LineScan:
    """Scan ``l(theta + t delta)`` over ``[t_lo, t_hi]`` exactly (see the module docstring).

    Parameters
    ----------
    X, y : numpy.ndarray
        The data.
    arrays : tuple
        ``(beta0, beta1, a, b, v)`` at t = 0.
    direction : tuple
        ``(dbeta0, dbeta1)``, the line's direction in the gating parameters (the expert
        parameters stay fixed along the line).
    K : int
        Number of selected experts.
    t_lo, t_hi : float
        The interval, ``t_lo <= 0 <= t_hi``.
    tol : float
        Absolute tolerance of the maximum (and of the certificate ``cleared``).
    force : bool, default=False
        Also scan a line on which no selection changes (otherwise such a scan returns at once
        with ``smooth=True``: the caller uses the derivative there).
    max_events : int
        Cap on the events; the interval is cut to the nearest ones beyond it.
    """
    beta0, beta1, a, b, v = arrays
    dirs = _direction_arrays(direction)
    if not t_lo <= 0.0 <= t_hi:
        raise ValueError(f"t_lo, t_hi: need t_lo <= 0 <= t_hi, got {t_lo}, {t_hi}")
    out = LineScan(t_lo=t_lo, t_hi=t_hi)
    if t_hi - t_lo <= 0.0:
        return out
    events, passes = list_events(X, beta1, dirs[1], K, t_lo, t_hi)
    events, t_lo, t_hi = _cut(events, t_lo, t_hi, max_events)
    ev_pt, ev_t, ev_side, ev_b, ev_a = events
    out.t_lo, out.t_hi, out.n_events = t_lo, t_hi, int(ev_t.size)
    out.n_events_at_zero = (int(np.sum((ev_t == 0.0) & (ev_side > 0))),
                            int(np.sum((ev_t == 0.0) & (ev_side < 0))))
    out.n_passes = out.n_event_passes = passes
    if ev_t.size == 0 and not force:
        return out
    out.smooth = ev_t.size == 0
    # Chebyshev series of F_0 and of every event, refined until their tails are small
    for m in NODE_COUNTS:
        nodes = lobatto_nodes(t_lo, t_hi, m)
        vals = np.empty(m)
        kernels_scan.line_nodes(X, y, beta0, beta1, a, b, v, K, *dirs, nodes, vals)
        ev_vals = np.empty((ev_t.size, m))
        if ev_t.size:
            kernels_scan.line_events(X, y, beta0, beta1, a, b, v, *dirs, nodes, ev_pt, ev_b,
                                     ev_a, ev_vals)
        out.n_passes += m
        coef_all = cheb_coefficients(vals)
        coef_ev = cheb_coefficients(ev_vals) if ev_t.size else np.zeros((0, m))
        err = (np.abs(coef_all[-2:]).sum()
               + (np.abs(coef_ev[:, -2:]).sum() if ev_t.size else 0.0))
        if np.isfinite(err) and err <= 0.1 * tol:
            break
    out.series_error = float(err) if np.isfinite(err) else np.inf
    if not np.isfinite(out.series_error):
        out.cleared = False
        return out
    mid, half = 0.5 * (t_lo + t_hi), 0.5 * (t_hi - t_lo)
    merge = 1e-13 * max(abs(t_lo), abs(t_hi))
    los, his, coefs = [], [], []
    for side, t_end in ((1.0, t_hi), (-1.0, t_lo)):
        if side * t_end <= 0.0:
            continue
        lo, hi, coef = _pieces(ev_t, ev_side, side, t_end, coef_all, coef_ev, merge)
        los.append(lo)
        his.append(hi)
        coefs.append(coef)
    lo, hi, coef = np.concatenate(los), np.concatenate(his), np.vstack(coefs)
    _branch_and_bound(out, lo, hi, coef, mid, half, tol)
    return out


def _branch_and_bound(out, lo, hi, coef, mid, half, tol, max_rounds=80):
    """Maximise the piecewise polynomial to within tol; set t_best, gain_best, piece, cleared.

    A piece [lo, hi] is closed once max(f(lo), f(hi)) + C (hi - lo)^2 / 8 (C bounds |f''| on
    it) is below the threshold: tol while nothing above tol was found (so closed pieces are
    proven <= tol), else the best value + tol / 4 (refining the maximum only).
    """
    err = out.series_error
    curv = _second_derivative_bound(coef) / (half * half)
    f_lo = cheb_values(coef, (lo - mid) / half)
    f_hi = cheb_values(coef, (hi - mid) / half)
    ends = np.maximum(f_lo, f_hi)
    q = int(np.argmax(ends))
    best, t_best, piece = 0.0, 0.0, (0.0, 0.0)
    if ends[q] > 0.0:
        best = float(ends[q])
        t_best = float(lo[q] if f_lo[q] >= f_hi[q] else hi[q])
        piece = (float(lo[q]), float(hi[q]))
    idx = np.arange(lo.size)
    unresolved = False
    for _ in range(max_rounds):
        bound = np.maximum(f_lo, f_hi) + curv[idx] * (hi - lo) ** 2 / 8.0 + 2.0 * err
        thr = tol if best <= tol else best + 0.25 * tol
        keep = bound > thr
        if not np.any(keep):
            break
        lo, hi, f_lo, f_hi, idx, bound = (lo[keep], hi[keep], f_lo[keep], f_hi[keep],
                                          idx[keep], bound[keep])
        narrow = (hi - lo) <= 1e-15 * (abs(mid) + half)
        if np.any(narrow):
            unresolved |= bool(np.any(bound[narrow] > tol))
            wide = ~narrow
            lo, hi, f_lo, f_hi, idx = lo[wide], hi[wide], f_lo[wide], f_hi[wide], idx[wide]
            if lo.size == 0:
                break
        tm = 0.5 * (lo + hi)
        f_m = cheb_values(coef[idx], (tm - mid) / half)
        q = int(np.argmax(f_m))
        if f_m[q] > best:
            best, t_best, piece = float(f_m[q]), float(tm[q]), (float(lo[q]), float(hi[q]))
        lo, hi = np.concatenate([lo, tm]), np.concatenate([tm, hi])
        f_lo, f_hi = np.concatenate([f_lo, f_m]), np.concatenate([f_m, f_hi])
        idx = np.concatenate([idx, idx])
    else:
        unresolved = True
    out.t_best, out.gain_best, out.piece = t_best, best, piece
    out.cleared = best <= tol and not unresolved
