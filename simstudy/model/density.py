"""Gating weights, conditional densities, log-likelihood and sampling (public numpy API).

These functions validate their inputs and are the reference semantics of the model. The EM
hot loops use the numba kernels in :mod:`simstudy.model.kernels`; tests compare the two.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from simstudy.model.params import MoEParams

__all__ = [
    "check_X",
    "check_Xy",
    "active_mask",
    "gating_weights",
    "log_gating_weights",
    "expert_log_densities",
    "log_density",
    "loglik",
    "sample",
]


def check_X(X, d: int | None = None) -> np.ndarray:
    """Validate inputs: a finite 2-d float array (n, d) with n >= 1."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X: expected a 2-d array of shape (n, d), got shape {X.shape}")
    if X.shape[0] < 1:
        raise ValueError("X: needs at least one row")
    if d is not None and X.shape[1] != d:
        raise ValueError(f"X: expected {d} columns (the model's d), got {X.shape[1]}")
    if not np.all(np.isfinite(X)):
        raise ValueError("X: contains non-finite values (NaN or inf)")
    return np.ascontiguousarray(X)


def check_Xy(X, y, d: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate a data set: X (n, d) and y (n,), both finite."""
    X = check_X(X, d)
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(f"y: expected a 1-d array of shape (n,), got shape {y.shape}")
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"y: has {y.shape[0]} entries but X has {X.shape[0]} rows")
    if not np.all(np.isfinite(y)):
        raise ValueError("y: contains non-finite values (NaN or inf)")
    return X, np.ascontiguousarray(y)


def active_mask(params: MoEParams, X) -> np.ndarray:
    """Boolean (n, k): expert i is among the top-K of ``beta1 @ x`` (ties to the lower index)."""
    X = check_X(X, params.d)
    s = X @ params.beta1.T
    k, K = params.k, params.K
    if K == k:
        return np.ones(s.shape, dtype=bool)
    # stable sort of -s keeps the lower index first among ties
    order = np.argsort(-s, axis=1, kind="stable")[:, :K]
    mask = np.zeros(s.shape, dtype=bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask


def log_gating_weights(params: MoEParams, X) -> np.ndarray:
    """log w_i(x), shape (n, k); ``-inf`` for experts outside the top-K set."""
    X = check_X(X, params.d)
    logits = X @ params.beta1.T + params.beta0
    mask = active_mask(params, X)
    logits = np.where(mask, logits, -np.inf)
    return logits - logsumexp(logits, axis=1, keepdims=True)


def gating_weights(params: MoEParams, X) -> np.ndarray:
    """Gating weights w_i(x), shape (n, k); rows sum to one, zero outside the top-K set."""
    return np.exp(log_gating_weights(params, X))


def expert_log_densities(params: MoEParams, X, y) -> np.ndarray:
    """log N(y_n; a_i.x_n + b_i, v_i) for every point and expert, shape (n, k)."""
    X, y = check_Xy(X, y, params.d)
    mean = X @ params.a.T + params.b
    return -0.5 * (np.log(2 * np.pi * params.v) + (y[:, None] - mean) ** 2 / params.v)


def log_density(params: MoEParams, X, y) -> np.ndarray:
    """Conditional log-density log p(y_n | x_n), shape (n,)."""
    return logsumexp(log_gating_weights(params, X) + expert_log_densities(params, X, y), axis=1)


def loglik(params: MoEParams, X, y) -> float:
    """Observed log-likelihood sum_n log p(y_n | x_n)."""
    return float(np.sum(log_density(params, X, y)))


def sample(params: MoEParams, n: int, inputs, rng: np.random.Generator, return_z: bool = False):
    """Draw (X, y) from the model: X from ``inputs``, Z ~ Cat(w(X)), Y ~ N(a_Z.X + b_Z, v_Z).

    Parameters
    ----------
    params : MoEParams
    n : int
        Sample size (>= 1).
    inputs : object with ``sample(n, rng)`` and attribute ``d``
        The input law, e.g. :class:`simstudy.model.inputs.UniformBox`.
    rng : numpy.random.Generator
    return_z : bool
        Also return the latent expert labels.
    """
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
    if getattr(inputs, "d", params.d) != params.d:
        raise ValueError(f"inputs: input law has d={inputs.d}, the model has d={params.d}")
    X = inputs.sample(n, rng)
    w = gating_weights(params, X)
    # inverse-CDF draw of the latent expert: one uniform per point
    u = rng.random(X.shape[0])
    z = np.minimum((np.cumsum(w, axis=1) < u[:, None]).sum(axis=1), params.k - 1)
    mean = np.einsum("nd,nd->n", X, params.a[z]) + params.b[z]
    y = mean + np.sqrt(params.v[z]) * rng.standard_normal(X.shape[0])
    return (X, y, z) if return_z else (X, y)
