"""``simstudy neural routers``: sparse top-K MoE layer vs the dense-masked reference.

Three layers share one router (topk-softmax) and, for the two MoE layers, the very same expert
weights:

``sparse``
    :class:`~simstudy.neural.routers.SparseMoE`: each token runs only through its K experts.
``dense_masked``
    :class:`~simstudy.neural.routers.DenseMaskedMoE`: every expert on every token, then masked;
    its cost does not depend on K.
``dense_ffn``
    :class:`~simstudy.neural.routers.ActiveFlopsFFN`: the router and one FFN of inner width
    K * ffn, the same multiply-adds per token as the sparse layer without any dispatch; the
    dispatch-overhead baseline.

Timing (:func:`time_alternated`): ``timeit.Timer`` (the timer inside
``torch.utils.benchmark``, garbage collection off) on one torch thread, after a warm-up call
per layer; each layer's number of calls per run is calibrated so that a run lasts at least
``--min-run`` seconds; then ``--runs`` rounds, each timing every layer once, in an order
that rotates from round to round so that no layer always runs first or last. Reported: the
median and the interquartile range over the runs of tokens/s, and ratios formed *within each
round* (same process, adjacent in time, so that a change of machine load moves both sides) and
then summarised by median and IQR. Passes: forward (inference, ``torch.no_grad``) and forward
plus backward (``torch.autograd.grad`` of a fixed random cotangent with respect to the input and
every parameter).

Noise check: the dense-masked layer computes all E experts whatever K is, so its tokens/s must
agree across the K rows of one (E, hidden, tokens) configuration. The K values of a
configuration are timed in the same alternated rounds (:func:`benchmark_group`), so a drift of
the machine's load between configurations cannot fake or hide a disagreement;
:func:`consistency` prints the spread (max / min of the medians) and flags configurations whose
spread exceeds ``--consistency-tol``.

Peak memory: torch on CPU keeps no allocator statistics, so the peak is measured with
``torch.profiler`` (``profile_memory=True``): every allocation and free of one forward pass is
recorded at operator granularity and the peak of their running sum is reported (activation
memory above what was live before the pass; weights excluded; temporaries allocated and freed
inside one operator are not seen). The profiler's own progress lines are kept off stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import os
import re
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from simstudy.neural.common import set_threads, write_json, write_table
from simstudy.neural.routers import ActiveFlopsFFN, DenseMaskedMoE, Router, SparseMoE
from simstudy.neural.routers_readme import write_readme

__all__ = [
    "LAYERS",
    "PASSES",
    "main",
    "quiet_profiler",
    "peak_forward_memory",
    "time_alternated",
    "summarise_runs",
    "benchmark_config",
    "benchmark_group",
    "consistency",
    "positive_ints",
]

LAYERS = ("sparse", "dense_masked", "dense_ffn")
_VERDICT = {"ok": "ok",
            "noise": "spread above the tolerance but within the rounds' IQR: noise",
            "inconsistent": "INCONSISTENT: the IQRs across K are disjoint"}
PASSES = ("forward", "forward_backward")
# kineto prints these progress lines straight to file descriptor 2 from C++
_PROFILER_CHATTER = re.compile(r"^(STAGE|USDT|INFO|WARNING):\S+ \S+ \d+:\d+ \S+\.cpp:\d+\]")


@contextlib.contextmanager
def quiet_profiler():
    """Divert file descriptor 2 while the block runs; replay every line but the profiler's.

    The profiler's C++ progress lines bypass Python's ``sys.stderr``, so the redirection is at
    the descriptor level. Nothing else is lost: other lines written meanwhile are written back.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [ln for ln in tmp.read().decode(errors="replace").splitlines()
                    if not _PROFILER_CHATTER.match(ln)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")


def peak_forward_memory(fn: Callable[[], object]) -> int:
    """Peak bytes allocated (above the starting level) while ``fn()`` runs, via torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    with quiet_profiler(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as p:
        fn()
    events = [e for e in p.events() if e.self_cpu_memory_usage != 0]
    events.sort(key=lambda e: e.time_range.start)
    cur = peak = 0
    for e in events:
        cur += e.self_cpu_memory_usage
        peak = max(peak, cur)
    return int(peak)


def time_alternated(
    fns: dict[str, Callable[[], object]],
    runs: int,
    min_run_s: float,
    threads: int = 1,
    warmup: int = 1,
) -> dict[str, np.ndarray]:
    """Seconds per call of each function in ``runs`` alternated rounds.

    Parameters
    ----------
    fns : dict of str to callable
        The functions to compare (called without arguments).
    runs : int
        Rounds; each round times every function once (one run = a calibrated number of calls),
        in an order that rotates from round to round.
    min_run_s : float
        A run lasts at least this long: the number of calls per run is fixed per function from
        one timed call after the warm-up (and, if that call is shorter than ``min_run_s``, the
        slower of two).
    threads : int
        Torch threads inside the timer.
    warmup : int
        Untimed calls of each function first.

    Returns
    -------
    dict of str to numpy.ndarray
        Per function, the mean seconds per call of each run (shape (runs,)), in round order.
    """
    if runs < 1:
        raise ValueError(f"runs: must be >= 1, got {runs}")
    names = list(fns)
    # timeit.Timer is what torch.utils.benchmark.Timer wraps (garbage collection off while
    # timing); torch's Timer.timeit adds two untimed warm-up calls to every measurement, which
    # would triple the cost of the expensive dense-masked reference, so it is not used here
    timers = {n: timeit.Timer(fns[n]) for n in names}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        number = {}
        for n in names:
            for _ in range(warmup):
                fns[n]()
            single = timers[n].timeit(1)
            if single < min_run_s:  # cheap: a second look guards against one lucky call
                single = max(single, timers[n].timeit(1))
            number[n] = max(1, math.ceil(min_run_s / max(single, 1e-9)))
        out = {n: np.empty(runs) for n in names}
        for r in range(runs):
            for j in range(len(names)):
                n = names[(r + j) % len(names)]
                out[n][r] = timers[n].timeit(number[n]) / number[n]
    finally:
        torch.set_num_threads(previous)
    return out


def _iqr(x: np.ndarray) -> tuple[float, float, float]:
    if np.isnan(x).any():
        return (float("nan"),) * 3
    q25, med, q75 = np.percentile(x, [25, 50, 75])
    return float(med), float(q25), float(q75)


def summarise_runs(times: dict[str, np.ndarray], tokens: int, E: int, K: int) -> dict:
    """Medians and IQRs of tokens/s per layer, and of the within-round ratios."""
    row: dict[str, float] = {}
    nan = np.full(len(times["sparse"]), np.nan)
    times = {n: times.get(n, nan) for n in LAYERS}
    for name, t in times.items():
        med, q25, q75 = _iqr(tokens / t)
        row[f"tps_{name}"], row[f"tps_{name}_q25"], row[f"tps_{name}_q75"] = med, q25, q75
    ratios = {
        # how much faster the sparse layer is than computing every expert
        "speedup": times["dense_masked"] / times["sparse"],
        # the same for a dispatch-free layer of equal active FLOPs: what E/K buys at this size
        "ffn_speedup": times["dense_masked"] / times["dense_ffn"],
        # 1 = the sparse layer costs no more than its active FLOPs run densely
        "dispatch_efficiency": times["dense_ffn"] / times["sparse"],
    }
    for name, r in ratios.items():
        med, q25, q75 = _iqr(r)
        row[name], row[f"{name}_q25"], row[f"{name}_q75"] = med, q25, q75
    ideal = E / K
    row["ideal"] = ideal
    row["efficiency"] = row["speedup"] / ideal
    row["efficiency_q25"] = row["speedup_q25"] / ideal
    row["efficiency_q75"] = row["speedup_q75"] / ideal
    return row


def _layers(E: int, Ks, hidden: int, ffn: int, seed: int) -> dict[tuple[str, int], object]:
    """The three layers for every K, all sharing one set of expert weights and router weights
    (only the number of selected experts differs between the K values)."""
    torch.manual_seed(seed)
    first = SparseMoE(hidden, ffn, E, Ks[0]).eval()
    out = {}
    for K in Ks:
        sparse = first if K == Ks[0] else SparseMoE.sharing(first)
        if K != Ks[0]:
            sparse.router = Router(hidden, E, K)
            sparse.router.gate = first.router.gate
        sparse.eval()
        dense = DenseMaskedMoE.sharing(sparse).eval()
        base = ActiveFlopsFFN(hidden, ffn, E, K).eval()
        base.router = sparse.router  # the very same router in all three
        out.update({("sparse", K): sparse, ("dense_masked", K): dense, ("dense_ffn", K): base})
    return out


def _callables(layers: dict, h: torch.Tensor, pass_: str) -> dict[str, Callable[[], object]]:
    if pass_ == "forward":
        def make(layer):
            def f():
                with torch.no_grad():
                    return layer(h)
            return f
        return {n: make(m) for n, m in layers.items()}
    hg = h.detach().clone().requires_grad_(True)
    g = torch.randn_like(h)

    def make_bw(layer):
        params = [p for p in layer.parameters() if p.requires_grad]

        def f():
            out, _ = layer(hg)
            return torch.autograd.grad(out, [hg, *params], grad_outputs=g, allow_unused=True)
        return f
    return {n: make_bw(m) for n, m in layers.items()}


def dense_masked_gflop(E: int, hidden: int, ffn: int, tokens: int, pass_: str) -> float:
    """Multiply-add FLOPs (in 1e9) of one dense-masked call: 2 matmuls x 2 FLOPs, all experts.

    Forward plus backward counts three times the forward (two matmuls back per matmul).
    """
    fwd = 4.0 * tokens * hidden * ffn * E / 1e9
    return fwd if pass_ == "forward" else 3.0 * fwd


def benchmark_group(
    E: int,
    Ks,
    hidden: int,
    tokens: int,
    pass_: str,
    runs: int,
    min_run_s: float,
    ffn_mult: float = 1.0,
    threads: int = 1,
    memory: bool = True,
    dense_cap_gflop: float | None = None,
    seed: int = 0,
) -> tuple[list[dict], pd.DataFrame]:
    """Time (and measure the memory of) one (E, hidden, tokens, pass) for every K in ``Ks``.

    All 3 x len(Ks) layers are timed in the *same* alternated rounds, so that the K rows of the
    dense-masked layer (which does the same work whatever K is) are measured side by side: their
    agreement is then a check of the benchmark's own noise, not of a load that drifted between
    configurations measured minutes apart. The dense-masked layer is left out (its columns NaN,
    ``dense_masked_skipped`` true) when one call would exceed ``dense_cap_gflop`` (None: never);
    the outputs are still compared with it on the first 512 tokens. Returns one summary row per K
    and the raw per-run table (one row per layer, K and run).
    """
    if pass_ not in PASSES:
        raise ValueError(f"pass: unknown pass {pass_!r}; allowed: {list(PASSES)}")
    Ks = [int(k) for k in Ks]
    ffn = max(1, int(round(ffn_mult * hidden)))
    layers = _layers(E, Ks, hidden, ffn, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    h = torch.randn(tokens, hidden, generator=gen)
    gflop = dense_masked_gflop(E, hidden, ffn, tokens, pass_)
    skip = dense_cap_gflop is not None and gflop > dense_cap_gflop
    check = h[:512] if skip else h
    diffs = {}
    with torch.no_grad():
        for K in Ks:
            ys, _ = layers["sparse", K](check)
            yd, _ = layers["dense_masked", K](check)
            scale = float(yd.abs().max())
            diffs[K] = float((ys - yd).abs().max()) / (scale or 1.0)
    timed = {k: m for k, m in layers.items() if not (skip and k[0] == "dense_masked")}
    calls = _callables({f"{n}/K={K}": m for (n, K), m in timed.items()}, h, pass_)
    # forward: the check above was the dense-masked layers' warm-up
    times = time_alternated(calls, runs, min_run_s, threads,
                            warmup=0 if pass_ == "forward" and not skip else 1)
    rows = []
    for K in Ks:
        per = {n: times[f"{n}/K={K}"] for n in LAYERS if f"{n}/K={K}" in times}
        row = {"E": E, "K": K, "hidden": hidden, "ffn": ffn, "tokens": tokens, "pass": pass_,
               "runs": runs, "dense_masked_gflop": gflop, "dense_masked_skipped": skip,
               **summarise_runs(per, tokens, E, K), "rel_diff": diffs[K]}
        if memory:
            with torch.no_grad():
                mem = {n: peak_forward_memory(lambda m=timed[n, K]: m(h))
                       for n in LAYERS if (n, K) in timed}
            for n in LAYERS:
                row[f"peak_MiB_{n}"] = mem[n] / 2**20 if n in mem else float("nan")
            row["memory_ratio"] = (mem["sparse"] / mem["dense_masked"]
                                   if mem.get("dense_masked") else float("nan"))
        rows.append(row)
    raw = pd.DataFrame([
        {"E": E, "K": int(name.split("=")[1]), "hidden": hidden, "tokens": tokens,
         "pass": pass_, "layer": name.split("/")[0], "run": r,
         "seconds_per_call": float(t[r]), "tokens_per_s": tokens / float(t[r])}
        for name, t in times.items() for r in range(runs)
    ])
    return rows, raw


def benchmark_config(E: int, K: int, hidden: int, tokens: int, pass_: str, runs: int,
                     min_run_s: float, **kw) -> tuple[dict, pd.DataFrame]:
    """:func:`benchmark_group` for a single K: one summary row and the raw runs."""
    rows, raw = benchmark_group(E, [K], hidden, tokens, pass_, runs, min_run_s, **kw)
    return rows[0], raw


def consistency(df: pd.DataFrame, tol: float) -> pd.DataFrame:
    """Spread of the dense-masked layer's tokens/s across K (it computes all experts anyway).

    One row per (pass, E, hidden, tokens) with at least two K values: the medians per K,
    ``spread`` = max / min of them, the widest IQR relative to its median, ``ok`` when the
    spread is at most ``1 + tol``, and ``verdict``, which tells a noisy row from a systematic
    one: ``ok``; ``noise`` (spread above the tolerance, but the K rows' interquartile ranges
    overlap, so the medians differ by less than the rounds' own spread: contended timings);
    ``inconsistent`` (the interquartile ranges are disjoint: the cost depends on K, a bug in
    the reference or a load drift between rounds).
    """
    rows = []
    timed = df[~df["dense_masked_skipped"].astype(bool)]
    for key, g in timed.groupby(["pass", "E", "hidden", "tokens"], sort=True):
        if g["K"].nunique() < 2:
            continue
        tps = g["tps_dense_masked"].to_numpy()
        rel_iqr = ((g["tps_dense_masked_q75"] - g["tps_dense_masked_q25"])
                   / g["tps_dense_masked"]).max()
        spread = float(tps.max() / tps.min())
        overlap = bool(g["tps_dense_masked_q25"].max() <= g["tps_dense_masked_q75"].min())
        ok = spread <= 1.0 + tol
        rows.append({"pass": key[0], "E": key[1], "hidden": key[2], "tokens": key[3],
                     "K": "/".join(str(k) for k in g["K"]),
                     "dense_masked_tps": " / ".join(f"{v:.4g}" for v in tps),
                     "spread": spread, "max_rel_iqr": float(rel_iqr),
                     "iqr_overlap": overlap, "ok": bool(ok),
                     "verdict": "ok" if ok else "noise" if overlap else "inconsistent"})
    return pd.DataFrame(rows)


# -- figures ----------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain_log_ticks(ax, axis: str = "y") -> None:
    """Label log-axis ticks as plain numbers (2, 5, 20, ...) rather than 2 x 10^0."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    a = ax.yaxis if axis == "y" else ax.xaxis
    a.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    a.set_minor_formatter(NullFormatter())


def _err(g: pd.DataFrame, col: str) -> np.ndarray:
    return np.vstack([g[col] - g[f"{col}_q25"], g[f"{col}_q75"] - g[col]])


def figure_grid(df: pd.DataFrame, path: Path) -> None:
    """Speed-up and memory ratio against hidden size, per E and K, IQR error bars."""
    plt = _plt()
    Es = sorted(df["E"].unique())
    fig, axes = plt.subplots(1, len(Es) + 1, figsize=(4.6 * (len(Es) + 1), 4.0))
    for ax, E in zip(axes, Es, strict=False):
        for i, (K, g) in enumerate(df[df["E"] == E].groupby("K")):
            g = g.sort_values("hidden")
            c = f"C{i}"
            ax.errorbar(g["hidden"], g["speedup"], yerr=_err(g, "speedup"), marker="o",
                        color=c, capsize=3, label=f"K={K}: sparse")
            ax.errorbar(g["hidden"], g["ffn_speedup"], yerr=_err(g, "ffn_speedup"),
                        marker="s", ls=":", color=c, capsize=3, alpha=0.7,
                        label=f"K={K}: dense FFN, equal active FLOPs")
            ax.axhline(E / K, color=c, lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("hidden size")
        ax.set_ylabel("tokens/s over the dense-masked layer")
        ax.set_title(f"E = {E} (dashed: ideal E/K)", fontsize=10)
        _plain_log_ticks(ax)
        ax.legend(fontsize=6)
    ax = axes[-1]
    for (E, K), g in df.groupby(["E", "K"]):
        g = g.sort_values("hidden")
        ax.plot(g["hidden"], g["memory_ratio"], marker="o", label=f"E={E}, K={K}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("hidden size")
    ax.set_ylabel("peak activation memory: sparse / dense-masked")
    ax.legend(fontsize=6)
    tokens = int(df["tokens"].iloc[0])
    fig.suptitle(f"Sparse top-K layer vs dense-masked reference, forward, {tokens} tokens "
                 "(median, IQR bars)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figure_tokens(df: pd.DataFrame, path: Path) -> None:
    """Speed-up and dispatch efficiency against the number of tokens, forward and backward."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.0))
    styles = {"forward": "-", "forward_backward": "--"}
    for i, ((E, K, H), g0) in enumerate(df.groupby(["E", "K", "hidden"])):
        c = f"C{i}"
        for p, g in g0.groupby("pass"):
            g = g.sort_values("tokens")
            lab = f"E={E}, K={K}, hidden={H}, {p.replace('_', '+')}"
            axes[0].errorbar(g["tokens"], g["speedup"], yerr=_err(g, "speedup"), marker="o",
                             ls=styles[p], color=c, capsize=3, label=lab)
            axes[1].errorbar(g["tokens"], g["dispatch_efficiency"],
                             yerr=_err(g, "dispatch_efficiency"), marker="o", ls=styles[p],
                             color=c, capsize=3, label=lab)
        axes[0].axhline(E / K, color=c, lw=0.8, ls=":")
    axes[0].set_yscale("log")
    _plain_log_ticks(axes[0])
    axes[0].set_ylabel("speed-up over dense-masked")
    axes[0].set_title("speed-up (dotted: E/K)", fontsize=9)
    axes[1].axhline(1.0, color="grey", lw=0.8)
    axes[1].set_ylabel("dense FFN time / sparse time")
    axes[1].set_title("dispatch efficiency (1 = no dispatch overhead)", fontsize=9)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens per batch")
        ax.legend(fontsize=6)
    fig.suptitle("Token sweep (median over alternated runs, IQR bars)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figure_efficiency(grid: pd.DataFrame, sweep: pd.DataFrame, path: Path) -> None:
    """Efficiency (speed-up / (E/K)) against E/K; and the dense-masked noise check."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.0))
    ax = axes[0]
    both = pd.concat([grid.assign(src="grid"), sweep.assign(src="sweep")], ignore_index=True)
    both = both[both["pass"] == "forward"]
    for i, ((H, T), g) in enumerate(both.groupby(["hidden", "tokens"])):
        g = g.sort_values("ideal")
        jitter = 1.0 + 0.04 * (i - 3)
        ax.errorbar(g["ideal"] * jitter, g["efficiency"], yerr=_err(g, "efficiency"),
                    marker="o", ls="none", capsize=2, label=f"hidden={H}, tokens={T}")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("E / K (ideal speed-up)")
    ax.set_ylabel("efficiency = speed-up / (E/K)")
    ax.legend(fontsize=5, ncol=2)
    ax.set_title("forward; 1 = ideal", fontsize=10)
    ax = axes[1]
    g = grid[grid["pass"] == "forward"].sort_values(["E", "hidden", "K"])
    labels, x = [], 0
    for (E, H), gg in g.groupby(["E", "hidden"]):
        for j, (_, r) in enumerate(gg.iterrows()):
            ax.errorbar([x + 0.25 * j], [r["tps_dense_masked"]],
                        yerr=[[r["tps_dense_masked"] - r["tps_dense_masked_q25"]],
                              [r["tps_dense_masked_q75"] - r["tps_dense_masked"]]],
                        marker="os^"[j % 3], color=f"C{j}", capsize=2,
                        label=f"K={int(r['K'])}" if x == 0 else None)
        labels.append(f"E={E}\nH={H}")
        x += 1
    ax.set_xticks(np.arange(len(labels)) + 0.25, labels, fontsize=6)
    ax.set_yscale("log")
    ax.set_ylabel("dense-masked tokens/s (must not depend on K)")
    ax.set_title("noise check: dense-masked across K rows", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- the CLI ----------------------------------------------------------------------------------
def positive_ints(text: str) -> list[int]:
    """argparse type: comma-separated integers >= 1."""
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
        description="Sparse top-K MoE layer vs dense-masked reference and a dense FFN of equal "
                    "active FLOPs: tokens/s (median, IQR over alternated runs) and memory.",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes (<= 1 minute)")
    p.add_argument("--out", default="results/neural/routers")
    p.add_argument("--experts", type=positive_ints, default=[8, 64], help="grid: E values")
    p.add_argument("--k", type=positive_ints, default=[1, 2, 4], help="grid: K values")
    p.add_argument("--hidden", type=positive_ints, default=[128, 256, 512, 1024],
                   help="grid: hidden sizes")
    p.add_argument("--tokens", type=int, default=512, help="grid: tokens per batch")
    p.add_argument("--sweep-tokens", type=positive_ints,
                   default=[512, 1024, 2048, 4096, 8192, 16384], help="token sweep")
    p.add_argument("--sweep-experts", type=positive_ints, default=[8, 64],
                   help="token sweep: E values (K = --sweep-k, hidden = --sweep-hidden)")
    p.add_argument("--sweep-k", type=int, default=2)
    p.add_argument("--sweep-hidden", type=int, default=256)
    p.add_argument("--dense-cap", type=float, default=150.0,
                   help="skip timing the dense-masked layer where one call exceeds this many "
                        "GFLOP (0: no cap)")
    p.add_argument("--runs", type=int, default=5, help="alternated runs per configuration (>= 5)")
    p.add_argument("--min-run", type=float, default=0.05, help="seconds per timed run (at least)")
    p.add_argument("--ffn-mult", type=float, default=1.0, help="expert inner width / hidden")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--consistency-tol", type=float, default=0.25,
                   help="allowed relative spread of the dense-masked tokens/s across K")
    p.add_argument("--replot", action="store_true",
                   help="only redraw the figures and the README from the tables in --out")
    p.add_argument("-q", "--quiet", dest="verbose", action="store_false")
    return p


def replot(out: Path, tol: float = 0.25) -> None:
    """Redraw the figures, the consistency check and the README from ``throughput.csv`` and
    ``tokens.csv`` (``run.json``, the record of the timed run, is left as it was)."""
    grid, sweep = pd.read_csv(out / "throughput.csv"), pd.read_csv(out / "tokens.csv")
    write_table(consistency(grid, tol), out / "consistency")
    figure_grid(grid, out / "throughput.png")
    figure_tokens(sweep, out / "tokens.png")
    figure_efficiency(grid, sweep, out / "efficiency.png")
    write_readme(out)


def _check_args(args) -> None:
    if args.runs < 5:
        raise ValueError(f"runs: at least 5 alternated runs are needed, got {args.runs}")
    if args.tokens < 1 or args.sweep_k < 1 or args.sweep_hidden < 1:
        raise ValueError("tokens, sweep_k, sweep_hidden: must be >= 1")
    if args.dense_cap < 0:
        raise ValueError(f"dense_cap: must be >= 0 (0: no cap), got {args.dense_cap}")
    if not args.min_run > 0:
        raise ValueError(f"min_run: must be > 0, got {args.min_run}")
    if not args.ffn_mult > 0:
        raise ValueError(f"ffn_mult: must be > 0, got {args.ffn_mult}")
    if not args.consistency_tol > 0:
        raise ValueError(f"consistency_tol: must be > 0, got {args.consistency_tol}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0 on success."""
    args = build_parser().parse_args(argv)
    if args.replot:
        if not (Path(args.out) / "throughput.csv").exists():
            raise ValueError(f"replot: no throughput.csv in {args.out}; run the benchmark first")
        _check_args(args)
        replot(Path(args.out), args.consistency_tol)
        return 0
    if args.quick:
        args.experts, args.k, args.hidden, args.tokens = [8], [1, 2], [32, 64], 256
        args.sweep_tokens, args.sweep_experts, args.sweep_hidden = [512, 2048], [8], 64
        args.runs, args.min_run = 5, 0.01
    _check_args(args)
    set_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0, load0 = time.perf_counter(), os.getloadavg()
    say = print if args.verbose else (lambda *a, **k: None)

    def run(groups, memory):
        rows, raws = [], []
        for i, (E, Ks, H, T, p) in enumerate(groups):
            got, raw = benchmark_group(E, Ks, H, T, p, args.runs, args.min_run, args.ffn_mult,
                                       args.threads, memory=memory and p == "forward",
                                       dense_cap_gflop=args.dense_cap or None, seed=i)
            rows += got
            raws.append(raw)
            for row in got:
                K = row["K"]
                if row["dense_masked_skipped"]:
                    say(f"E={E:3d} K={K} hidden={H:5d} tokens={T:6d} {p:16s}: dense-masked "
                        f"skipped ({row['dense_masked_gflop']:.0f} GFLOP per call > "
                        f"--dense-cap), dispatch eff. {row['dispatch_efficiency']:.2f}",
                        flush=True)
                    continue
                say(f"E={E:3d} K={K} hidden={H:5d} tokens={T:6d} {p:16s}: speed-up "
                    f"{row['speedup']:6.2f} [{row['speedup_q25']:.2f}, "
                    f"{row['speedup_q75']:.2f}] (E/K {E / K:g}), dispatch eff. "
                    f"{row['dispatch_efficiency']:.2f}, rel diff {row['rel_diff']:.1e}",
                    flush=True)
        return pd.DataFrame(rows), pd.concat(raws, ignore_index=True)

    # process warm-up (lazy initialisation, first allocations), untimed
    benchmark_group(8, [2], 64, 256, "forward", 1, 0.001, memory=False)
    grid_cfg = [(E, [K for K in args.k if K <= E], H, args.tokens, "forward")
                for E, H in itertools.product(args.experts, args.hidden)]
    grid_cfg = [g for g in grid_cfg if g[1]]
    sweep_cfg = [(E, [args.sweep_k], args.sweep_hidden, T, p)
                 for E in args.sweep_experts if args.sweep_k <= E
                 for p in PASSES for T in args.sweep_tokens]
    say(f"grid: {sum(len(g[1]) for g in grid_cfg)} configurations in {len(grid_cfg)} groups "
        f"(the K values of a group timed in the same rounds), {args.tokens} tokens, forward")
    grid, raw_g = run(grid_cfg, memory=True)
    say(f"token sweep: {len(sweep_cfg)} configurations")
    sweep, raw_s = run(sweep_cfg, memory=True)

    write_table(grid, out / "throughput")
    write_table(sweep, out / "tokens")
    # every timed run, for reanalysis (CSV only: too long for a markdown table)
    pd.concat([raw_g.assign(part="grid"), raw_s.assign(part="sweep")],
              ignore_index=True).to_csv(out / "runs.csv", index=False)
    cons = consistency(grid, args.consistency_tol)
    write_table(cons, out / "consistency")
    say("dense-masked consistency check (its tokens/s must not depend on K):")
    for _, r in cons.iterrows():
        say(f"  E={r['E']:3d} hidden={r['hidden']:5d} tokens={r['tokens']}: K={r['K']}: "
            f"{r['dense_masked_tps']} tokens/s, spread {r['spread']:.3f} "
            f"({_VERDICT[r['verdict']]})")
    figure_grid(grid, out / "throughput.png")
    figure_tokens(sweep, out / "tokens.png")
    figure_efficiency(grid, sweep, out / "efficiency.png")
    seconds = time.perf_counter() - t0
    write_json(out / "run.json", {
        "command": "python -m simstudy neural routers " + " ".join(argv or []),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "seconds": seconds,
        "load_start": list(load0), "load_end": list(os.getloadavg()),
        "cpu_count": os.cpu_count(), "threads": args.threads, "runs": args.runs,
        "min_run_s": args.min_run, "torch": torch.__version__,
        "consistency_ok": bool(cons["ok"].all()) if len(cons) else None,
        "consistency_inconsistent": int((cons["verdict"] == "inconsistent").sum())
        if len(cons) else None,
        "max_rel_diff": float(max(grid["rel_diff"].max(), sweep["rel_diff"].max())),
    })
    write_readme(out)
    say(f"routers benchmark done in {seconds:.1f} s (load average {load0[0]:.1f} -> "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores) -> {out}")
    return 0
