"""Log-log figures of the metrics against n (matplotlib, Agg backend).

Every panel shows, per (label, protocol): the replications as light points, the per-n median,
the OLS line of log(metric) on log(n) with its 95% band (HC3), and, where the theory gives an
exponent, a dashed guide with that slope anchored at the median of the smallest n.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from simstudy.reports.rates import INCLUDED_STATUSES, fit_rate  # noqa: E402
from simstudy.reports.theory import PARAMS  # noqa: E402

__all__ = ["FIGURE_METRICS", "draw_metric", "metric_figure", "param_panels", "sweep_figure",
           "write_figures"]

_PALETTE = plt.get_cmap("tab10")


def _usable(g: pd.DataFrame, metric: str, statuses) -> pd.DataFrame:
    v = pd.to_numeric(g[metric], errors="coerce")
    keep = g["status"].isin(statuses) & np.isfinite(v) & (v > 0)
    return pd.DataFrame({"n": g.loc[keep, "n"].astype(float), "value": v[keep]})


def draw_metric(ax, g: pd.DataFrame, metric: str, color, name: str, theory=None,
                statuses=INCLUDED_STATUSES) -> bool:
    """Draw one (label, protocol) series of ``metric`` on ``ax``; False when nothing usable.

    theory : tuple (kind, expected) or None
    """
    u = _usable(g, metric, statuses)
    if u.empty:
        return False
    ax.scatter(u["n"], u["value"], s=6, alpha=0.15, color=color, linewidths=0)
    med = u.groupby("n")["value"].median()
    ax.plot(med.index, med.to_numpy(), "o-", ms=3, lw=1, color=color, label=name)
    if med.size >= 2:
        f = fit_rate(u["n"], u["value"])
        grid = np.geomspace(med.index.min(), med.index.max(), 50)
        exog = np.column_stack([np.ones_like(grid), np.log(grid)])
        pred = f.result.get_prediction(exog)
        band = np.exp(pred.conf_int(alpha=0.05))
        ax.plot(grid, np.exp(pred.predicted_mean), "-", lw=1.5, color=color, alpha=0.8)
        ax.fill_between(grid, band[:, 0], band[:, 1], color=color, alpha=0.2, linewidth=0)
        if theory is not None and theory[0] in ("rate", "bound") and np.isfinite(theory[1]):
            n0 = med.index.min()
            ax.plot(grid, med.iloc[0] * (grid / n0) ** theory[1], "--", lw=1, color=color,
                    alpha=0.9)
    ax.set_xscale("log")
    ax.set_yscale("log")
    # minor-tick labels crowd narrow n ranges; the major decades are enough
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    return True


def _theory_lookup(theory: pd.DataFrame | None) -> dict:
    if theory is None:
        return {}
    return {(r.label, r.metric): (r.kind, r.expected) for r in theory.itertuples(index=False)}


def _series(df: pd.DataFrame):
    keys = list(df.groupby(["label", "protocol"], sort=False).groups)
    return keys, {k: _PALETTE(i % 10) for i, k in enumerate(keys)}


def metric_figure(df: pd.DataFrame, metric: str, path, theory: pd.DataFrame | None = None,
                  title: str = "") -> bool:
    """One log-log panel of ``metric`` vs n, hue by label/protocol. False when no data."""
    th = _theory_lookup(theory)
    keys, colors = _series(df)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    drawn = False
    for key in keys:
        g = df[(df["label"] == key[0]) & (df["protocol"] == key[1])]
        if metric in g.columns:
            drawn |= draw_metric(ax, g, metric, colors[key], f"{key[0]} / {key[1]}",
                                 th.get((key[0], metric)))
    if drawn:
        ax.set_xlabel("n")
        ax.set_ylabel(metric)
        ax.set_title(title or metric)
        ax.legend(fontsize=7, title="label / protocol (dashed: theory)", title_fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def param_panels(df: pd.DataFrame, label: str, path, theory: pd.DataFrame | None = None,
                 k_star: int | None = None) -> bool:
    """Facets: true expert (rows) x parameter (beta1, a, b, v, mass) for one fit label."""
    g = df[df["label"] == label]
    if k_star is None:
        k_star = max((int(c.rsplit("_", 1)[1]) for c in g.columns
                      if c.startswith("mass_")), default=0)
    if k_star == 0:
        return False
    th = _theory_lookup(theory)
    protocols = list(dict.fromkeys(g["protocol"]))
    cols = [*PARAMS, "mass"]
    fig, axes = plt.subplots(k_star, len(cols), figsize=(2.6 * len(cols), 2.2 * k_star),
                             squeeze=False)
    drawn = False
    for j in range(1, k_star + 1):
        for c, p in enumerate(cols):
            ax = axes[j - 1, c]
            metric = f"mass_{j}" if p == "mass" else f"err_{p}_{j}"
            here = False
            for i, proto in enumerate(protocols):
                gp = g[g["protocol"] == proto]
                if metric in gp.columns:
                    here |= draw_metric(ax, gp, metric, _PALETTE(i), proto,
                                        th.get((label, metric)))
            drawn |= here
            if not here:
                ax.set_axis_off()
                ax.text(0.5, 0.5, "no positive values\n(e.g. fixed at the truth)",
                        ha="center", va="center", fontsize=7, transform=ax.transAxes)
            kind = th.get((label, metric), ("none", np.nan))
            guide = f"{kind[1]:+.3g}" if np.isfinite(kind[1]) else kind[0]
            ax.set_title(f"expert {j}: {p}  (theory {guide})", fontsize=8)
            ax.tick_params(labelsize=6)
    if drawn:
        axes[0, 0].legend(fontsize=6)
        fig.suptitle(f"{label}: per-parameter errors vs n", fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return drawn


def sweep_figure(df: pd.DataFrame, path, theory: pd.DataFrame | None = None,
                 metrics=("hellinger", "tv", "D")) -> bool:
    """Side by side: one column per label (a sweep over K-bar or K), rows = metrics; "D" is
    D1 or D2, whichever the label has."""
    labels = list(dict.fromkeys(df["label"]))
    if len(labels) < 2:
        return False
    th = _theory_lookup(theory)
    protocols = list(dict.fromkeys(df["protocol"]))
    fig, axes = plt.subplots(len(metrics), len(labels), figsize=(3.2 * len(labels),
                                                                 2.6 * len(metrics)),
                             squeeze=False, sharey="row")
    drawn = False
    for c, label in enumerate(labels):
        g = df[df["label"] == label]
        for r, m in enumerate(metrics):
            ax = axes[r, c]
            if m == "D":
                m = next((x for x in ("D1", "D2") if x in g.columns and g[x].notna().any()),
                         "D1")
            for i, proto in enumerate(protocols):
                gp = g[g["protocol"] == proto]
                if m in gp.columns:
                    drawn |= draw_metric(ax, gp, m, _PALETTE(i), proto, th.get((label, m)))
            ax.set_title(f"{label}: {m}", fontsize=8)
            ax.tick_params(labelsize=6)
    if drawn:
        axes[0, 0].legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return drawn


#: metrics that get a figure of their own; per-parameter errors go in the panel figures
FIGURE_METRICS = ("D1", "D2", "hellinger", "tv")


def write_figures(study: str, df: pd.DataFrame, theory: pd.DataFrame | None, out,
                  metrics=FIGURE_METRICS) -> list[Path]:
    """All figures of a study under ``out/figures``; returns the written paths.

    ``<study>_<metric>.png`` for each of ``metrics`` that has data, ``<study>_params_<label>.png``
    (true expert x parameter facets) per fit label, and ``<study>_sweep.png`` (facets by label)
    when the study has several labels.
    """
    fdir = Path(out) / "figures"
    fdir.mkdir(parents=True, exist_ok=True)
    written = []
    for m in metrics:
        p = fdir / f"{study}_{m}.png"
        if metric_figure(df, m, p, theory, title=f"{study}: {m}"):
            written.append(p)
    for label in dict.fromkeys(df["label"]):
        p = fdir / f"{study}_params_{label}.png"
        if param_panels(df, label, p, theory):
            written.append(p)
    p = fdir / f"{study}_sweep.png"
    if sweep_figure(df, p, theory):
        written.append(p)
    return written
