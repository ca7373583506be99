"""``python -m simstudy neural phatgoose``: the PHATGOOSE proxy benchmark end to end.

Per seed, stages are cached on disk (``<cache>/<config hash>/seed<s>/<stage>``) and skipped when
present: the base model, each held-in expert, each expert's gate, the multitask LoRA, and the
evaluation. Every stage draws its randomness from its own generator seeded by (seed, stage), so a
resumed run gives the same numbers as an uninterrupted one. Tables, figures and the README are
rebuilt from the per-seed evaluations at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from simstudy.neural.phatgoose import report
from simstudy.neural.phatgoose.analysis import routing_summary
from simstudy.neural.phatgoose.baselines import (
    best_individual,
    build_retrieval,
    expert_task_matrix,
    oracle,
    retrieval_predict,
)
from simstudy.neural.phatgoose.lora import (
    Merged,
    Off,
    Routed,
    Single,
    add_expert,
    attach_lora,
    capture_inputs,
    expert_parameters,
    lora_modules,
    use_mode,
)
from simstudy.neural.phatgoose.routing import (
    arrow_router,
    average_activation_router,
    phatgoose_router,
)
from simstudy.neural.phatgoose.tasks import (
    BASE_TASK,
    HELD_IN,
    HELD_OUT,
    load_split,
)
from simstudy.neural.phatgoose.train import (
    TrainConfig,
    accuracy,
    build_base,
    fit,
    predict,
    to_tensors,
    train_base,
    train_expert,
    train_gate,
)

FULL = TrainConfig()
QUICK = TrainConfig(width=32, base_steps=150, expert_steps=60, multitask_steps=120,
                    retrieval_per_task=30)
ROUTERS = ("phatgoose", "average_activation", "arrow")
METHODS = ("base", *ROUTERS, "retrieval", "merged", "multitask", "oracle", "best_individual")
CACHE_VERSION = 1
LONG_GATE_FACTOR = 10


class FixedWeight:
    """Router giving every token of every module one expert with a fixed weight."""

    def __init__(self, expert: int, weight: float) -> None:
        self.expert, self.weight = expert, weight

    def weights(self, name, u, module=None):
        return torch.full((*u.shape[:-1], 1), self.weight, dtype=u.dtype), (self.expert,)


def config_key(cfg: TrainConfig) -> str:
    """Hash of everything that changes a cached stage (config, task family, cache version)."""
    blob = json.dumps({"cfg": cfg.to_dict(), "held_in": [t.ops for t in HELD_IN],
                       "held_out": [t.ops for t in HELD_OUT], "v": CACHE_VERSION},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def stage_generator(seed: int, stage: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}/{stage}".encode()))


def _save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # atomic: an interrupted run never leaves a half-written stage


def _lora_state(model, i: int) -> dict:
    return {m.name: (m.A[i].detach().clone(), m.B[i].detach().clone()) for m in lora_modules(model)}


def _load_lora(model, i: int, state: dict) -> None:
    for m in lora_modules(model):
        a, b = state[m.name]
        m.A[i].data.copy_(a)
        m.B[i].data.copy_(b)


def _task_tensors(split, task):
    return to_tensors(*task.apply(split.x_train, split.y_train)), to_tensors(
        *task.apply(split.x_test, split.y_test))


def build_seed(cfg: TrainConfig, seed: int, cache: Path, log=print):
    """Train (or load from ``cache``) the base model, experts, gates and multitask LoRA."""
    cache.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    split = load_split(seed=seed)
    (xb, yb), _ = _task_tensors(split, BASE_TASK)
    timings: dict = {"experts": {}, "gates": {}}

    path = cache / "base.pt"
    if path.exists():
        st = torch.load(path)
        model = build_base(cfg)
        model.load_state_dict(st["state"])
    else:
        model, secs = train_base(cfg, xb, yb, stage_generator(seed, "base"))
        st = {"state": model.state_dict(), "seconds": secs}
        _save(st, path)
        log(f"  seed {seed}: base trained in {secs:.1f}s")
    timings["base"] = st["seconds"]
    model.eval()
    attach_lora(model, cfg.rank)

    data = {t.name: _task_tensors(split, t) for t in (BASE_TASK, *HELD_IN, *HELD_OUT)}
    experts = []
    for t in HELD_IN:
        (x, y), _ = data[t.name]
        path = cache / f"expert-{t.name}.pt"
        gen = stage_generator(seed, f"expert-{t.name}")
        if path.exists():
            st = torch.load(path)
            i = add_expert(model, gen)
            _load_lora(model, i, st["lora"])
        else:
            i, secs = train_expert(model, cfg, x, y, gen)
            st = {"lora": _lora_state(model, i), "seconds": secs}
            _save(st, path)
            log(f"  seed {seed}: expert {t.name} trained in {secs:.1f}s")
        timings["experts"][t.name] = st["seconds"]
        experts.append(i)
    for t, i in zip(HELD_IN, experts, strict=True):
        (x, y), _ = data[t.name]
        path = cache / f"gate-{t.name}.pt"
        if path.exists():
            st = torch.load(path)
            for m in lora_modules(model):
                m.gate[i].data.copy_(st["gate"][m.name])
        else:
            secs = train_gate(model, i, cfg, x, y, stage_generator(seed, f"gate-{t.name}"))
            st = {"gate": {m.name: m.gate[i].detach().clone() for m in lora_modules(model)},
                  "seconds": secs}
            _save(st, path)
            log(f"  seed {seed}: gate {t.name} trained in {secs:.1f}s")
        timings["gates"][t.name] = st["seconds"]

    path = cache / "multitask.pt"
    gen = stage_generator(seed, "multitask")
    mt = add_expert(model, gen)
    if path.exists():
        st = torch.load(path)
        _load_lora(model, mt, st["lora"])
    else:
        xs = torch.cat([data[t.name][0][0] for t in HELD_IN])
        ys = torch.cat([data[t.name][0][1] for t in HELD_IN])
        with use_mode(model, Single(mt)):
            secs = fit(model, expert_parameters(model, mt), xs, ys,
                       cfg.n_multitask_steps(len(HELD_IN)), cfg.expert_lr, cfg.batch, gen)
        st = {"lora": _lora_state(model, mt), "seconds": secs}
        _save(st, path)
        log(f"  seed {seed}: multitask LoRA trained in {secs:.1f}s")
    timings["multitask"] = st["seconds"]
    return model, data, experts, mt, timings


def long_gate_ablation(model, cfg, seed, cache, data, experts, tasks, names_in, orc_rows,
                       log=print) -> dict:
    """Ablation: PHATGOOSE with gates trained ``LONG_GATE_FACTOR`` times longer (cached stage).

    Answers whether a too-short gate step explains poor routing. The model's own gates are
    restored afterwards.
    """
    steps = LONG_GATE_FACTOR * cfg.n_gate_steps
    long_cfg = replace(cfg, gate_steps=steps)
    saved = {m.name: [m.gate[i].detach().clone() for i in experts] for m in lora_modules(model)}
    secs = {}
    for t, i in zip(HELD_IN, experts, strict=True):
        path = cache / f"gate-long-{t.name}.pt"
        if path.exists():
            st = torch.load(path)
            for m in lora_modules(model):
                m.gate[i].data.copy_(st["gate"][m.name])
        else:
            for m in lora_modules(model):
                m.gate[i].data.zero_()
            (x, y), _ = data[t.name]
            sec = train_gate(model, i, long_cfg, x, y, stage_generator(seed, f"gate-long-{t.name}"))
            st = {"gate": {m.name: m.gate[i].detach().clone() for m in lora_modules(model)},
                  "seconds": sec}
            _save(st, path)
            log(f"  seed {seed}: long gate {t.name} trained in {sec:.1f}s")
        secs[t.name] = st["seconds"]
    router = phatgoose_router(model, experts, top_k=cfg.top_k, record=True)
    acc, agree = {}, {}
    for name in tasks:
        x, y = data[name][1]
        router.reset_stats()
        acc[name] = float((predict(model, x, Routed(router)) == y).float().mean())
        orc = int(orc_rows[tasks.index(name)])
        agree[name] = routing_summary(router.stats, oracle=orc)["oracle_agreement"]
    for m in lora_modules(model):
        for j, i in enumerate(experts):
            m.gate[i].data.copy_(saved[m.name][j])
    return {"gate_steps": steps, "accuracy": acc, "oracle_agreement": agree, "seconds": secs}


def evaluate_seed(cfg: TrainConfig, seed: int, cache: Path, log=print) -> dict:
    """All methods on all tasks for one seed (cached as ``eval.json``)."""
    path = cache / "eval.json"
    if path.exists():
        return json.loads(path.read_text())
    model, data, experts, mt, timings = build_seed(cfg, seed, cache, log)
    names_in = [t.name for t in HELD_IN]
    tasks = [t.name for t in (BASE_TASK, *HELD_IN, *HELD_OUT)]
    out_names = [t.name for t in HELD_OUT]
    test = {name: data[name][1] for name in tasks}

    acc: dict[str, dict[str, float]] = {m: {} for m in METHODS}
    matrix = expert_task_matrix(model, experts, test)
    out_cols = [tasks.index(n) for n in out_names]
    orc_rows, _ = oracle(matrix)
    bi_row, _ = best_individual(matrix[:, out_cols])
    for c, name in enumerate(tasks):
        acc["oracle"][name] = float(matrix[orc_rows[c], c])
        acc["best_individual"][name] = float(matrix[bi_row, c])

    # router vectors
    means = []
    for t, i in zip(HELD_IN, experts, strict=True):
        (x, _), _ = data[t.name]
        with torch.no_grad(), use_mode(model, Single(i)), capture_inputs(model) as mean:
            model(x)
        means.append(mean)
    routers = {
        "phatgoose": phatgoose_router(model, experts, top_k=cfg.top_k, record=True),
        "average_activation": average_activation_router(means, experts, top_k=cfg.top_k,
                                                        record=True),
        "arrow": arrow_router(model, experts, temperature=cfg.arrow_temperature,
                              top_k=cfg.top_k, record=True),
    }
    gen = stage_generator(seed, "retrieval")
    stores = []
    for t in HELD_IN:
        (x, _), _ = data[t.name]
        stores.append(x[torch.randperm(len(x), generator=gen)[: cfg.retrieval_per_task]])
    retrieval = build_retrieval(model, experts, stores)

    routing: dict[str, dict] = {m: {} for m in (*ROUTERS, "retrieval")}
    for name in tasks:
        x, y = test[name]
        acc["base"][name] = accuracy(model, x, y, Off())
        acc["merged"][name] = accuracy(model, x, y, Merged(tuple(experts)))
        acc["multitask"][name] = accuracy(model, x, y, Single(mt))
        ops = name.split("+") if name != "base" else []
        cons = [names_in.index(op) for op in ops if op in names_in]
        orc = int(orc_rows[tasks.index(name)])
        for method, router in routers.items():
            router.reset_stats()
            acc[method][name] = float((predict(model, x, Routed(router)) == y).float().mean())
            routing[method][name] = routing_summary(router.stats, oracle=orc, constituents=cons)
        pred, assigned = retrieval_predict(model, retrieval, x)
        acc["retrieval"][name] = float((pred == y).float().mean())
        share = np.bincount(assigned.numpy(), minlength=len(experts)) / len(assigned)
        routing["retrieval"][name] = {
            "share": share.tolist(), "oracle_agreement": float(share[orc]),
            "constituent_mass": float(share[cons].sum()) if cons else float("nan")}

    # diagnostic: each held-in task's own expert at weight 0.5 (an even top-2 split)
    half = {}
    for t, i in zip(HELD_IN, experts, strict=True):
        x, y = test[t.name]
        half[t.name] = accuracy(model, x, y, Routed(FixedWeight(i, 0.5)))
    long_gates = long_gate_ablation(model, cfg, seed, cache, data, experts, tasks, names_in,
                                    orc_rows, log)
    n_expert = sum(m.A[0].numel() + m.B[0].numel() for m in lora_modules(model))
    n_gate = sum(m.gate[0].numel() for m in lora_modules(model))
    result = {
        "seed": seed, "config": cfg.to_dict(), "tasks": tasks, "held_in": names_in,
        "held_out": out_names, "experts": names_in, "modules": [m.name for m in
                                                                lora_modules(model)],
        "accuracy": acc,
        "diagnostics": {"own_expert_half_weight": half, "long_gates": long_gates},
        "expert_matrix": matrix.tolist(),
        "oracle": {n: names_in[int(orc_rows[c])] for c, n in enumerate(tasks)},
        "best_individual": names_in[bi_row], "routing": routing, "timings": timings,
        "steps": {"base": cfg.base_steps, "expert": cfg.expert_steps, "gate": cfg.n_gate_steps,
                  "multitask": cfg.n_multitask_steps(len(HELD_IN))},
        "trainable_params": {"expert": n_expert, "gate": n_gate, "multitask": n_expert},
    }
    path.write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see ``--help``."""
    parser = argparse.ArgumentParser(
        prog="simstudy neural phatgoose",
        description="PHATGOOSE post-hoc routing among LoRA experts on a digits proxy.")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (3; quick: 1)")
    parser.add_argument("--out", default="results/neural/phatgoose", help="output folder")
    parser.add_argument("--cache", default=None,
                        help="stage cache (default results/neural/cache/phatgoose)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 or 2)")
    parser.add_argument("--no-figures", action="store_true", help="skip the matplotlib figures")
    ns = parser.parse_args(argv)
    seeds = ns.seeds if ns.seeds is not None else (1 if ns.quick else 3)
    if seeds < 1:
        parser.error(f"--seeds: must be at least 1, got {seeds}")
    if ns.threads not in (1, 2):
        parser.error(f"--threads: must be 1 or 2 (the machine is shared), got {ns.threads}")
    torch.set_num_threads(ns.threads)
    torch.set_flush_denormal(True)  # tiny Adam moments of LoRA/gate grads would go denormal
    cfg = QUICK if ns.quick else FULL
    out = Path(ns.out)
    cache = Path(ns.cache) if ns.cache else Path("results/neural/cache/phatgoose")
    cache = cache / config_key(cfg)
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    results, fresh = [], 0
    for seed in range(seeds):
        print(f"seed {seed} ...", flush=True)
        fresh += not (cache / f"seed{seed}" / "eval.json").exists()
        results.append(evaluate_seed(cfg, seed, cache / f"seed{seed}"))
    seconds = time.perf_counter() - t0
    run = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "seconds": seconds,
           "fresh_seeds": fresh, "load_start": load0, "load_end": os.getloadavg()[0],
           "threads": ns.threads, "quick": ns.quick, "seeds": seeds,
           "cpu_count": os.cpu_count(), "command": "python -m simstudy neural phatgoose "
           + " ".join(argv or [])}
    report.write_all(results, run, out, figures=not ns.no_figures)
    print(f"done in {seconds:.1f}s; wrote {out}")
    return 0

