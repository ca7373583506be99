"""Boundary moves on design P: exact line scans against a smoothed-selection continuation.

On design P (d = 2, top-2 of 3, region boundaries that move with the slopes) the strict fit
must move boundaries. Two ways are compared from the same near-truth starts (no global
check, so that the optimisers are compared, not the starts):

* **scans** (the strict protocol's choice): EM to a relative change of 1e-4, then
  trust-region Newton on the selection pieces with exact line scans across the boundaries
  (:mod:`simstudy.estimation.newton`);
* **continuation**: EM as above, then L-BFGS (torch autograd) on a smoothed likelihood whose
  selection is a sigmoid of each score minus the midpoint of the K-th and (K+1)-th scores,
  at temperatures 0.3, 0.1, 0.03, 0.01, 0.003, then the same Newton refinement and
  certificate on the hard likelihood from where the continuation ends;
* **held** (no boundary moves, for reference): strict EM with SQUAREM, whose steps keep
  every point's selection (it ends "stalled": nothing certifies it).

Per n: fits certified, fits at or above the true parameters' log-likelihood, the mean
log-likelihood below the best of the three, passes over the data (a smoothed evaluation with
its gradient counts as one) and seconds.

``python -m benchmarks.bench_boundary [--quick]``
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from simstudy.estimation import ConvergenceWarning, TopKMoEEM, protocol_options
from simstudy.model import get_design, loglik, sample
from simstudy.reports.tables import to_markdown

__all__ = ["smoothed_continuation", "compare", "run"]

TEMPERATURES = (0.3, 0.1, 0.03, 0.01, 0.003)


def smoothed_continuation(X, y, params, K, temperatures=TEMPERATURES, iters=50):
    """L-BFGS on the smoothed log-likelihood at decreasing temperatures (torch autograd).

    Returns the parameters (beta0, beta1, a, b, v) and the number of evaluations.
    """
    import torch

    torch.set_num_threads(1)
    dt = torch.float64
    Xt, yt = torch.tensor(X, dtype=dt), torch.tensor(y, dtype=dt)
    ref = params.ref
    free = [j for j in range(params.k) if j != ref]
    b0 = torch.tensor(params.beta0[free], dtype=dt, requires_grad=True)
    b1 = torch.tensor(params.beta1[free], dtype=dt, requires_grad=True)
    a = torch.tensor(params.a, dtype=dt, requires_grad=True)
    b = torch.tensor(params.b, dtype=dt, requires_grad=True)
    lv = torch.tensor(np.log(params.v), dtype=dt, requires_grad=True)
    k = params.k
    evals = [0]

    def full(t0, t1):
        z0 = torch.zeros(k, dtype=dt)
        z1 = torch.zeros((k, X.shape[1]), dtype=dt)
        z0 = z0.index_put((torch.tensor(free),), t0)
        z1 = z1.index_put((torch.tensor(free),), t1)
        return z0, z1

    def objective(tau):
        beta0, beta1 = full(b0, b1)
        s = Xt @ beta1.T  # (n, k)
        top = torch.sort(s, dim=1, descending=True).values
        mid = 0.5 * (top[:, K - 1] + top[:, K]) if K < k else top[:, -1] - 1e3
        logm = torch.nn.functional.logsigmoid((s - mid[:, None]) / tau)
        eta = s + beta0 + logm
        logn = -0.5 * (np.log(2 * np.pi) + lv + (yt[:, None] - Xt @ a.T - b) ** 2 / torch.exp(lv))
        return -(torch.logsumexp(eta + logn, 1) - torch.logsumexp(eta, 1)).sum()

    for tau in temperatures:
        opt = torch.optim.LBFGS([b0, b1, a, b, lv], max_iter=iters, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-9, tolerance_change=1e-12)

        def closure(tau=tau, opt=opt):
            opt.zero_grad()
            val = objective(tau)
            val.backward()
            evals[0] += 1
            return val

        opt.step(closure)
    beta0, beta1 = full(b0.detach(), b1.detach())
    return ((beta0.numpy(), beta1.numpy(), a.detach().numpy(), b.detach().numpy(),
             np.exp(lv.detach().numpy())), evals[0])


def _single(n):
    opts = protocol_options("strict", n)
    opts.update(truth_start=False, n_data_starts=0)
    return opts


def compare(ns=(1000, 4000, 16000), reps=6) -> pd.DataFrame:
    design = get_design("P")
    truth = design.params
    rows = []
    for n in ns:
        for rep in range(reps):
            X, y = sample(truth, n, design.inputs, np.random.default_rng(500 + rep))
            l_true = loglik(truth, X, y)
            out = {}
            # scans
            t0 = time.perf_counter()
            res = TopKMoEEM(3, 2, true_params=truth, random_state=rep, **_single(n)).fit(X, y)
            out["scans"] = (res.loglik, res.stop_reason, res.n_passes, time.perf_counter() - t0)
            # continuation: the same EM phase, then the smoothed path, then the hard refinement
            t0 = time.perf_counter()
            em = TopKMoEEM(3, 2, true_params=truth, random_state=rep, tol=1e-4,
                           max_iter=5000)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                em_res = em.fit(X, y)
            arrays, evals = smoothed_continuation(X, y, em_res.params, 2)
            start = truth.replace(beta0=arrays[0], beta1=arrays[1], a=arrays[2], b=arrays[3],
                                  v=np.maximum(arrays[4], 1e-12))
            fin = TopKMoEEM(3, 2, true_params=start,
                            **{**_single(n), "init_noise": 0.0}).fit(X, y)
            out["continuation"] = (fin.loglik, fin.stop_reason,
                                   em_res.n_passes + evals + fin.n_passes,
                                   time.perf_counter() - t0)
            # held selections only
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                held = TopKMoEEM(3, 2, true_params=truth, random_state=rep,
                                 **{**_single(n), "acceleration": "squarem"}).fit(X, y)
            out["held"] = (held.loglik, held.stop_reason, held.n_passes,
                           time.perf_counter() - t0)
            best = max(v[0] for v in out.values())
            for method, (ll, stop, passes, sec) in out.items():
                rows.append({"n": n, "rep": rep, "method": method, "stop": stop,
                             "gap_truth": ll - l_true, "below_best": best - ll,
                             "passes": passes, "seconds": sec})
            print(n, rep, {m: (round(v[0] - l_true, 3), v[1], v[2]) for m, v in out.items()},
                  flush=True)
    return pd.DataFrame(rows)


def table(df: pd.DataFrame) -> pd.DataFrame:
    out = []
    for (n, method), g in df.groupby(["n", "method"], sort=False):
        out.append({"n": n, "method": method, "fits": len(g),
                    "certified": int(g["stop"].str.startswith("certified").sum()),
                    "at or above truth": int((g["gap_truth"] >= -1e-6).sum()),
                    "mean below best": float(g["below_best"].mean()),
                    "max below best": float(g["below_best"].max()),
                    "median passes": float(g["passes"].median()),
                    "median s": float(g["seconds"].median())})
    return pd.DataFrame(out)


def run(quick: bool = False) -> str:
    try:
        import torch  # noqa: F401
    except ImportError:
        return "# Boundary moves\n\nSkipped: needs the torch extra (pip install -e .[torch]).\n"
    load = os.getloadavg()
    df = compare((1000, 4000) if quick else (1000, 4000, 16000), 2 if quick else 6)
    return ("# Boundary moves on design P: exact scans vs smoothed continuation\n\n"
            f"Produced by `python -m benchmarks.bench_boundary{' --quick' if quick else ''}` "
            f"(load average {load[0]:.1f} on {os.cpu_count()} cores). Same data and near-truth "
            "starts for every method; no global check.\n\n" + to_markdown(table(df)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_boundary", description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="results/bench/boundary.md")
    args = p.parse_args(argv)
    report = run(args.quick)
    print(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
