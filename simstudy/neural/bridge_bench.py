"""``simstudy neural bridge``: the project's routers trained by minibatch Adam vs the EM fit.

Data: design T of ``topk_moe.md`` (d = 1, k* = 3, K = 2), ``--reps`` data sets per n. Fits:
exact (k = 3) and over-specified (k = k* + 1 = 4), each from the same starts for every method:
``--random-starts`` random starts (:func:`~simstudy.neural.bridge.random_start`) and
``--kmeans-starts`` k-means starts (the EM's own data-driven start). Methods: the EM
(``simstudy.estimation.TopKMoEEM``, SQUAREM, strict convergence) and minibatch Adam on each
router variant of :data:`~simstudy.neural.bridge.BRIDGE_VARIANTS`.

Every fit is scored under the statistical model: its log-likelihood, and
``simstudy.losses.compute_metrics`` (D1 for exact fits, D2 for over-specified ones, Hellinger,
TV) after :func:`~simstudy.neural.bridge.regauge`. On each data set and fit size, the best
optimum is the largest log-likelihood over all methods and starts; a fit *reaches* it when its
mean log-likelihood is within ``--ll-tol`` nats per observation, and its *time to tolerance* is
the first time its trace gets there. Seeds derive from (n, replication, fit size, start).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from simstudy.neural.common import set_threads, write_json, write_table
from simstudy.neural.routers_bench import positive_ints
from simstudy.neural.routers_readme import write_readme

__all__ = ["main", "run_dataset", "summarise"]

METHODS = ("EM", "topk_softmax", "softmax_topk", "noisy_topk")
SEED = 20240612  # base of every seed of this benchmark


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([SEED, *key]))


def run_dataset(n: int, rep: int, args, log=print) -> list[dict]:
    """All fits on one data set of design T; one row per (fit size, start, method)."""
    from simstudy.losses import compute_metrics
    from simstudy.model import get_design, loglik, sample
    from simstudy.neural.bridge import (
        fit_adam,
        fit_em,
        kmeans_start,
        random_start,
        regauge,
        time_to_tolerance,
    )

    design = get_design("T")
    truth = design.params
    X, y = sample(truth, int(n), design.inputs, _rng(n, rep, 0))
    ll_truth = loglik(truth, X, y)
    rows = []
    for size, k in (("exact", truth.k), ("over", truth.k + 1)):
        starts = []
        for kind, maker, count in (("random", random_start, args.random_starts),
                                   ("kmeans", kmeans_start, args.kmeans_starts)):
            for s in range(count):
                starts.append((kind, s, maker(X, y, k, truth.K, _rng(n, rep, k, len(starts)))))
        fits = []
        for si, (kind, s, start) in enumerate(starts):
            em = fit_em(X, y, start, max_iter=args.em_iter)
            fits.append(("EM", kind, s, em.params, em.loglik, em.seconds, em.converged,
                         em.stop_reason, em.n_iter, em.trace))
            for vi, variant in enumerate(METHODS[1:]):
                ad = fit_adam(X, y, start, variant, lr=args.lr, batch=args.batch,
                              max_steps=args.adam_steps, aux_weight=args.aux_weight,
                              seed=int(_rng(n, rep, k, si, vi).integers(2**31)))
                fits.append((variant, kind, s, ad.params, ad.loglik, ad.seconds, ad.converged,
                             "plateau" if ad.converged else "max_steps", ad.n_steps, ad.trace))
        best = max(f[4] for f in fits if np.isfinite(f[4]))
        target = best / n - args.ll_tol
        for method, kind, s, params, ll, secs, conv, stop, iters, trace in fits:
            m = compute_metrics(regauge(params, truth), truth, design.inputs)
            rows.append({
                "n": int(n), "rep": rep, "fit": size, "k": k, "start": kind, "start_index": s,
                "method": method, "loglik": ll, "gap_per_obs": (best - ll) / n,
                "loglik_minus_truth": ll - ll_truth,
                "reached_best": bool((best - ll) / n <= args.ll_tol),
                "time_to_tol": time_to_tolerance(trace, target), "seconds": secs,
                "iterations": iters, "converged": bool(conv), "stop": stop,
                "loss": m.get("D1", m.get("D2")), "loss_kind": "D1" if k == truth.k else "D2",
                "hellinger": m["hellinger"], "tv": m["tv"], "loss_note": m["loss_note"],
            })
        if args.verbose:
            sub = [r for r in rows if r["n"] == n and r["rep"] == rep and r["fit"] == size]
            reach = {mm: np.mean([r["reached_best"] for r in sub if r["method"] == mm])
                     for mm in METHODS}
            log(f"n={n} rep={rep} {size}: reached best " + ", ".join(
                f"{mm} {v:.2f}" for mm, v in reach.items()), flush=True)
    return rows


def _warm_up() -> None:
    """Compile the EM's numba kernels (cached) before anything is timed."""
    from simstudy.model import get_design, sample
    from simstudy.neural.bridge import fit_em, kmeans_start

    design = get_design("T")
    X, y = sample(design.params, 200, design.inputs, _rng(0))
    fit_em(X, y, kmeans_start(X, y, 3, 2, _rng(1)), max_iter=5)


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Per (fit size, n, method): reach fraction, best-of-starts losses, times."""
    out = []
    for (size, n, method), g in df.groupby(["fit", "n", "method"], sort=False):
        # best of the method's starts on each data set: what restarts give a user
        best = g.loc[g.groupby("rep")["loglik"].idxmax()]
        reached = g[g["reached_best"]]
        out.append({
            "fit": size, "n": n, "method": method, "datasets": g["rep"].nunique(),
            "fits": len(g), "reach_best": g["reached_best"].mean(),
            "reach_best_random": g.loc[g["start"] == "random", "reached_best"].mean(),
            "reach_best_kmeans": g.loc[g["start"] == "kmeans", "reached_best"].mean(),
            "best_of_starts_reaches": best["reached_best"].mean(),
            "loss_kind": g["loss_kind"].iloc[0],
            "loss_median": best["loss"].median(), "loss_min": best["loss"].min(),
            "loss_max": best["loss"].max(),
            "hellinger_median": best["hellinger"].median(),
            "hellinger_min": best["hellinger"].min(), "hellinger_max": best["hellinger"].max(),
            "time_to_tol_median": reached["time_to_tol"].median(),
            "seconds_median": g["seconds"].median(),
            "converged": g["converged"].mean(),
        })
    return pd.DataFrame(out)


def _figures(summary: pd.DataFrame, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [s for s in ("exact", "over") if s in set(summary["fit"])]
    fig, axes = plt.subplots(len(sizes), 2, figsize=(10, 3.8 * len(sizes)), squeeze=False)
    for r, size in enumerate(sizes):
        for c, (col, lab) in enumerate((("loss", None), ("hellinger", "expected Hellinger"))):
            ax = axes[r, c]
            for i, m in enumerate(METHODS):
                g = summary[(summary["fit"] == size) & (summary["method"] == m)].sort_values("n")
                if g.empty:
                    continue
                med = g[f"{col}_median"]
                err = np.vstack([med - g[f"{col}_min"], g[f"{col}_max"] - med])
                ax.errorbar(g["n"] * (1 + 0.03 * (i - 1.5)), med, yerr=err, marker="o",
                            capsize=3, label=m)
            kind = summary.loc[summary["fit"] == size, "loss_kind"].iloc[0]
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("n")
            ax.set_ylabel(lab or kind)
            ax.set_title(f"{size} fit (k = {3 if size == 'exact' else 4}): best of starts, "
                         "median and range over data sets", fontsize=9)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "bridge_losses.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, m in enumerate(METHODS):
        for size, ls in (("exact", "-"), ("over", "--")):
            g = summary[(summary["fit"] == size) & (summary["method"] == m)].sort_values("n")
            if g.empty:
                continue
            axes[0].plot(g["n"], g["reach_best"], marker="o", ls=ls, color=f"C{i}",
                         label=f"{m}, {size}")
            axes[1].plot(g["n"], g["time_to_tol_median"], marker="o", ls=ls, color=f"C{i}",
                         label=f"{m}, {size}")
    axes[0].set_ylabel("fraction of starts reaching the best optimum")
    axes[0].set_ylim(-0.03, 1.03)
    axes[1].set_ylabel("seconds to tolerance (median over fits that reach it)")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("n")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "bridge_reach.png", dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="simstudy neural bridge",
        description="Router variants trained by minibatch Adam vs the EM on design T data.")
    p.add_argument("--quick", action="store_true", help="tiny sizes (<= 1 minute)")
    p.add_argument("--out", default="results/neural/routers")
    p.add_argument("--n", type=positive_ints, default=[1000, 4000, 16000])
    p.add_argument("--reps", type=int, default=2, help="data sets per n")
    p.add_argument("--random-starts", type=int, default=2)
    p.add_argument("--kmeans-starts", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.05, help="Adam step size")
    p.add_argument("--batch", type=int, default=256, help="Adam minibatch size")
    p.add_argument("--adam-steps", type=int, default=2000, help="Adam steps at most")
    p.add_argument("--aux-weight", type=float, default=0.01,
                   help="weight of the noisy top-k load-balancing loss")
    p.add_argument("--em-iter", type=int, default=3000, help="EM (SQUAREM) iterations at most")
    p.add_argument("--ll-tol", type=float, default=1e-3,
                   help="nats per observation: reaching the best optimum, time to tolerance")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("-q", "--quiet", dest="verbose", action="store_false")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0 on success."""
    args = build_parser().parse_args(argv)
    if args.quick:
        args.n, args.reps, args.random_starts, args.kmeans_starts = [500, 2000], 1, 1, 1
        args.adam_steps, args.em_iter = 600, 1000
    for name in ("reps", "batch", "adam_steps", "em_iter"):
        if getattr(args, name) < 1:
            raise ValueError(f"{name}: must be >= 1, got {getattr(args, name)}")
    for name in ("random_starts", "kmeans_starts"):
        if getattr(args, name) < 0:
            raise ValueError(f"{name}: must be >= 0, got {getattr(args, name)}")
    if args.random_starts + args.kmeans_starts < 1:
        raise ValueError("random_starts, kmeans_starts: need at least one start")
    if not args.ll_tol > 0 or not args.lr > 0 or args.aux_weight < 0:
        raise ValueError("ll_tol, lr: must be > 0; aux_weight: must be >= 0")
    set_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _warm_up()
    t0, load0 = time.perf_counter(), os.getloadavg()
    rows = []
    for n in args.n:
        for rep in range(args.reps):
            rows += run_dataset(n, rep, args)
    df = pd.DataFrame(rows)
    write_table(df, out / "bridge_fits")
    summary = summarise(df)
    write_table(summary, out / "bridge_summary")
    _figures(summary, out)
    seconds = time.perf_counter() - t0
    write_json(out / "bridge_run.json", {
        "command": "python -m simstudy neural bridge " + " ".join(argv or []),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "seconds": seconds,
        "load_start": list(load0), "load_end": list(os.getloadavg()),
        "cpu_count": os.cpu_count(), "settings": {k: v for k, v in vars(args).items()
                                                  if k != "verbose"},
    })
    write_readme(out)
    if args.verbose:
        print(f"bridge done in {seconds:.1f} s -> {out}")
    return 0
