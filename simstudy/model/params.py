"""Parameters of a top-K sparse softmax gating Gaussian mixture of experts."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["MoEParams"]


def _as_float_array(name: str, value, ndim: int) -> np.ndarray:
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: cannot be converted to a float array ({exc})") from None
    if arr.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-d array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains non-finite values (NaN or inf)")
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True)
class MoEParams:
    """Parameters of a k-expert Gaussian MoE with top-K sparse softmax gating.

    Expert ``i`` has gating intercept ``beta0[i]``, gating slope ``beta1[i]`` (length d),
    expert slope ``a[i]`` (length d), expert intercept ``b[i]`` and **variance** ``v[i]``.
    The K experts with the largest ``beta1[i] @ x`` are selected at ``x`` (ties to the lower
    index); the gating weights are the softmax of ``beta1[i] @ x + beta0[i]`` over the selected
    set. ``K == k`` is ordinary dense softmax gating.

    Parameters
    ----------
    beta0 : array_like, shape (k,)
    beta1 : array_like, shape (k, d)
    a : array_like, shape (k, d)
    b : array_like, shape (k,)
    v : array_like, shape (k,)
        Expert variances, strictly positive.
    K : int
        Number of selected experts, ``1 <= K <= k``.
    ref : int, default=0
        Index of the reference expert, whose gating parameters are fixed at (0, 0) to remove
        the translation invariance of the softmax.

    Raises
    ------
    ValueError
        Naming the offending parameter and the problem (shape, non-finite value, non-positive
        variance, K out of range, reference gating not zero).
    """

    beta0: np.ndarray
    beta1: np.ndarray
    a: np.ndarray
    b: np.ndarray
    v: np.ndarray
    K: int
    ref: int = field(default=0)

    def __post_init__(self):
        beta0 = _as_float_array("beta0", self.beta0, 1)
        k = beta0.shape[0]
        if k < 1:
            raise ValueError("beta0: the model needs at least one expert (k >= 1)")
        beta1 = _as_float_array("beta1", self.beta1, 2)
        d = beta1.shape[1]
        if d < 1:
            raise ValueError("beta1: the input dimension d must be at least 1")
        a = _as_float_array("a", self.a, 2)
        b = _as_float_array("b", self.b, 1)
        v = _as_float_array("v", self.v, 1)
        for name, arr, shape in (
            ("beta1", beta1, (k, d)),
            ("a", a, (k, d)),
            ("b", b, (k,)),
            ("v", v, (k,)),
        ):
            if arr.shape != shape:
                raise ValueError(
                    f"{name}: expected shape {shape} (k={k} experts, d={d}), got {arr.shape}"
                )
        if np.any(v <= 0):
            bad = int(np.flatnonzero(v <= 0)[0])
            raise ValueError(f"v: variances must be > 0, got v[{bad}] = {v[bad]}")
        if isinstance(self.K, bool) or int(self.K) != self.K:
            raise ValueError(f"K: must be an integer, got {self.K!r}")
        K = int(self.K)
        if not 1 <= K <= k:
            raise ValueError(f"K: must satisfy 1 <= K <= k = {k}, got K = {K}")
        if isinstance(self.ref, bool) or int(self.ref) != self.ref or not 0 <= self.ref < k:
            raise ValueError(f"ref: must be an expert index in [0, {k - 1}], got {self.ref!r}")
        ref = int(self.ref)
        if beta0[ref] != 0.0 or np.any(beta1[ref] != 0.0):
            raise ValueError(
                f"ref: the reference expert {ref} must have gating (beta0, beta1) = (0, 0), "
                f"got beta0={beta0[ref]}, beta1={beta1[ref].tolist()}"
            )
        for name, arr in (("beta0", beta0), ("beta1", beta1), ("a", a), ("b", b), ("v", v)):
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "K", K)
        object.__setattr__(self, "ref", ref)

    # -- shape ------------------------------------------------------------------------------
    @property
    def k(self) -> int:
        """Number of experts."""
        return self.beta0.shape[0]

    @property
    def d(self) -> int:
        """Input dimension."""
        return self.beta1.shape[1]

    @property
    def dense(self) -> bool:
        """True when every expert is always selected (K == k)."""
        return self.K == self.k

    # -- conversions ------------------------------------------------------------------------
    def replace(self, **changes) -> MoEParams:
        """Return a copy with some fields replaced (validated again)."""
        fields = {
            "beta0": self.beta0,
            "beta1": self.beta1,
            "a": self.a,
            "b": self.b,
            "v": self.v,
            "K": self.K,
            "ref": self.ref,
        }
        unknown = set(changes) - set(fields)
        if unknown:
            raise ValueError(f"replace: unknown field(s) {sorted(unknown)}; allowed {list(fields)}")
        fields.update(changes)
        return MoEParams(**fields)

    def atoms(self) -> np.ndarray:
        """Atoms ``theta_i = (beta1_i, a_i, b_i, v_i)``, shape (k, 2d + 2) (beta0 excluded)."""
        return np.column_stack([self.beta1, self.a, self.b, self.v])

    def to_dict(self) -> dict:
        """JSON-serialisable dict (lists of floats)."""
        return {
            "beta0": self.beta0.tolist(),
            "beta1": self.beta1.tolist(),
            "a": self.a.tolist(),
            "b": self.b.tolist(),
            "v": self.v.tolist(),
            "K": self.K,
            "ref": self.ref,
        }

    @classmethod
    def from_dict(cls, data: dict) -> MoEParams:
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError."""
        allowed = {"beta0", "beta1", "a", "b", "v", "K", "ref"}
        unknown = set(data) - allowed
        if unknown:
            raise ValueError(
                f"MoEParams: unknown key(s) {sorted(unknown)}; allowed {sorted(allowed)}"
            )
        missing = {"beta0", "beta1", "a", "b", "v", "K"} - set(data)
        if missing:
            raise ValueError(f"MoEParams: missing key(s) {sorted(missing)}")
        return cls(**data)

    def __eq__(self, other) -> bool:
        if not isinstance(other, MoEParams):
            return NotImplemented
        return (
            self.K == other.K
            and self.ref == other.ref
            and all(
                np.array_equal(getattr(self, f), getattr(other, f))
                for f in ("beta0", "beta1", "a", "b", "v")
            )
        )

    __hash__ = None  # mutable-looking arrays: not hashable

    def __repr__(self) -> str:
        return (
            f"MoEParams(k={self.k}, d={self.d}, K={self.K}, ref={self.ref},\n"
            f"  beta0={self.beta0.tolist()},\n  beta1={self.beta1.tolist()},\n"
            f"  a={self.a.tolist()},\n  b={self.b.tolist()},\n  v={self.v.tolist()})"
        )
