"""Boundary moves on design P: exact scans alone against a smoothed-selection continuation.

On design P (d = 2, top-2 of 3, region boundaries that move with the slopes) the strict fit
must move boundaries. Three ways are compared from the same near-truth starts (no global
check, so that the optimisers are compared, not the starts):

* **scans**: EM to a relative change of 1e-4, then trust-region Newton on the selection pieces
  with exact line scans across the boundaries (:mod:`simstudy.estimation.newton`),
  ``continuation=False``;
* **continuation** (the strict protocol's choice, ``continuation="auto"``): the same, with a
  smoothed-selection path between EM and Newton (:mod:`simstudy.estimation.continuation`);
* **held** (no boundary moves, for reference): strict EM with SQUAREM, whose steps keep every
  point's selection (it ends "stalled": nothing certifies it).

Per n: fits certified, fits at or above the true parameters' log-likelihood, the mean and
largest log-likelihood below the best of the three, passes over the data and seconds.

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

__all__ = ["compare", "table", "run"]

METHODS = {
    "scans": {"continuation": False},
    "continuation": {"continuation": "auto"},
    "held": {"acceleration": "squarem"},
}


def compare(ns=(1000, 4000, 16000), reps=6) -> pd.DataFrame:
    design = get_design("P")
    truth = design.params
    rows = []
    for n in ns:
        for rep in range(reps):
            X, y = sample(truth, n, design.inputs, np.random.default_rng(500 + rep))
            l_true = loglik(truth, X, y)
            out = {}
            for method, over in METHODS.items():
                opts = protocol_options("strict", n)
                opts.update(truth_start=False, n_data_starts=0, **over)
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    res = TopKMoEEM(3, 2, true_params=truth, random_state=rep, **opts).fit(X, y)
                out[method] = (res.loglik, res.stop_reason, res.n_passes,
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
    load = os.getloadavg()
    df = compare((1000, 4000) if quick else (1000, 4000, 16000), 2 if quick else 6)
    return ("# Boundary moves on design P: exact scans alone vs smoothed continuation\n\n"
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
