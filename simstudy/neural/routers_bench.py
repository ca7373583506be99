"""``simstudy neural routers``: sparse vs dense-masked MoE benchmark, and the statistics bridge.

Throughput: tokens per second of one forward pass (inference, ``torch.no_grad``) of
:class:`~simstudy.neural.routers.SparseMoE` and :class:`~simstudy.neural.routers.DenseMaskedMoE`
sharing the same weights, timed over a few batches after one warm-up batch, alternating the two
layers batch by batch so that both see the same machine load; the table reports the ratio.

Peak memory: torch on CPU keeps no allocator statistics, so the peak is measured with
``torch.profiler`` (``profile_memory=True``): every allocation and free of one forward pass is
recorded at operator granularity and the peak of their running sum is reported (activation
memory above what was live before the pass; the weights, identical for both layers, are
excluded; temporaries allocated and freed inside a single operator are not seen).

Bridge: the statistical top-K MoE as a torch module (:mod:`simstudy.neural.bridge`) fitted by
Adam to data of design T, next to the EM fit (``simstudy.estimation.TopKMoEEM``) on the same data
from the same near-truth start, both scored by ``simstudy.losses.compute_metrics``.
"""

from __future__ import annotations

import argparse
import itertools
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.profiler import ProfilerActivity, profile

from simstudy.neural.bridge import fit_adam
from simstudy.neural.common import set_threads, write_table
from simstudy.neural.routers import DenseMaskedMoE, SparseMoE

__all__ = ["main", "peak_forward_memory", "benchmark_layers", "run_bridge"]


def peak_forward_memory(fn) -> int:
    """Peak bytes allocated (above the starting level) while ``fn()`` runs, via torch.profiler."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.events() if e.self_cpu_memory_usage != 0]
    events.sort(key=lambda e: e.time_range.start)
    cur = peak = 0
    for e in events:
        cur += e.self_cpu_memory_usage
        peak = max(peak, cur)
    return int(peak)


def benchmark_layers(
    n_experts: int,
    k: int,
    hidden: int,
    tokens: int,
    repeats: int,
    ffn_mult: float = 1.0,
    seed: int = 0,
) -> dict:
    """Time and measure one (E, K, hidden) configuration; returns one table row."""
    torch.manual_seed(seed)
    ffn = max(1, int(round(ffn_mult * hidden)))
    sparse = SparseMoE(hidden, ffn, n_experts, k).eval()
    dense = DenseMaskedMoE.__new__(DenseMaskedMoE)
    torch.nn.Module.__init__(dense)
    # share the very same router and experts: no copy of the (possibly large) weights
    dense.router, dense.experts = sparse.router, sparse.experts
    dense.eval()
    h = torch.randn(tokens, hidden)
    times = {"sparse": 0.0, "dense": 0.0}
    with torch.no_grad():
        ys, _ = sparse(h)
        yd, _ = dense(h)
        max_diff = float((ys - yd).abs().max())
        scale = float(yd.abs().max())
        for _ in range(repeats):
            for name, layer in (("sparse", sparse), ("dense", dense)):
                t0 = time.perf_counter()
                layer(h)
                times[name] += time.perf_counter() - t0
        mem_sparse = peak_forward_memory(lambda: sparse(h))
        mem_dense = peak_forward_memory(lambda: dense(h))
    tps_s = tokens * repeats / times["sparse"]
    tps_d = tokens * repeats / times["dense"]
    return {
        "E": n_experts,
        "K": k,
        "hidden": hidden,
        "ffn": ffn,
        "tokens": tokens,
        "repeats": repeats,
        "tokens_per_s_sparse": tps_s,
        "tokens_per_s_dense": tps_d,
        "speedup": tps_s / tps_d,
        "peak_MiB_sparse": mem_sparse / 2**20,
        "peak_MiB_dense": mem_dense / 2**20,
        "memory_ratio": mem_sparse / mem_dense if mem_dense else float("nan"),
        "weights_MiB": sum(p.numel() * p.element_size() for p in sparse.parameters()) / 2**20,
        "max_abs_diff": max_diff,
        "rel_diff": max_diff / scale if scale else max_diff,
    }


def _figure_throughput(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for (E, K), g in df.groupby(["E", "K"]):
        g = g.sort_values("hidden")
        axes[0].plot(g["hidden"], g["speedup"], marker="o", label=f"E={E}, K={K}")
        axes[1].plot(g["hidden"], g["memory_ratio"], marker="o", label=f"E={E}, K={K}")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xlabel("hidden size")
    axes[0].set_ylabel("tokens/s: sparse / dense-masked")
    axes[1].set_ylabel("peak activation memory: sparse / dense-masked")
    axes[0].legend(fontsize=7)
    fig.suptitle("Sparse top-K MoE layer vs dense masked reference (CPU, forward)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_throughput(args) -> pd.DataFrame:
    """The (E, K, hidden) grid; writes throughput.csv/.md and throughput.png."""
    rows = []
    grid = list(itertools.product(args.experts, args.k, args.hidden))
    for i, (E, K, H) in enumerate(grid):
        if K > E:
            continue
        row = benchmark_layers(E, K, H, args.tokens, args.repeats, args.ffn_mult, seed=i)
        rows.append(row)
        if args.verbose:
            print(
                f"E={E:3d} K={K} hidden={H:5d}: speedup {row['speedup']:6.2f}, "
                f"memory ratio {row['memory_ratio']:.3f}, max |diff| {row['max_abs_diff']:.1e}",
                flush=True,
            )
    df = pd.DataFrame(rows)
    out = Path(args.out)
    write_table(df, out / "throughput")
    _figure_throughput(df, out / "throughput.png")
    return df


# -- bridge ----------------------------------------------------------------------------------
def _em_start_and_fit(X, y, truth, protocol: str, seed: int):
    """EM fit at the protocol's settings, and the starting point of its (first) start.

    The start is rebuilt exactly as ``TopKMoEEM.fit`` builds it (``default_rng(random_state)``,
    restart 0) through the estimator's own ``_initialize``: the estimator does not expose its
    starting values publicly. Exact fit (k = k*), so the papers' protocol uses one start.
    """
    from simstudy.estimation import TopKMoEEM, protocol_options

    opts = protocol_options(protocol, X.shape[0], over_specified=False)
    opts.update(true_params=truth, random_state=seed)
    est = TopKMoEEM(truth.k, truth.K, **opts)
    est._check_options()
    est._prepare(X, y)
    start = est._to_params(est._initialize(np.random.default_rng(seed), 0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # non-convergence is reported in the table instead
        res = est.fit(X, y)
    return res, start


def run_bridge(args) -> pd.DataFrame:
    """Adam vs EM on design T at each n of ``args.bridge_n``; writes bridge.csv/.md."""
    from simstudy.losses import compute_metrics
    from simstudy.model import get_design, sample

    design = get_design("T")
    truth = design.params
    rows = []
    for n in args.bridge_n:
        for rep in range(args.bridge_reps):
            seed = 1000 * rep + int(n)
            rng = np.random.default_rng(seed)
            X, y = sample(truth, int(n), design.inputs, rng)
            em, start = _em_start_and_fit(X, y, truth, args.protocol, seed)
            adam = fit_adam(X, y, start, lr=args.lr, max_iter=args.adam_iter)
            for method, params, ll, secs, iters, conv in (
                ("EM", em.params, em.loglik, em.seconds, em.n_iter, em.converged),
                ("Adam", adam.params, adam.loglik, adam.seconds, adam.n_iter, adam.converged),
            ):
                m = compute_metrics(params, truth, design.inputs)
                rows.append(
                    {
                        "n": int(n),
                        "rep": rep,
                        "method": method,
                        "loglik": ll,
                        "n_iter": iters,
                        "converged": bool(conv),
                        "seconds": secs,
                        "D1": m.get("D1", float("nan")),
                        "hellinger": m["hellinger"],
                        "tv": m["tv"],
                        "err_beta1_max": max(m[f"err_beta1_{j}"] for j in range(1, truth.k + 1)),
                        "loss_note": m["loss_note"],
                    }
                )
            if args.verbose:
                print(
                    f"bridge n={n} rep={rep}: loglik EM {em.loglik:.3f} Adam {adam.loglik:.3f}",
                    flush=True,
                )
    df = pd.DataFrame(rows)
    write_table(df, Path(args.out) / "bridge")
    summary = (
        df.groupby(["n", "method"])
        .agg(
            reps=("rep", "nunique"),
            D1_median=("D1", "median"),
            hellinger_median=("hellinger", "median"),
            loglik_mean=("loglik", "mean"),
            seconds_mean=("seconds", "mean"),
            converged=("converged", "mean"),
        )
        .reset_index()
    )
    gap = df.pivot_table(index=["n", "rep"], columns="method", values="loglik")
    gap = (gap["EM"] - gap["Adam"]).groupby("n").agg(["mean", "max"]).reset_index()
    summary = summary.merge(
        gap.rename(
            columns={"mean": "loglik_EM_minus_Adam_mean", "max": "loglik_EM_minus_Adam_max"}
        ),
        on="n",
    )
    write_table(summary, Path(args.out) / "bridge_summary")
    return df


def _positive_ints(text: str) -> list[int]:
    try:
        vals = [int(float(v)) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return vals


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="simstudy neural routers",
        description="Sparse vs dense-masked MoE throughput/memory, and the Adam-vs-EM bridge.",
    )
    p.add_argument("--quick", action="store_true", help="tiny grid (for tests)")
    p.add_argument("--out", default="results/neural/routers")
    p.add_argument("--experts", type=_positive_ints, default=[8, 64])
    p.add_argument("--k", type=_positive_ints, default=[1, 2, 4])
    p.add_argument("--hidden", type=_positive_ints, default=[128, 256, 512, 1024])
    p.add_argument("--tokens", type=int, default=512, help="tokens per batch")
    p.add_argument("--repeats", type=int, default=3, help="timed batches per layer")
    p.add_argument("--ffn-mult", type=float, default=1.0, help="expert inner width / hidden")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-throughput", action="store_true")
    p.add_argument("--no-bridge", action="store_true")
    p.add_argument("--bridge-n", type=_positive_ints, default=[1000, 10000, 30000])
    p.add_argument("--bridge-reps", type=int, default=3)
    p.add_argument("--protocol", default="strict", choices=["papers", "strict"])
    p.add_argument("--lr", type=float, default=0.02, help="Adam step size (bridge)")
    p.add_argument("--adam-iter", type=int, default=4000)
    p.add_argument("-q", "--quiet", dest="verbose", action="store_false")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0 on success."""
    args = build_parser().parse_args(argv)
    for name in ("tokens", "repeats", "bridge_reps", "adam_iter"):
        if getattr(args, name) < 1:
            raise ValueError(f"{name}: must be >= 1, got {getattr(args, name)}")
    if not args.ffn_mult > 0:
        raise ValueError(f"ffn_mult: must be > 0, got {args.ffn_mult}")
    if args.quick:
        args.experts, args.k, args.hidden = [8], [1, 2], [32, 64]
        args.tokens, args.repeats = 64, 1
        args.bridge_n, args.bridge_reps, args.adam_iter = [500], 1, 300
    set_threads(args.threads)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if not args.no_throughput:
        run_throughput(args)
    if not args.no_bridge:
        run_bridge(args)
    if args.verbose:
        print(f"routers benchmark done in {time.perf_counter() - t0:.1f} s -> {args.out}")
    return 0
