"""Named true designs (tables in ``docs/model.md``).

A design is a true parameter set plus its input law. Experts are numbered from 0 here
(the spec numbers them from 1): design T's expert 1 is index 0, its reference expert 2 is
index 1, expert 3 is index 2.
"""

from __future__ import annotations

from dataclasses import dataclass

from simstudy.model.inputs import UniformBox
from simstudy.model.params import MoEParams

__all__ = ["Design", "design_T", "design_S", "design_P", "get_design", "DESIGNS"]


@dataclass(frozen=True)
class Design:
    """A true model and the law of its inputs."""

    name: str
    params: MoEParams
    inputs: UniformBox

    @property
    def k(self) -> int:
        return self.params.k

    @property
    def K(self) -> int:
        return self.params.K


def design_T(K: int = 2) -> Design:
    """Design T (top-K): d = 1, X ~ U[-1, 1], k* = 3; true K = 2 unless given (K sweep)."""
    params = MoEParams(
        beta0=[0.5, 0.0, 1.0],
        beta1=[[-5.0], [0.0], [-10.0]],
        a=[[1.0], [-1.0], [1.0]],
        b=[0.0, 3.0, -3.0],
        v=[0.2, 0.3, 0.25],
        K=K,
        ref=1,
    )
    return Design(name="T" if K == 2 else f"T_K{K}", params=params, inputs=UniformBox(1, -1.0, 1.0))


def design_S() -> Design:
    """Design S (dense softmax, the Demystifying paper): d = 1, X ~ U[0, 1], k* = 2, K = 2."""
    params = MoEParams(
        beta0=[-8.0, 0.0],
        beta1=[[25.0], [0.0]],
        a=[[-20.0], [20.0]],
        b=[15.0, -5.0],
        v=[0.09, 0.16],
        K=2,
        ref=1,
    )
    return Design(name="S", params=params, inputs=UniformBox(1, 0.0, 1.0))


def design_P() -> Design:
    """Design P (top-K with moving boundaries): d = 2, X ~ U[-1, 1]^2, k* = 3, K = 2.

    The top-2 regions are bounded by lines through 0 whose directions depend on the slopes
    (masses about 0.36 {1, 2}, 0.27 {1, 3}, 0.37 {2, 3} in the spec numbering), so a fit must
    move region boundaries. Every expert is excluded somewhere.
    """
    params = MoEParams(
        beta0=[0.4, 0.0, -0.3],
        beta1=[[3.0, -2.0], [0.0, 0.0], [-2.0, -4.0]],
        a=[[1.0, 1.0], [-1.0, 0.5], [0.5, -1.0]],
        b=[1.0, -2.0, 2.5],
        v=[0.2, 0.3, 0.25],
        K=2,
        ref=1,
    )
    return Design(name="P", params=params, inputs=UniformBox(2, -1.0, 1.0))


DESIGNS = {"T": design_T, "S": design_S, "P": design_P}


def get_design(name: str, K: int | None = None) -> Design:
    """Look up a named design; ``K`` overrides the true K of design T (the K sweep).

    Raises
    ------
    ValueError
        For an unknown name (listing the allowed ones) or a K that the design cannot take.
    """
    if name not in DESIGNS:
        raise ValueError(f"design: unknown design {name!r}; allowed: {sorted(DESIGNS)}")
    if name == "T":
        return design_T(2 if K is None else K)
    if name == "P":
        if K is not None and K != 2:
            raise ValueError(f"K: design P has a fixed true K = 2, got {K}")
        return design_P()
    if K is not None and K != 2:
        raise ValueError(f"K: design S is dense with k* = 2, so K must be 2, got {K}")
    return design_S()
