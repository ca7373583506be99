"""``simstudy neural jei-dnn``: JEI-DNN vs threshold exits on the digits proxy.

Seeded and resumable: the frozen backbone's cached features (one backbone per data set,
trained once with a fixed seed), the warmed-up and boosted IMs (per seed) and every JEI-DNN
point (per data set, seed, variant, lambda) are stored under ``--cache``; a rerun skips what
exists. Writes tables (csv + md) and figures under ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from simstudy.neural.common import read_json, seed_everything, set_threads, write_json, write_table
from simstudy.neural.jei_dnn.backbone import extract_features, steps_for, train_backbone
from simstudy.neural.jei_dnn.baselines import (
    THRESHOLDS,
    exit_probs,
    jei_exits,
    oracle_exits,
    outcome,
    threshold_exits,
)
from simstudy.neural.jei_dnn.data import load_data
from simstudy.neural.jei_dnn.metrics import ALPHAS, chunk_spread, conformal_report
from simstudy.neural.jei_dnn.model import ExitHeads, backbone_only_cost, exit_costs
from simstudy.neural.jei_dnn.train import Cached, train_ims, train_jei
from simstudy.neural.transformer import TransformerConfig, macs, patchify

__all__ = ["main", "build_parser"]

LAMBDAS = (0.01, 0.03, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2)
BACKBONE_LR = 5e-3
N_CHUNKS = 5  # test chunks for the within-seed spread


def _key(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


# -- cached stages -----------------------------------------------------------------------------
def _image_cfg(width: int, depth: int, heads: int, patch: int) -> TransformerConfig:
    return TransformerConfig(width=width, depth=depth, heads=heads, n_outputs=10,
                             n_tokens=(8 // patch) ** 2, patch_dim=patch * patch, pool="cls")


def _im_macs(cfg: TransformerConfig) -> list[float]:
    return [float(cfg.width * cfg.n_outputs)] * (cfg.depth - 1)


def _costs(cfg: TransformerConfig) -> torch.Tensor:
    return exit_costs(macs(cfg), _im_macs(cfg), cfg.n_outputs)


def _shifted_sampler(X: torch.Tensor, y: torch.Tensor, patch: int):
    """Batches of training images, each batch shifted by up to one pixel (augmentation)."""

    def sample(rng, batch_size):
        idx = rng.integers(0, len(y), size=batch_size)
        dx, dy = (int(v) for v in rng.integers(-1, 2, size=2))
        xb = torch.roll(F.pad(X[idx], (1, 1, 1, 1)), shifts=(dy, dx), dims=(1, 2))[:, 1:-1, 1:-1]
        return patchify(xb, patch), y[idx]

    return sample


def backbone_features(dataset: str, cfg: TransformerConfig, epochs: int, cache: Path, log):
    """Features of every split from the frozen backbone, trained once (seed 0) and cached."""
    patch = int(round(cfg.patch_dim**0.5))
    settings = {
        "dataset": dataset,
        "cfg": cfg.__dict__,
        "epochs": epochs,
        "seed": 0,
        "lr": BACKBONE_LR,
        "batch_size": 128,
    }
    path = cache / f"backbone_{dataset}_{_key(settings)}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    data = load_data(dataset)
    t0 = time.perf_counter()
    seed_everything(0)
    X, y = torch.tensor(data.train.X), torch.tensor(data.train.y)
    val = (patchify(torch.tensor(data.val.X), patch), torch.tensor(data.val.y))
    model, blog = train_backbone(cfg, _shifted_sampler(X, y, patch), val,
                                 steps_for(epochs, len(y), 128), seed=0, lr=BACKBONE_LR,
                                 label_smoothing=0.05)
    out = {"settings": settings, "log": blog, "seconds": time.perf_counter() - t0}
    for split in ("train", "val", "calib", "test"):
        s = getattr(data, split)
        feats, head = extract_features(model, patchify(torch.tensor(s.X), patch))
        out[split] = (torch.tensor(feats), torch.tensor(head), torch.tensor(s.y))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, path)
    log(f"  backbone {dataset}: {out['seconds']:.1f} s, best val acc {blog['best_val_acc']:.3f}")
    return out


def warm_heads(feats, cfg, seed, boosted, args, cache: Path, tag: str) -> ExitHeads:
    """Warmed-up (or boosted) IMs of one seed, cached as a state dict."""
    settings = {"tag": tag, "seed": seed, "boosted": boosted, "epochs": args.warmup_epochs}
    path = cache / f"ims_{_key(settings)}.pt"
    seed_everything(seed)
    heads = ExitHeads(cfg.width, cfg.depth, cfg.n_outputs)
    if path.exists():
        heads.load_state_dict(torch.load(path, weights_only=True))
        return heads
    train = Cached.from_numpy(*feats["train"])
    val = Cached.from_numpy(*feats["val"])
    train_ims(heads, train, val, epochs=args.warmup_epochs, seed=seed, boosted=boosted)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(heads.state_dict(), path)
    return heads


def _reliability(conf: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> list:
    order = np.argsort(conf, kind="stable")
    return [
        [float(conf[c].mean()), float(correct[c].mean())]
        for c in np.array_split(order, n_bins)
        if c.size
    ]


def score(probs_test, y_test, exits_test, probs_cal, y_cal, exits_cal, costs) -> dict:
    """Everything reported for one exit rule on the test split (calibration split for CP)."""
    o = outcome(probs_test, y_test, exits_test, costs)
    _, acc_sd = chunk_spread(o["correct"], N_CHUNKS)
    _, cost_sd = chunk_spread(o["example_cost"], N_CHUNKS)
    chosen_cal = probs_cal[np.arange(len(y_cal)), exits_cal]
    conf = conformal_report(
        (chosen_cal, y_cal, exits_cal),
        (o["chosen_probs"], y_test, exits_test),
        probs_test.shape[1],
        ALPHAS,
    )
    return {
        "accuracy": o["accuracy"],
        "acc_chunk_sd": acc_sd,
        "cost": o["cost"],
        "cost_chunk_sd": cost_sd,
        "ece": o["ece"],
        "exit_counts": o["exit_counts"],
        "conformal": conf,
        "reliability": _reliability(o["confidence"], o["correct"]),
    }


def jei_point(feats, cfg, warm, seed, variant, lam, args, cache: Path, tag: str) -> dict:
    """Train JEI-DNN for one (seed, variant, lambda) from the warmed-up IMs; cached JSON."""
    settings = {
        "tag": tag,
        "seed": seed,
        "variant": variant,
        "lam": lam,
        "epochs": args.jei_epochs,
        "switch": args.switch,
        "warmup": args.warmup_epochs,
    }
    if args.pos_weight != "spec":  # keeps the cache keys of spec runs unchanged
        settings["pos_weight"] = args.pos_weight
    path = cache / "points" / f"jei_{_key(settings)}.json"
    cached = read_json(path)
    if cached is not None:
        return cached
    seed_everything(seed)
    heads = copy.deepcopy(warm)
    costs = _costs(cfg)
    train = Cached.from_numpy(*feats["train"])
    val = Cached.from_numpy(*feats["val"])
    t0 = time.perf_counter()
    train_jei(
        heads,
        train,
        val,
        costs,
        lam,
        im_loss=variant,
        epochs=args.jei_epochs,
        switch=args.switch,
        seed=seed,
        pos_weight=args.pos_weight,
    )
    secs = time.perf_counter() - t0
    test = Cached.from_numpy(*feats["test"])
    cal = Cached.from_numpy(*feats["calib"])
    ex_t, _ = jei_exits(heads, test)
    ex_c, _ = jei_exits(heads, cal)
    rec = score(
        exit_probs(heads, test),
        test.y.numpy(),
        ex_t,
        exit_probs(heads, cal),
        cal.y.numpy(),
        ex_c,
        costs.numpy(),
    )
    rec.update(settings, train_seconds=secs)
    write_json(path, rec)
    return rec


def baseline_points(feats, cfg, warm, boosted, seed) -> list[dict]:
    """Threshold sweeps (warm-up IMs and boosted IMs), oracle exit and the full backbone."""
    costs = _costs(cfg).numpy()
    test = Cached.from_numpy(*feats["test"])
    cal = Cached.from_numpy(*feats["calib"])
    yt, yc = test.y.numpy(), cal.y.numpy()
    rows = []
    for method, heads, is_boosted in (("threshold", warm, False), ("boosted", boosted, True)):
        pt, pc = exit_probs(heads, test, is_boosted), exit_probs(heads, cal, is_boosted)
        for tau in THRESHOLDS:
            rec = score(pt, yt, threshold_exits(pt, tau), pc, yc, threshold_exits(pc, tau), costs)
            rows.append({"method": method, "param": float(tau), **rec})
    pt, pc = exit_probs(warm, test), exit_probs(warm, cal)
    rec = score(pt, yt, oracle_exits(pt, yt), pc, yc, oracle_exits(pc, yc), costs)
    rows.append({"method": "oracle", "param": float("nan"), **rec})
    L = pt.shape[1]
    last_t, last_c = np.full(len(yt), L - 1), np.full(len(yc), L - 1)
    rec = score(pt, yt, last_t, pc, yc, last_c, costs)
    # the plain backbone: no IMs or gates evaluated on the way
    rec["cost"] = backbone_only_cost(macs(cfg), _im_macs(cfg), cfg.n_outputs)
    rows.append({"method": "full_backbone", "param": float("nan"), **rec})
    for r in rows:
        r["seed"] = seed
    return rows


# -- reporting -----------------------------------------------------------------------------
def _flat(rows: list[dict]) -> pd.DataFrame:
    keep = ["dataset", "seed", "method", "variant", "param"]
    keep += ["accuracy", "acc_chunk_sd", "cost", "cost_chunk_sd", "ece", "exit_counts"]
    df = pd.DataFrame([{k: r.get(k, "") for k in keep} for r in rows])
    df["exit_counts"] = df["exit_counts"].map(lambda c: " ".join(map(str, c)))
    return df


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and seed standard deviation of accuracy, cost and ECE per point."""
    g = df.groupby(["dataset", "method", "variant", "param"], dropna=False)
    out = g.agg(
        seeds=("seed", "nunique"),
        accuracy=("accuracy", "mean"),
        acc_seed_sd=("accuracy", "std"),
        acc_chunk_sd=("acc_chunk_sd", "mean"),
        cost=("cost", "mean"),
        cost_seed_sd=("cost", "std"),
        ece=("ece", "mean"),
        ece_seed_sd=("ece", "std"),
    ).reset_index()
    return out


def matched(df: pd.DataFrame) -> pd.DataFrame:
    """Each JEI point against the threshold baseline of the same seed at the same cost.

    Baseline accuracy and ECE are linearly interpolated along that seed's threshold curve
    (sorted by cost) at the JEI point's cost; then mean and sd over seeds.
    """
    rows = []
    for (ds, seed), g in df.groupby(["dataset", "seed"]):
        for base in ("threshold", "boosted"):
            b = g[g["method"] == base].sort_values("cost")
            for _, r in g[g["method"] == "jei"].iterrows():
                inside = b["cost"].min() <= r["cost"] <= b["cost"].max()
                rows.append(
                    {
                        "dataset": ds,
                        "seed": seed,
                        "variant": r["variant"],
                        "lambda": r["param"],
                        "baseline": base,
                        "cost": r["cost"],
                        "d_accuracy": r["accuracy"]
                        - np.interp(r["cost"], b["cost"], b["accuracy"]),
                        "d_ece": r["ece"] - np.interp(r["cost"], b["cost"], b["ece"]),
                        "in_range": bool(inside),
                    }
                )
    m = pd.DataFrame(rows)
    if m.empty:
        return m
    return (
        m.groupby(["dataset", "variant", "lambda", "baseline"])
        .agg(
            cost=("cost", "mean"),
            d_accuracy=("d_accuracy", "mean"),
            d_accuracy_sd=("d_accuracy", "std"),
            d_ece=("d_ece", "mean"),
            d_ece_sd=("d_ece", "std"),
            in_range=("in_range", "all"),
        )
        .reset_index()
    )


def conformal_table(rows: list[dict], mid_lambda: float) -> pd.DataFrame:
    """Coverage and set size: JEI at ``mid_lambda`` and the threshold point nearest in cost."""
    out = []
    by = {}
    for r in rows:
        by.setdefault((r["dataset"], r["seed"]), []).append(r)
    for (ds, seed), rs in by.items():
        jeis = [r for r in rs if r["method"] == "jei" and r["param"] == mid_lambda]
        for j in jeis:
            thr = [r for r in rs if r["method"] == "threshold"]
            t = min(thr, key=lambda r: abs(r["cost"] - j["cost"]))
            for name, r in ((f"jei_{j['variant']}", j), ("threshold", t)):
                for c in r["conformal"]:
                    out.append(
                        {"dataset": ds, "seed": seed, "method": name, "cost": r["cost"], **c}
                    )
    df = pd.DataFrame(out)
    if df.empty:
        return df
    return (
        df.groupby(["dataset", "method", "alpha"])
        .agg(
            cost=("cost", "mean"),
            coverage=("coverage", "mean"),
            coverage_sd=("coverage", "std"),
            set_size=("set_size", "mean"),
            set_size_sd=("set_size", "std"),
            n_full_set_exits=("n_full_set_exits", "mean"),
        )
        .reset_index()
        .drop_duplicates(["dataset", "method", "alpha"])
    )


def figures(summary: pd.DataFrame, rows: list[dict], conf: pd.DataFrame, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted(summary["dataset"].unique())
    styles = {
        ("jei", "weighted"): dict(marker="o", color="C3", label="JEI-DNN (pi-weighted IM loss)"),
        ("jei", "mean"): dict(marker="s", color="C1", label="JEI-DNN (mean IM loss)"),
        ("threshold", ""): dict(marker=".", color="C0", label="confidence threshold"),
        ("boosted", ""): dict(marker=".", color="C2", label="boosted + threshold"),
    }
    for metric, fname, ylabel in (
        ("accuracy", "accuracy_cost.png", "test accuracy"),
        ("ece", "calibration_ece.png", "ECE (15 equal-mass bins)"),
    ):
        fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
        for ax, ds in zip(axes[0], datasets, strict=True):
            s = summary[summary["dataset"] == ds]
            for (method, variant), st in styles.items():
                g = s[(s["method"] == method) & (s["variant"] == variant)].sort_values("cost")
                if g.empty:
                    continue
                sd = g["acc_seed_sd" if metric == "accuracy" else "ece_seed_sd"].fillna(0)
                ax.errorbar(g["cost"], g[metric], yerr=sd, capsize=2, lw=1, ms=5, **st)
            if metric == "accuracy":
                for method, mk in (("oracle", "*"), ("full_backbone", "D")):
                    g = s[s["method"] == method]
                    ax.plot(g["cost"], g["accuracy"], mk, color="k", ms=8, label=method)
            ax.set_title(ds)
            ax.set_xlabel("mean normalised cost (full path = 1)")
            ax.set_ylabel(ylabel)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=120)
        plt.close(fig)

    if not conf.empty:
        fig, axes = plt.subplots(2, len(datasets), figsize=(5.5 * len(datasets), 6), squeeze=False)
        for j, ds in enumerate(datasets):
            c = conf[conf["dataset"] == ds]
            for method, g in c.groupby("method"):
                axes[0][j].errorbar(
                    g["alpha"],
                    g["coverage"],
                    yerr=g["coverage_sd"].fillna(0),
                    marker="o",
                    capsize=2,
                    label=method,
                )
                axes[1][j].errorbar(
                    g["alpha"],
                    g["set_size"],
                    yerr=g["set_size_sd"].fillna(0),
                    marker="o",
                    capsize=2,
                    label=method,
                )
            a = np.array(ALPHAS)
            axes[0][j].plot(a, 1 - a, "k--", lw=0.8, label="1 - alpha")
            axes[0][j].set_title(ds)
            axes[1][j].set_xlabel("alpha")
        axes[0][0].set_ylabel("empirical coverage")
        axes[1][0].set_ylabel("mean set size")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "conformal.png", dpi=120)
        plt.close(fig)

    jei = [r for r in rows if r["method"] == "jei" and r["variant"] == "weighted"]
    if jei:
        lams = sorted({r["param"] for r in jei})
        fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
        for ax, ds in zip(axes[0], datasets, strict=True):
            counts = []
            for lam in lams:
                cs = [
                    np.array(r["exit_counts"])
                    for r in jei
                    if r["dataset"] == ds and r["param"] == lam
                ]
                tot = np.sum(cs, axis=0)
                counts.append(tot / tot.sum())
            counts = np.array(counts)
            bottom = np.zeros(len(lams))
            x = np.arange(len(lams))
            for l in range(counts.shape[1]):
                ax.bar(x, counts[:, l], bottom=bottom, label=f"exit {l + 1}")
                bottom += counts[:, l]
            ax.set_xticks(x, [f"{v:g}" for v in lams], rotation=45)
            ax.set_xlabel("lambda")
            ax.set_ylabel("fraction of test examples")
            ax.set_title(f"{ds}: JEI-DNN exits (pi-weighted)")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "exit_histograms.png", dpi=120)
        plt.close(fig)


# -- CLI -------------------------------------------------------------------------------------
def _floats(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None
    if not vals or min(vals) < 0:
        raise argparse.ArgumentTypeError(f"expected numbers >= 0, got {text!r}")
    return vals


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="simstudy neural jei-dnn",
        description="JEI-DNN vs early-exit baselines on scikit-learn digits (CPU proxy).",
    )
    p.add_argument("--quick", action="store_true", help="tiny backbone and grid (for tests)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default="results/neural/jei_dnn")
    p.add_argument("--cache", default=None, help="default: results/neural/cache/jei_dnn")
    p.add_argument("--datasets", default="digits,digits_lt")
    p.add_argument("--variants", default="weighted,mean")
    p.add_argument("--lambdas", type=_floats, default=list(LAMBDAS))
    p.add_argument("--backbone-epochs", type=int, default=100)
    p.add_argument("--warmup-epochs", type=int, default=60)
    p.add_argument("--jei-epochs", type=int, default=40)
    p.add_argument("--switch", type=int, default=4, help="batches per gate/IM phase")
    p.add_argument(
        "--pos-weight",
        default="spec",
        choices=["spec", "cumulative"],
        help="gate BCE positive weight from #{l* = l} (spec) or #{l* <= l} (variant)",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("-q", "--quiet", dest="verbose", action="store_false")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run (or resume) the benchmark and write its tables and figures; returns 0."""
    args = build_parser().parse_args(argv)
    if args.seeds < 1:
        raise ValueError(f"seeds: must be >= 1, got {args.seeds}")
    datasets = [d for d in args.datasets.split(",") if d]
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in ("weighted", "mean"):
            raise ValueError(f"variants: unknown IM loss {v!r}; allowed: ['weighted', 'mean']")
    cfg = _image_cfg(width=64, depth=6, heads=4, patch=4)
    out = Path(args.out)
    if args.quick:
        cfg = _image_cfg(width=16, depth=3, heads=2, patch=4)
        args.backbone_epochs, args.warmup_epochs, args.jei_epochs = 3, 3, 2
        args.lambdas = [0.1, 1.0]
        datasets, variants, args.seeds = ["digits"], ["weighted"], 1
    cache = (
        Path(args.cache)
        if args.cache
        else (out / "cache" if args.quick else Path("results/neural/cache/jei_dnn"))
    )
    set_threads(args.threads)
    log = print if args.verbose else (lambda *a, **k: None)
    t0 = time.perf_counter()
    rows: list[dict] = []
    for ds in datasets:
        feats = backbone_features(ds, cfg, args.backbone_epochs, cache, log)
        tag = f"{ds}_{_key(feats['settings'])}"
        for seed in range(args.seeds):
            warm = warm_heads(feats, cfg, seed, False, args, cache, tag)
            boosted = warm_heads(feats, cfg, seed, True, args, cache, tag)
            for r in baseline_points(feats, cfg, warm, boosted, seed):
                rows.append({"dataset": ds, "variant": "", **r})
            for variant in variants:
                for lam in args.lambdas:
                    rec = jei_point(feats, cfg, warm, seed, variant, lam, args, cache, tag)
                    rows.append({"dataset": ds, "method": "jei", "param": lam, **rec})
            log(f"  {ds} seed {seed}: done ({time.perf_counter() - t0:.0f} s)")
    out.mkdir(parents=True, exist_ok=True)
    df = _flat(rows)
    write_table(df, out / "points")
    summary = summarise(df)
    write_table(summary, out / "summary")
    mt = matched(df)
    write_table(mt, out / "matched")
    lams = sorted(args.lambdas)
    conf = conformal_table(rows, lams[len(lams) // 2])
    write_table(conf, out / "conformal")
    figures(summary, rows, conf, out)
    seconds = time.perf_counter() - t0
    write_json(
        out / "run.json",
        {"seconds": seconds, "argv": list(argv or []), "torch_threads": torch.get_num_threads()},
    )
    log(f"jei-dnn benchmark: {seconds:.0f} s -> {out}")
    return 0
