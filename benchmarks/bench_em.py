"""EM benchmarks: cost of one iteration (kernels vs vectorised numpy) and over-specified fits.

Part 1, for n in {1e4, 1e5}, k in {3, 4}, d = 1 (design T data; k = 3 fits K = 2, k = 4 fits
K-bar = 3 with the extra atom on true expert index 0): the same EM iterations are run by
:class:`TopKMoEEM` (numba kernels) and by :func:`numpy_em_iteration` (a straightforward
vectorised-numpy implementation of the same iteration), from the same start, in the same
process. Both traces must agree (it is the same algorithm); the table gives nanoseconds per
(sample x expert x iteration) and the ratio numpy / kernels. Absolute times depend on the load
of the machine; the ratio is the robust number.

Part 2: one over-specified fit (design T, k = 4, K-bar = 3, extra atom on index 0, near-truth
start with noise 0.1) at n = 1e4 and 1e5, under tol = 1e-6 and under strict convergence, with
and without acceleration (SQUAREM, or the L-BFGS polish): iterations, EM steps, wall time,
final log-likelihood and gradient norm.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
from scipy.special import logsumexp

from simstudy.estimation import ConvergenceWarning, TopKMoEEM, protocol_options
from simstudy.model import get_design, sample

__all__ = ["numpy_loglik", "numpy_em_iteration", "bench_iteration", "bench_overspecified", "run"]


# -- the vectorised-numpy reference iteration ------------------------------------------------
def _log_weights(X, beta0, beta1, K):
    s = X @ beta1.T
    k = beta1.shape[0]
    eta = s + beta0
    if K < k:
        order = np.argsort(-s, axis=1, kind="stable")[:, :K]
        mask = np.zeros(s.shape, dtype=bool)
        np.put_along_axis(mask, order, True, axis=1)
        eta = np.where(mask, eta, -np.inf)
    return eta - logsumexp(eta, axis=1, keepdims=True)


def _log_joint(X, y, P, K):
    beta0, beta1, a, b, v = P
    mean = X @ a.T + b
    log_n = -0.5 * (np.log(2 * np.pi * v) + (y[:, None] - mean) ** 2 / v)
    return _log_weights(X, beta0, beta1, K) + log_n


def numpy_loglik(X, y, P, K):
    """Observed log-likelihood with (n, k) temporaries."""
    return float(logsumexp(_log_joint(X, y, P, K), axis=1).sum())


def numpy_em_iteration(X, y, P, K, ref, var_floor=1e-6, ridge=1e-10, max_halvings=30):
    """The iteration of :class:`TopKMoEEM` in vectorised numpy; returns (P_new, loglik_new)."""
    beta0, beta1, a, b, v = P
    n, d = X.shape
    k = beta0.shape[0]
    p = d + 1
    lj = _log_joint(X, y, P, K)
    lp = logsumexp(lj, axis=1)
    l0 = float(lp.sum())
    R = np.exp(lj - lp[:, None])
    Z = np.column_stack([X, np.ones(n)])
    a, b, v = a.copy(), b.copy(), v.copy()
    for i in range(k):
        sr = R[:, i].sum()
        if not sr > 1e-12 * n:
            continue
        RZ = Z * R[:, i, None]
        coef = np.linalg.solve(RZ.T @ Z, RZ.T @ y)
        a[i], b[i] = coef[:d], coef[d]
        v[i] = max(float(R[:, i] @ (y - Z @ coef) ** 2) / sr, var_floor)
    if k == 1 or K == 1:
        return (beta0, beta1, a, b, v), numpy_loglik(X, y, (beta0, beta1, a, b, v), K)
    W = np.exp(_log_weights(X, beta0, beta1, K))
    free = [j for j in range(k) if j != ref]
    m = len(free)
    g = np.concatenate([Z.T @ (R[:, j] - W[:, j]) for j in free])
    H = np.zeros((m * p, m * p))
    for u, j in enumerate(free):
        for q, l in enumerate(free):
            c = W[:, j] * W[:, l] - (W[:, j] if j == l else 0.0)
            H[u * p : (u + 1) * p, q * p : (q + 1) * p] = (Z * c[:, None]).T @ Z
    A = -H
    A = A + ridge * max(1.0, float(np.max(np.abs(np.diag(A))))) * np.eye(m * p)
    step = np.zeros((k, p))
    step[free] = np.linalg.solve(A, g).reshape(m, p)
    t = 1.0
    for _ in range(max_halvings):
        trial = (beta0 + t * step[:, d], beta1 + t * step[:, :d], a, b, v)
        lt = numpy_loglik(X, y, trial, K)
        if np.isfinite(lt) and lt >= l0:
            return trial, lt
        t *= 0.5
    P_new = (beta0, beta1, a, b, v)
    return P_new, numpy_loglik(X, y, P_new, K)


# -- part 1 ---------------------------------------------------------------------------------------
def _setup(n, k, seed=0):
    design = get_design("T")
    X, y = sample(design.params, n, design.inputs, np.random.default_rng(seed))
    K, extra = (2, []) if k == 3 else (3, [0])
    return design, X, y, K, extra


def bench_iteration(n, k, n_iter, repeats=3):
    """Seconds per iteration of kernels and numpy (best of ``repeats``) and the trace gap."""
    design, X, y, K, extra = _setup(n, k)
    est = TopKMoEEM(k, K, true_params=design.params, extra_atoms=extra, init_noise=0.1,
                    tol=1e-300, max_iter=n_iter, random_state=0)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X[:200], y[:200])  # compile / warm up
        t_kernel = np.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            res = est.fit(X, y)
            t_kernel = min(t_kernel, (time.perf_counter() - t0) / res.n_iter)
    # the same start as the kernel fit (same random_state)
    est._check_options()
    est._prepare(X, y)
    P = est._unpack(est._initialize(np.random.default_rng(0), 0))
    t_numpy = np.inf
    for _ in range(repeats):
        Q = P
        t0 = time.perf_counter()
        trace = [numpy_loglik(X, y, Q, K)]
        for _ in range(n_iter):
            Q, ll = numpy_em_iteration(X, y, Q, K, est._ref)
            trace.append(ll)
        t_numpy = min(t_numpy, (time.perf_counter() - t0) / n_iter)
    gap = float(np.max(np.abs(np.asarray(trace) - res.loglik_trace)) / abs(trace[-1]))
    return {"n": n, "k": k, "K": K, "iters": n_iter, "kernel_s": t_kernel, "numpy_s": t_numpy,
            "trace_gap": gap}  # fmt: skip


# -- part 2 ---------------------------------------------------------------------------------------
def bench_overspecified(n, max_iter_plain_strict):
    """The over-specified fit under both stopping rules, with and without SQUAREM."""
    design, X, y, K, extra = _setup(n, 4, seed=1)
    strict = protocol_options("strict", n)
    rows = []
    settings = [
        ("tol 1e-6", None, dict(tol=1e-6, grad_tol=None, max_iter=2000)),
        ("tol 1e-6", "squarem", dict(tol=1e-6, grad_tol=None, max_iter=2000)),
        ("strict", None, dict(tol=strict["tol"], grad_tol=strict["grad_tol"],
                              max_iter=max_iter_plain_strict)),
        ("strict", "squarem", dict(tol=strict["tol"], grad_tol=strict["grad_tol"],
                                   max_iter=strict["max_iter"])),
        ("strict", "lbfgs", dict(tol=strict["tol"], grad_tol=strict["grad_tol"],
                                 max_iter=strict["max_iter"])),
    ]  # fmt: skip
    for rule, acc, kw in settings:
        est = TopKMoEEM(4, K, true_params=design.params, extra_atoms=extra, init_noise=0.1,
                        acceleration=acc, random_state=7, **kw)  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            res = est.fit(X, y)
        rows.append({"n": n, "rule": rule, "acceleration": acc or "none",
                     "stop": res.stop_reason, "iters": res.n_iter,
                     "em_steps": f"{res.n_em_steps}" + (f" + {res.n_polish_evals} polish evals"
                                                        if res.n_polish_evals else ""),
                     "seconds": res.seconds, "loglik": res.loglik, "grad_norm": res.grad_norm,
                     "beta1_extra": float(res.params.beta1[3, 0])})  # fmt: skip
    return rows


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def run(quick: bool = False) -> str:
    """Run both parts; return the markdown report."""
    sizes = [10_000] if quick else [10_000, 100_000]
    part1 = []
    for n in sizes:
        for k in (3, 4):
            part1.append(bench_iteration(n, k, n_iter=10 if n > 10_000 else 20,
                                         repeats=2 if quick else 3))  # fmt: skip
    rows1 = [
        (r["n"], r["k"], r["K"], r["iters"], f"{r['kernel_s'] * 1e3:.2f}",
         f"{r['kernel_s'] / (r['n'] * r['k'] * 1e-9):.1f}",
         f"{r['numpy_s'] * 1e3:.2f}", f"{r['numpy_s'] / r['kernel_s']:.1f}",
         f"{r['trace_gap']:.1e}")
        for r in part1
    ]  # fmt: skip
    t1 = _table(["n", "k", "K", "iters", "kernel ms/iter", "ns/(sample*expert*iter)",
                 "numpy ms/iter", "numpy/kernel", "max rel trace gap"], rows1)  # fmt: skip
    part2 = []
    for n in sizes:
        part2 += bench_overspecified(n, max_iter_plain_strict=(3000 if n <= 10_000 else 1000)
                                     if not quick else 1000)  # fmt: skip
    rows2 = [
        (r["n"], r["rule"], r["acceleration"], r["stop"], r["iters"], r["em_steps"],
         f"{r['seconds']:.1f}", f"{r['loglik']:.4f}", f"{r['grad_norm']:.1e}",
         f"{r['beta1_extra']:.3f}")
        for r in part2
    ]  # fmt: skip
    t2 = _table(["n", "rule", "acceleration", "stop", "iters", "EM steps", "seconds",
                 "loglik", "grad norm", "beta1 of extra atom"], rows2)  # fmt: skip
    strict = protocol_options("strict", 1)
    return (
        "# EM benchmark\n\n"
        "## Cost of one EM iteration (E-step, both M-steps, backtracking evaluations)\n\n"
        "Design T data, d = 1; k = 3 fits K = 2, k = 4 fits K-bar = 3. Same iterations, same "
        "start, same process; one core.\n\n"
        f"{t1}\n\n"
        "## Over-specified fit: design T, k = 4, K-bar = 3, extra atom on expert index 0\n\n"
        f"Near-truth start, noise 0.1. strict: tol = {strict['tol']:g} relative and scaled "
        f"gradient norm <= {strict['grad_tol']:g}; plain EM capped as shown (max_iter). An "
        "accelerated iteration is one SQUAREM cycle (about 3 EM steps); 'lbfgs' is EM until the "
        "relative change is <= 1e-6, one L-BFGS polish (counted as one iteration, its "
        "evaluations shown apart), then SQUAREM cycles to certify.\n\n"
        f"{t2}\n"
    )
