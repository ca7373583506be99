"""Strict protocol: outcomes and cost on replays of the study grids, and the optimisers.

Part 1 (replays). For each study spec, a few n of its grid and replications 0..R-1, every
task is run exactly as a study runs it (:func:`simstudy.engine.task.run_task`: same data,
same seeds, same protocol settings), and the table gives by (study, fit, protocol, n): fits,
stop reasons, fits below the true parameters' log-likelihood on the same data, how often the
configured (near-truth) start reached the best value of the global check, and the median
passes over the data and seconds per fit. Passes do not depend on the machine's load;
seconds do (the load average is printed).

Part 3 (global checks, ``--starts``). The same replays with three data-driven starts instead
of the protocol's two: for each extra start, in how many fits it raised the kept value (by
more than the certificate tolerance, admissible fits only) and its share of the passes; the
data behind the protocol's choice of two.

Part 2 (optimisers). One over-specified fit (design T, k = 4, K-bar = 3, extra atom on
expert index 0, near-truth start with noise 0.1, no global check) per n and replication,
under every ``acceleration``: stop reason, iterations, passes, seconds and the
log-likelihood below the best of the four.

``python -m benchmarks.bench_strict [--quick] [--reps R] [--n 1000,100000] [--studies ...]
[--opt-n 10000,100000] [--opt-reps R]``
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from simstudy.engine.spec import load_spec
from simstudy.engine.task import run_task
from simstudy.estimation import ConvergenceWarning, TopKMoEEM, protocol_options
from simstudy.model import get_design, sample
from simstudy.reports.tables import to_markdown

__all__ = ["replay", "optimisers", "start_values", "run"]

STUDIES = ("topk_planar", "topk_exact", "topk_over", "topk_kbar_sweep", "dense_exact",
           "dense_over")
CONVERGED = ("certified", "certified_on_tie", "certified_on_bound", "tol")


def _nearest(grid, wanted):
    grid = np.asarray(sorted(set(grid)))
    return sorted({int(grid[np.argmin(np.abs(np.log(grid) - np.log(w)))]) for w in wanted})


def replay(studies=STUDIES, ns=(1000, 10000, 100000), reps=3, protocols=("strict",),
           spec_dir="studies") -> pd.DataFrame:
    """One row per task (see the module docstring)."""
    rows = []
    for name in studies:
        spec = load_spec(Path(spec_dir) / f"{name}.toml")
        conds = [c for c in spec.conditions() if c.protocol in protocols]
        keep = _nearest([c.n for c in conds], ns)
        for cond in conds:
            if cond.n not in keep:
                continue
            for rep in range(reps):
                t0 = time.perf_counter()
                out = run_task(spec.make_task(cond, rep))
                m = out["metrics"]
                rows.append({
                    "study": name, "fit": cond.label, "protocol": cond.protocol, "n": cond.n,
                    "rep": rep, "status": out["status"], "stop": out["stop_reason"],
                    "gap": m.get("loglik_gap", np.nan),
                    "reached": m.get("start_reached_best", np.nan),
                    "passes": m.get("n_passes", np.nan),
                    "seconds": time.perf_counter() - t0,
                })
                print(f"{name} {cond.label} {cond.protocol} n={cond.n} rep={rep}: "
                      f"{out['stop_reason']} gap={rows[-1]['gap']:+.3f} "
                      f"passes={rows[-1]['passes']:.0f} {rows[-1]['seconds']:.2f}s", flush=True)
    return pd.DataFrame(rows)


def replay_table(df: pd.DataFrame) -> pd.DataFrame:
    out = []
    for (study, fit, protocol, n), g in df.groupby(["study", "fit", "protocol", "n"], sort=False):
        stops = g["stop"].fillna("error").value_counts()
        out.append({
            "study": study, "fit": fit, "protocol": protocol, "n": n, "fits": len(g),
            "stop reasons": ", ".join(f"{k} {v}" for k, v in stops.items()),
            "converged": int(g["stop"].isin(CONVERGED).sum()),
            "below truth": int((g["gap"] < -1e-6).sum()),
            "start reached best": (f"{int(g['reached'].sum())}/{int(g['reached'].notna().sum())}"
                                   if g["reached"].notna().any() else "-"),
            "median passes": float(g["passes"].median()),
            "max passes": float(g["passes"].max()),
            "median s": float(g["seconds"].median()),
        })
    return pd.DataFrame(out)


def start_values(studies=STUDIES, ns=(1000, 10000), reps=3, n_data=3,
                 spec_dir="studies") -> pd.DataFrame:
    """Part 3: what each start adds (see the module docstring); one row per extra start."""
    from simstudy.engine.task import fit_options, generate

    counts = {}
    for name in studies:
        spec = load_spec(Path(spec_dir) / f"{name}.toml")
        conds = [c for c in spec.conditions() if c.protocol == "strict"]
        keep = _nearest([c.n for c in conds], ns)
        for cond in conds:
            if cond.n not in keep:
                continue
            for rep in range(reps):
                task = spec.make_task(cond, rep)
                X, y = generate(task)
                opts = {**fit_options(task), "n_data_starts": n_data}
                est = TopKMoEEM(task.fit["k"], task.fit["K"],
                                random_state=np.random.default_rng(task.fit_seed()), **opts)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    res = est.fit(X, y)
                if res.stop_reason == "diverging":
                    continue  # no finite maximum to find
                tol = est.scan_tol * len(y)
                best = max(s["loglik"] for s in res.starts[:2])
                total = sum(s["passes"] for s in res.starts)
                for s in res.starts[2:]:
                    row = counts.setdefault(s["label"], {"fits": 0, "raised": 0, "share": 0.0})
                    row["fits"] += 1
                    if s["admissible"] and s["loglik"] > best + tol:
                        row["raised"] += 1
                        best = s["loglik"]
                    row["share"] += s["passes"] / total
    return pd.DataFrame([{"start": k, "fits": v["fits"], "raised the kept value": v["raised"],
                          "mean share of passes": v["share"] / max(v["fits"], 1)}
                         for k, v in counts.items()])


def optimisers(ns=(10000, 100000), reps=3) -> pd.DataFrame:
    """Part 2: the accelerations on the over-specified fit of design T."""
    design = get_design("T")
    rows = []
    for n in ns:
        for rep in range(reps):
            X, y = sample(design.params, n, design.inputs, np.random.default_rng(1000 + rep))
            fits = {}
            for acc in (None, "squarem", "lbfgs", "newton"):
                opts = protocol_options("strict", n)
                opts.update(acceleration=acc, truth_start=False, n_data_starts=0)
                est = TopKMoEEM(4, 3, true_params=design.params, extra_atoms=(0,),
                                random_state=rep, **opts)
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    res = est.fit(X, y)
                fits[acc or "none"] = (res, time.perf_counter() - t0)
            best = max(r.loglik for r, _ in fits.values())
            for acc, (res, sec) in fits.items():
                rows.append({"n": n, "rep": rep, "acceleration": acc, "stop": res.stop_reason,
                             "iterations": res.n_iter, "passes": res.n_passes,
                             "seconds": sec, "below best": best - res.loglik})
    return pd.DataFrame(rows)


def optimiser_table(df: pd.DataFrame) -> pd.DataFrame:
    out = []
    for (n, acc), g in df.groupby(["n", "acceleration"], sort=False):
        stops = g["stop"].value_counts()
        out.append({"n": n, "acceleration": acc, "fits": len(g),
                    "stop reasons": ", ".join(f"{k} {v}" for k, v in stops.items()),
                    "median passes": float(g["passes"].median()),
                    "median s": float(g["seconds"].median()),
                    "max below best": float(g["below best"].max())})
    return pd.DataFrame(out)


def run(quick: bool = False, studies=STUDIES, ns=None, reps=None, opt_ns=None,
        opt_reps=None, starts=False) -> str:
    ns = ns or ((1000, 100000) if quick else (1000, 10000, 100000))
    reps = reps or (1 if quick else 3)
    opt_ns = opt_ns or ((10000,) if quick else (10000, 100000))
    opt_reps = opt_reps or (1 if quick else 2)
    load = os.getloadavg()
    part1 = replay_table(replay(studies, ns, reps)) if studies else pd.DataFrame()
    part2 = optimiser_table(optimisers(opt_ns, opt_reps)) if opt_reps > 0 else pd.DataFrame()
    part3 = ""
    if starts:
        part3 = ("\n## Global checks: what each data-driven start adds (three instead of two; "
                 "fits with a finite maximum)\n\n"
                 + to_markdown(start_values(studies, ns[:2], reps)))
    return (
        "# Strict protocol: replays and optimisers\n\n"
        f"Produced by `python -m benchmarks.bench_strict{' --quick' if quick else ''}` "
        f"(load average at the start {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on "
        f"{os.cpu_count()} cores; seconds scale with the load, passes do not).\n\n"
        f"## Replays of the study grids (replications 0..{reps - 1})\n\n"
        + to_markdown(part1)
        + f"\n## Optimisers on design T, k = 4, K-bar = 3 (one start, replications "
        f"0..{opt_reps - 1})\n\n"
        + to_markdown(part2)
        + part3
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_strict", description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--studies", nargs="*", default=list(STUDIES))
    p.add_argument("--n", default=None, help="comma-separated sample sizes (nearest grid values)")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--opt-n", default=None, help="sample sizes of part 2 (comma-separated)")
    p.add_argument("--opt-reps", type=int, default=None, help="replications of part 2")
    p.add_argument("--starts", action="store_true", help="also part 3 (global checks)")
    p.add_argument("--out", default="results/bench/strict.md")
    args = p.parse_args(argv)
    ns = tuple(int(v) for v in args.n.split(",")) if args.n else None
    opt_ns = tuple(int(v) for v in args.opt_n.split(",")) if args.opt_n else None
    report = run(args.quick, tuple(args.studies), ns, args.reps, opt_ns, args.opt_reps,
                 args.starts)
    print(report)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
