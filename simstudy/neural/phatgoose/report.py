"""Tables (csv + md), figures and the README of the PHATGOOSE benchmark from its unit results.

Every markdown table goes through the project's one writer,
:func:`simstudy.reports.tables.to_markdown`. Cells are "mean ± sd" over seeds (percent), the sd
being seed-to-seed (base model, task tables, data, experts, gates all reseeded).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from simstudy.reports.tables import to_markdown

LABELS = {
    "base": "Base model", "phatgoose": "PHATGOOSE", "average_activation": "Average Activation",
    "arrow": "Arrow", "retrieval": "Retrieval", "merged": "Merged experts",
    "multitask": "Multitask LoRA", "oracle": "Oracle", "best_individual": "Best Individual",
}
ROUTER_LABELS = {k: LABELS[k] for k in ("phatgoose", "average_activation", "arrow")}


def pm(values, scale: float = 100.0, digits: int = 1) -> str:
    """'mean ± sd' of ``values`` (sd over seeds, ddof 1; just the mean for one value)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return ""
    m = scale * v.mean()
    if v.size == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {scale * v.std(ddof=1):.{digits}f}"


def _write(df: pd.DataFrame, out: Path, name: str) -> str:
    df.to_csv(out / f"{name}.csv", index=False)
    md = to_markdown(df)
    (out / f"{name}.md").write_text(md)
    return md


def tidy(results: Sequence[dict]) -> pd.DataFrame:
    """One row per (family, fraction, seed, method, task): accuracy and the task's split."""
    rows = []
    for r in results:
        held_out = set(r["held_out"])
        for method, per_task in r["accuracy"].items():
            for task, a in per_task.items():
                split = r["token_split"].get(method, {}).get(task, {})
                rows.append({"family": r["family"], "fraction": r["template_fraction"],
                             "seed": r["seed"], "main": r["main"], "method": method,
                             "task": task, "split": "held_out" if task in held_out else "held_in",
                             "accuracy": a,
                             "acc_domain_tokens": split.get("acc_domain_tokens", np.nan),
                             "acc_template_tokens": split.get("acc_template_tokens", np.nan)})
    return pd.DataFrame(rows)


def per_seed_average(df: pd.DataFrame, split: str, col: str = "accuracy") -> pd.DataFrame:
    """Average over the split's tasks within each (family, fraction, seed, method)."""
    sub = df[df["split"] == split]
    return sub.groupby(["family", "fraction", "seed", "method"], dropna=False)[col] \
        .mean().reset_index()


def accuracy_table(df: pd.DataFrame, split: str) -> pd.DataFrame:
    """Methods x tasks of ``split`` (+ average), 'mean ± sd' over seeds, in percent."""
    tasks = list(dict.fromkeys(df.loc[df["split"] == split, "task"]))
    avg = per_seed_average(df, split)
    rows = []
    for m in LABELS:
        sub = df[(df["method"] == m) & (df["split"] == split)]
        if sub.empty:
            continue
        row = {"method": LABELS[m]}
        for t in tasks:
            row[t] = pm(sub.loc[sub["task"] == t, "accuracy"])
        row["average"] = pm(avg.loc[avg["method"] == m, "accuracy"])
        rows.append(row)
    return pd.DataFrame(rows)


def token_type_table(df: pd.DataFrame) -> pd.DataFrame:
    """Held-in and held-out averages split by token type (domain vs template tokens)."""
    rows = []
    for m in LABELS:
        row = {"method": LABELS[m]}
        for split in ("held_in", "held_out"):
            for col, lab in (("accuracy", "all"), ("acc_domain_tokens", "domain tokens"),
                             ("acc_template_tokens", "template tokens")):
                avg = per_seed_average(df[df["method"] == m], split, col)
                row[f"{split.replace('_', '-')}: {lab}"] = pm(avg[col])
        rows.append(row)
    return pd.DataFrame(rows)


def module_accuracy(results: Sequence[dict], split: str, sweep_steps: str | None = None
                    ) -> pd.DataFrame:
    """Per router, module and token group: the share of tokens whose top-1 expert is the
    token's target expert (its governing domain's), one value per seed (task average)."""
    rows = []
    for r in results:
        tasks = r["held_in"] if split == "held_in" else r["held_out"]
        if sweep_steps is None:
            sources = {m: {t: r["routing"][m][t]["module_accuracy"] for t in tasks}
                       for m in ROUTER_LABELS}
        else:
            sources = {"phatgoose": {t: r["gate_sweep"][sweep_steps]["module_accuracy"][t]
                                     for t in tasks}}
        for method, per_task in sources.items():
            for module in r["modules"]:
                vals = np.array([per_task[t].get(module, [np.nan, np.nan]) for t in tasks],
                                dtype=float)
                if not vals.size:
                    continue
                with np.errstate(all="ignore"):
                    dom, tmpl = np.nanmean(vals[:, 0]), np.nanmean(vals[:, 1]) \
                        if np.isfinite(vals[:, 1]).any() else np.nan
                rows.append({"seed": r["seed"], "method": method, "module": module,
                             "domain_tokens": dom, "template_tokens": tmpl})
    return pd.DataFrame(rows)


def module_accuracy_table(mod_in: pd.DataFrame, mod_out: pd.DataFrame, chance: float
                          ) -> pd.DataFrame:
    rows = []
    for module in dict.fromkeys(mod_in["module"]):
        row = {"module": module}
        for method, lab in ROUTER_LABELS.items():
            for part, src in (("held-in", mod_in), ("held-out", mod_out)):
                for col, short in (("domain_tokens", "dom"), ("template_tokens", "tmpl")):
                    g = src[(src["module"] == module) & (src["method"] == method)]
                    row[f"{lab} {part} {short}"] = pm(g[col]) if len(g) else ""
        rows.append(row)
    out = pd.DataFrame(rows)
    out.loc[len(out)] = {"module": f"chance = {100 * chance:.1f}"}
    return out.fillna("")


def entropy_table(results: Sequence[dict]) -> pd.DataFrame:
    """Mean normalised routing entropy (over modules and tasks; 0 = one expert, 1 = uniform)
    per router, and Retrieval's share of sequences sent to an expert of their own domains."""
    rows = []
    for m, lab in ROUTER_LABELS.items():
        row = {"router": f"{lab}: normalised routing entropy"}
        for split in ("held_in", "held_out"):
            vals = [np.mean([r["routing"][m][t]["mean_entropy"] for t in r[split]])
                    for r in results]
            row[split.replace("_", "-")] = pm(vals, scale=1.0, digits=3)
        rows.append(row)
    row = {"router": "Retrieval: share of sequences sent to an expert of their own domains"}
    for split in ("held_in", "held_out"):
        vals = [np.mean([r["routing"]["retrieval"][t]["constituent_share"] for t in r[split]])
                for r in results]
        row[split.replace("_", "-")] = pm(vals, scale=1.0, digits=3)
    rows.append(row)
    return pd.DataFrame(rows)


def paired_difference(avg: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Per (fraction, seed): accuracy of method ``a`` minus method ``b`` (same seed)."""
    w = avg.pivot_table(index=["fraction", "seed"], columns="method", values="accuracy")
    return (w[a] - w[b]).rename("diff").reset_index()


def verdict(diffs: np.ndarray) -> str:
    """Plain reading of paired per-seed differences (PHATGOOSE minus a baseline)."""
    d = np.asarray(diffs, dtype=float)
    if d.size == 0:
        return "not measured"
    wins = int((d > 0).sum())
    if d.size == 1:
        return "ahead (1 seed, no spread)" if wins else "behind (1 seed, no spread)"
    sd = d.std(ddof=1)
    if wins == d.size and d.mean() > sd:
        return f"ahead in all {d.size} seeds"
    if wins == 0 and -d.mean() > sd:
        return f"behind in all {d.size} seeds"
    return f"no robust difference (ahead in {wins} of {d.size} seeds)"


def sweep_table(df: pd.DataFrame) -> pd.DataFrame:
    """Held-out average of every method at each template fraction, and PHATGOOSE vs AA."""
    tok = df[df["family"] == "tokens"]
    avg = per_seed_average(tok, "held_out")
    diff = paired_difference(avg, "phatgoose", "average_activation")
    rows = []
    for f in sorted(avg["fraction"].unique()):
        row = {"template fraction": f"{f:g}"}
        for m in LABELS:
            row[LABELS[m]] = pm(avg.loc[(avg["fraction"] == f) & (avg["method"] == m),
                                        "accuracy"])
        d = diff.loc[diff["fraction"] == f, "diff"].to_numpy()
        row["PHATGOOSE - AA (paired)"] = pm(d)
        row["PHATGOOSE vs AA"] = verdict(d)
        rows.append(row)
    return pd.DataFrame(rows)


def gate_sweep_table(results: Sequence[dict]) -> pd.DataFrame:
    """PHATGOOSE at each gate-step count (main units): held-out and held-in accuracy,
    held-in routing accuracy (mean over modules), gate examples per expert example."""
    main = [r for r in results if r["family"] == "tokens" and r["main"]]
    if not main:
        return pd.DataFrame()
    rows = {}
    for r in main:
        per = {str(r["steps"]["gate"]): (r["accuracy"]["phatgoose"],
                                         {t: r["routing"]["phatgoose"][t]["module_accuracy"]
                                          for t in r["held_in"]})}
        for k, v in r["gate_sweep"].items():
            per[k] = (v["accuracy"], v["module_accuracy"])
        aa = r["accuracy"]["average_activation"]
        for k, (accs, mods) in per.items():
            ho = np.mean([accs[t] for t in r["held_out"]])
            hi = np.mean([accs[t] for t in r["held_in"]])
            vals = np.array([m for t in r["held_in"] for m in mods[t].values()], dtype=float)
            d = ho - np.mean([aa[t] for t in r["held_out"]])
            rows.setdefault(int(k), []).append((ho, hi, np.nanmean(vals[:, 0]),
                                                np.nanmean(vals[:, 1]), d))
    cfg = main[0]["config"]
    out = []
    for k in sorted(rows):
        a = np.array(rows[k])
        out.append({"gate steps": k,
                    "gate examples / expert examples":
                        f"{k * cfg['gate_batch'] / (cfg['expert_steps'] * cfg['batch']):.2f}",
                    "held-out": pm(a[:, 0]), "held-in": pm(a[:, 1]),
                    "held-in routing, domain tokens": pm(a[:, 2]),
                    "held-in routing, template tokens": pm(a[:, 3]),
                    "held-out minus AA": pm(a[:, 4]), "vs AA": verdict(a[:, 4])})
    return pd.DataFrame(out)


def compute_table(results: Sequence[dict]) -> pd.DataFrame:
    """Expert vs gate training per family (main units and digits): steps, examples, params,
    seconds (means over seeds and experts)."""
    rows = []
    for fam, sel in (("tokens (main)", lambda r: r["family"] == "tokens" and r["main"]),
                     ("digits (control)", lambda r: r["family"] == "digits")):
        rs = [r for r in results if sel(r)]
        if not rs:
            continue
        e = np.mean([np.mean(list(r["timings"]["experts"].values())) for r in rs])
        gk = str(rs[0]["steps"]["gate"])
        g = np.mean([np.mean(list(r["timings"]["gates"][gk].values())) for r in rs])
        r0 = rs[0]
        rows.append({"family": fam, "expert steps": r0["steps"]["expert"],
                     "expert examples": r0["examples"]["expert"],
                     "gate steps": r0["steps"]["gate"], "gate examples": r0["examples"]["gate"],
                     "expert params": r0["trainable_params"]["expert"],
                     "gate params": r0["trainable_params"]["gate"],
                     "expert seconds": f"{e:.1f}", "gate seconds": f"{g:.1f}",
                     "gate / expert time": f"{g / e:.2f}",
                     "base seconds": f"{np.mean([r['timings']['base'] for r in rs]):.1f}",
                     "multitask seconds":
                         f"{np.mean([r['timings']['multitask'] for r in rs]):.1f}"})
    return pd.DataFrame(rows)


def digits_table(df: pd.DataFrame, results: Sequence[dict]) -> pd.DataFrame:
    dig = df[df["family"] == "digits"]
    if dig.empty:
        return pd.DataFrame()
    hi, ho = per_seed_average(dig, "held_in"), per_seed_average(dig, "held_out")
    mods = module_accuracy([r for r in results if r["family"] == "digits"], "held_in")
    rows = []
    for m in LABELS:
        row = {"method": LABELS[m], "held-in": pm(hi.loc[hi["method"] == m, "accuracy"]),
               "held-out": pm(ho.loc[ho["method"] == m, "accuracy"])}
        if m in ROUTER_LABELS and len(mods):
            g = mods[mods["method"] == m].groupby("seed")["domain_tokens"].mean()
            row["held-in routing to own expert (module mean)"] = pm(g)
        rows.append(row)
    return pd.DataFrame(rows).fillna("")


# -- figures ------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _mean_sd(v) -> tuple[float, float]:
    v = np.asarray(v, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def plot_split_bars(sub: pd.DataFrame, title: str, ylabel: str, path: Path) -> None:
    """Held-in and held-out averages per method (bars, sd over seeds)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 4))
    methods = [m for m in LABELS if m in set(sub["method"])]
    x = np.arange(len(methods))
    for j, split in enumerate(("held_in", "held_out")):
        avg = per_seed_average(sub, split)
        ms = [_mean_sd(avg.loc[avg["method"] == m, "accuracy"]) for m in methods]
        ax.bar(x + (j - 0.5) * 0.38, [100 * a for a, _ in ms], 0.38,
               yerr=[100 * s for _, s in ms], capsize=3, label=split.replace("_", "-"))
    ax.set_xticks(x, [LABELS[m] for m in methods], rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 105)
    ax.legend()
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_main(df: pd.DataFrame, path: Path) -> None:
    main = df[(df["family"] == "tokens") & df["main"]]
    plot_split_bars(main, f"Per-token family, template fraction {main['fraction'].iloc[0]:g}: "
                          f"{main['seed'].nunique()} seeds",
                    "token accuracy (%), mean ± sd over seeds", path)


def plot_sweep(df: pd.DataFrame, path: Path) -> None:
    plt = _plt()
    tok = df[df["family"] == "tokens"]
    avg = per_seed_average(tok, "held_out")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, m in enumerate(("phatgoose", "average_activation", "arrow", "retrieval", "merged",
                           "oracle", "multitask")):
        fs = sorted(avg["fraction"].unique())
        ms = [_mean_sd(avg.loc[(avg["fraction"] == f) & (avg["method"] == m), "accuracy"])
              for f in fs]
        ax.errorbar(np.array(fs) + 0.004 * (i - 3), [100 * a for a, _ in ms],
                    yerr=[100 * s for _, s in ms], marker="o", capsize=3, label=LABELS[m])
    ax.set_xlabel("template-token fraction")
    ax.set_ylabel("held-out token accuracy (%), mean ± sd")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_gate_sweep(table: pd.DataFrame, results: Sequence[dict], path: Path) -> None:
    plt = _plt()
    main = [r for r in results if r["family"] == "tokens" and r["main"]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    per: dict[int, list] = {}
    for r in main:
        per.setdefault(r["steps"]["gate"], []).append((r["accuracy"]["phatgoose"], r, None))
        for k, v in r["gate_sweep"].items():
            per.setdefault(int(k), []).append((v["accuracy"], r, k))
    ks = sorted(per)
    for split, ls in (("held_out", "-"), ("held_in", "--")):
        vals = [_mean_sd([np.mean([a[t] for t in r[split]]) for a, r, _ in per[k]]) for k in ks]
        axes[0].errorbar(ks, [100 * a for a, _ in vals], yerr=[100 * s for _, s in vals],
                         marker="o", ls=ls, capsize=3, label=f"PHATGOOSE {split}")
        aa = _mean_sd([np.mean([r["accuracy"]["average_activation"][t] for t in r[split]])
                       for r in main])
        axes[0].axhline(100 * aa[0], color="C3" if split == "held_out" else "C4", ls=ls,
                        lw=0.8, label=f"Average Activation {split}")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
    axes[1].set_ylim(0, 100)
    axes[0].set_xlabel("gate training steps")
    axes[0].set_ylabel("token accuracy (%)")
    axes[0].legend(fontsize=7)
    for col, lab in ((2, "domain tokens"), (3, "template tokens")):
        vals = []
        for k in ks:
            seeds = []
            for _, r, key in per[k]:
                mods = (r["gate_sweep"][key]["module_accuracy"] if key is not None else
                        {t: r["routing"]["phatgoose"][t]["module_accuracy"]
                         for t in r["held_in"]})
                v = np.array([m for t in r["held_in"] for m in mods[t].values()], dtype=float)
                seeds.append(np.nanmean(v[:, col - 2]))
            vals.append(_mean_sd(seeds))
        axes[1].errorbar(ks, [100 * a for a, _ in vals], yerr=[100 * s for _, s in vals],
                         marker="o", capsize=3, label=lab)
    chance = 100 / len(main[0]["held_in"])
    axes[1].axhline(chance, color="grey", lw=0.8, ls=":", label="chance")
    axes[1].set_xlabel("gate training steps")
    axes[1].set_ylabel("held-in routing accuracy (%), module mean")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_module_accuracy(mod_in: pd.DataFrame, mod_out: pd.DataFrame, chance: float,
                         path: Path) -> None:
    plt = _plt()
    modules = list(dict.fromkeys(mod_in["module"]))
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), sharey=True)
    x = np.arange(len(modules))
    for ax, src, title in ((axes[0], mod_in, "held-in"), (axes[1], mod_out, "held-out")):
        for i, (m, lab) in enumerate(ROUTER_LABELS.items()):
            for col, ls, mk in (("domain_tokens", "-", "o"), ("template_tokens", "--", "s")):
                ms = [_mean_sd(src.loc[(src["module"] == mod) & (src["method"] == m), col])
                      for mod in modules]
                ax.errorbar(x + 0.08 * (i - 1), [100 * a for a, _ in ms],
                            yerr=[100 * s for _, s in ms], color=f"C{i}", ls=ls, marker=mk,
                            capsize=2, ms=3, label=f"{lab}, {col.replace('_', ' ')}")
        ax.axhline(100 * chance, color="grey", lw=0.8, ls=":")
        ax.set_ylim(0, 100)
        ax.set_xticks(x, modules, rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{title}: top-1 expert = the token's domain expert", fontsize=9)
    axes[0].set_ylabel("routing accuracy (%), mean ± sd over seeds")
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_digits(df: pd.DataFrame, path: Path) -> None:
    dig = df[df["family"] == "digits"]
    plot_split_bars(dig, "Negative control: digits family (whole-image transforms)",
                    "accuracy (%), mean ± sd", path)


def write_all(results: Sequence[dict], run: dict, out: Path, figures: bool = True) -> None:
    """Write every table, figure and the README under ``out``.

    ``run`` describes this invocation; it is appended to ``out/runs.jsonl`` so the README can
    report the wall time of the invocation that trained the stages.
    """
    from simstudy.neural.phatgoose.readme import render

    out.mkdir(parents=True, exist_ok=True)
    (out / "run.json").write_text(json.dumps(run, indent=1) + "\n")  # this invocation
    with open(out / "runs.jsonl", "a") as fh:  # every invocation that wrote to ``out``
        fh.write(json.dumps(run) + "\n")
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines() if line]
    df = tidy(results)
    df.to_csv(out / "accuracy_long.csv", index=False)
    main_results = [r for r in results if r["family"] == "tokens" and r["main"]]
    main = df[(df["family"] == "tokens") & df["main"]]
    md = {}
    md["heldout"] = _write(accuracy_table(main, "held_out"), out, "heldout_accuracy")
    md["heldin"] = _write(accuracy_table(main, "held_in"), out, "heldin_accuracy")
    md["token_types"] = _write(token_type_table(main), out, "token_types")
    chance = 1.0 / len(main_results[0]["held_in"])
    mod_in = module_accuracy(main_results, "held_in")
    mod_out = module_accuracy(main_results, "held_out")
    pd.concat([mod_in.assign(split="held_in"), mod_out.assign(split="held_out")]).to_csv(
        out / "routing_accuracy_long.csv", index=False)
    md["routing"] = _write(module_accuracy_table(mod_in, mod_out, chance), out,
                           "routing_accuracy")
    md["entropy"] = _write(entropy_table(main_results), out, "routing_entropy")
    md["sweep"] = _write(sweep_table(df), out, "template_sweep")
    gst = gate_sweep_table(results)
    md["gate_sweep"] = _write(gst, out, "gate_steps")
    md["compute"] = _write(compute_table(results), out, "compute")
    dt = digits_table(df, results)
    md["digits"] = _write(dt, out, "digits_control") if len(dt) else ""
    r0 = main_results[0]
    mat = pd.DataFrame(np.mean([r["expert_matrix"] for r in main_results], axis=0) * 100,
                       index=r0["held_in"], columns=r0["tasks"]).round(1)
    md["matrix"] = _write(mat.reset_index(names="expert \\ task"), out, "expert_task_matrix")
    figs = []
    if figures:
        plot_main(df, out / "accuracy.png")
        plot_sweep(df, out / "template_sweep.png")
        plot_gate_sweep(gst, results, out / "gate_steps.png")
        plot_module_accuracy(mod_in, mod_out, chance, out / "routing_accuracy.png")
        figs = ["accuracy.png", "template_sweep.png", "gate_steps.png", "routing_accuracy.png"]
        if len(dt):
            plot_digits(df, out / "digits_control.png")
            figs.append("digits_control.png")
    (out / "README.md").write_text(render(results, run, df, md, figs, runs, mod_in, chance))
