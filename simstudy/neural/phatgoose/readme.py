"""The benchmark's README: the proxy, the measured tables and a plain comparison with the
paper's claims. Every number in it is computed from the unit results passed in."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from simstudy.neural.phatgoose.report import (
    LABELS,
    paired_difference,
    per_seed_average,
    pm,
    verdict,
)

PROXY = """\
## The main proxy: a per-token task family

A frozen base model, a library of independently trained LoRA experts, a post-hoc gate per
expert trained only on that expert's own data, zero-shot evaluation on tasks no expert saw: the
paper's setting with every component kept, on a family where, as with the paper's prompts,
each token carries evidence of its task.

- Tokens: {n_domains} domains x {symbols} domain tokens each, plus {n_templates} template tokens
  shared by all domains; sequences of {seq_len} tokens, one label per token ({n_labels} classes
  shared by all tasks). Each domain has its own skill, fixed random tables: a permutation of
  its symbols onto the labels; a shift of that label when the previous token is a template
  (which template, per domain: the skill depends on the previous token); and a label for each
  template token that depends on the domain of the nearest preceding domain token (the domain
  is visible to a template token only through its context, like a prompt, so routing it needs
  attention).
- Held-in tasks: one per domain ({n_train:,} training and {n_test:,} test sequences each); a
  position after the first is a template token with probability *f* (the template fraction;
  main value {main_f:g}). Held-out tasks (never trained on): {held_out} -- sequences mixing the
  tokens of 2-3 domains token by token. No single expert solves them (the Oracle, the best
  single expert chosen with test labels, gets about 1/m of them right for m mixed domains);
  per-token, per-module mixing of the held-in experts can.
- Base model: the project's shared tiny transformer (`simstudy/neural/transformer.py`: width
  {width}, {depth} pre-norm blocks, {heads} heads, one label per token), pre-trained on the
  family's structure with tables of its own ({n_base:,} sequences mixing 1-3 domains): it knows
  which domain a token belongs to and how context matters, as a pre-trained language model
  knows topics, but none of the tasks' skills (on every task it is at chance). One base model
  per seed serves the whole template sweep.
- Experts: LoRA rank {rank} on every linear module ({n_modules}: q, k, v, o, fc1, fc2 of every
  block and the head; the token embedding is a lookup, not wrapped, so no wrapped module ever
  sees a constant input: counted on all training data, {n_constant} constant-input tokens),
  {expert_steps} Adam steps of {batch} sequences. Gates: {gate_steps} steps of {gate_batch}
  sequences per expert (the paper's budget: 100 steps of 1,024 examples), base and LoRA frozen.
- Baselines as in the paper: Average Activation (router vector = the module's mean input over
  the expert's data, the same standardised top-2 rule), Arrow (top right singular vector of
  B A, score |u . v| / T with the reference's T = {arrow_t:g}), Retrieval (the nearest stored
  training example, {retrieval_per_task} per expert, by cosine similarity of the *raw input*
  -- here the bag of tokens, the analogue of the paper's sentence encoder -- one expert per
  example), Merged experts (one averaged LoRA), Multitask LoRA (one LoRA trained on the union of
  the held-in data, {multitask_steps} steps, {mt_share:.0%} of the examples all experts saw
  together: the reference that needs simultaneous data access), Oracle and Best Individual
  (chosen with test labels).
"""

DIFFERS = """\
## Where the proxy differs from the paper

- Scale: a tiny transformer ({n_params:,} parameters) and {n_experts} experts, against T5-XL
  with 36 or 166 experts; classification per token, no generation.
- The held-out tasks are, by construction, token-level mixtures of held-in skills: exactly what
  per-token routing can assemble. The paper's held-out tasks (T0 held-out, BIG-bench) are new
  tasks whose relation to the held-in ones is unknown; so this proxy measures whether the
  routing *mechanism* works when composition is possible, not whether zero-shot generalisation
  happens on natural tasks.
- The domains are disjoint vocabulary slices, so a domain token's identity alone reveals its
  expert (the paper's prompts are far less clean); the template tokens are the part where the
  task must be read from context, and the template sweep varies how much of that there is.
- The base model was pre-trained on the family's structure (with other tables). T5 was
  pre-trained on text, which also "knows" topics; how much domain structure a base model carries
  decides how easy routing from activations is (with a base pre-trained on an unstructured
  generic task, routing failed for every router in a first attempt).
- Numbers are from CPU runs with {seeds} seeds; the spread is seed to seed (task tables, data,
  base model, experts, gates and retrieval stores are all reseeded).
"""


def _avg(df: pd.DataFrame, method: str, split: str) -> np.ndarray:
    a = per_seed_average(df, split)
    return a.loc[a["method"] == method].sort_values("seed")["accuracy"].to_numpy()


def headline(main: pd.DataFrame, df: pd.DataFrame) -> str:
    """Plain sentences: PHATGOOSE against each baseline on the main proxy and across the
    template sweep."""
    lines = []
    p_out, p_in = _avg(main, "phatgoose", "held_out"), _avg(main, "phatgoose", "held_in")
    lines.append(f"- Held-out (token-level mixtures), main template fraction: PHATGOOSE "
                 f"{pm(p_out)}%, held-in {pm(p_in)}%.")
    for m in ("average_activation", "arrow", "retrieval", "merged", "oracle", "multitask"):
        d = p_out - _avg(main, m, "held_out")
        lines.append(f"  - vs {LABELS[m]} ({pm(_avg(main, m, 'held_out'))}%): "
                     f"{pm(d)} points, {verdict(d)}.")
    tok = df[df["family"] == "tokens"]
    avg = per_seed_average(tok, "held_out")
    diff = paired_difference(avg, "phatgoose", "average_activation")
    parts = []
    ahead, behind = [], []
    for f in sorted(diff["fraction"].unique()):
        d = diff.loc[diff["fraction"] == f, "diff"].to_numpy()
        v = verdict(d)
        parts.append(f"f = {f:g}: {pm(d)} points ({v})")
        (ahead if v.startswith("ahead") else behind if v.startswith("behind") else []).append(
            f"{f:g}")
    lines.append("- PHATGOOSE minus Average Activation on the held-out mixtures, by template "
                 "fraction: " + "; ".join(parts) + ".")
    plain = []
    if ahead:
        plain.append(f"PHATGOOSE beats Average Activation robustly at f = {', '.join(ahead)}")
    if behind:
        plain.append(f"Average Activation beats PHATGOOSE robustly at f = {', '.join(behind)}")
    rest = sorted(set(f"{f:g}" for f in diff["fraction"].unique()) - set(ahead) - set(behind),
                  key=float)
    if rest:
        plain.append(f"no robust difference at f = {', '.join(rest)}")
    lines.append("- **In plain words: " + "; ".join(plain) + ".** (Robust = the same sign in "
                 "every seed and a mean paired difference larger than its seed-to-seed sd.)")
    return "\n".join(lines) + "\n"


def routing_sentence(mod_in: pd.DataFrame, chance: float) -> str:
    lines = []
    for m in ("phatgoose", "average_activation", "arrow"):
        g = mod_in[mod_in["method"] == m]
        dom = g.groupby("seed")["domain_tokens"].mean()
        tmpl = g.groupby("seed")["template_tokens"].mean()
        first = g[g["module"].str.startswith("blocks.0.attn")]
        later = g[~g["module"].str.startswith("blocks.0.attn")]
        lines.append(
            f"- {LABELS[m]}: held-in top-1 on the own expert, mean over modules: domain tokens "
            f"{pm(dom)}%, template tokens {pm(tmpl)}% (chance {100 * chance:.1f}%); template "
            f"tokens in the first attention block's q/k/v/o (no context mixed in yet) "
            f"{pm(first.groupby('seed')['template_tokens'].mean())}%, in the later modules "
            f"{pm(later.groupby('seed')['template_tokens'].mean())}%.")
    return "\n".join(lines) + "\n"


def digits_sentence(df: pd.DataFrame) -> str:
    dig = df[df["family"] == "digits"]
    if dig.empty:
        return "Not run (`--no-digits`).\n"
    p = _avg(dig, "phatgoose", "held_out")
    o = _avg(dig, "oracle", "held_out")
    mt = _avg(dig, "multitask", "held_out")
    pin = _avg(dig, "phatgoose", "held_in")
    oin = _avg(dig, "oracle", "held_in")
    return (f"Held-out: PHATGOOSE {pm(p)}%, Oracle {pm(o)}%, Multitask {pm(mt)}%; held-in: "
            f"PHATGOOSE {pm(pin)}% against {pm(oin)}% for the own expert. As expected of the "
            "negative control: whole-image transforms of 8x8 digits leave little task evidence "
            "in a 2x2-pixel token, and compositions of whole-image transforms cannot be "
            "assembled by mixing experts per token, so every method stays far from what the "
            "experts reach on their own tasks. (The patch embedding gets no LoRA here: zero "
            "background patches are constant inputs that tie every routing score.)\n")


PAPER = """\
## Comparison with the paper's claims

The paper (Muqeeth et al., ICML 2024; abstract) claims that PHATGOOSE "outperforms past methods
for post-hoc routing and, in some cases, outperforms explicit multitask training (which
requires simultaneous data access)", and that routing per token and per module matters. On this
proxy (numbers above, same seeds):

{claims}
"""


def claims(main: pd.DataFrame, df: pd.DataFrame) -> str:
    p = _avg(main, "phatgoose", "held_out")
    out = []
    post = {m: verdict(p - _avg(main, m, "held_out"))
            for m in ("average_activation", "arrow", "retrieval", "merged")}
    ok = [LABELS[m] for m, v in post.items() if v.startswith("ahead")]
    not_ok = [f"{LABELS[m]} ({v})" for m, v in post.items() if not v.startswith("ahead")]
    out.append("- *Outperforms past post-hoc routing methods*: ahead of "
               + (", ".join(ok) if ok else "none of them")
               + ("" if not not_ok else "; not robustly ahead of " + ", ".join(not_ok)) + ".")
    mt = p - _avg(main, "multitask", "held_out")
    out.append(f"- *Sometimes outperforms multitask training*: PHATGOOSE minus Multitask LoRA "
               f"{pm(mt)} points ({verdict(mt)}); Multitask LoRA is trained on every held-in "
               "token, so on a family of token-level mixtures it is close to an upper bound.")
    r = _avg(main, "retrieval", "held_out")
    out.append(f"- *Per-token routing over per-example routing*: PHATGOOSE {pm(p)}% against "
               f"Retrieval {pm(r)}% (one expert per sequence) and the Oracle "
               f"{pm(_avg(main, 'oracle', 'held_out'))}% (the best single expert per task).")
    return "\n".join(out)


def stage_cost(run: dict) -> str:
    """The cost from an empty cache: the stages' own training times (``run['stage_seconds']``)."""
    st = run.get("stage_seconds")
    if not st:
        return ""
    jobs = max(1, int(run.get("jobs", 1)))
    return (f"Training the stages behind these numbers took {st['total']:,.0f} single-thread "
            f"seconds in all (base models {st['base']:,.0f}, experts {st['experts']:,.0f}, "
            f"gates {st['gates']:,.0f}, multitask {st['multitask']:,.0f}; evaluation not "
            f"included), read from the cached stages: from an empty cache with {jobs} "
            f"worker{'s' if jobs > 1 else ''} that is at least {st['total'] / jobs / 60:.0f} "
            "minutes of wall time on this machine, whatever the invocation below that loaded "
            "them from the cache took. Budget: 10 minutes per benchmark"
            + (" (met)." if st["total"] / jobs <= 600 else
               f" -- **missed**; `--seeds 1` would cut it to about "
               f"{st['total'] / jobs / 60 / max(1, int(run.get('seeds', 1))):.0f} minutes.")
            + "\n\n")


def invocations(runs: Sequence[dict] | None) -> str:
    if not runs:
        return ""
    lines = ["| date | command | seconds | jobs | load average (start -> end) |",
             "|---|---|---|---|---|"]
    for r in runs[-8:]:
        ls, le = r.get("load_start", [np.nan]), r.get("load_end", [np.nan])
        lines.append(f"| {r['date']} | `{r['command'].strip()}` | {r['seconds']:.0f} | "
                     f"{r.get('jobs', '')} | {ls[0]:.1f} -> {le[0]:.1f} |")
    return "\n".join(lines) + "\n"


def render(results: Sequence[dict], run: dict, df: pd.DataFrame, md: dict,
           figs: Sequence[str], runs: Sequence[dict] | None, mod_in: pd.DataFrame,
           chance: float) -> str:
    main_r = [r for r in results if r["family"] == "tokens" and r["main"]]
    r0 = main_r[0]
    cfg, fam = r0["config"], r0["family_config"]
    main = df[(df["family"] == "tokens") & df["main"]]
    n_params = sum(r0["trainable_params"].values())  # placeholder, replaced below
    from simstudy.neural.phatgoose.base import build_base
    from simstudy.neural.phatgoose.tokens import TokenFamily

    family = TokenFamily(**{k: (tuple(tuple(h) for h in v) if k == "held_out" else v)
                            for k, v in fam.items()})
    model = build_base(family, cfg["width"], cfg["depth"], cfg["heads"], cfg["mlp_ratio"])
    n_params = sum(p.numel() for p in model.parameters())
    proxy = PROXY.format(
        n_domains=fam["n_domains"], symbols=fam["symbols"], n_templates=fam["n_templates"],
        seq_len=fam["seq_len"], n_labels=fam["n_labels"], n_train=fam["n_train"],
        n_test=fam["n_test"], main_f=fam["template_fraction"],
        held_out=", ".join(f"`{t}`" for t in r0["held_out"]), width=cfg["width"],
        depth=cfg["depth"], heads=cfg["heads"], n_base=fam["n_base"], rank=cfg["rank"],
        n_modules=len(r0["modules"]), n_constant=sum(r0["constant_input_tokens"].values()),
        expert_steps=cfg["expert_steps"], batch=cfg["batch"], gate_steps=cfg["gate_steps"],
        gate_batch=cfg["gate_batch"], arrow_t=cfg["arrow_temperature"],
        retrieval_per_task=cfg["retrieval_per_task"],
        multitask_steps=r0["steps"]["multitask"],
        mt_share=r0["steps"]["multitask"] / (cfg["expert_steps"] * len(r0["held_in"])))
    differs = DIFFERS.format(n_params=n_params, n_experts=len(r0["held_in"]),
                             seeds=len(main_r))
    quick = " (**`--quick` sizes: a smoke test, not results**)" if run.get("quick") else ""
    parts = [
        f"# PHATGOOSE: post-hoc routing among LoRA experts{quick}\n",
        "Made by `python -m simstudy neural phatgoose` (code: `simstudy/neural/phatgoose/`). "
        "Every number below is computed from the per-unit results of that command (cached "
        "under `results/neural/cache/phatgoose`); rerunning recomputes only missing stages. "
        "Accuracies are per token, in percent, mean ± sd over seeds.\n",
        proxy,
        "## Headline\n", headline(main, df),
        f"\n![accuracy](accuracy.png)\n\n### Held-out tasks (main template fraction)\n\n"
        f"{md['heldout']}\n### Held-in tasks\n\n{md['heldin']}\n",
        "### By token type\n\nDomain tokens reveal their expert by identity; template tokens "
        "only through context.\n\n" + md["token_types"],
        "\n## Routing accuracy per module\n\nShare of tokens whose top-1 expert is the expert of "
        "the token's governing domain (held-in: the task's own expert; held-out: the domain the "
        "token comes from). Must be well above chance held-in for routing to mean anything.\n\n"
        + routing_sentence(mod_in, chance) + "\n![routing accuracy](routing_accuracy.png)\n\n"
        + md["routing"] + "\nRouting entropy (0 = one expert per token, 1 = uniform; mean "
        "over modules and tasks) and Retrieval's hit rate:\n\n"
        + md["entropy"],
        "\n## Template-fraction sweep\n\nThe whole pipeline (experts, gates, multitask) "
        "retrained at each template fraction on the same base model.\n\n"
        + md["sweep"] + "\n![template sweep](template_sweep.png)\n",
        "\n## Gate-step sweep (main template fraction)\n\nPHATGOOSE gates retrained from zero "
        "with each step count (same batch); everything else fixed.\n\n" + md["gate_sweep"]
        + "\n![gate steps](gate_steps.png)\n",
        "\n## Negative control: the digits family\n\nThe first proxy of this benchmark "
        "(variants of scikit-learn's 8x8 digits: rotation, flips, a shift, inversion, a label "
        "permutation; held-out = two chained), kept to show what happens when task identity "
        "is not visible per token. It is not evidence for or against PHATGOOSE.\n\n"
        + digits_sentence(df) + "\n" + md.get("digits", "")
        + ("\n![digits](digits_control.png)\n" if "digits_control.png" in figs else ""),
        "\n## Compute: gates vs experts\n\n" + md["compute"],
        "\n## Expert x task accuracy (main, seed mean)\n\n" + md["matrix"],
        "\n" + PAPER.format(claims=claims(main, df)),
        "\n" + differs,
        "\n## Runs\n\nThe machine is shared (2 cores, several jobs): wall times are "
        "indicative only.\n\n" + stage_cost(run) + invocations(runs),
    ]
    return "\n".join(parts)
