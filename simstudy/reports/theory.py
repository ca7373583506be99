"""The theory table: expected convergence exponents, derived from the design and the fit.

Nothing here is typed per study. Given the truth (k*, true K, the parameters and the input law),
the fitted number of experts k, the fitted K-bar and the atom assignment (which true experts get
extra atoms), :func:`theory_table` applies spec sections 4 and 5:

* exact fit (k = k*, K-bar = K): D1, the density distances, every per-parameter error and every
  cell mass at n^-1/2;
* over-specified fit (k > k*) meeting the K-bar condition region by region: D2, the density
  distances, single-atom experts and every cell mass at n^-1/2; an expert fitted by m >= 2 atoms
  has beta1 and b at n^-1/(2 rbar(m)) and a and v at n^-1/rbar(m), which are *bounds* (the slope
  must be at least that fast);
* everything else (K-bar condition broken, dense fit of a sparse truth, K = 1 gating,
  experts that are never selected, rbar(m) unknown for m >= 4) is "no guarantee", with the reason.

Slopes are exponents of n: -0.5 means n^-1/2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import pandas as pd

from simstudy.model.params import MoEParams
from simstudy.reports.verdicts import BOUND, FIXED, NONE, PLATEAU, RATE  # the kinds

__all__ = [
    "RBAR",
    "rbar",
    "PARAMS",
    "FitConfig",
    "Expectation",
    "selection_regions",
    "ever_selected",
    "kbar_requirement",
    "expectations",
    "theory_table",
    "rate_metrics",
]

#: rbar(m) of the spec (section 3); unknown for m >= 4.
RBAR = {1: 1, 2: 4, 3: 6}

#: Per-parameter error names, in the order of the metric keys.
PARAMS = ("beta1", "a", "b", "v")


_PARAM_REASON_SLOW = {
    "beta1": "beta1 of an expert fitted by {m} atoms: n^-1/(2 rbar({m})) = n^-1/{d} or faster",
    "b": "b of an expert fitted by {m} atoms: n^-1/(2 rbar({m})) = n^-1/{d} or faster",
    "a": "a of an expert fitted by {m} atoms: n^-1/rbar({m}) = n^-1/{r} or faster",
    "v": "v of an expert fitted by {m} atoms: n^-1/rbar({m}) = n^-1/{r} or faster",
}


def rbar(m: int) -> int | None:
    """rbar(m) of the spec: 1, 4, 6 for m = 1, 2, 3; ``None`` (unknown) for m >= 4."""
    if isinstance(m, bool) or int(m) != m or m < 1:
        raise ValueError(f"m: the number of atoms in a cell must be an integer >= 1, got {m!r}")
    return RBAR.get(int(m))


@dataclass(frozen=True)
class FitConfig:
    """One fitted configuration of a study: the truth, its input law and how it is fitted.

    Parameters
    ----------
    label : str
        The ``[[fit]]`` label.
    truth : MoEParams
        True parameters (k* = ``truth.k``, true K = ``truth.K``).
    inputs : object
        Input law with ``quasi_random(m, seed)``, ``low``, ``high`` and ``d``.
    k : int
        Fitted number of experts.
    K : int
        Fitted K-bar.
    extra_atoms : tuple of int
        0-based indices of the true experts that get one extra atom per entry (repeats give
        several; ``k == truth.k + len(extra_atoms)``).
    beta1_bound : float, optional
        The fit's bound on |beta1| (a bounded-slope fit), or None.
    """

    label: str
    truth: MoEParams
    inputs: object
    k: int
    K: int
    extra_atoms: tuple = field(default=())
    beta1_bound: float | None = None

    def __post_init__(self):
        ks = self.truth.k
        extra = tuple(int(j) for j in self.extra_atoms)
        object.__setattr__(self, "extra_atoms", extra)
        if isinstance(self.k, bool) or int(self.k) != self.k or self.k < ks:
            raise ValueError(f"k: the fitted k must be an integer >= k* = {ks}, got {self.k!r}")
        if isinstance(self.K, bool) or int(self.K) != self.K or not 1 <= self.K <= self.k:
            raise ValueError(f"K: the fitted K-bar must satisfy 1 <= K <= k = {self.k}, "
                             f"got {self.K!r}")
        if len(extra) != self.k - ks:
            raise ValueError(
                f"extra_atoms: need k - k* = {self.k - ks} entries (one per extra atom), "
                f"got {len(extra)}"
            )
        bad = [j for j in extra if not 0 <= j < ks]
        if bad:
            raise ValueError(f"extra_atoms: true expert indices must lie in [0, {ks - 1}] "
                             f"(0-based), got {bad}")
        if self.beta1_bound is not None and not (np.isfinite(self.beta1_bound)
                                                 and self.beta1_bound > 0):
            raise ValueError(f"beta1_bound: must be a finite number > 0, got "
                             f"{self.beta1_bound!r}")

    @property
    def cell_sizes(self) -> np.ndarray:
        """|A_j| per true expert (0-based j) under the near-truth assignment."""
        sizes = np.ones(self.truth.k, dtype=int)
        for j in self.extra_atoms:
            sizes[j] += 1
        return sizes


@dataclass(frozen=True)
class Expectation:
    """What the theory says about one metric: kind, exponent (or NaN) and why."""

    metric: str
    kind: str
    exponent: float
    reason: str

    @property
    def has_guarantee(self) -> bool:
        return self.kind in (RATE, BOUND)


def selection_regions(truth: MoEParams, inputs, m: int = 4096, seed: int = 0) -> dict:
    """Top-K sets of the truth over the input law and the share of inputs selecting each.

    The inputs are a scrambled Sobol sample of size ``m`` plus, in d = 1, a fine regular grid
    over the support (so that a region of small but positive length is not missed).

    Returns
    -------
    dict
        ``frozenset of 0-based experts -> share of the sample``.
    """
    if int(m) != m or m < 16:
        raise ValueError(f"m: the input sample size must be an integer >= 16, got {m!r}")
    X = np.asarray(inputs.quasi_random(int(m), seed=seed), dtype=float)
    if X.shape[1] == 1:
        X = np.vstack([X, np.linspace(inputs.low, inputs.high, 4 * int(m) + 1)[:, None]])
    s = X @ truth.beta1.T
    if truth.K < truth.k:
        # drop inputs on a region boundary (a tie between the K-th and (K+1)-th score): a
        # null set, where the tie rule would otherwise "select" an expert (x = 0 in design T)
        srt = np.sort(s, axis=1)[:, ::-1]
        gap = srt[:, truth.K - 1] - srt[:, truth.K]
        keep = gap > 1e-12 * (1.0 + np.abs(srt[:, 0]))
        X, s = X[keep], s[keep]
    # stable sort of -s: ties go to the lower index, as in the model
    top = np.sort(np.argsort(-s, axis=1, kind="stable")[:, : truth.K], axis=1)
    sets, counts = np.unique(top, axis=0, return_counts=True)
    return {frozenset(int(i) for i in row): c / X.shape[0] for row, c in zip(sets, counts,
                                                                               strict=True)}


def ever_selected(truth: MoEParams, inputs, m: int = 4096) -> np.ndarray:
    """Boolean (k*,): true expert j is in the top-K set on part of the input support."""
    sel = np.zeros(truth.k, dtype=bool)
    for S in selection_regions(truth, inputs, m):
        sel[list(S)] = True
    return sel


def kbar_requirement(cell_sizes, K: int) -> int:
    """max over K-subsets L of the true experts of sum_{j in L} |A_j| (spec section 4)."""
    sizes = [int(s) for s in cell_sizes]
    if not 1 <= K <= len(sizes):
        raise ValueError(f"K: the true K must satisfy 1 <= K <= k* = {len(sizes)}, got {K}")
    # literal max over subsets: the sets are tiny (k* <= a handful)
    return max(sum(sizes[j] for j in L) for L in combinations(range(len(sizes)), K))


def rate_metrics(k_star: int, over: bool) -> list[str]:
    """Metric keys that get a rate (compute_metrics naming, experts numbered from 1)."""
    names = ["D2" if over else "D1", "hellinger", "tv"]
    for j in range(1, k_star + 1):
        names += [f"err_{p}_{j}" for p in PARAMS] + [f"mass_{j}"]
    return names


def _all_none(metrics, reason):
    return {m: Expectation(m, NONE, np.nan, reason) for m in metrics}


def expectations(config: FitConfig, m: int = 4096) -> dict[str, Expectation]:
    """Expected exponent per metric for one fitted configuration (spec sections 4 and 5).

    Parameters
    ----------
    config : FitConfig
    m : int
        Size of the quasi-random input sample used to find the selection regions.

    Returns
    -------
    dict
        metric key -> :class:`Expectation`, in :func:`rate_metrics` order.
    """
    truth, k, Kf = config.truth, config.k, config.K
    ks, K = truth.k, truth.K
    over = k > ks
    metrics = rate_metrics(ks, over)
    dist = "D2" if over else "D1"
    sizes = config.cell_sizes
    sizes_txt = ", ".join(f"|A_{j + 1}|={s}" for j, s in enumerate(sizes))

    if sizes[truth.ref] > 1:
        return _all_none(metrics, f"extra atom on the reference expert {truth.ref + 1}: the "
                                  "translation is not pinned and cell masses need not vanish")
    need = kbar_requirement(sizes, K)
    if Kf < need:
        return _all_none(
            metrics,
            f"K-bar condition fails: K-bar={Kf} < max over {K}-subsets of sum |A_j| = {need} "
            f"({sizes_txt}); the density need not converge",
        )
    dense_truth = K == ks
    if Kf == k and not dense_truth:
        cells = (f"dense fit (K-bar = k = {k}) of a sparse truth (K = {K} < k* = {ks}): the "
                 f"gating slopes diverge, so {dist}, the per-parameter errors and the cell "
                 "masses are undefined (reported as NaN; see max |beta1|)")
        out = _all_none(metrics, cells)
        if config.beta1_bound is not None:
            B = config.beta1_bound
            for name in ("hellinger", "tv"):
                out[name] = Expectation(
                    name, PLATEAU, 0.0,
                    f"dense fit with |beta1| <= {B:g} of a sparse truth: a dense model cannot "
                    "put zero weight on an expert and bounded slopes cannot approach that "
                    "limit, so the distance should level off above zero (slope 0 on the "
                    "upper half of the n range)")
        else:
            for name in ("hellinger", "tv"):
                out[name] = Expectation(
                    name, NONE, np.nan,
                    "dense fit of a sparse truth: the truth is only a limit of dense models "
                    "with diverging slopes, so no rate is guaranteed (the density may level "
                    "off, or follow the slopes' divergence)")
        return out
    regions = selection_regions(truth, inputs=config.inputs, m=m)
    unions = {tuple(sorted(j + 1 for j in S)): int(sum(sizes[j] for j in S)) for S in regions}
    bad = {S: u for S, u in unions.items() if u != Kf}
    if bad:
        return _all_none(
            metrics,
            f"region-by-region condition fails: true top-{K} regions {sorted(bad)} hold "
            f"{sorted(bad.values())} fitted atoms, not K-bar = {Kf}",
        )

    sel = ever_selected(truth, config.inputs, m=m)
    never = [j + 1 for j in range(ks) if not sel[j]]
    big = [j + 1 for j in range(ks) if rbar(sizes[j]) is None]
    gating_free = Kf == 1  # then K = 1 as well: the selected expert's weight is exactly 1
    out: dict[str, Expectation] = {}

    # discrepancy D1 / D2
    if gating_free:
        out[dist] = Expectation(
            dist, NONE, np.nan,
            "K = 1: the weight of the selected expert is exactly 1, so the density does not "
            "depend on beta0 and on beta1 only through the region boundaries"
            + (f"; expert(s) {never} never selected" if never else ""),
        )
    elif never:
        out[dist] = Expectation(dist, NONE, np.nan,
                                f"expert(s) {never} never selected: not identifiable")
    elif big:
        out[dist] = Expectation(dist, NONE, np.nan,
                                f"rbar(m) unknown for m >= 4 (expert(s) {big}): {dist} undefined")
    else:
        why = ""
        if over:
            # the K-bar condition, region by region, as derived above
            parts = "; ".join(
                f"true top-{K} set {{{', '.join(map(str, S))}}} holds "
                f"{' + '.join(str(sizes[j - 1]) for j in S)} = {u}"
                for S, u in sorted(unions.items()))
            ms = sorted({int(m) for m in sizes if m > 1})
            why = (f" ({sizes_txt}; {parts} fitted atoms = K-bar = {Kf}; "
                   + ", ".join(f"rbar({m}) = {rbar(m)}" for m in ms) + ")")
        out[dist] = Expectation(dist, RATE, -0.5, f"{dist} at n^-1/2{why}")
    for name in ("hellinger", "tv"):
        out[name] = Expectation(name, RATE, -0.5, "density converges at n^-1/2")

    for j in range(ks):
        jj = j + 1
        mj = int(sizes[j])
        is_ref = j == truth.ref
        for p in PARAMS + ("mass",):
            key = f"mass_{jj}" if p == "mass" else f"err_{p}_{jj}"
            gating = p in ("beta1", "mass")
            if is_ref and gating and mj == 1:
                out[key] = Expectation(key, FIXED, np.nan,
                                       "reference expert: gating fixed at (0, 0), error is 0")
            elif not sel[j]:
                out[key] = Expectation(key, NONE, np.nan,
                                       f"expert {jj} is never selected by the true top-{K} "
                                       "gating: not identifiable")
            elif gating and gating_free:
                out[key] = Expectation(
                    key, NONE, np.nan,
                    "K = 1: gating parameters not identified (weight of the selected expert is "
                    "1; beta1 matters only through the region boundaries)",
                )
            elif p == "mass" or mj == 1:
                out[key] = Expectation(key, RATE, -0.5,
                                       f"expert {jj} fitted by one atom: n^-1/2" if p != "mass"
                                       else "cell mass at n^-1/2")
            elif rbar(mj) is None:
                out[key] = Expectation(key, NONE, np.nan,
                                       f"expert {jj} fitted by {mj} atoms: rbar({mj}) unknown")
            else:
                r = rbar(mj)
                expo = -1.0 / (2 * r) if p in ("beta1", "b") else -1.0 / r
                out[key] = Expectation(
                    key, BOUND, expo, _PARAM_REASON_SLOW[p].format(m=mj, d=2 * r, r=r)
                )
    return {name: out[name] for name in metrics}


def theory_table(configs, m: int = 4096) -> pd.DataFrame:
    """Theory rows for several fitted configurations.

    Parameters
    ----------
    configs : FitConfig or iterable of FitConfig

    Returns
    -------
    pandas.DataFrame
        Columns label, metric, kind ("rate", "bound", "plateau", "none", "fixed"), expected
        (exponent of n; 0 for a plateau; NaN without a guarantee), reason, k_star, true_K, k,
        K, cell_sizes (designed |A_j|, comma-separated), ref (the reference expert, from 1),
        beta1_bound.
    """
    if isinstance(configs, FitConfig):
        configs = [configs]
    rows = []
    for c in configs:
        sizes = ",".join(str(s) for s in c.cell_sizes)
        for e in expectations(c, m=m).values():
            rows.append(
                {"label": c.label, "metric": e.metric, "kind": e.kind, "expected": e.exponent,
                 "reason": e.reason, "k_star": c.truth.k, "true_K": c.truth.K, "k": c.k,
                 "K": c.K, "cell_sizes": sizes, "ref": c.truth.ref + 1,
                 "beta1_bound": np.nan if c.beta1_bound is None else c.beta1_bound}
            )
    return pd.DataFrame(rows, columns=["label", "metric", "kind", "expected", "reason", "k_star",
                                       "true_K", "k", "K", "cell_sizes", "ref", "beta1_bound"])
