"""``python -m simstudy neural phatgoose``: the PHATGOOSE proxy benchmark end to end.

Work comes in *units*: (family, template fraction, seed). The main proxy is the per-token family
(:mod:`.tokens`) at the main template fraction; the sweep repeats it at other fractions, and at
the main fraction the PHATGOOSE gates are also trained for other numbers of steps (the gate-step
sweep); the digits family (:mod:`.digits`) runs as a labelled negative control. A unit trains
(or loads from the cache) the LoRA experts of the held-in tasks, their PHATGOOSE gates and the
multitask LoRA on a frozen base model, then evaluates every method on every task and records
per-module routing statistics.

Caching: every stage is one file under ``<cache>/<family>/<key>/seed<s>/``, the key hashing
everything that changes that stage (the base model's key leaves out the template fraction, so one
base serves the whole sweep). Stages are written atomically as tensors-only ``torch.save`` files
and read with ``torch.load(weights_only=True)``: a cache is data, and a file that needs code to
load is refused (:func:`load_stage`). Every stage draws its randomness from a generator seeded by
(seed, stage name), so a resumed run gives the numbers of an uninterrupted one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import time
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from simstudy.neural.phatgoose.analysis import routing_summary
from simstudy.neural.phatgoose.base import build_base
from simstudy.neural.phatgoose.baselines import (
    best_individual,
    build_retrieval,
    expert_task_matrix,
    oracle,
    retrieval_predict,
)
from simstudy.neural.phatgoose.digits import DigitsFamily
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
from simstudy.neural.phatgoose.tokens import TokenFamily
from simstudy.neural.phatgoose.train import (
    TrainConfig,
    fit,
    predict,
    train_base,
    train_expert,
    train_gate,
)

ROUTERS = ("phatgoose", "average_activation", "arrow")
METHODS = ("base", *ROUTERS, "retrieval", "merged", "multitask", "oracle", "best_individual")
CACHE_VERSION = 2


#: the main proxy's model and training sizes (chosen so that the experts solve their tasks:
#: width 48 with 300 steps of 64 sequences left the after-template skill at ~83%)
TOKENS_CFG = TrainConfig(width=64, depth=2, heads=4, mlp_ratio=2, rank=4, batch=128,
                         base_steps=1200, base_lr=3e-3, expert_steps=300, expert_lr=2e-2,
                         gate_steps=100, gate_batch=256, gate_lr=1e-2, multitask_steps=900,
                         top_k=2, arrow_temperature=10.0, retrieval_per_task=256)
DIGITS_CFG = TrainConfig(width=32, depth=2, heads=2, mlp_ratio=2, rank=4, batch=64,
                         base_steps=600, expert_steps=200, expert_lr=1e-2, gate_steps=100,
                         gate_batch=256, multitask_steps=600, retrieval_per_task=100)


@dataclass(frozen=True)
class Plan:
    """What one invocation runs.

    ``fractions[0]`` is the main template fraction; ``gate_sweep`` lists gate-step counts
    trained in addition to ``tokens.gate_steps`` at the main fraction; ``family`` holds keyword
    arguments of :class:`TokenFamily` (sizes).
    """

    seeds: int = 3
    fractions: tuple[float, ...] = (0.3, 0.0, 0.6)
    gate_sweep: tuple[int, ...] = (30, 200)
    digits: bool = True
    tokens: TrainConfig = TOKENS_CFG
    digits_cfg: TrainConfig = DIGITS_CFG
    family: dict = field(default_factory=lambda: {"seq_len": 8})


FULL = Plan()
QUICK = Plan(
    seeds=1, fractions=(0.3, 0.0), gate_sweep=(30,),
    tokens=replace(TOKENS_CFG, width=16, depth=1, heads=2, batch=64, base_steps=150,
                   expert_steps=50, gate_steps=10, gate_batch=128, multitask_steps=100,
                   retrieval_per_task=64),
    digits_cfg=replace(DIGITS_CFG, width=16, depth=1, batch=64, base_steps=60,
                       expert_steps=20, gate_steps=10, gate_batch=128, multitask_steps=40,
                       retrieval_per_task=30),
    family={"seq_len": 8, "n_train": 512, "n_test": 256, "n_base": 4096},
)


# -- cache ------------------------------------------------------------------------------------
def _key(obj) -> str:
    blob = json.dumps({"v": CACHE_VERSION, "obj": obj}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def stage_generator(seed: int, stage: str) -> torch.Generator:
    """The generator of one stage: seeded by (seed, stage name) only."""
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}/{stage}".encode()))


def save_stage(obj: dict, path: Path) -> None:
    """Write a stage (tensors, numbers, strings, lists and dicts of them) atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # an interrupted run never leaves a half-written stage


def load_stage(path: Path) -> dict:
    """Read a stage as data (``weights_only=True``); a file that would run code is refused.

    Raises
    ------
    ValueError
        If the file is not a data-only torch file (e.g. a crafted pickle), naming the file.
    """
    try:
        return torch.load(path, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError) as exc:
        raise ValueError(f"cache: {path} is not a data-only stage file ({type(exc).__name__}); "
                         "delete it to recompute the stage") from None


# -- data -------------------------------------------------------------------------------------
def _prepare(family, data: dict) -> dict:
    """Tensors for the model plus the raw-input embedding (retrieval) and token annotations."""
    out = {"x": family.prepare_input(data["x"]), "y": torch.as_tensor(data["y"]),
           "raw": family.raw_embedding(data["x"])}
    if "domain" in data:
        out["domain"] = torch.as_tensor(data["domain"])
        out["template"] = torch.as_tensor(data["template"])
    return out


def make_family(kind: str, fraction: float, seed: int, plan: Plan):
    if kind == "tokens":
        return TokenFamily(template_fraction=fraction, seed=seed, **plan.family)
    if kind == "digits":
        return DigitsFamily(seed=seed)
    raise ValueError(f"family: unknown family {kind!r}; allowed: ['tokens', 'digits']")


def _cfg(kind: str, plan: Plan) -> TrainConfig:
    return plan.tokens if kind == "tokens" else plan.digits_cfg


def _base_key(family, cfg: TrainConfig) -> str:
    fam = family.to_dict()
    fam.pop("template_fraction", None)  # the base's data do not depend on it
    keep = ("width", "depth", "heads", "mlp_ratio", "batch", "base_steps", "base_lr")
    return _key({"family": fam, "cfg": {k: getattr(cfg, k) for k in keep}})


def _unit_key(family, cfg: TrainConfig) -> str:
    return _key({"family": family.to_dict(), "cfg": cfg.to_dict()})


def _base_model(family, cfg: TrainConfig, seed: int, cache: Path, log) -> tuple:
    path = cache / family.name / f"base-{_base_key(family, cfg)}" / f"seed{seed}" / "base.pt"
    torch.manual_seed(zlib.crc32(f"{seed}/base-init".encode()))
    model = build_base(family, cfg.width, cfg.depth, cfg.heads, cfg.mlp_ratio)
    if path.exists():
        st = load_stage(path)
        model.load_state_dict(st["state"])
    else:
        d = family.base_data()
        x, y = family.prepare_input(d["x"]), torch.as_tensor(d["y"])
        secs = train_base(model, cfg, x, y, stage_generator(seed, "base"))
        st = {"state": model.state_dict(), "seconds": secs}
        save_stage(st, path)
        log(f"  {family.name} seed {seed}: base trained in {secs:.1f}s")
    model.eval()
    return model, float(st["seconds"])


def train_bases(kind: str, seed: int, plan: Plan, cache: Path, log=print) -> None:
    """Phase 1 of a run: the base model of (family, seed), shared by its units."""
    family = make_family(kind, plan.fractions[0], seed, plan)
    _base_model(family, _cfg(kind, plan), seed, cache, log)


# -- one unit ---------------------------------------------------------------------------------
def _lora_state(model, i: int) -> dict:
    return {m.name: [m.A[i].detach().clone(), m.B[i].detach().clone()]
            for m in lora_modules(model)}


def _load_lora(model, i: int, state: dict) -> None:
    for m in lora_modules(model):
        a, b = state[m.name]
        m.A[i].data.copy_(a)
        m.B[i].data.copy_(b)


def _set_gates(model, experts, gates: dict) -> None:
    for m in lora_modules(model):
        for j, i in enumerate(experts):
            m.gate[i].data.copy_(gates[m.name][j])


def _gates(model, experts) -> dict:
    return {m.name: [m.gate[i].detach().clone() for i in experts] for m in lora_modules(model)}


def build_unit(family, cfg: TrainConfig, seed: int, cache: Path, gate_steps, log=print):
    """Train (or load) experts, gates (for each count in ``gate_steps``) and multitask LoRA."""
    model, base_secs = _base_model(family, cfg, seed, cache, log)
    attach_lora(model, cfg.rank, family.lora_exclude)
    udir = cache / family.name / _unit_key(family, cfg) / f"seed{seed}"
    held_in, held_out = family.held_in_tasks, family.held_out_tasks
    train = {t.name: _prepare(family, family.task_data(t, "train")) for t in held_in}
    test = {t.name: _prepare(family, family.task_data(t, "test")) for t in (*held_in, *held_out)}
    timings: dict = {"base": base_secs, "experts": {}, "gates": {}}
    experts = []
    for t in held_in:
        path = udir / f"expert-{t.name}.pt"
        gen = stage_generator(seed, f"expert-{t.name}")
        if path.exists():
            st = load_stage(path)
            i = add_expert(model, gen)
            _load_lora(model, i, st["lora"])
        else:
            i, secs = train_expert(model, cfg, train[t.name]["x"], train[t.name]["y"], gen)
            st = {"lora": _lora_state(model, i), "seconds": secs}
            save_stage(st, path)
            log(f"  {family.name} seed {seed}: expert {t.name} trained in {secs:.1f}s")
        timings["experts"][t.name] = float(st["seconds"])
        experts.append(i)
    gates = {}
    for steps in gate_steps:
        timings["gates"][steps] = {}
        for t, i in zip(held_in, experts, strict=True):
            path = udir / f"gate-{t.name}-{steps}.pt"
            if path.exists():
                st = load_stage(path)
            else:
                for m in lora_modules(model):
                    m.gate[i].data.zero_()
                secs = train_gate(model, i, cfg, train[t.name]["x"], train[t.name]["y"],
                                  stage_generator(seed, f"gate-{t.name}-{steps}"), steps=steps)
                st = {"gate": {m.name: m.gate[i].detach().clone() for m in lora_modules(model)},
                      "seconds": secs}
                save_stage(st, path)
                log(f"  {family.name} seed {seed}: gate {t.name} ({steps} steps) in {secs:.1f}s")
            for m in lora_modules(model):
                m.gate[i].data.copy_(st["gate"][m.name])
            timings["gates"][steps][t.name] = float(st["seconds"])
        gates[steps] = _gates(model, experts)
    path = udir / "multitask.pt"
    gen = stage_generator(seed, "multitask")
    mt = add_expert(model, gen)
    if path.exists():
        st = load_stage(path)
        _load_lora(model, mt, st["lora"])
    else:
        xs = torch.cat([train[t.name]["x"] for t in held_in])
        ys = torch.cat([train[t.name]["y"] for t in held_in])
        with use_mode(model, Single(mt)):
            secs = fit(model, expert_parameters(model, mt), xs, ys,
                       cfg.n_multitask_steps(len(held_in)), cfg.expert_lr, cfg.batch, gen)
        st = {"lora": _lora_state(model, mt), "seconds": secs}
        save_stage(st, path)
        log(f"  {family.name} seed {seed}: multitask LoRA trained in {secs:.1f}s")
    timings["multitask"] = float(st["seconds"])
    return model, train, test, experts, gates, mt, timings, udir


def _targets(family, task, data) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Per-token target expert (its position among the candidates) and token group.

    Tokens: the governing domain's expert (held-in and held-out alike), groups 0 = domain
    token, 1 = template token. Digits: the own expert on held-in tasks, none held out.
    """
    if "domain" in data:
        return data["domain"], data["template"].long()
    if not task.held_out:
        pos = [t.name for t in family.held_in_tasks].index(task.name)
        n = len(data["y"])
        return torch.full((n,), pos, dtype=torch.long), torch.zeros(n, dtype=torch.long)
    return None, None


@torch.no_grad()
def routed_eval(model, router, family, task, data, chunk: int = 1024) -> tuple[float, dict]:
    """Accuracy of ``Routed(router)`` on ``data`` and the router's routing summary."""
    router.reset_stats()
    tgt, grp = _targets(family, task, data)
    preds = []
    model.eval()
    with use_mode(model, Routed(router)):
        for s in range(0, len(data["y"]), chunk):
            sl = slice(s, s + chunk)
            router.set_targets(None if tgt is None else tgt[sl], None if grp is None else grp[sl],
                               n_groups=2)
            preds.append(model(data["x"][sl]).argmax(dim=-1))
    router.set_targets(None)
    pred = torch.cat(preds)
    return float((pred == data["y"]).float().mean()), _routing_record(router.stats, pred, data)


def _routing_record(stats: dict, pred, data) -> dict:
    summ = routing_summary({k: v for k, v in stats.items()})
    rec = {"mean_entropy": summ["mean_entropy"], "distribution": summ["distribution"]}
    acc = {}
    for name, st in stats.items():
        if "hits" in st:
            cnt = st["count"].numpy()
            hits = st["hits"].numpy()
            acc[name] = [float(h / c) if c else float("nan") for h, c in zip(hits, cnt,
                                                                               strict=True)]
    rec["module_accuracy"] = acc  # per module: [domain tokens, template tokens]
    if "template" in data:
        t = data["template"]
        hit = pred == data["y"]
        rec["acc_domain_tokens"] = float(hit[~t].float().mean())
        rec["acc_template_tokens"] = float(hit[t].float().mean()) if bool(t.any()) \
            else float("nan")
    return rec


def _token_split(pred, data) -> dict:
    if "template" not in data:
        return {}
    t = data["template"]
    hit = pred == data["y"]
    return {"acc_domain_tokens": float(hit[~t].float().mean()),
            "acc_template_tokens": float(hit[t].float().mean()) if bool(t.any())
            else float("nan")}


def run_unit(kind: str, fraction: float, seed: int, plan: Plan, cache: Path,
             main: bool, log=print) -> dict:
    """Every method on every task of one (family, fraction, seed); cached as ``eval.json``."""
    family = make_family(kind, fraction, seed, plan)
    cfg = _cfg(kind, plan)
    steps_main = cfg.gate_steps
    gate_steps = [steps_main, *[s for s in plan.gate_sweep if s != steps_main]] \
        if main and kind == "tokens" else [steps_main]
    udir = cache / family.name / _unit_key(family, cfg) / f"seed{seed}"
    path = udir / f"eval-{'-'.join(map(str, gate_steps))}.json"
    if path.exists():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    model, train, test, experts, gates, mt, timings, _ = build_unit(
        family, cfg, seed, cache, gate_steps, log)
    held_in = [t.name for t in family.held_in_tasks]
    tasks = [*family.held_in_tasks, *family.held_out_tasks]
    names = [t.name for t in tasks]

    acc: dict[str, dict[str, float]] = {m: {} for m in METHODS}
    split_acc: dict[str, dict[str, dict]] = {m: {} for m in METHODS}
    matrix = expert_task_matrix(model, experts, [(test[n]["x"], test[n]["y"]) for n in names])
    out_cols = [i for i, t in enumerate(tasks) if t.held_out]
    orc_rows, _ = oracle(matrix)
    bi_row, _ = best_individual(matrix[:, out_cols])
    for c, name in enumerate(names):
        acc["oracle"][name] = float(matrix[orc_rows[c], c])
        acc["best_individual"][name] = float(matrix[bi_row, c])

    means, constant = [], {}
    for t, i in zip(family.held_in_tasks, experts, strict=True):
        with torch.no_grad(), use_mode(model, Single(i)), capture_inputs(model) as mean:
            model(train[t.name]["x"])
        means.append(mean)
        for k, v in mean.constant.items():
            constant[k] = constant.get(k, 0) + int(v)
    _set_gates(model, experts, gates[steps_main])
    routers = {
        "phatgoose": phatgoose_router(model, experts, top_k=cfg.top_k, record=True),
        "average_activation": average_activation_router(means, experts, top_k=cfg.top_k,
                                                        record=True),
        "arrow": arrow_router(model, experts, temperature=cfg.arrow_temperature,
                              top_k=cfg.top_k, record=True),
    }
    gen = stage_generator(seed, "retrieval")
    stores = [train[n]["raw"][torch.randperm(len(train[n]["y"]), generator=gen)
                              [: cfg.retrieval_per_task].numpy()] for n in held_in]
    retrieval = build_retrieval(stores, experts)

    routing: dict[str, dict] = {m: {} for m in (*ROUTERS, "retrieval")}
    for task in tasks:
        name, d = task.name, test[task.name]
        for method, mode in (("base", Off()), ("merged", Merged(tuple(experts))),
                             ("multitask", Single(mt))):
            pred = predict(model, d["x"], mode)
            acc[method][name] = float((pred == d["y"]).float().mean())
            split_acc[method][name] = _token_split(pred, d)
        for method, router in routers.items():
            acc[method][name], routing[method][name] = routed_eval(model, router, family,
                                                                   task, d)
            split_acc[method][name] = {k: routing[method][name][k]
                                       for k in ("acc_domain_tokens", "acc_template_tokens")
                                       if k in routing[method][name]}
        pred, assigned = retrieval_predict(model, retrieval, d["x"], d["raw"])
        acc["retrieval"][name] = float((pred == d["y"]).float().mean())
        split_acc["retrieval"][name] = _token_split(pred, d)
        share = np.bincount(assigned.numpy(), minlength=len(experts)) / len(assigned)
        cons = list(task.domains) if kind == "tokens" else \
            ([held_in.index(name)] if not task.held_out else
             [held_in.index(op) for op in task.ops if op in held_in])
        routing["retrieval"][name] = {"share": share.tolist(),
                                      "constituent_share": float(share[cons].sum())}

    sweep = {}
    for steps in gate_steps[1:]:
        _set_gates(model, experts, gates[steps])
        r = phatgoose_router(model, experts, top_k=cfg.top_k, record=True)
        res = {t.name: routed_eval(model, r, family, t, test[t.name]) for t in tasks}
        sweep[steps] = {"accuracy": {n: v[0] for n, v in res.items()},
                        "module_accuracy": {n: v[1]["module_accuracy"] for n, v in res.items()}}
    n_expert = sum(m.A[0].numel() + m.B[0].numel() for m in lora_modules(model))
    n_gate = sum(m.gate[0].numel() for m in lora_modules(model))
    n_train_tokens = int(next(iter(train.values()))["y"].numel() / len(train[held_in[0]]["y"]))
    result = {
        "family": kind, "template_fraction": fraction if kind == "tokens" else None,
        "seed": seed, "main": main, "config": cfg.to_dict(), "family_config":
            family.to_dict(), "tasks": names, "held_in": held_in,
        "held_out": [t.name for t in family.held_out_tasks],
        "modules": [m.name for m in lora_modules(model)],
        "accuracy": acc, "token_split": split_acc, "routing": routing,
        "gate_sweep": {str(k): v for k, v in sweep.items()},
        "expert_matrix": matrix.tolist(),
        "oracle": {n: held_in[int(orc_rows[c])] for c, n in enumerate(names)},
        "best_individual": held_in[bi_row],
        "constant_input_tokens": constant,
        "timings": {**timings, "gates": {str(k): v for k, v in timings["gates"].items()}},
        "steps": {"base": cfg.base_steps, "expert": cfg.expert_steps, "gate": steps_main,
                  "multitask": cfg.n_multitask_steps(len(held_in))},
        "examples": {"expert": cfg.expert_steps * cfg.batch,
                     "gate": steps_main * cfg.gate_batch},
        "labels_per_example": n_train_tokens,
        "trainable_params": {"expert": n_expert, "gate": n_gate},
        "seconds": time.perf_counter() - t0,
    }
    path.write_text(json.dumps(result, indent=1))
    return result


def stage_seconds(results) -> dict[str, float]:
    """Training time of every stage behind ``results``, summed (single-thread seconds).

    Read from the stages themselves, so it is the cost from an empty cache even when this
    invocation loaded every stage: base models (one per family and seed, shared by the
    template sweep), experts, gates (every gate-step count), multitask LoRAs. Evaluation is
    not included (each unit's ``seconds`` covers the part that ran in its invocation).
    """
    bases = {(r["family"], r["seed"]): r["timings"]["base"] for r in results}
    out = {"base": float(sum(bases.values())),
           "experts": float(sum(sum(r["timings"]["experts"].values()) for r in results)),
           "gates": float(sum(sum(v.values()) for r in results
                              for v in r["timings"]["gates"].values())),
           "multitask": float(sum(r["timings"]["multitask"] for r in results))}
    out["total"] = float(sum(out.values()))
    return out


# -- the CLI ----------------------------------------------------------------------------------
def _units(plan: Plan) -> list[tuple[str, float, int, bool]]:
    units = [("tokens", f, s, i == 0) for i, f in enumerate(plan.fractions)
             for s in range(plan.seeds)]
    if plan.digits:
        units += [("digits", 0.0, s, False) for s in range(plan.seeds)]
    return units


def _worker(fn, *args):
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # tiny Adam moments of LoRA/gate grads would go denormal
    try:
        return fn(*args)
    finally:
        # flush-to-zero is process-wide: with --jobs 1 the unit runs in the caller's process,
        # whose numba kernels (kernels.vexp near underflow) must keep their subnormals
        torch.set_flush_denormal(False)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see ``--help``."""
    from simstudy.neural.phatgoose import report

    parser = argparse.ArgumentParser(
        prog="simstudy neural phatgoose",
        description="PHATGOOSE post-hoc routing among LoRA experts: a per-token task family "
                    "(main proxy, with a template-fraction and a gate-step sweep) and the "
                    "digits family (negative control).")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (<= 1 minute)")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (3; quick: 1)")
    parser.add_argument("--out", default="results/neural/phatgoose", help="output folder")
    parser.add_argument("--cache", default=None,
                        help="stage cache (default results/neural/cache/phatgoose)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (1 thread each)")
    parser.add_argument("--no-digits", action="store_true", help="skip the negative control")
    parser.add_argument("--no-figures", action="store_true", help="skip the matplotlib figures")
    ns = parser.parse_args(argv)
    plan = QUICK if ns.quick else FULL
    if ns.seeds is not None:
        if ns.seeds < 1:
            parser.error(f"--seeds: must be at least 1, got {ns.seeds}")
        plan = replace(plan, seeds=ns.seeds)
    if ns.no_digits:
        plan = replace(plan, digits=False)
    if ns.jobs < 1:
        parser.error(f"--jobs: must be at least 1, got {ns.jobs}")
    out = Path(ns.out)
    cache = Path(ns.cache) if ns.cache else Path("results/neural/cache/phatgoose")
    t0, load0 = time.perf_counter(), os.getloadavg()
    units = _units(plan)
    bases = sorted({(k, s) for k, _, s, _ in units})
    if ns.jobs == 1:
        for k, s in bases:
            _worker(train_bases, k, s, plan, cache)
        results = [_worker(run_unit, *u[:3], plan, cache, u[3]) for u in units]
    else:
        from joblib import Parallel, delayed

        par = Parallel(n_jobs=ns.jobs, backend="loky")
        par(delayed(_worker)(train_bases, k, s, plan, cache) for k, s in bases)
        results = par(delayed(_worker)(run_unit, *u[:3], plan, cache, u[3]) for u in units)
    seconds = time.perf_counter() - t0
    run = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "seconds": seconds,
           "load_start": list(load0), "load_end": list(os.getloadavg()), "jobs": ns.jobs,
           "quick": ns.quick, "seeds": plan.seeds, "cpu_count": os.cpu_count(),
           "torch_threads_per_job": 1, "units": len(results),
           "stage_seconds": stage_seconds(results),
           "command": "python -m simstudy neural phatgoose " + " ".join(argv or [])}
    report.write_all(results, run, out, figures=not ns.no_figures)
    print(f"done in {seconds:.1f}s; wrote {out}")
    return 0
