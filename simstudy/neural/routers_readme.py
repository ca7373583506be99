"""README of ``results/neural/routers``: rendered from the files that the routers benchmark and
the bridge wrote there (either may be missing); every number comes from those files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from simstudy.reports.tables import to_markdown

__all__ = ["write_readme"]


def _load(out: Path, name: str):
    p = out / name
    if not p.exists():
        return None
    return json.loads(p.read_text()) if p.suffix == ".json" else pd.read_csv(p)


def _iqr(row, col: str, digits: int = 1) -> str:
    if not np.isfinite(row[col]):
        return "skipped"
    return f"{row[col]:.{digits}f} [{row[col + '_q25']:.{digits}f}, {row[col + '_q75']:.{digits}f}]"


def _readable(df: pd.DataFrame) -> pd.DataFrame:
    """Median [IQR] text columns of the ratios."""
    g = df.copy()
    g["speed-up"] = [_iqr(r, "speedup") for _, r in g.iterrows()]
    g["ffn"] = [_iqr(r, "ffn_speedup") for _, r in g.iterrows()]
    g["dispatch eff."] = [_iqr(r, "dispatch_efficiency", 2) for _, r in g.iterrows()]
    g["efficiency"] = g["efficiency"].round(2)
    g["E/K"] = g["ideal"].map(lambda v: f"{v:g}")
    return g


def _verdict_cols(cons: pd.DataFrame) -> list[str]:
    # tables written before the verdict existed have only ``ok``
    return ["iqr_overlap", "verdict"] if "verdict" in cons else ["ok"]


def _load_text(run: dict) -> str:
    ls, le = run["load_start"], run["load_end"]
    return (f"load average {ls[0]:.1f} (5 min {ls[1]:.1f}) at the start and {le[0]:.1f} at the "
            f"end, on {run['cpu_count']} cores")


def _throughput(out: Path) -> str:
    grid, sweep = _load(out, "throughput.csv"), _load(out, "tokens.csv")
    cons, run = _load(out, "consistency.csv"), _load(out, "run.json")
    if grid is None or run is None:
        return "Not run yet: `python -m simstudy neural routers`.\n"
    lines = [
        f"Made by `{run['command'].strip()}` on {run['date']} ({run['seconds']:.0f} s, torch "
        f"{run['torch']}, {run['threads']} thread; {_load_text(run)}). **Timings taken on a "
        "loaded machine are contended: read the ratios (formed within each round, so load "
        "changes move both sides), not the absolute tokens/s.**\n",
        "- Layers (`simstudy/neural/routers.py`), sharing one topk-softmax router and, for the "
        "two MoE layers, the very same expert weights (two-layer GELU experts, inner width = "
        "hidden): `SparseMoE` groups the T*K assignments by expert (one stable argsort), runs "
        "each expert once on its gathered tokens and scatter-adds the weighted outputs, never "
        "computing the E - K unused outputs; `DenseMaskedMoE` runs every expert on every token "
        "(einsum) and masks, whatever K is; `ActiveFlopsFFN` is the router plus one FFN of "
        "inner width K * hidden on every token: the sparse layer's multiply-adds without any "
        "dispatch.",
        f"- Timing (`time_alternated`): `timeit.Timer` (the timer inside "
        f"`torch.utils.benchmark`), one warm-up call, then {run['runs']} rounds; each round "
        f"times every layer once, for at least {run['min_run_s']:g} s of calls, in an order "
        "that rotates from round to round. Cells: median [interquartile range] over the "
        "rounds. Forward = inference under `torch.no_grad`; forward+backward = "
        "`torch.autograd.grad` with respect to the input and every parameter.",
        "- `speed-up` = dense-masked time / sparse time; `ffn` = dense-masked / dense-FFN time "
        "(what E/K buys at this size without dispatch); `dispatch eff.` = dense-FFN time / "
        "sparse time (1 = dispatch costs nothing); `efficiency` = speed-up / (E/K).",
        f"- Outputs agree: largest relative difference sparse vs dense-masked over all "
        f"configurations {run['max_rel_diff']:.1e} (float32); the tests compare both layers "
        "with a per-token numpy loop.\n",
    ]
    if cons is not None and len(cons):
        bad = cons[~cons["ok"].astype(bool)]
        lines.append("### Noise check: the dense-masked layer across K\n")
        lines.append("It computes all E experts whatever K is, so its tokens/s must agree "
                     "across the K rows of one configuration (the first committed table "
                     "varied 3-6x: noise).\n")
        lines.append(to_markdown(cons[["E", "hidden", "tokens", "K", "dense_masked_tps",
                                       "spread", "max_rel_iqr", *_verdict_cols(cons)]]))
        worst = cons["spread"].max()
        if bad.empty:
            lines.append(f"\nAll {len(cons)} configurations agree within "
                         f"{100 * (worst - 1):.0f}% (max / min of the medians).\n")
        else:
            verdict = cons["verdict"] if "verdict" in cons else pd.Series(["?"] * len(cons))
            noise = int((verdict[bad.index] == "noise").sum())
            sysm = int((verdict[bad.index] == "inconsistent").sum())
            lines.append(
                f"\n**{len(bad)} of {len(cons)} configurations spread by more than the "
                f"tolerance (worst {worst:.2f}x).** `verdict` reads each: `noise` = the K rows' "
                "interquartile ranges over the rounds overlap, so the medians differ by less "
                "than the rounds' own spread (contended timings: read those rows' ratios with "
                "their IQR); `inconsistent` = disjoint IQRs, a cost that depends on K (a bug or "
                f"a load drift within the rounds). Here: {noise} noise, {sysm} inconsistent. "
                "The tolerance is kept: on a quiet machine every row should pass it.\n")
    g = _readable(grid)
    lines.append(f"### Grid: E x K x hidden, {int(grid['tokens'].iloc[0])} tokens, forward\n")
    lines.append(to_markdown(g[["E", "K", "hidden", "E/K", "speed-up", "ffn", "dispatch eff.",
                                "efficiency", "memory_ratio", "rel_diff"]]))
    lines.append("\n![grid](throughput.png)\n")
    if sweep is not None and len(sweep):
        s = _readable(sweep)
        lines.append("### Token sweep (hidden = "
                     f"{int(sweep['hidden'].iloc[0])}, K = {int(sweep['K'].iloc[0])})\n")
        lines.append("`skipped`: one dense-masked call would exceed the `--dense-cap` of "
                     "multiply-add work (the reference is E/K times the sparse layer's cost); "
                     "the sparse layer and the dense FFN are still timed.\n")
        lines.append(to_markdown(s[["E", "pass", "tokens", "E/K", "speed-up", "ffn",
                                    "dispatch eff.", "efficiency"]]))
        lines.append("\n![tokens](tokens.png)\n\n![efficiency](efficiency.png)\n")
        ref = s[(s["E"] == 64) & (s["K"] == 2) & (s["pass"] == "forward")]
        at = {int(r["tokens"]): r for _, r in ref.iterrows()}
        if 512 in at and 4096 in at and np.isfinite(at[4096]["speedup"]):
            lines.append(
                f"Against the numbers quoted in the spec (E = 64, K = 2: 8-15x at 512 tokens, "
                f"32-36x = the ideal E/K at 4,096): measured here {at[512]['speedup']:.1f}x at "
                f"512 and {at[4096]['speedup']:.1f}x at 4,096 tokens (hidden "
                f"{int(sweep['hidden'].iloc[0])}); the dispatch-free FFN of equal active FLOPs "
                f"reaches {at[4096]['ffn_speedup']:.1f}x at 4,096, so a speed-up near or above "
                "E/K also reflects how efficiently the dense-masked einsum runs, not only the "
                "sparse layer.\n")
    return "\n".join(lines) + "\n"


def _bridge(out: Path) -> str:
    summ, run = _load(out, "bridge_summary.csv"), _load(out, "bridge_run.json")
    if summ is None or run is None:
        return "Not run yet: `python -m simstudy neural bridge`.\n"
    st = run["settings"]
    lines = [
        f"Made by `{run['command'].strip()}` on {run['date']} ({run['seconds']:.0f} s; "
        f"{_load_text(run)}).\n",
        "- Data: design T of the statistics spec (d = 1, k* = 3, K = 2), "
        f"n in {st['n']}, {st['reps']} data sets per n. Fits: exact (k = 3) and over-specified "
        f"(k = 4), each from the same {st['random_starts']} random and {st['kmeans_starts']} "
        "k-means starts (the EM's own data-driven start) for every method.",
        "- Methods: the EM (`simstudy.estimation.TopKMoEEM`, SQUAREM, strict convergence, at "
        f"most {st['em_iter']} iterations) and minibatch Adam (batch {st['batch']}, lr "
        f"{st['lr']:g}, plateau halving, at most {st['adam_steps']} steps, float64) on a "
        "Gaussian MoE gated by each of the project's `Router` variants "
        "(`simstudy/neural/bridge.py`): topk-softmax with the statistical selection rule "
        "(top-K on the slope part; exactly the statistical model), softmax-topk without "
        "renormalisation (a sub-density: its kept weights sum to less than 1), noisy top-k "
        f"(training noise, auxiliary loss weight {st['aux_weight']:g}; no noise at evaluation).",
        "- Every fit is scored under the statistical model: log-likelihood, D1 (exact) or D2 "
        "(over-specified), expected Hellinger, from `simstudy.losses.compute_metrics`, after "
        "re-expressing the fit with the atom nearest the true reference expert as reference. "
        f"A fit *reaches the best optimum* when its mean log-likelihood is within {st['ll_tol']:g}"
        " nats per observation of the best over all fits on that data set; *time to tolerance* "
        "is when its trace first gets there (EM times are its wall time spread evenly over its "
        "iterations).\n",
    ]
    cols = ["fit", "n", "method", "fits", "reach_best", "reach_best_random",
            "reach_best_kmeans", "loss_kind", "loss_median", "hellinger_median",
            "time_to_tol_median", "seconds_median", "converged"]
    lines.append(to_markdown(summ[cols]))
    lines.append("\n`loss_median`, `hellinger_median`: median over data sets of the best fit of "
                 "the method's starts. NaN loss: the fit left a true expert's Voronoi cell "
                 "empty (see `loss_note` in `bridge_fits.csv`).\n")
    lines.append("![losses](bridge_losses.png)\n\n![reach](bridge_reach.png)\n")
    find = []
    for size in ("exact", "over"):
        s = summ[summ["fit"] == size]
        if s.empty:
            continue
        reach = s.groupby("method")["reach_best"].mean()
        find.append(f"- {size} fits, mean over n of the fraction of starts reaching the best "
                    "optimum: " + ", ".join(f"{m} {v:.2f}" for m, v in reach.items()) + ".")
    lines.append("\n".join(find) + "\n")
    return "\n".join(lines) + "\n"


def write_readme(out: Path) -> None:
    """(Re)write ``out/README.md`` from the benchmark files present in ``out``."""
    out = Path(out)
    text = "\n".join([
        "# Top-K routers: sparse MoE layer vs dense-masked reference, and the bridge to the "
        "statistics\n",
        "Rendered by `simstudy/neural/routers_readme.py` from the files next to it; rerun "
        "`python -m simstudy neural routers` (throughput) and `python -m simstudy neural "
        "bridge` (bridge) to refresh.\n",
        "## Throughput and memory\n", _throughput(out),
        "## Bridge: the routers fitted by Adam vs the EM\n", _bridge(out),
    ])
    (out / "README.md").write_text(text)
