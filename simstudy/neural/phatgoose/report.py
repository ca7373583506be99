"""Tables (csv + md), figures and the README of the PHATGOOSE benchmark from per-seed results."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

LABELS = {
    "base": "Base model", "phatgoose": "PHATGOOSE", "average_activation": "Average Activation",
    "arrow": "Arrow", "retrieval": "Retrieval", "merged": "Merged experts",
    "multitask": "Multitask LoRA", "oracle": "Oracle", "best_individual": "Best Individual",
}
POST_HOC = ("average_activation", "arrow", "retrieval", "merged")


def tidy(results: Sequence[dict]) -> pd.DataFrame:
    """One row per (seed, method, task): accuracy and the task's split."""
    rows = []
    for r in results:
        split = {"base": "base", **{t: "held_in" for t in r["held_in"]},
                 **{t: "held_out" for t in r["held_out"]}}
        for method, per_task in r["accuracy"].items():
            for task, a in per_task.items():
                rows.append({"seed": r["seed"], "method": method, "task": task,
                             "split": split[task], "accuracy": a})
    return pd.DataFrame(rows)


def accuracy_table(df: pd.DataFrame, split: str, methods: Sequence[str]) -> pd.DataFrame:
    """Mean and sd over seeds of each method's accuracy per task of ``split`` and on average.

    The average column averages the tasks within each seed first, then takes mean and sd over
    seeds (so its sd is the seed-to-seed spread of the average).
    """
    sub = df[df.split == split]
    tasks = list(dict.fromkeys(sub.task))
    per_seed = sub.pivot_table(index=["method", "seed"], columns="task", values="accuracy")
    per_seed = per_seed[tasks]
    per_seed["average"] = per_seed.mean(axis=1)
    mean = per_seed.groupby(level="method").mean()
    sd = per_seed.groupby(level="method").std(ddof=1) if df.seed.nunique() > 1 else mean * np.nan
    out = {}
    for m in methods:
        if m in mean.index:
            out[LABELS.get(m, m)] = {c: (mean.loc[m, c], sd.loc[m, c]) for c in mean.columns}
    table = pd.DataFrame(out).T
    return table[[*tasks, "average"]]


def fmt_cell(v) -> str:
    if isinstance(v, tuple):
        m, s = v
        return f"{100 * m:.1f}" + ("" if not np.isfinite(s) else f" ± {100 * s:.1f}")
    if isinstance(v, float):
        return "" if not np.isfinite(v) else f"{v:.3g}"
    return str(v)


def to_markdown(table: pd.DataFrame, index_name: str = "") -> str:
    cols = [str(c) for c in table.columns]
    lines = ["| " + " | ".join([index_name, *cols]) + " |",
             "|" + "---|" * (len(cols) + 1)]
    for idx, row in table.iterrows():
        lines.append("| " + " | ".join([str(idx), *(fmt_cell(v) for v in row)]) + " |")
    return "\n".join(lines)


def to_csv_frame(table: pd.DataFrame) -> pd.DataFrame:
    """Split (mean, sd) cells into ``<col>_mean`` / ``<col>_sd`` columns."""
    out = {}
    for c in table.columns:
        cells = table[c]
        if all(isinstance(v, tuple) for v in cells):
            out[f"{c}_mean"] = [v[0] for v in cells]
            out[f"{c}_sd"] = [v[1] for v in cells]
        else:
            out[c] = list(cells)
    return pd.DataFrame(out, index=table.index)


def routing_table(results: Sequence[dict]) -> pd.DataFrame:
    """Per router and task (held-out, then held-in): normalised entropy, Oracle agreement and
    constituent mass, mean over seeds. On a held-in task the Oracle is (nearly always) the task's
    own expert, so its agreement says how often the router finds the expert trained for the
    data."""
    rows = []
    for r in results:
        for method, per_task in r["routing"].items():
            for split, tasks in (("held_out", r["held_out"]), ("held_in", r["held_in"])):
                for task in tasks:
                    s = per_task[task]
                    rows.append({"method": LABELS[method], "split": split, "task": task,
                                 "seed": r["seed"],
                                 "mean_entropy": s.get("mean_entropy", np.nan),
                                 "oracle_agreement": s["oracle_agreement"],
                                 "constituent_mass": s["constituent_mass"]})
    df = pd.DataFrame(rows)
    return df.groupby(["split", "method", "task"], sort=False)[
        ["mean_entropy", "oracle_agreement", "constituent_mass"]].mean()


def compute_table(results: Sequence[dict]) -> pd.DataFrame:
    """Gate step vs expert training: steps, trainable parameters, wall time (mean over seeds)."""
    rows = []
    for r in results:
        t = r["timings"]
        e = np.mean(list(t["experts"].values()))
        g = np.mean(list(t["gates"].values()))
        rows.append({"seed": r["seed"], "expert_steps": r["steps"]["expert"],
                     "gate_steps": r["steps"]["gate"],
                     "expert_params": r["trainable_params"]["expert"],
                     "gate_params": r["trainable_params"]["gate"],
                     "expert_seconds": e, "gate_seconds": g, "wall_ratio": g / e,
                     "base_seconds": t["base"], "multitask_seconds": t["multitask"],
                     "multitask_steps": r["steps"]["multitask"]})
    df = pd.DataFrame(rows).set_index("seed")
    df.loc["mean"] = df.mean()
    return df


def plot_accuracy(df: pd.DataFrame, methods: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sub = df[df.split == "held_out"]
    tasks = [*dict.fromkeys(sub.task), "average"]
    per_seed = sub.pivot_table(index=["method", "seed"], columns="task", values="accuracy")
    per_seed["average"] = per_seed.mean(axis=1)
    fig, ax = plt.subplots(figsize=(12, 4.5))
    width = 0.8 / len(methods)
    x = np.arange(len(tasks))
    for j, m in enumerate(methods):
        vals = per_seed.loc[m][tasks]
        err = vals.std(ddof=1) if len(vals) > 1 else None
        ax.bar(x + (j - len(methods) / 2 + 0.5) * width, vals.mean(), width, yerr=err,
               label=LABELS[m], capsize=2)
    ax.set_xticks(x, tasks, rotation=20, ha="right")
    ax.set_ylabel("held-out test accuracy")
    ax.set_ylim(0, 1)
    ax.legend(ncol=5, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 1.18))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_routing(result: dict, method: str, path: Path) -> None:
    """Heatmaps (module x expert) of the mean routing weight on each held-out task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = result["held_out"]
    cols = 3
    rows = int(np.ceil(len(tasks) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.8 * rows), squeeze=False,
                             layout="constrained")
    for ax, task in zip(axes.flat, tasks, strict=False):
        dist = result["routing"][method][task]["distribution"]
        mat = np.array([dist[m] for m in result["modules"]])
        im = ax.imshow(mat, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_title(f"{task} (oracle: {result['oracle'][task]})", fontsize=8)
        ax.set_xticks(range(len(result["experts"])), result["experts"], rotation=45,
                      ha="right", fontsize=7)
        ax.set_yticks(range(len(result["modules"])), result["modules"], fontsize=6)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="mean top-2 weight")
    fig.suptitle(f"{LABELS[method]}: mean routing weight per module (seed {result['seed']})")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(results: Sequence[dict], run: dict, out: Path, figures: bool = True) -> None:
    """Write every table, figure and the README under ``out``.

    ``run`` describes this invocation; it is appended to ``out/runs.jsonl`` so that the README
    can report the wall time of the invocation that actually trained the stages.
    """
    import json

    from simstudy.neural.phatgoose.bench import METHODS, ROUTERS
    from simstudy.neural.phatgoose.readme import render

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "runs.jsonl", "a") as fh:
        fh.write(json.dumps(run) + "\n")
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines() if line]
    df = tidy(results)
    df.to_csv(out / "accuracy_long.csv", index=False)
    tables = {
        "heldout_accuracy": accuracy_table(df, "held_out", METHODS),
        "heldin_accuracy": accuracy_table(df, "held_in", METHODS),
        "base_task_accuracy": accuracy_table(df, "base", METHODS),
    }
    for name, t in tables.items():
        to_csv_frame(t).to_csv(out / f"{name}.csv")
        (out / f"{name}.md").write_text(to_markdown(t, "method") + "\n")
    rt = routing_table(results)
    rt.to_csv(out / "routing.csv")
    ct = compute_table(results)
    ct.to_csv(out / "compute.csv")
    r0 = results[0]
    mat = pd.DataFrame(np.mean([r["expert_matrix"] for r in results], axis=0),
                       index=r0["experts"], columns=r0["tasks"])
    mat.to_csv(out / "expert_task_matrix.csv")
    md = {
        "routing": to_markdown(rt.loc["held_out"].reset_index().set_index("method"), "method"),
        "routing_in": to_markdown(
            rt.loc["held_in"].drop(columns="constituent_mass").reset_index().set_index("method"),
            "method"),
        "compute": to_markdown(ct, "seed"),
        "matrix": to_markdown(mat.map(lambda v: round(100 * v, 1)), "expert \\ task"),
    }
    (out / "routing_held_in.md").write_text(md["routing_in"] + "\n")
    for k in ("routing", "compute"):
        (out / f"{k}.md").write_text(md[k] + "\n")
    (out / "expert_task_matrix.md").write_text(md["matrix"] + "\n")
    figs = []
    if figures:
        plot_accuracy(df, METHODS, out / "heldout_accuracy.png")
        figs.append("heldout_accuracy.png")
        for m in ROUTERS:
            plot_routing(r0, m, out / f"routing_{m}.png")
            figs.append(f"routing_{m}.png")
    (out / "README.md").write_text(render(results, run, tables, df, md, figs, runs=runs))
