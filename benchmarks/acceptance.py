"""The certified-MLE acceptance figures from the stored study fits: ``python -m
benchmarks.acceptance [--out results/bench/acceptance.md]``.

Per study, fit and protocol (the strict-type protocols, i.e. those with global checks): how the
fits stopped, the share certified (``certified``, ``certified_on_tie``, ``certified_on_bound``),
how many end below the true parameters' log-likelihood on the same data (gap < -1e-6: not the
MLE), the median passes over the data and the median seconds per fit at the largest n <= 1e5.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CERTIFIED = ("certified", "certified_on_tie", "certified_on_bound")
STUDIES = ("topk_planar", "topk_exact", "dense_exact", "topk_over", "topk_kbar_sweep",
           "topk_over2", "dense_over", "dense_over2", "topk_K_sweep", "topk_kbar_bounded")


def table():
    import pandas as pd

    from simstudy.engine import load_results

    rows = []
    for study in STUDIES:
        spec = ROOT / "studies" / f"{study}.toml"
        try:
            df = load_results(spec)
        except Exception:
            continue
        df = df[df["protocol"].isin(["strict", "shrinking_strict"])]
        for (label, protocol), g in df.groupby(["label", "protocol"], sort=True):
            stops = g["stop_reason"].fillna("error").value_counts()
            gap = pd.to_numeric(g.get("loglik_gap"), errors="coerce")
            n_ref = g.loc[g["n"] <= 100_000, "n"].max()
            at = g[g["n"] == n_ref]
            rows.append({
                "study": study, "fit": label, "protocol": protocol, "fits": len(g),
                "n range": f"{int(g['n'].min())}-{int(g['n'].max())}",
                "reps": int(g["rep"].nunique()),
                "certified %": 100 * float(g["stop_reason"].isin(CERTIFIED).mean()),
                "below truth": int((gap < -1e-6).sum()),
                "stops": ", ".join(f"{k} {v}" for k, v in stops.items()),
                "median passes": float(pd.to_numeric(g.get("n_passes"), errors="coerce")
                                       .median()),
                "median s at n = n_max <= 1e5": float(at["seconds"].median()),
                "n_max": int(n_ref),
            })
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    from simstudy.reports.tables import to_markdown

    p = argparse.ArgumentParser(prog="python -m benchmarks.acceptance", description=__doc__)
    p.add_argument("--out", default="results/bench/acceptance.md")
    args = p.parse_args(argv)
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    report = ("# Certified fits in the stored studies\n\nProduced by `python -m "
              f"benchmarks.acceptance` (load average at the time {load} on {os.cpu_count()} "
              "cores; seconds are one core's wall time per fit, all starts of the global check "
              "included).\n\n" + to_markdown(table()))
    Path(args.out).write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
