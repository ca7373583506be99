"""The observed log-likelihood of a top-K MoE as an optimisation problem.

:class:`Likelihood` holds the data, the layout of the free-parameter vector (kernels order:
gating blocks (beta1_j, beta0_j) of every j != ref, expert blocks (a_i, b_i), log v_i), the
box of admissible values (variance floor, optional bound on the gating slopes) and counts the
passes over the data that every evaluation costs. The Newton refinement and the certificates
work on it only.

A *pass* is one full-data evaluation: of the log-likelihood, of its gradient, of its Hessian
(one kernel pass), or of one node of an exact line scan.
"""

from __future__ import annotations

import numpy as np

from simstudy.estimation import scan as _scan
from simstudy.model import kernels, kernels_scan

__all__ = ["Likelihood"]


class Likelihood:
    """Data, parameter layout, bounds and pass counting of one fit.

    Parameters
    ----------
    X, y : numpy.ndarray
        Validated data, X (n, d) C-contiguous.
    k, K : int
        Fitted and selected experts.
    var_floor : float
        Absolute lower bound of the variances.
    beta1_bound : float or None
        If given, every gating-slope coordinate is kept in [-beta1_bound, beta1_bound].
    parallel : bool
        Run the kernels' parallel passes (see ``TopKMoEEM(n_threads)``).
    """

    def __init__(self, X, y, k, K, var_floor, beta1_bound=None, parallel=False):
        self.X, self.y = X, y
        self.n, self.d = X.shape
        self.k, self.K = int(k), int(K)
        self.p = self.d + 1
        self.m = kernels.n_free(self.k, self.d)
        self.var_floor = float(var_floor)
        self.beta1_bound = None if beta1_bound is None else float(beta1_bound)
        self.xmax = np.maximum(np.max(np.abs(X), axis=0), 1e-300)
        self.parallel = bool(parallel)
        self.passes = 0
        #: passes by kind (loglik, grad, hess, events, nodes, boundary, em, smooth)
        self.counts = dict.fromkeys(("loglik", "grad", "hess", "events", "nodes", "boundary",
                                     "em", "smooth"), 0)
        self._grad = np.zeros(self.m)
        self.set_ref(0)

    # -- layout ---------------------------------------------------------------------------
    def set_ref(self, ref: int) -> None:
        """Fix the reference expert and rebuild the index maps and the box."""
        k, d, p = self.k, self.d, self.p
        self.ref = int(ref)
        free = [j for j in range(k) if j != self.ref]
        self.idx_beta1 = np.full((k, d), -1, dtype=np.int64)
        self.idx_beta0 = np.full(k, -1, dtype=np.int64)
        for pos, j in enumerate(free):
            self.idx_beta1[j] = pos * p + np.arange(d)
            self.idx_beta0[j] = pos * p + d
        ng = (k - 1) * p
        self.ng = ng
        self.gating = np.arange(ng)
        self.slopes = np.sort(self.idx_beta1[self.idx_beta1 >= 0])
        self.logv = np.arange(ng + k * p, self.m)
        #: parameters that never move a selection (beta0, a, b, log v)
        self.smooth = np.setdiff1d(np.arange(self.m), self.slopes)
        self.lower = np.full(self.m, -np.inf)
        self.upper = np.full(self.m, np.inf)
        self.lower[self.logv] = np.log(self.var_floor)
        if self.beta1_bound is not None:
            self.lower[self.slopes] = -self.beta1_bound
            self.upper[self.slopes] = self.beta1_bound

    def pack(self, beta0, beta1, a, b, v) -> np.ndarray:
        free = np.arange(self.k) != self.ref
        gating = np.column_stack([beta1, beta0])[free].ravel()
        experts = np.column_stack([a, b]).ravel()
        return np.concatenate([gating, experts, np.log(v)])

    def _blocks(self, theta):
        k, d, p, ng = self.k, self.d, self.p, self.ng
        gate = np.zeros((k, p))
        gate[np.arange(k) != self.ref] = theta[:ng].reshape(k - 1, p)
        ex = theta[ng : ng + k * p].reshape(k, p)
        return (np.ascontiguousarray(gate[:, d]), np.ascontiguousarray(gate[:, :d]),
                np.ascontiguousarray(ex[:, :d]), np.ascontiguousarray(ex[:, d]),
                theta[ng + k * p :].copy())

    def unpack(self, theta):
        """``(beta0, beta1, a, b, v)`` arrays of a parameter vector (variances exponentiated)."""
        beta0, beta1, a, b, logv = self._blocks(theta)
        return beta0, beta1, a, b, np.exp(logv)

    def unpack_direction(self, delta):
        """A direction in parameter space as ``(dbeta0, dbeta1, da, db, dlogv)``."""
        return self._blocks(delta)

    def feasible(self, theta) -> bool:
        return bool(np.all(np.isfinite(theta)) and np.all(theta >= self.lower - 1e-12)
                    and np.all(theta <= self.upper + 1e-12))

    def clip(self, theta) -> np.ndarray:
        return np.minimum(np.maximum(theta, self.lower), self.upper)

    # -- evaluations ------------------------------------------------------------------------
    def count(self, kind, passes=1) -> None:
        """Book ``passes`` full-data evaluations of the given kind."""
        self.passes += passes
        self.counts[kind] += passes

    def loglik(self, theta) -> float:
        self.count("loglik")
        return float(kernels.loglik(self.X, self.y, *self.unpack(theta), self.K, self.parallel))

    def grad(self, theta):
        """Log-likelihood and its gradient (active sets held)."""
        self.count("grad")
        ll = kernels.obs_grad(self.X, self.y, *self.unpack(theta), self.K, self.ref, self._grad,
                              self.parallel)
        return float(ll), self._grad.copy()

    def grad_hess(self, theta):
        """Log-likelihood, gradient and Hessian with every point's active set held."""
        g = np.zeros(self.m)
        H = np.zeros((self.m, self.m))
        self.count("hess")
        ll = kernels.obs_hess(self.X, self.y, *self.unpack(theta), self.K, self.ref, g, H,
                              self.parallel)
        return float(ll), g, 0.5 * (H + H.T)

    # -- geometry of the selection ------------------------------------------------------------
    def score_scale(self, delta) -> float:
        """Largest change of any score beta1_i . x per unit step along ``delta`` (bound)."""
        dbeta1 = self.unpack_direction(delta)[1]
        return float(np.max(np.abs(dbeta1) @ self.xmax)) if dbeta1.size else 0.0

    def sharpness(self, theta) -> float:
        """Largest |beta1_i . x| over the data box: how hard the gating is."""
        return float(np.max(np.abs(self.unpack(theta)[1]) @ self.xmax))

    def scan(self, theta, delta, t_lo, t_hi, tol, force=False) -> _scan.LineScan:
        """Exact scan of l(theta + t delta) over [t_lo, t_hi] (see :mod:`.scan`); delta must
        move the gating parameters only."""
        if np.any(delta[self.ng :]):
            raise ValueError("delta: an exact scan moves the gating parameters only")
        dbeta0, dbeta1 = self.unpack_direction(delta)[:2]
        res = _scan.scan_line(self.X, self.y, self.unpack(theta), (dbeta0, dbeta1), self.K,
                              t_lo, t_hi, tol, force=force)
        self.count("events", res.n_event_passes)
        self.count("nodes", res.n_passes - res.n_event_passes)
        return res

    def first_event(self, theta, delta, t_hi) -> float:
        """Smallest t in [0, t_hi) where some point's selection changes (inf if none)."""
        if self.K >= self.k:
            return np.inf
        beta1 = self.unpack(theta)[1]
        dbeta1 = self.unpack_direction(delta)[1]
        events, passes = _scan.list_events(self.X, beta1, dbeta1, self.K, 0.0, t_hi)
        self.count("events", passes)
        return float(events[1].min()) if events[1].size else np.inf

    def boundary_normals(self, theta, rel_tol=1e-9):
        """Active constraints of the current selection piece, deduplicated.

        Returns ``(normals, pairs)``: unit vectors a (q, m) such that the piece is locally
        {theta : a . theta >= a . theta_now} (points exactly on a boundary: selected i,
        unselected j, (beta1_i - beta1_j) . x_n = 0), and for each normal one (i, j) pair.
        """
        if self.K >= self.k or self.k < 2:
            return np.zeros((0, self.m)), []
        beta1 = self.unpack(theta)[1]
        atol = rel_tol * max(float(np.max(np.abs(beta1) @ self.xmax)), 1e-12)
        cap = 4096
        while True:
            pt = np.empty(cap, dtype=np.int64)
            ii = np.empty(cap, dtype=np.int64)
            jj = np.empty(cap, dtype=np.int64)
            count = kernels_scan.boundary_pairs(self.X, beta1, self.K, atol, pt, ii, jj)
            self.count("boundary")
            if count <= cap:
                break
            cap = int(count)
        pt, ii, jj = pt[:count], ii[:count], jj[:count]
        x = self.X[pt]
        xn = np.linalg.norm(x, axis=1)
        ok = xn > 0.0
        pt, ii, jj, x, xn = pt[ok], ii[ok], jj[ok], x[ok], xn[ok]
        if pt.size == 0:
            return np.zeros((0, self.m)), []
        # one normal per (i, j, direction of x): points of a pair on the same ray give the
        # same constraint (in d = 1 every point of a tie does)
        key = np.column_stack([ii, jj, np.round(x / xn[:, None], 10)])
        _, first = np.unique(key, axis=0, return_index=True)
        first = np.sort(first)
        A = np.zeros((first.size, self.m))
        for row, q in enumerate(first):
            i, j = int(ii[q]), int(jj[q])
            if i != self.ref:
                A[row, self.idx_beta1[i]] += x[q]
            if j != self.ref:
                A[row, self.idx_beta1[j]] -= x[q]
        A /= np.linalg.norm(A, axis=1)[:, None]
        return A, [(int(ii[q]), int(jj[q])) for q in first]

    def is_tie(self, theta, pair, rel_tol=1e-8) -> bool:
        """True when the two experts' gating slopes are equal (a tie of two slopes)."""
        beta1 = self.unpack(theta)[1]
        i, j = pair
        scale = max(1.0, float(np.max(np.abs(beta1))))
        return bool(np.max(np.abs(beta1[i] - beta1[j])) <= rel_tol * scale)
