"""Tables, figures and the README of the JEI-DNN benchmark, from its scored points.

Every table is written as CSV and Markdown (through the project's one table writer,
:func:`simstudy.reports.tables.to_markdown`). Spreads: ``*_sd`` are standard deviations over
seeds; ``*_ci`` are 95% t-intervals of the mean over seeds; ``acc_chunk_sd`` is the spread over
five test chunks within a seed.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from simstudy.neural.common import write_json, write_table

__all__ = ["write_all", "points_frame", "matched", "lambda_cost", "curve_at", "REF_COSTS"]

BASELINES = ("threshold", "per_exit_threshold", "boosted")
REF_COSTS = (0.4, 0.6, 0.8)  # where difficulty, calibration and conformal are compared
LABELS = {
    ("jei", "paper"): "JEI-DNN, paper rule",
    ("jei", "cdf"): "JEI-DNN, CDF rule",
    ("jei", "paper_mean"): "JEI-DNN, paper rule, mean IM loss (the reference code's)",
    ("jei", "cdf_level"): "JEI-DNN, CDF rule, gates see the difficulty",
    ("threshold", ""): "global threshold",
    ("per_exit_threshold", ""): "per-exit thresholds",
    ("boosted", ""): "boosted IMs + global threshold",
    ("oracle", ""): "oracle exit",
    ("full_backbone", ""): "full backbone",
}
PANELS = (("fold", "linear"), ("fold", "lt"), ("fold", "unequal"), ("mnist_c", "linear"),
          ("mnist_c", "lt"), ("mnist_c", "unequal"), ("digits", "linear"))
SETTING_TEXT = {"linear": "linear IMs", "lt": "long-tailed exit labels",
                "unequal": "IMs of unequal capacity"}


def _t95(n: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1)) if n > 1 else float("nan")


def points_frame(rows: list[dict]) -> pd.DataFrame:
    keep = ["task", "setting", "seed", "method", "variant", "param", "accuracy", "acc_chunk_sd",
            "cost", "cost_chunk_sd", "ece", "mean_exit"]
    df = pd.DataFrame([{k: r.get(k) for k in keep} for r in rows])
    df["exit_counts"] = [" ".join(map(str, r["exit_counts"])) for r in rows]
    df["variant"] = df["variant"].fillna("")
    return df


def _agg(g: pd.DataFrame, cols) -> dict:
    out = {"seeds": int(g["seed"].nunique())}
    for c in cols:
        out[c] = float(g[c].mean())
        out[f"{c}_sd"] = float(g[c].std(ddof=1)) if len(g) > 1 else float("nan")
    return out


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and seed sd of accuracy, cost and ECE of every point."""
    out = []
    for key, g in df.groupby(["task", "setting", "method", "variant", "param"], dropna=False):
        out.append(dict(zip(["task", "setting", "method", "variant", "param"], key,
                            strict=True), **_agg(g, ["accuracy", "cost", "ece"])))
    return pd.DataFrame(out)


def per_exit(df: pd.DataFrame) -> pd.DataFrame:
    """Accuracy and ECE of each exit used for every example (the IMs and the head)."""
    s = df[df["method"] == "single_exit"]
    out = []
    for (task, setting, ex), g in s.groupby(["task", "setting", "param"]):
        out.append({"task": task, "setting": setting, "exit": int(ex),
                    **_agg(g, ["accuracy", "ece", "cost"])})
    return pd.DataFrame(out)


def curve_at(curve: pd.DataFrame, cost: float, metric: str) -> tuple[float, bool]:
    """A baseline curve's ``metric`` at ``cost``: linear interpolation between its points
    sorted by cost (points at equal cost averaged); also whether ``cost`` lies inside it."""
    c = curve.groupby("cost", as_index=False)[metric].mean().sort_values("cost")
    x, y = c["cost"].to_numpy(), c[metric].to_numpy()
    inside = bool(x.min() - 1e-9 <= cost <= x.max() + 1e-9)
    return float(np.interp(cost, x, y)), inside


def matched(df: pd.DataFrame) -> pd.DataFrame:
    """Every JEI point against each baseline curve of the same seed at the same cost.

    d_accuracy and d_ece are JEI minus the baseline interpolated at JEI's cost; then mean, sd
    and 95% t-interval over seeds. ``in_range``: the cost lies inside every seed's curve.
    """
    rows = []
    for (task, setting, seed), g in df.groupby(["task", "setting", "seed"]):
        for base in BASELINES:
            b = g[g["method"] == base]
            if b.empty:
                continue
            for _, r in g[g["method"] == "jei"].iterrows():
                acc, inside = curve_at(b, r["cost"], "accuracy")
                ece, _ = curve_at(b, r["cost"], "ece")
                rows.append({"task": task, "setting": setting, "seed": seed,
                             "variant": r["variant"], "lambda": r["param"], "baseline": base,
                             "cost": r["cost"], "accuracy": r["accuracy"], "ece": r["ece"],
                             "d_accuracy": r["accuracy"] - acc, "d_ece": r["ece"] - ece,
                             "in_range": inside})
    m = pd.DataFrame(rows)
    if m.empty:
        return m
    out = []
    for key, g in m.groupby(["task", "setting", "variant", "lambda", "baseline"]):
        n = len(g)
        d = g["d_accuracy"]
        half = _t95(n) * d.std(ddof=1) / math.sqrt(n) if n > 1 else float("nan")
        out.append(dict(zip(["task", "setting", "variant", "lambda", "baseline"], key,
                            strict=True), seeds=n, cost=g["cost"].mean(),
                        accuracy=g["accuracy"].mean(), d_accuracy=d.mean(),
                        d_accuracy_sd=d.std(ddof=1) if n > 1 else float("nan"),
                        d_accuracy_ci=f"[{d.mean() - half:+.3f}, {d.mean() + half:+.3f}]"
                        if n > 1 else "", ece=g["ece"].mean(), d_ece=g["d_ece"].mean(),
                        d_ece_sd=g["d_ece"].std(ddof=1) if n > 1 else float("nan"),
                        in_range=bool(g["in_range"].all()),
                        _lo=d.mean() - half, _hi=d.mean() + half))
    return pd.DataFrame(out)


def matched_verdicts(mt: pd.DataFrame) -> pd.DataFrame:
    """Per (task, setting, variant, baseline): of the JEI points inside the baseline's cost
    range, how many are better / worse with the 95% interval excluding 0, and the mean gap."""
    out = []
    if mt.empty:
        return pd.DataFrame(out)
    for key, g in mt[mt["in_range"]].groupby(["task", "setting", "variant", "baseline"]):
        out.append(dict(zip(["task", "setting", "variant", "baseline"], key, strict=True),
                        points=len(g), better=int((g["_lo"] > 0).sum()),
                        worse=int((g["_hi"] < 0).sum()),
                        mean_d_accuracy=float(g["d_accuracy"].mean()),
                        min_d_accuracy=float(g["d_accuracy"].min()),
                        max_d_accuracy=float(g["d_accuracy"].max()),
                        mean_d_ece=float(g["d_ece"].mean())))
    return pd.DataFrame(out)


def lambda_cost(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The lambda -> cost map (mean, sd over seeds) and, per variant, whether it is monotone
    and which cost span it covers."""
    j = df[df["method"] == "jei"]
    rows = []
    for key, g in j.groupby(["task", "setting", "variant", "param"]):
        counts = np.sum([np.array(list(map(int, c.split()))) for c in g["exit_counts"]], axis=0)
        rows.append(dict(zip(["task", "setting", "variant", "lambda"], key, strict=True),
                         **_agg(g, ["cost", "accuracy"]),
                         exit_share=" ".join(f"{v:.2f}" for v in counts / counts.sum())))
    lc = pd.DataFrame(rows)
    verdict = []
    for key, g in lc.groupby(["task", "setting", "variant"]):
        g = g.sort_values("lambda")
        c = g["cost"].to_numpy()
        rises = np.diff(c)
        verdict.append(dict(zip(["task", "setting", "variant"], key, strict=True),
                            cost_at_lambda0=float(c[0]), min_cost=float(c.min()),
                            max_cost=float(c.max()), largest_rise=float(max(rises.max(), 0))
                            if rises.size else 0.0,
                            largest_gap=float(np.abs(rises).max()) if rises.size else 0.0,
                            monotone=bool(np.all(rises <= 0.02)),
                            spans_0_3_to_0_9=bool(c.min() <= 0.3 + 1e-9 and c.max() >= 0.9)))
    return lc, pd.DataFrame(verdict)


def _nearest(points: list[dict], cost: float) -> dict:
    return min(points, key=lambda r: abs(r["cost"] - cost))


def reference_points(rows: list[dict]) -> list[dict]:
    """Points at matched cost, per (task, setting, seed) and reference cost c: the CDF rule's
    JEI point whose seed-mean cost is nearest c is the anchor; every other method contributes
    its point nearest in cost to that anchor (same seed). Without a CDF run, the first
    variant anchors."""
    df = points_frame(rows)
    j = df[df["method"] == "jei"].groupby(["task", "setting", "variant", "param"])["cost"].mean()
    by = {}
    for r in rows:
        by.setdefault((r["task"], r["setting"], r["seed"]), []).append(r)
    picked = []
    for (task, setting, _seed), rs in by.items():
        variants = sorted({r["variant"] for r in rs if r["method"] == "jei"})
        if not variants:
            continue
        lead = "cdf" if "cdf" in variants else variants[0]
        for target in REF_COSTS:
            lam_costs = j.loc[(task, setting, lead)]
            lam = float(lam_costs.index[np.argmin(np.abs(lam_costs.to_numpy() - target))])
            anchor = next(x for x in rs if x["method"] == "jei" and x["variant"] == lead
                          and x["param"] == lam)
            for variant in variants:
                cands = [x for x in rs if x["method"] == "jei" and x["variant"] == variant]
                picked.append({**_nearest(cands, anchor["cost"]), "ref_cost": target,
                               "label": f"jei_{variant}"})
            for base in (*BASELINES, "oracle"):
                cands = [x for x in rs if x["method"] == base]
                if cands:
                    picked.append({**_nearest(cands, anchor["cost"]), "ref_cost": target,
                                   "label": base})
    return picked


def difficulty_table(picked: list[dict], first_level: dict | None = None) -> pd.DataFrame:
    """Accuracy, mean exit and cost by difficulty at the reference points; ``first_level``
    maps a task to the name of its easiest level (fold: 1, severities: 0)."""
    first_level = first_level or {}
    rows = []
    for r in picked:
        for level, n, acc, mexit, mcost in r.get("by_level", []):
            rows.append({"task": r["task"], "setting": r["setting"], "ref_cost": r["ref_cost"],
                         "method": r["label"], "seed": r["seed"],
                         "level": level + first_level.get(r["task"], 0), "n": n,
                         "accuracy": acc, "mean_exit": mexit, "cost": mcost})
    d = pd.DataFrame(rows)
    if d.empty:
        return d
    out = []
    for key, g in d.groupby(["task", "setting", "ref_cost", "method", "level"]):
        out.append(dict(zip(["task", "setting", "ref_cost", "method", "level"], key,
                            strict=True), n=float(g["n"].mean()),
                        **_agg(g, ["accuracy", "mean_exit", "cost"])))
    return pd.DataFrame(out)


def conformal_table(picked: list[dict]) -> pd.DataFrame:
    rows = []
    for r in picked:
        for c in r.get("conformal", []):
            rows.append({"task": r["task"], "setting": r["setting"], "ref_cost": r["ref_cost"],
                         "method": r["label"], "seed": r["seed"], "point_cost": r["cost"],
                         "ece": r["ece"], "accuracy": r["accuracy"], **c})
    d = pd.DataFrame(rows)
    if d.empty:
        return d
    out = []
    for key, g in d.groupby(["task", "setting", "ref_cost", "method", "alpha"]):
        out.append(dict(zip(["task", "setting", "ref_cost", "method", "alpha"], key,
                            strict=True),
                        **_agg(g, ["point_cost", "accuracy", "ece", "coverage", "set_size"]),
                        full_set_exits=float(g["n_full_set_exits"].mean())))
    return pd.DataFrame(out)


def timings(meta: list[dict]) -> pd.DataFrame:
    rows = []
    for m in meta:
        rows.append({"task": m["task"], "seed": m["seed"], "setting": m["setting"],
                     "backbone_s": m["backbone"]["seconds"],
                     "backbone_cpu_s": m["backbone"].get("cpu_seconds", float("nan")),
                     "backbone_val_acc": m["backbone"]["best_val_acc"],
                     "backbone_steps": m["backbone"]["steps"],
                     "warmup_val_acc": " ".join(f"{a:.2f}" for a in m["warmup"]["best_val_acc"]),
                     "jei_s": m["jei"]["seconds"],
                     "jei_cpu_s": m["jei"].get("cpu_seconds", float("nan")),
                     "unit_cpu_s": m.get("unit_cpu_seconds", float("nan")),
                     "jei_replicas": m["jei"]["replicas"],
                     "gate_steps": m["jei"]["gate_steps"], "im_steps": m["jei"]["im_steps"],
                     "baselines_cpu_s": m["baseline_seconds"],
                     "from_cache": bool(m.get("from_cache", False))})
    return pd.DataFrame(rows).sort_values(["task", "setting", "seed"]) if rows else \
        pd.DataFrame(rows)


# -- figures -------------------------------------------------------------------------------
def _band(df: pd.DataFrame, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-seed interpolation of a curve on ``grid`` (inside every seed's range)."""
    per = []
    lo, hi = -np.inf, np.inf
    for _, g in df.groupby("seed"):
        c = g.groupby("cost", as_index=False)["accuracy"].mean().sort_values("cost")
        lo, hi = max(lo, c["cost"].min()), min(hi, c["cost"].max())
        per.append(np.interp(grid, c["cost"], c["accuracy"]))
    per = np.array(per)
    keep = (grid >= lo) & (grid <= hi)
    sd = per.std(axis=0, ddof=1) if len(per) > 1 else np.zeros(grid.size)
    return grid[keep], per.mean(axis=0)[keep], sd[keep]


STYLE = {
    ("jei", "paper"): dict(marker="o", color="C3"),
    ("jei", "cdf"): dict(marker="s", color="C1"),
    ("jei", "paper_mean"): dict(marker="v", color="C5"),
    ("jei", "cdf_level"): dict(marker="^", color="C4"),
    ("threshold", ""): dict(color="C0"),
    ("per_exit_threshold", ""): dict(color="C2"),
    ("boosted", ""): dict(color="C7"),
}


# reference-point labels (``jei_<variant>`` or a baseline name) -> (method, variant)
PICK_KEYS = {"jei_paper": ("jei", "paper"), "jei_cdf": ("jei", "cdf"),
             "jei_cdf_level": ("jei", "cdf_level"), "jei_paper_mean": ("jei", "paper_mean"),
             "threshold": ("threshold", ""), "per_exit_threshold": ("per_exit_threshold", ""),
             "boosted": ("boosted", ""), "oracle": ("oracle", "")}


def _pick_style(label: str) -> tuple[str, dict]:
    """Legend text and a fixed style for a reference-point label, the same in every panel."""
    key = PICK_KEYS.get(label, (label, ""))
    st = dict(STYLE.get(key, dict(color="k")))
    st.setdefault("marker", ".")
    return LABELS.get(key, label), st


def _panels(df: pd.DataFrame) -> list[tuple[str, str]]:
    have = set(zip(df["task"], df["setting"], strict=True))
    return [p for p in PANELS if p in have] + sorted(have - set(PANELS))


def fig_accuracy_cost(df: pd.DataFrame, out: Path, plt) -> None:
    panels = _panels(df)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.8), squeeze=False)
    grid = np.linspace(0, 1, 201)
    for ax, (task, setting) in zip(axes[0], panels, strict=True):
        s = df[(df["task"] == task) & (df["setting"] == setting)]
        for base in BASELINES:
            b = s[s["method"] == base]
            if b.empty:
                continue
            x, m, sd = _band(b, grid)
            st = STYLE[(base, "")]
            ax.plot(x, m, color=st["color"], lw=1.2, label=LABELS[(base, "")])
            ax.fill_between(x, m - sd, m + sd, color=st["color"], alpha=0.2, lw=0)
        for (method, variant), st in STYLE.items():
            if method != "jei":
                continue
            g = s[(s["method"] == "jei") & (s["variant"] == variant)]
            if g.empty:
                continue
            a = g.groupby("param").agg(c=("cost", "mean"), cs=("cost", "std"),
                                       a=("accuracy", "mean"), as_=("accuracy", "std"))
            ax.errorbar(a["c"], a["a"], xerr=a["cs"].fillna(0), yerr=a["as_"].fillna(0),
                        ls="none", capsize=2, ms=4, label=LABELS[("jei", variant)], **st)
        for method, mk in (("oracle", "*"), ("full_backbone", "D")):
            g = s[s["method"] == method]
            if not g.empty:
                ax.plot(g["cost"].mean(), g["accuracy"].mean(), mk, color="k", ms=8,
                        label=LABELS[(method, "")])
        ax.set_title(f"{task} ({SETTING_TEXT.get(setting, setting)})"
                     + (" -- negative control" if task == "digits" else ""), fontsize=9)
        ax.set_xlabel("mean normalised cost (full path = 1)")
        ax.set_ylabel("test accuracy")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(5, 2 * len(panels)), fontsize=7,
               frameon=False)
    fig.suptitle("Accuracy vs cost: bands and bars are +-1 sd over seeds; baseline curves "
                 "interpolate between operating points", fontsize=10)
    fig.tight_layout(rect=(0, 0.16 if len(panels) < 3 else 0.1, 1, 1))
    fig.savefig(out / "accuracy_cost.png", dpi=110)
    plt.close(fig)


def fig_lambda_cost(lc: pd.DataFrame, out: Path, plt) -> None:
    panels = _panels(lc)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (task, setting) in zip(axes[0], panels, strict=True):
        s = lc[(lc["task"] == task) & (lc["setting"] == setting)]
        for variant, g in s.groupby("variant"):
            g = g.sort_values("lambda")
            st = STYLE[("jei", variant)]
            ax.errorbar(g["lambda"], g["cost"], yerr=g["cost_sd"].fillna(0), capsize=2, ms=4,
                        label=LABELS[("jei", variant)], **st)
        ax.axhspan(0.3, 0.9, color="0.9", zorder=0)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{task} ({SETTING_TEXT.get(setting, setting)})", fontsize=9)
        ax.set_xlabel("lambda")
        ax.set_ylabel("mean normalised cost")
    axes[0][0].legend(fontsize=6)
    fig.suptitle("lambda -> cost (grey: the 0.3-0.9 span the map must cover)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "lambda_cost.png", dpi=110)
    plt.close(fig)


def fig_difficulty(dt: pd.DataFrame, out: Path, plt) -> None:
    if dt.empty:
        return
    d = dt[(dt["ref_cost"] == 0.6) & (dt["setting"] == "linear")]
    tasks = sorted(d["task"].unique())
    fig, axes = plt.subplots(2, len(tasks), figsize=(5.2 * len(tasks), 6.4), squeeze=False)
    for j, task in enumerate(tasks):
        s = d[d["task"] == task]
        for method, g in s.groupby("method"):
            name, st = _pick_style(method)
            g = g.sort_values("level")
            cost = (g["cost"] * g["n"]).sum() / g["n"].sum()
            lab = f"{name} (cost {cost:.2f})"
            axes[0][j].errorbar(g["level"], g["mean_exit"], yerr=g["mean_exit_sd"].fillna(0),
                                capsize=2, ms=4, label=lab, **st)
            axes[1][j].errorbar(g["level"], g["accuracy"], yerr=g["accuracy_sd"].fillna(0),
                                capsize=2, ms=4, label=lab, **st)
        axes[0][j].set_title(f"{task}: each method at the cost of the CDF rule's point "
                             "nearest 0.6", fontsize=8)
        axes[0][j].set_ylabel("mean exit (1 = first)")
        axes[1][j].set_ylabel("accuracy")
        xl = "level (1 = easiest)" if task == "fold" else "corruption severity"
        axes[1][j].set_xlabel(xl)
        axes[0][j].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "exit_vs_difficulty.png", dpi=110)
    plt.close(fig)


def fig_calibration(pe: pd.DataFrame, mt: pd.DataFrame, out: Path, plt) -> None:
    panels = _panels(pe)
    fig, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 6.4), squeeze=False)
    for j, (task, setting) in enumerate(panels):
        s = pe[(pe["task"] == task) & (pe["setting"] == setting)].sort_values("exit")
        ax = axes[0][j]
        ax.bar(s["exit"], s["ece"], yerr=s["ece_sd"].fillna(0), color="C0", capsize=2)
        ax.set_title(f"{task} ({SETTING_TEXT.get(setting, setting)}): ECE per exit",
                     fontsize=9)
        ax.set_xlabel("exit (every example)")
        ax.set_ylabel("ECE (15 equal-mass bins)")
        m = mt[(mt["task"] == task) & (mt["setting"] == setting) & mt["in_range"]
               & (mt["baseline"] == "threshold")]
        ax = axes[1][j]
        for variant, g in m.groupby("variant"):
            g = g.sort_values("cost")
            ax.errorbar(g["cost"], g["d_ece"], yerr=g["d_ece_sd"].fillna(0), capsize=2, ms=4,
                        label=LABELS[("jei", variant)], **STYLE[("jei", variant)])
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xlabel("cost")
        ax.set_ylabel("ECE(JEI) - ECE(global threshold)")
    axes[1][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "calibration.png", dpi=110)
    plt.close(fig)


def fig_conformal(ct: pd.DataFrame, out: Path, plt) -> None:
    if ct.empty:
        return
    c = ct[ct["ref_cost"] == 0.6]
    panels = _panels(c)
    fig, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 6.2), squeeze=False)
    for j, (task, setting) in enumerate(panels):
        s = c[(c["task"] == task) & (c["setting"] == setting)]
        for method, g in s.groupby("method"):
            g = g.sort_values("alpha")
            name, st = _pick_style(method)
            st["ms"] = 3
            axes[0][j].errorbar(g["alpha"], g["coverage"], yerr=g["coverage_sd"].fillna(0),
                                capsize=2, label=name, **st)
            axes[1][j].errorbar(g["alpha"], g["set_size"], yerr=g["set_size_sd"].fillna(0),
                                capsize=2, label=f"{name} (cost {g['point_cost'].mean():.2f})",
                                **st)
        a = np.array(sorted(s["alpha"].unique()))
        axes[0][j].plot(a, 1 - a, "k--", lw=0.8, label="1 - alpha")
        axes[0][j].set_title(f"{task} ({SETTING_TEXT.get(setting, setting)})", fontsize=9)
        axes[1][j].set_xlabel("alpha")
        axes[1][j].legend(fontsize=5)
    axes[0][0].set_ylabel("empirical coverage")
    axes[1][0].set_ylabel("mean set size")
    fig.suptitle("Split conformal with per-exit thresholds, each method at the cost of the CDF "
                 "rule's point nearest 0.6", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "conformal.png", dpi=110)
    plt.close(fig)


def fig_exits(lc: pd.DataFrame, out: Path, plt) -> None:
    s = lc[(lc["setting"] == "linear") & (lc["variant"].isin(["paper", "cdf"]))]
    keys = sorted(set(zip(s["task"], s["variant"], strict=True)))
    if not keys:
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.4), squeeze=False)
    for ax, (task, variant) in zip(axes[0], keys, strict=True):
        g = s[(s["task"] == task) & (s["variant"] == variant)].sort_values("lambda")
        shares = np.array([list(map(float, x.split())) for x in g["exit_share"]])
        bottom = np.zeros(len(g))
        x = np.arange(len(g))
        for l in range(shares.shape[1]):
            ax.bar(x, shares[:, l], bottom=bottom, label=f"exit {l + 1}")
            bottom += shares[:, l]
        ax.set_xticks(x, [f"{v:g}" for v in g["lambda"]], rotation=60, fontsize=7)
        ax.set_title(f"{task}: {LABELS[('jei', variant)]}", fontsize=8)
        ax.set_xlabel("lambda")
    axes[0][0].set_ylabel("share of test examples")
    axes[0][-1].legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    fig.savefig(out / "exit_histograms.png", dpi=110)
    plt.close(fig)


def fig_reliability(rows: list[dict], out: Path, plt) -> None:
    """Reliability diagram of every exit (each exit used for every test example), bin-wise
    mean over seeds (equal-mass bins, so bins match in count)."""
    single = [r for r in rows if r["method"] == "single_exit"]
    panels = _panels(pd.DataFrame([{"task": r["task"], "setting": r["setting"]}
                                   for r in single]))
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.6), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, (task, setting) in zip(axes[0], panels, strict=True):
        rs = [r for r in single if r["task"] == task and r["setting"] == setting]
        exits = sorted({int(r["param"]) for r in rs})
        for e in exits:
            curves = [np.array(r["reliability"]) for r in rs if int(r["param"]) == e]
            k = min(len(c) for c in curves)
            c = np.mean([c[:k] for c in curves], axis=0)
            ax.plot(c[:, 0], c[:, 1], marker=".", ms=3, lw=1,
                    color=cmap(e / (max(exits) + 1)), label=f"exit {e}")
        ax.plot([0, 1], [0, 1], "k--", lw=0.7)
        ax.set_title(f"{task} ({SETTING_TEXT.get(setting, setting)})", fontsize=9)
        ax.set_xlabel("confidence")
    axes[0][0].set_ylabel("accuracy")
    axes[0][0].legend(fontsize=6)
    fig.suptitle("Reliability of each exit (15 equal-mass bins)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "reliability.png", dpi=110)
    plt.close(fig)


def _public(df: pd.DataFrame) -> pd.DataFrame:
    return df[[c for c in df.columns if not c.startswith("_")]]


def write_all(rows: list[dict], meta: list[dict], out: Path, run: dict) -> dict:
    """Write every table and figure and the README under ``out``; returns the frames."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from simstudy.neural.jei_dnn.readme import write_readme

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df = points_frame(rows)
    frames = {
        "points": df,
        "summary": summary(df),
        "per_exit": per_exit(df),
    }
    frames["lambda_cost"], frames["lambda_cost_verdict"] = lambda_cost(df)
    mt = matched(df)
    frames["matched"] = mt
    frames["matched_verdict"] = matched_verdicts(mt)
    picked = reference_points(rows)
    frames["difficulty"] = difficulty_table(picked, run.get("first_level"))
    frames["conformal"] = conformal_table(picked)
    frames["timings"] = timings(meta)
    for name, f in frames.items():
        write_table(_public(f), out / name)
    fig_accuracy_cost(df, out, plt)
    fig_lambda_cost(frames["lambda_cost"], out, plt)
    fig_difficulty(frames["difficulty"], out, plt)
    fig_calibration(frames["per_exit"], mt, out, plt)
    fig_conformal(frames["conformal"], out, plt)
    fig_exits(frames["lambda_cost"], out, plt)
    fig_reliability(rows, out, plt)
    write_json(out / "run.json", run)
    write_readme(frames, run, out)
    return frames
