"""Voronoi cells of fitted atoms around the true atoms (spec section 3).

An atom is ``theta_i = (beta1_i, a_i, b_i, v_i)``; the gating intercept ``beta0`` is excluded.
Fitted atom ``i`` belongs to the cell ``A_j`` of the nearest true atom ``j`` (Euclidean norm),
ties going to the lowest ``j``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["RBAR", "rbar", "voronoi_cells", "cell_sizes"]

#: Known exponents rbar(m) for a true expert fitted by m atoms (spec section 3).
RBAR = {1: 1, 2: 4, 3: 6}


def rbar(m: int) -> int | None:
    """The exponent rbar(m) of the loss D2, or ``None`` where it is not known (m >= 4).

    Raises
    ------
    ValueError
        If ``m`` is not an integer >= 1.
    """
    if isinstance(m, bool) or int(m) != m or m < 1:
        raise ValueError(f"m: the number of atoms in a cell must be an integer >= 1, got {m!r}")
    return RBAR.get(int(m))


def voronoi_cells(fitted_atoms, true_atoms) -> np.ndarray:
    """Index of the cell (the nearest true atom) of every fitted atom.

    Parameters
    ----------
    fitted_atoms : array_like, shape (k, p)
    true_atoms : array_like, shape (k_star, p)

    Returns
    -------
    labels : ndarray of int, shape (k,)
        ``labels[i] = j`` when fitted atom ``i`` is in ``A_j`` (0-based ``j``); exact ties go to
        the lowest ``j``.

    Raises
    ------
    ValueError
        If the arrays are not 2-d with the same number of columns, or are empty.
    """
    fitted_atoms = np.asarray(fitted_atoms, dtype=np.float64)
    true_atoms = np.asarray(true_atoms, dtype=np.float64)
    if fitted_atoms.ndim != 2 or fitted_atoms.shape[0] < 1:
        raise ValueError(
            f"fitted_atoms: expected a non-empty (k, p) array, got {fitted_atoms.shape}"
        )
    if true_atoms.ndim != 2 or true_atoms.shape[0] < 1:
        raise ValueError(f"true_atoms: expected a non-empty (k*, p) array, got {true_atoms.shape}")
    if fitted_atoms.shape[1] != true_atoms.shape[1]:
        raise ValueError(
            f"fitted_atoms: has {fitted_atoms.shape[1]} coordinates per atom, "
            f"true_atoms has {true_atoms.shape[1]}"
        )
    diff = fitted_atoms[:, None, :] - true_atoms[None, :, :]
    sq = np.einsum("ijp,ijp->ij", diff, diff)
    # argmin returns the first minimum: ties to the lowest true index
    return np.argmin(sq, axis=1)


def cell_sizes(labels, k_star: int) -> np.ndarray:
    """|A_j| for j = 0..k_star-1 from the cell labels of :func:`voronoi_cells`."""
    return np.bincount(np.asarray(labels, dtype=np.intp), minlength=k_star)
