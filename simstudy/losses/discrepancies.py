"""Voronoi losses D1 / D2, per-parameter errors and cell masses (spec section 3).

With fitted atoms assigned to the Voronoi cells ``A_j`` of the true atoms, and
``Delta = fitted - true`` (Euclidean norms for the vectors ``beta1`` and ``a``)::

    E1_j = sum_{i in A_j} exp(beta0_i) (|Dbeta1| + |Da| + |Db| + |Dv|)
    Er_j = sum_{i in A_j} exp(beta0_i) (|Dbeta1|^r + |Da|^(r/2) + |Db|^r + |Dv|^(r/2)),
           r = rbar(|A_j|)
    M_j  = | sum_{i in A_j} exp(beta0_i) - exp(beta0*_j) |

D1 (exact fit, k = k*) is the largest sum of ``E1_j + M_j`` over K-subsets of the true experts,
D2 (over-specified fit, k > k*) the largest sum of ``T_j + M_j`` with ``T_j = E1_j`` for a
singly-fitted expert and ``Er_j`` otherwise. K is the true K; every term being non-negative, the
maximum over K-subsets is the sum of the K largest terms.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from simstudy.losses.voronoi import rbar, voronoi_cells
from simstudy.model.params import MoEParams

__all__ = ["VoronoiLosses", "voronoi_losses", "sum_of_k_largest", "check_pair"]


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
        |A_j|.
    mass : ndarray, shape (k*,)
        M_j.
    E1, T : ndarray, shape (k*,)
        ``E1_j`` and the term of the loss (``E1_j`` for D1; ``E1_j`` or ``Er_j`` for D2); NaN
        for an empty cell (and, for D2, a cell with more than 3 atoms).
    err_beta1, err_a, err_b, err_v : ndarray, shape (k*,)
        Largest |Delta| over the atoms of ``A_j``; NaN for an empty cell.
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
    err_beta1: np.ndarray
    err_a: np.ndarray
    err_b: np.ndarray
    err_v: np.ndarray
    notes: tuple[str, ...] = field(default=())

    @property
    def note(self) -> str:
        """The notes joined into one string ("" when all is fine)."""
        return "; ".join(self.notes)


def voronoi_losses(fitted: MoEParams, truth: MoEParams) -> VoronoiLosses:
    """Voronoi loss (D1 or D2), per-parameter errors and cell masses of a fit.

    Parameters
    ----------
    fitted : MoEParams
        The fit, with k >= k* experts.
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
    d_beta1 = np.linalg.norm(fitted.beta1 - truth.beta1[labels], axis=1)
    d_a = np.linalg.norm(fitted.a - truth.a[labels], axis=1)
    d_b = np.abs(fitted.b - truth.b[labels])
    d_v = np.abs(fitted.v - truth.v[labels])

    nan = np.full(k_star, np.nan)
    E1, T = nan.copy(), nan.copy()
    errs = {name: nan.copy() for name in ("beta1", "a", "b", "v")}
    mass = np.empty(k_star)
    notes = []
    with np.errstate(over="ignore", invalid="ignore"):
        for j in range(k_star):
            idx = labels == j
            mass[j] = abs(w[idx].sum() - w_true[j])
            m = int(sizes[j])
            if m == 0:
                notes.append(
                    f"empty cell: true expert {j + 1} has no fitted atom ({kind} undefined)"
                )
                continue
            for name, dj in (("beta1", d_beta1), ("a", d_a), ("b", d_b), ("v", d_v)):
                errs[name][j] = dj[idx].max()
            E1[j] = np.sum(w[idx] * (d_beta1[idx] + d_a[idx] + d_b[idx] + d_v[idx]))
            if kind == "D1" or m == 1:
                T[j] = E1[j]
                continue
            r = rbar(m)
            if r is None:
                notes.append(
                    f"cell of true expert {j + 1} has {m} atoms: rbar({m}) is unknown "
                    f"({kind} undefined)"
                )
                continue
            T[j] = np.sum(
                w[idx]
                * (d_beta1[idx] ** r + d_a[idx] ** (r / 2) + d_b[idx] ** r + d_v[idx] ** (r / 2))
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
    return VoronoiLosses(
        kind=kind,
        value=value,
        labels=labels,
        cell_size=sizes,
        mass=mass,
        E1=E1,
        T=T,
        err_beta1=errs["beta1"],
        err_a=errs["a"],
        err_b=errs["b"],
        err_v=errs["v"],
        notes=tuple(notes),
    )
