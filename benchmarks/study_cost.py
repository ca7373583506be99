"""What the full ``make study`` costs, from the fits already stored: ``python -m
benchmarks.study_cost [--out results/bench/study_cost.md]``.

For every study spec: the fits in its store (or in the committed per-fit data) give, per
(fit label, protocol), the mean seconds per fit at each stored n. A missing task at a stored n
is priced at that mean; at an n with no fits yet, by a power law of the per-n means in n (least
squares on their logs; a single n is scaled linearly), so a staged run (``--max-reps``,
``--max-n``) projects the whole study. Means, not medians: fit times are heavy-tailed (a few
over-specified fits take tens of times their n's median), and a median law underpriced the
remaining work by about half.
Seconds are one core's wall time inside a worker; the machine's load at the time of the fits is
in them (the report says so).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _law(g):
    """(log a, b) of seconds = a n^b from the per-n means of one (label, protocol)."""
    mean = g.groupby("n")["seconds"].mean()
    x, y = np.log(mean.index.to_numpy(float)), np.log(np.maximum(mean.to_numpy(float), 1e-6))
    if len(x) < 2:
        return y[0] - x[0], 1.0
    b, a = np.polyfit(x, y, 1)
    return a, b


def _price(want, have):
    """(exponent of n, core-seconds) of the planned tasks in ``want`` not yet in ``have``.

    Both frames hold one (label, protocol); a missing task costs the mean of the stored fits at
    its n, or the power law of ``_law`` at an n with none stored.
    """
    a, b = _law(have)
    mean = have.groupby("n")["seconds"].mean()
    todo = want.groupby("n").size().sub(have.groupby("n").size(), fill_value=0).clip(lower=0)
    rest = sum(c * (mean[n] if n in mean.index else np.exp(a + b * np.log(n)))
               for n, c in todo.items())
    return b, float(rest)


def study_cost(spec_path):
    """One row per (study, label, protocol): fits stored, core-seconds spent, projected."""
    import pandas as pd

    from simstudy.engine import load_results
    from simstudy.engine.spec import load_spec
    from simstudy.reports.build import data_path

    spec = load_spec(spec_path)
    try:
        df = load_results(spec)
    except Exception:  # no store here: the committed data
        path = data_path(ROOT / "results", spec.name)
        df = pd.read_parquet(path) if path.exists() else pd.DataFrame()
    rows = []
    planned = [(t.label, t.protocol, t.n) for t in spec.iter_tasks()]
    plan = pd.DataFrame(planned, columns=["label", "protocol", "n"])
    for (label, protocol), want in plan.groupby(["label", "protocol"]):
        have = df[(df["label"] == label) & (df["protocol"] == protocol)] if len(df) else df
        spent = float(have["seconds"].sum()) if len(have) else 0.0
        b, rest = _price(want, have) if len(have) else (np.nan, np.nan)
        rows.append({"study": spec.name, "fit": label, "protocol": protocol,
                     "fits stored": len(have), "fits planned": len(want),
                     "core-s spent": spent,
                     "slowest fit (s)": float(have["seconds"].max()) if len(have) else np.nan,
                     "exponent of n": b,
                     "core-s projected (whole study)": spent + rest})
    return rows


def run(specs=None) -> str:
    import pandas as pd

    from simstudy.reports.tables import to_markdown

    specs = specs or sorted(p for p in (ROOT / "studies").glob("*.toml") if p.stem != "ci")
    frame = pd.DataFrame([r for s in specs for r in study_cost(s)])
    by_study = frame.groupby("study", sort=False)[
        ["fits stored", "fits planned", "core-s spent", "core-s projected (whole study)"]].sum()
    by_study["hours on 2 cores (projected)"] = by_study["core-s projected (whole study)"] / 7200
    total = by_study.sum(numeric_only=True)
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return ("# Cost of the full study\n\n"
            "Produced by `python -m benchmarks.study_cost` from the fits stored so far; each "
            "missing task is priced at its (fit, protocol)'s mean seconds per fit at that n, or "
            "by a power law in n of those means where no fit at that n is stored yet. "
            "The hours on 2 cores assume both cores stay busy; a run's stragglers (the "
            f"slowest fit took {frame['slowest fit (s)'].max():.0f} s) make the real wall "
            "time longer. Seconds are one core's wall time inside a worker, under whatever "
            f"load the machine had when the fits ran (load average now {load} on {os.cpu_count()} "
            "cores).\n\n"
            f"Total: {int(total['fits stored'])} of {int(total['fits planned'])} fits stored, "
            f"{total['core-s spent'] / 3600:.2f} core-hours spent; the whole study projects to "
            f"{total['core-s projected (whole study)'] / 3600:.1f} core-hours, "
            f"{total['hours on 2 cores (projected)']:.1f} hours of wall time on 2 cores.\n\n"
            "## Per study\n\n" + to_markdown(by_study.reset_index())
            + "\n## Per fit and protocol\n\n" + to_markdown(frame))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.study_cost", description=__doc__)
    p.add_argument("specs", nargs="*", help="study files (default: every study but ci)")
    p.add_argument("--out", default="results/bench/study_cost.md")
    args = p.parse_args(argv)
    report = run([Path(s) for s in args.specs] or None)
    Path(args.out).write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
