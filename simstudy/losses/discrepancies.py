"""Voronoi losses D1 / D2, per-parameter errors and cell masses (spec section 3).

With fitted atoms assigned to the Voronoi cells ``A_j`` of the true atoms, ``w_i = exp(beta0_i)``
and ``Delta = fitted - true`` (Euclidean norms for the vectors ``beta1`` and ``a``)::

    E1_j = sum_{i in A_j} w_i (|Dbeta1| + |Da| + |Db| + |Dv|)
    Er_j = sum_{i in A_j} w_i (|Dbeta1|^r + |Da|^(r/2) + |Db|^r + |Dv|^(r/2)),  r = rbar(|A_j|)
    M_j  = | sum_{i in A_j} w_i - exp(beta0*_j) |

D1 (exact fit, k = k*) is the largest sum of ``E1_j + M_j`` over K-subsets of the true experts,
D2 (over-specified fit, k > k*) the largest sum of ``T_j + M_j`` with ``T_j = E1_j`` for a
singly-fitted expert and ``Er_j`` otherwise. K is the true K; every term being non-negative, the
maximum over K-subsets is the sum of the K largest terms.

Per-parameter errors. The headline error of parameter p of true expert j is the weighted power
mean that D2 bounds, on the parameter's own scale::

    e_j^(p) = ( sum_{i in A_j} w_i |Delta_ij^(p)|^s / sum_{i in A_j} w_i )^(1/s)

with ``s = rbar(|A_j|)`` for beta1 and b and ``s = rbar(|A_j|) / 2`` for a and v (``s = 1``,
the plain |Delta|, for a single-atom cell). An atom whose weight fades to 0 need not converge,
and this mean lets it fade. Diagnostics without a guarantee: the heaviest atom's |Delta|, the
unweighted max over the cell, the lightest atom's weight.

Undefined losses (NaN, with the reason in ``notes``): an empty cell; a cell of m >= 4 atoms
(rbar(m) unknown); every cell-based loss of a dense fit (K-bar = k) of a sparse truth (K < k*),
whose gating slopes diverge; its divergence shows in ``max_abs_beta1`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simstudy.losses.voronoi import rbar, voronoi_cells
from simstudy.model.params import MoEParams

__all__ = [
    "PARAMS",
    "VoronoiLosses",
    "voronoi_losses",
    "sum_of_k_largest",
    "check_pair",
    "power_mean",
    "param_exponent",
    "dense_fit_of_sparse_truth",
]

#: per-parameter error names, in the order of the metric keys
PARAMS = ("beta1", "a", "b", "v")


def check_pair(fitted, truth) -> None:
    """Validate a (fitted, true) parameter pair for the losses.

    Raises
    ------
    ValueError
        If either is not a :class:`MoEParams`, the input dimensions differ, or the fit has fewer
        experts than the truth.
    """
    if not isinstance(fitted, MoEParams):
        raise ValueError(f"fitted: expected MoEParams, got {type(fitted).__name__}")
    if not isinstance(truth, MoEParams):
        raise ValueError(f"truth: expected MoEParams, got {type(truth).__name__}")
    if fitted.d != truth.d:
        raise ValueError(
            f"fitted: input dimension d={fitted.d} differs from the truth's d={truth.d}"
        )
    if fitted.k < truth.k:
        raise ValueError(
            f"fitted: has k={fitted.k} experts, fewer than the truth's k*={truth.k} "
            "(the Voronoi losses need k >= k*)"
        )


def sum_of_k_largest(terms, K: int) -> float:
    """Max over K-subsets of the sum of ``terms`` (non-negative): the sum of the K largest.

    NaN if any term is NaN (an undefined term makes the loss undefined).
    """
    terms = np.asarray(terms, dtype=np.float64)
    if not 1 <= K <= terms.shape[0]:
        raise ValueError(f"K: must satisfy 1 <= K <= {terms.shape[0]}, got {K}")
    if np.any(np.isnan(terms)):
        return float("nan")
    return float(np.sort(terms)[terms.shape[0] - K :].sum())


def param_exponent(p: str, m: int) -> float | None:
    """The power s of the per-parameter error of parameter ``p`` in a cell of ``m`` atoms.

    ``rbar(m)`` for beta1 and b, ``rbar(m) / 2`` for a and v, except ``s = 1`` for m = 1;
    ``None`` where rbar(m) is unknown (m >= 4).
    """
    if p not in PARAMS:
        raise ValueError(f"p: unknown parameter {p!r}; allowed {list(PARAMS)}")
    r = rbar(m)
    if r is None:
        return None
    if m == 1:
        return 1.0
    return float(r) if p in ("beta1", "b") else r / 2.0


def power_mean(log_weights, values, s: float) -> float:
    """``(sum w |x|^s / sum w)^(1/s)`` with ``w = exp(log_weights)``, without overflow.

    The weights are rescaled by the largest (log domain) and the values by max |x|, so huge
    intercepts or errors do not overflow.

    Parameters
    ----------
    log_weights : array_like
        log w_i (for the losses: the fitted beta0_i).
    values : array_like
        The errors |Delta| (absolute values are taken).
    s : float
        The power, > 0.
    """
    lw = np.asarray(log_weights, dtype=np.float64)
    x = np.abs(np.asarray(values, dtype=np.float64))
    if not s > 0:
        raise ValueError(f"s: the power must be > 0, got {s}")
    if lw.shape != x.shape or lw.size == 0:
        raise ValueError(f"log_weights: need one weight per value, got {lw.shape} and {x.shape}")
    if np.any(np.isnan(lw)) or np.any(np.isnan(x)):
        return float("nan")
    top = x.max()
    if top == 0.0 or not np.isfinite(top):
        return float(top)
    wn = np.exp(lw - lw.max())
    return float(top * (np.sum(wn * (x / top) ** s) / np.sum(wn)) ** (1.0 / s))


def dense_fit_of_sparse_truth(fitted: MoEParams, truth: MoEParams) -> bool:
    """True for a dense fit (K-bar = k) of a sparse truth (K < k*): its slopes must diverge."""
    return fitted.K == fitted.k and truth.K < truth.k


@dataclass(frozen=True)
class VoronoiLosses:
    """Voronoi loss of a fit and its per-cell ingredients (arrays indexed by true expert, 0-based).

    Attributes
    ----------
    kind : str
        ``"D1"`` (k = k*) or ``"D2"`` (k > k*).
    value : float
        The loss; NaN when undefined (see ``notes``).
    labels : ndarray of int, shape (k,)
        Cell of every fitted atom.
    cell_size : ndarray of int, shape (k*,)
        |A_j|, the realised cell sizes.
    mass : ndarray, shape (k*,)
        M_j.
    E1, T : ndarray, shape (k*,)
        ``E1_j`` and the term of the loss (``E1_j`` for D1; ``E1_j`` or ``Er_j`` for D2).
    err : dict of str -> ndarray, shape (k*,)
        Headline per-parameter errors e_j^(p) (the weighted power mean), for p in ``PARAMS``.
    heavy, umax : dict of str -> ndarray, shape (k*,)
        Diagnostics: |Delta| of the heaviest atom of A_j, and the unweighted max over A_j.
    wmin : ndarray, shape (k*,)
        Diagnostic: the lightest atom's weight exp(beta0_i) in A_j.
    ref_atom_cell : int
        Cell (0-based true expert) of the fitted reference atom.
    max_abs_beta1 : float
        Largest |beta1_i| over the fitted atoms (the divergence of a dense fit of a sparse truth).
    notes : tuple of str
        Why something is undefined or suspect; empty when all is fine.
    """

    kind: str
    value: float
    labels: np.ndarray
    cell_size: np.ndarray
    mass: np.ndarray
    E1: np.ndarray
    T: np.ndarray
    err: dict
    heavy: dict
    umax: dict
    wmin: np.ndarray
    ref_atom_cell: int
    max_abs_beta1: float
    notes: tuple[str, ...] = field(default=())

    @property
    def note(self) -> str:
        """The notes joined into one string ("" when all is fine)."""
        return "; ".join(self.notes)

    @property
    def err_beta1(self) -> np.ndarray:
        return self.err["beta1"]

    @property
    def err_a(self) -> np.ndarray:
        return self.err["a"]

    @property
    def err_b(self) -> np.ndarray:
        return self.err["b"]

    @property
    def err_v(self) -> np.ndarray:
        return self.err["v"]


def voronoi_losses(fitted: MoEParams, truth: MoEParams) -> VoronoiLosses:
    """Voronoi loss (D1 or D2), per-parameter errors, diagnostics and cell masses of a fit.

    Parameters
    ----------
    fitted : MoEParams
        The fit, with k >= k* experts; ``fitted.K`` is its K-bar.
    truth : MoEParams
        The true parameters; ``truth.K`` is the K of the K-subsets.

    Returns
    -------
    VoronoiLosses

    Raises
    ------
    ValueError
        See :func:`check_pair`. A degenerate fit never raises: undefined parts are NaN and the
        reason is in ``notes``.
    """
    check_pair(fitted, truth)
    k_star = truth.k
    labels = voronoi_cells(fitted.atoms(), truth.atoms())
    sizes = np.bincount(labels, minlength=k_star)
    kind = "D1" if fitted.k == k_star else "D2"

    with np.errstate(over="ignore"):
        w = np.exp(fitted.beta0)
        w_true = np.exp(truth.beta0)
    delta = {
        "beta1": np.linalg.norm(fitted.beta1 - truth.beta1[labels], axis=1),
        "a": np.linalg.norm(fitted.a - truth.a[labels], axis=1),
        "b": np.abs(fitted.b - truth.b[labels]),
        "v": np.abs(fitted.v - truth.v[labels]),
    }

    nan = np.full(k_star, np.nan)
    E1, T, wmin = nan.copy(), nan.copy(), nan.copy()
    err = {p: nan.copy() for p in PARAMS}
    heavy = {p: nan.copy() for p in PARAMS}
    umax = {p: nan.copy() for p in PARAMS}
    mass = np.empty(k_star)
    notes = []
    with np.errstate(over="ignore", invalid="ignore"):
        for j in range(k_star):
            idx = np.flatnonzero(labels == j)
            mass[j] = abs(w[idx].sum() - w_true[j])
            m = int(sizes[j])
            if m == 0:
                notes.append(
                    f"empty cell: true expert {j + 1} has no fitted atom ({kind} undefined)"
                )
                continue
            wj = w[idx]
            wmin[j] = wj.min()
            top = idx[np.argmax(fitted.beta0[idx])]  # the heaviest atom (first of equals)
            for p in PARAMS:
                heavy[p][j] = delta[p][top]
                umax[p][j] = delta[p][idx].max()
                s = param_exponent(p, m)
                if s is not None:
                    err[p][j] = power_mean(fitted.beta0[idx], delta[p][idx], s)
            E1[j] = np.sum(wj * sum(delta[p][idx] for p in PARAMS))
            if kind == "D1" or m == 1:
                T[j] = E1[j]
                continue
            r = rbar(m)
            if r is None:
                notes.append(
                    f"cell of true expert {j + 1} has {m} atoms: rbar({m}) is unknown "
                    f"({kind} and its per-parameter errors undefined)"
                )
                continue
            T[j] = np.sum(
                wj * (delta["beta1"][idx] ** r + delta["a"][idx] ** (r / 2)
                      + delta["b"][idx] ** r + delta["v"][idx] ** (r / 2))
            )
        value = sum_of_k_largest(T + mass, truth.K)

    ref_size = int(sizes[truth.ref])
    if ref_size > 1:
        notes.append(
            f"reference cell: true expert {truth.ref + 1} (the reference) holds {ref_size} "
            "fitted atoms, so the cell masses are not comparable"
        )
    ref_cell = int(labels[fitted.ref])
    if ref_cell != truth.ref:
        notes.append(
            f"fitted reference atom {fitted.ref + 1} lies in the cell of true expert "
            f"{ref_cell + 1}, not in the reference cell {truth.ref + 1}"
        )
    max_abs_beta1 = float(np.linalg.norm(fitted.beta1, axis=1).max())
    if dense_fit_of_sparse_truth(fitted, truth):
        # the sparse truth is a limit of dense models with diverging slopes: no cell-based
        # loss means anything; the density distances and max |beta1| remain
        notes.append(
            f"dense fit (K-bar = k = {fitted.k}) of a sparse truth (K = {truth.K} < "
            f"k* = {k_star}): the gating slopes diverge (max |beta1| = {max_abs_beta1:.3g}), "
            f"so {kind}, the per-parameter errors and the cell masses are undefined"
        )
        value = float("nan")
        mass = nan.copy()
        E1, T, wmin = nan.copy(), nan.copy(), nan.copy()
        for d in (err, heavy, umax):
            for p in PARAMS:
                d[p] = nan.copy()
    return VoronoiLosses(
        kind=kind,
        value=value,
        labels=labels,
        cell_size=sizes,
        mass=mass,
        E1=E1,
        T=T,
        err=err,
        heavy=heavy,
        umax=umax,
        wmin=wmin,
        ref_atom_cell=ref_cell,
        max_abs_beta1=max_abs_beta1,
        notes=tuple(notes),
    )
