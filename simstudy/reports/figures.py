"""Log-log figures of the losses against n (matplotlib, Agg backend).

Every panel shows, per protocol (or per label), the replications as points (slightly jittered
in n so they do not hide each other), the per-n median, the median-regression line, and the
theory's slope as a dashed guide through the middle of the fitted line. The legend gives the
fitted slope with its 95% bootstrap interval and the theory. Each panel has its own y axis.
Colours are the Okabe-Ito palette (safe for the common colour-vision deficiencies), and every
series also has its own marker.

The ``*_figure`` functions return a :class:`matplotlib.figure.Figure` (tests inspect its axes,
series and labels); :func:`write_figures` saves them.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from simstudy.reports.rates import (  # noqa: E402
    INCLUDED_STATUSES,
    designed_partition,
    usable,
)
from simstudy.reports.theory import PARAMS  # noqa: E402
from simstudy.reports.verdicts import BOUND, PLATEAU, RATE  # noqa: E402

__all__ = ["OKABE_ITO", "PROTOCOL_COLORS", "FIGURE_METRICS", "draw_metric", "metric_figure",
           "param_figure", "factorial_figure", "divergence_figure", "atoms_figure",
           "write_figures", "save_figure"]

#: Okabe & Ito (2008) colour-blind-safe palette (black last)
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442",
             "#000000")
#: fixed colours and markers of the known protocols, so every figure reads the same
PROTOCOL_COLORS = {"strict": "#0072B2", "papers": "#D55E00", "shrinking_strict": "#009E73",
                   "fixed_tol": "#CC79A7"}
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_PROTOCOL_MARKERS = {"strict": "o", "papers": "s", "shrinking_strict": "^", "fixed_tol": "D"}

#: metrics with a figure of their own (facets by label)
FIGURE_METRICS = ("D1", "D2", "hellinger", "tv")


def style(key, i: int):
    """(colour, marker) of series ``key`` (a protocol name or any label) at position ``i``."""
    if key in PROTOCOL_COLORS:
        return PROTOCOL_COLORS[key], _PROTOCOL_MARKERS[key]
    return OKABE_ITO[i % len(OKABE_ITO)], _MARKERS[i % len(_MARKERS)]


def _rate_lookup(rates: pd.DataFrame | None) -> dict:
    if rates is None or rates.empty:
        return {}
    return {(r.label, r.protocol, r.metric): r for r in rates.itertuples(index=False)}


#: the order series are drawn and listed in
PROTOCOL_ORDER = ("strict", "papers", "shrinking_strict", "fixed_tol")


def _ordered(protocols) -> list:
    protocols = list(dict.fromkeys(protocols))
    known = [p for p in PROTOCOL_ORDER if p in protocols]
    return known + [p for p in protocols if p not in known]


def _legend_text(name: str, r) -> str:
    if r is None or not np.isfinite(r.slope):
        return name
    txt = f"{name}: slope {r.slope:+.2f}"
    if np.isfinite(r.ci95_low):
        txt += f" [{r.ci95_low:+.2f}, {r.ci95_high:+.2f}]"
    return txt


def _theory_label(r) -> str | None:
    if r is None:
        return None
    if r.kind == RATE:
        return f"theory: n^{r.expected:+.3g} (dashed)"
    if r.kind == BOUND:
        return f"theory: n^{r.expected:+.3g} or faster (dashed)"
    if r.kind == PLATEAU:
        return "theory: levels off, slope 0 (dashed)"
    return None


def _n_tick(v, _pos=None) -> str:
    if not (np.isfinite(v) and v > 0):
        return ""
    e = int(np.floor(np.log10(v) + 1e-9))
    m = v / 10**e
    return f"1e{e}" if abs(m - 1) < 1e-6 else f"{m:.2g}e{e}"


def _readable_log_axis(axis, lo: float, hi: float, fmt=None) -> None:
    """Tick labels on a log axis whatever its range: decades when it spans two or more,
    otherwise 1-2-5 steps (finer below a decade), labelled with ``fmt`` (default: plain
    numbers, 3 significant digits)."""
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo > 0):
        return
    fmt = fmt or (lambda v, _pos=None: f"{v:.3g}")
    decades = np.log10(hi) - np.log10(lo)
    if decades >= 2.5:
        axis.set_major_locator(LogLocator(base=10))
    else:
        subs = (1.0, 2.0, 5.0) if decades >= 0.7 else (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0)
        axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(fmt))
    axis.set_minor_formatter(NullFormatter())


def draw_metric(ax, g: pd.DataFrame, metric: str, color, marker: str, name: str, rate=None,
                partition=None, statuses=INCLUDED_STATUSES, jitter: float = 0.03,
                seed: int = 0, layer: int = 0) -> bool:
    """Draw one series (one label and protocol) of ``metric`` on ``ax``; False when nothing
    is usable.

    rate : a row of the rate table (slope, intercept, CI, kind, expected) or None
    layer : the series' place in the drawing order; series 0 (the headline protocol) is
        drawn above the others in each layer (points, lines, medians), so a protocol whose
        values coincide with it cannot hide it
    """
    lift = -0.01 * layer
    if metric not in g.columns:
        return False
    use, _ = usable(g, metric, partition, statuses)
    if not use.any():
        return False
    n = g["n"].to_numpy(dtype=float)[use]
    v = pd.to_numeric(g[metric], errors="coerce").to_numpy(dtype=float)[use]
    rng = np.random.default_rng(seed)
    ax.scatter(n * np.exp(rng.uniform(-jitter, jitter, n.size)), v, s=9, alpha=0.45,
               color=color, marker=marker, linewidths=0, zorder=2 + lift)
    med = pd.Series(v).groupby(n).median()
    ax.plot(med.index, med.to_numpy(), linestyle="none", marker=marker, ms=5, mfc="white",
            mec=color, mew=1.2, zorder=4 + lift)
    label = _legend_text(name, rate)
    if rate is not None and np.isfinite(rate.slope) and np.isfinite(rate.intercept):
        grid = np.geomspace(med.index.min(), med.index.max(), 50)
        fitted = np.exp(rate.intercept + rate.slope * np.log(grid))
        ax.plot(grid, fitted, "-", lw=1.8, color=color, zorder=3 + lift, label=label)
        if rate.kind in (RATE, BOUND, PLATEAU) and np.isfinite(rate.expected):
            mid = np.sqrt(grid[0] * grid[-1])
            at = np.exp(rate.intercept + rate.slope * np.log(mid))
            ax.plot(grid, at * (grid / mid) ** rate.expected, "--", lw=1.2, color=color,
                    alpha=0.9, zorder=3 + lift, gid="theory")
            theory = _theory_label(rate)
            have = {t.get_label() for t in ax.get_lines()}
            if theory not in have:  # one legend entry for the theory per panel
                ax.plot([], [], "--", color="0.3", lw=1.2, label=theory)
    else:
        ax.plot([], [], "-", color=color, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    return True


def _legend_below(ax, fontsize=7) -> None:
    """The legend under the panel (never over the data)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=fontsize, loc="upper center", bbox_to_anchor=(0.5, -0.2),
                  frameon=False, ncol=1, handlelength=2.2)


def _finish_axis(ax, xlabel="n", ylabel=None) -> None:
    lines = [c for c in ax.collections if c.get_offsets().size]
    ys = np.concatenate([c.get_offsets()[:, 1] for c in lines]) if lines else np.array([])
    xs = np.concatenate([c.get_offsets()[:, 0] for c in lines]) if lines else np.array([])
    ys, xs = ys[np.isfinite(ys) & (ys > 0)], xs[np.isfinite(xs) & (xs > 0)]
    if ys.size:
        _readable_log_axis(ax.yaxis, ys.min(), ys.max())
    if xs.size:
        _readable_log_axis(ax.xaxis, xs.min(), xs.max(), _n_tick)
    ax.tick_params(labelsize=8)
    ax.grid(True, which="major", alpha=0.3, lw=0.5)
    ax.set_xlabel(xlabel, fontsize=9)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=9)


def _facet_grid(n_panels: int, ncols: int, w: float = 4.6, h: float = 3.4):
    ncols = max(1, min(ncols, n_panels))
    nrows = int(np.ceil(n_panels / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False)
    for ax in axes.ravel()[n_panels:]:
        ax.set_axis_off()
    return fig, axes.ravel()[:n_panels]


def metric_figure(df: pd.DataFrame, metric: str, rates: pd.DataFrame | None = None,
                  theory: pd.DataFrame | None = None, title: str = ""):
    """One panel per label of ``metric`` vs n, one series per protocol (None when no data)."""
    look = _rate_lookup(rates)
    design = designed_partition(theory)
    labels = [lab for lab in dict.fromkeys(df["label"])
              if metric in df.columns and df.loc[df["label"] == lab, metric].notna().any()]
    if not labels:
        return None
    fig, axes = _facet_grid(len(labels), 3, w=5.0, h=5.0)
    drawn = False
    for ax, label in zip(axes, labels, strict=True):
        g = df[df["label"] == label]
        for i, proto in enumerate(_ordered(g["protocol"])):
            color, marker = style(proto, i)
            drawn |= draw_metric(ax, g[g["protocol"] == proto], metric, color, marker, proto,
                                 look.get((label, proto, metric)), design.get(label), seed=i,
                                 layer=i)
        ax.set_title(f"{label}: {metric}" if len(labels) > 1 or not title else title,
                     fontsize=10)
        _finish_axis(ax, ylabel=metric)
        _legend_below(ax)
    if not drawn:
        plt.close(fig)
        return None
    if title and len(labels) > 1:
        fig.suptitle(title + " (solid: median regression, points: replications, open "
                     "markers: per-n medians)", fontsize=10)
    fig.tight_layout()
    return fig


def param_figure(df: pd.DataFrame, label: str, rates: pd.DataFrame | None = None,
                 theory: pd.DataFrame | None = None, experts=None, title: str = "",
                 protocols=None):
    """Facets: true expert (rows) x parameter (beta1, a, b, v, mass) for one fit label; one
    series per protocol. ``experts`` (numbered from 1) restricts the rows; ``protocols``
    the series (default: the two base protocols where the label has them, else all)."""
    g = df[df["label"] == label]
    have = _ordered(g["protocol"])
    if protocols is None:
        base = [p for p in ("strict", "papers") if p in have]
        protocols = base or have
    g = g[g["protocol"].isin(protocols)]
    k_star = max((int(c.rsplit("_", 1)[1]) for c in g.columns if str(c).startswith("mass_")),
                 default=0)
    if k_star == 0:
        return None
    experts = list(range(1, k_star + 1)) if experts is None else list(experts)
    look = _rate_lookup(rates)
    part = designed_partition(theory).get(label)
    th = {} if theory is None else {(r.label, r.metric): r for r in theory.itertuples(
        index=False)}
    cols = [*PARAMS, "mass"]
    fig, axes = plt.subplots(len(experts), len(cols), figsize=(3.7 * len(cols),
                                                                4.1 * len(experts)),
                             squeeze=False)
    drawn = False
    for r, j in enumerate(experts):
        for c, p in enumerate(cols):
            ax = axes[r, c]
            metric = f"mass_{j}" if p == "mass" else f"err_{p}_{j}"
            here = False
            for i, proto in enumerate(_ordered(g["protocol"])):
                color, marker = style(proto, i)
                here |= draw_metric(ax, g[g["protocol"] == proto], metric, color, marker,
                                    proto, look.get((label, proto, metric)), part, seed=i,
                                    layer=i)
            t = th.get((label, metric))
            kind = "" if t is None else t.kind
            if not here:
                ax.set_axis_off()
                why = "fixed at the truth" if kind == "fixed" else "no usable values"
                ax.text(0.5, 0.5, f"expert {j}: {p}\n{why}", ha="center", va="center",
                        fontsize=8, transform=ax.transAxes)
                continue
            drawn = True
            ax.set_title(f"expert {j}: {p}", fontsize=9)
            _finish_axis(ax, ylabel=metric)
            _legend_below(ax, fontsize=6.5)
    if not drawn:
        plt.close(fig)
        return None
    fig.suptitle(title or f"{label}: weighted per-parameter errors and cell masses vs n "
                 "(solid: median regression; dashed: theory; points: replications; open "
                 "markers: per-n medians)", fontsize=11)
    fig.tight_layout()
    return fig


def interval_marks(ax, x, v, lo, hi, *, marker, color, ms, lw, capsize, label):
    """Estimates with their intervals drawn as bars from lo to hi, independently of the
    estimate: a percentile-bootstrap interval of a median-regression slope need not contain
    the full-data estimate (an error bar cannot draw that)."""
    x, v, lo, hi = (np.asarray(a, dtype=float) for a in (x, v, lo, hi))
    ok = np.isfinite(lo) & np.isfinite(hi)
    if ok.any():
        ax.vlines(x[ok], lo[ok], hi[ok], color=color, lw=lw)
        for end in (lo, hi):
            ax.plot(x[ok], end[ok], ls="none", marker="_", ms=2.5 * capsize, color=color,
                    mew=lw)
    ax.plot(x, v, ls="none", marker=marker, color=color, ms=ms, label=label)


def factorial_figure(fac: pd.DataFrame, label: str, title: str = ""):
    """Start and stop effects (with 95% intervals) on the slope of every metric of one label:
    the 2 x 2 protocol factorial (:mod:`simstudy.reports.factorial`)."""
    f = fac[(fac["label"] == label) & np.isfinite(fac["total"])]
    if f.empty:
        return None
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(f) + 2), 3.8))
    x = np.arange(len(f))
    for off, (e, name, color, marker) in zip(
            (-0.22, 0.0, 0.22),
            [("total", "papers - strict", "#000000", "o"),
             ("start", "start effect (shrinking - fixed noise)", "#009E73", "^"),
             ("stop", "stop effect (tol 1e-6 - strict)", "#CC79A7", "D")], strict=True):
        v, lo, hi = f[e].to_numpy(), f[f"{e}_low"].to_numpy(), f[f"{e}_high"].to_numpy()
        interval_marks(ax, x + off, v, lo, hi, marker=marker, color=color, ms=5, lw=1.2,
                       capsize=2, label=name)
    ax.axhline(0.0, color="0.5", lw=0.8)
    ax.set_xticks(x, f["metric"], rotation=45, ha="right", fontsize=8)
    ax.tick_params(axis="y", labelsize=8)
    ax.set_ylabel("difference in slope\n(< 0: the papers' slope is faster)", fontsize=9)
    ax.grid(True, axis="y", alpha=0.3, lw=0.5)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(title or f"{label}: where the papers' slopes come from (95% intervals)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def divergence_figure(df: pd.DataFrame, labels, title: str = ""):
    """max |beta1| against n (one panel per label): the divergence of a dense fit of a sparse
    truth."""
    labels = [lab for lab in labels if "max_abs_beta1" in df.columns
              and (df["label"] == lab).any()]
    if not labels:
        return None
    fig, axes = _facet_grid(len(labels), 3)
    for ax, label in zip(axes, labels, strict=True):
        g = df[df["label"] == label]
        for i, proto in enumerate(_ordered(g["protocol"])):
            color, marker = style(proto, i)
            draw_metric(ax, g[g["protocol"] == proto], "max_abs_beta1", color, marker, proto,
                        None, None, seed=i, layer=i)
        ax.set_title(f"{label}: max |beta1| (divergence)", fontsize=10)
        _finish_axis(ax, ylabel="max |beta1|")
        _legend_below(ax)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def _multi_atom_experts(theory, label) -> list[int]:
    """True experts (from 1) fitted by several atoms in the design of ``label``."""
    if theory is None or "cell_sizes" not in theory.columns:
        return []
    g = theory[theory["label"] == label]
    if g.empty:
        return []
    sizes = [int(x) for x in str(g["cell_sizes"].iloc[0]).split(",")]
    return [j for j, m in enumerate(sizes, start=1) if m > 1]


def save_figure(fig, path) -> Path | None:
    """Save and close ``fig`` (None: nothing to save)."""
    if fig is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_figures(study: str, df: pd.DataFrame, rates: pd.DataFrame | None,
                  theory: pd.DataFrame | None, out, factorial: pd.DataFrame | None = None,
                  metrics=FIGURE_METRICS) -> list[Path]:
    """All figures of a study under ``out/figures``; returns the written paths.

    ``<study>_<metric>.png`` (facets by label) for each of ``metrics`` with data,
    ``<study>_params_<label>.png`` (true expert x parameter) per label and
    ``<study>_params_<label>_multi.png`` (its multiply-fitted experts only), and where they apply
    ``<study>_factorial_<label>.png`` and ``<study>_divergence.png`` (dense fits of a sparse
    truth).
    """
    fdir = Path(out) / "figures"
    written = []
    for m in metrics:
        p = save_figure(metric_figure(df, m, rates, theory, title=f"{study}: {m} vs n"),
                        fdir / f"{study}_{m}.png")
        written += [p] if p else []
    for label in dict.fromkeys(df["label"]):
        p = save_figure(param_figure(df, label, rates, theory), fdir / f"{study}_params_"
                        f"{label}.png")
        written += [p] if p else []
        multi = _multi_atom_experts(theory, label)
        if p and multi:
            p = save_figure(param_figure(df, label, rates, theory, experts=multi,
                                         title=f"{label}: the multiply-fitted expert(s) "
                                         f"{', '.join(map(str, multi))} (solid: median "
                                         "regression; dashed: theory)"),
                            fdir / f"{study}_params_{label}_multi.png")
            written += [p] if p else []
        if factorial is not None and len(factorial):
            p = save_figure(factorial_figure(factorial, label), fdir / f"{study}_factorial_"
                            f"{label}.png")
            written += [p] if p else []
    if theory is not None:
        dense = [lab for lab, g in theory.groupby("label", sort=False)
                 if int(g["K"].iloc[0]) == int(g["k"].iloc[0])
                 and int(g["true_K"].iloc[0]) < int(g["k_star"].iloc[0])]
        p = save_figure(divergence_figure(df, dense, title=f"{study}: dense fits of the "
                                          "sparse truth"), fdir / f"{study}_divergence.png")
        written += [p] if p else []
    return written


def atoms_figure(rows: pd.DataFrame, title: str = ""):
    """Measured slopes of expert 1's parameters against the number m of atoms fitted to it.

    Parameters
    ----------
    rows : pandas.DataFrame
        One row per (design, m, parameter): columns design, m, param, slope, ci95_low,
        ci95_high, expected (the theory's exponent), tol, verdict, label (study/label).

    One panel per (design, parameter); x = m; the spec's exponents -1/2 (m = 1), -1/(2 rbar(m))
    (beta1, b) and -1/rbar(m) (a, v) as guides, with the edge a bound verdict uses (exponent +
    tolerance) dotted; measured slopes with 95% intervals.
    """
    if rows.empty:
        return None
    designs = list(dict.fromkeys(rows["design"]))
    fig, axes = plt.subplots(len(designs), len(PARAMS), figsize=(3.4 * len(PARAMS),
                                                                  3.3 * len(designs)),
                             squeeze=False)
    for r, design in enumerate(designs):
        for c, p in enumerate(PARAMS):
            ax = axes[r, c]
            g = rows[(rows["design"] == design) & (rows["param"] == p)].sort_values("m")
            if g.empty:
                ax.set_axis_off()
                continue
            ms = g["m"].to_numpy(dtype=float)
            ax.plot(ms, g["expected"], "--", color="0.3", marker="_", ms=14, lw=1,
                    label="theory exponent", gid="theory")
            ax.plot(ms, g["expected"] + g["tol"], ":", color="0.5", lw=1,
                    label="theory + tolerance (bound edge)")
            y, lo, hi = (g[k].to_numpy(dtype=float) for k in ("slope", "ci95_low",
                                                               "ci95_high"))
            interval_marks(ax, ms, y, lo, hi, marker="o", color=OKABE_ITO[0], ms=6,
                           capsize=3, lw=1.4, label="measured slope, 95% CI")
            for m, yy, v in zip(ms, y, g["verdict"], strict=True):
                if np.isfinite(yy):
                    ax.annotate(str(v), (m, yy), textcoords="offset points", xytext=(7, -3),
                                fontsize=7)
            ax.set_xticks([1, 2, 3], ["m = 1", "m = 2", "m = 3"])
            ax.set_xlim(0.6, 3.6)
            ax.axhline(0.0, color="0.8", lw=0.8)
            ax.tick_params(labelsize=8)
            ax.grid(True, axis="y", alpha=0.3, lw=0.5)
            ax.set_title(f"design {design}: expert 1, {p}", fontsize=9)
            if c == 0:
                ax.set_ylabel("slope of log error vs log n", fontsize=9)
            _legend_below(ax, fontsize=6.5)
    fig.suptitle(title or "Expert 1 fitted by m atoms: measured rates against n^-1/2, "
                 "n^-1/(2 rbar(m)) (beta1, b) and n^-1/rbar(m) (a, v); rbar = 1, 4, 6",
                 fontsize=10)
    fig.tight_layout()
    return fig
