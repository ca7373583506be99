"""LoRA experts and PHATGOOSE gates on every linear layer of a frozen model.

Each :class:`LoRALinear` wraps one frozen :class:`torch.nn.Linear` ``W`` and holds, per expert
``i``, the low-rank factors ``A_i`` (r, d_in), ``B_i`` (d_out, r) and the gate vector ``v_i``
(d_in,). The update is ``(1/r) B_i A_i u`` (paper convention); ``A_i ~ N(0, 0.01^2)``, ``B_i = 0``
and ``v_i = 0`` at creation, so a fresh expert leaves the base output unchanged.

What the module computes is set by a *mode*, shared by all wrapped modules of a model through
:func:`use_mode`:

- :class:`Off` -- the base model ``W u``;
- :class:`Single` -- one expert, ``W u + LoRA_i(g u)`` with ``g = sigmoid(v_i . u)`` when gated,
  else ``g = 1`` (expert training and single-expert evaluation);
- :class:`Routed` -- ``W u + sum_j w_j(u) LoRA_j(u)``, weights from a router per module and token;
- :class:`Merged` -- ``W u + mean_i(B_i A_i / r) u``, one averaged LoRA.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Off:
    """Base model only."""


@dataclass(frozen=True)
class Single:
    """One expert; ``gated`` scales the LoRA input by the expert's sigmoid gate."""

    expert: int
    gated: bool = False


@dataclass(frozen=True)
class Routed:
    """Mixture of experts chosen per module and per token by ``router``.

    ``router.weights(name, u, module)`` returns ``(weights (..., m), experts (m,))``: the
    mixture weights over the ``m`` candidate experts and their indices in the module.
    """

    router: Any


@dataclass(frozen=True)
class Merged:
    """One LoRA whose update is the average of the listed experts' updates."""

    experts: tuple[int, ...]


class LoRALinear(nn.Module):
    """A frozen linear layer with a library of LoRA experts and gate vectors.

    Parameters
    ----------
    base : torch.nn.Linear
        The layer to wrap; its parameters are frozen in place.
    rank : int
        LoRA rank ``r``.
    name : str
        Qualified module name in the model (routers key their per-module vectors on it).
    """

    def __init__(self, base: nn.Linear, rank: int, name: str = "") -> None:
        super().__init__()
        if int(rank) != rank or rank < 1:
            raise ValueError(f"rank: must be a positive integer, got {rank!r}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.rank = int(rank)
        self.name = name
        self.A = nn.ParameterList()
        self.B = nn.ParameterList()
        self.gate = nn.ParameterList()
        self.mode: Off | Single | Routed | Merged = Off()
        # average-activation capture: running sum of inputs, token count, and the tokens whose
        # input is constant across features (standardising those gives 0 and ties all scores)
        self.capture = False
        self.capture_sum: torch.Tensor | None = None
        self.capture_n = 0
        self.capture_constant = 0

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def n_experts(self) -> int:
        return len(self.A)

    def add_expert(self, generator: torch.Generator | None = None) -> int:
        """Append a fresh expert (A ~ N(0, 0.01^2), B = 0, v = 0); return its index."""
        a = torch.randn(self.rank, self.in_features, generator=generator) * 0.01
        # created frozen: training loops switch on exactly the parameters they train
        self.A.append(nn.Parameter(a, requires_grad=False))
        self.B.append(nn.Parameter(torch.zeros(self.out_features, self.rank),
                                   requires_grad=False))
        self.gate.append(nn.Parameter(torch.zeros(self.in_features), requires_grad=False))
        return self.n_experts - 1

    def _check(self, i: int) -> None:
        if not 0 <= i < self.n_experts:
            raise ValueError(f"expert: index {i} out of range for {self.n_experts} experts")

    def delta(self, i: int) -> torch.Tensor:
        """The expert's weight update ``B_i A_i / r`` (d_out, d_in)."""
        self._check(i)
        return self.B[i] @ self.A[i] / self.rank

    def lora(self, i: int, u: torch.Tensor) -> torch.Tensor:
        """``LoRA_i(u) = (1/r) B_i A_i u`` over the last axis of ``u``."""
        self._check(i)
        return (u @ self.A[i].T) @ self.B[i].T / self.rank

    def gate_value(self, i: int, u: torch.Tensor) -> torch.Tensor:
        """PHATGOOSE gate ``sigmoid(v_i . u)`` per token (shape of ``u`` without its last axis)."""
        self._check(i)
        return torch.sigmoid(u @ self.gate[i])

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if self.capture:
            flat = u.detach().reshape(-1, u.shape[-1])
            s = flat.sum(dim=0)
            self.capture_sum = s if self.capture_sum is None else self.capture_sum + s
            self.capture_n += flat.shape[0]
            self.capture_constant += int((flat.amax(dim=1) == flat.amin(dim=1)).sum())
        out = self.base(u)
        mode = self.mode
        if isinstance(mode, Off):
            return out
        if isinstance(mode, Single):
            x = u * self.gate_value(mode.expert, u).unsqueeze(-1) if mode.gated else u
            return out + self.lora(mode.expert, x)
        if isinstance(mode, Routed):
            weights, experts = mode.router.weights(self.name, u, self)
            for j, i in enumerate(experts):
                w = weights[..., j]
                if bool((w != 0).any()):
                    out = out + w.unsqueeze(-1) * self.lora(int(i), u)
            return out
        if isinstance(mode, Merged):
            delta = torch.stack([self.delta(i) for i in mode.experts]).mean(dim=0)
            return out + u @ delta.T
        raise TypeError(f"unknown LoRA mode {mode!r}")


def attach_lora(model: nn.Module, rank: int, exclude: tuple[str, ...] = ()) -> list[LoRALinear]:
    """Replace every :class:`torch.nn.Linear` of ``model`` by a :class:`LoRALinear` (in place).

    ``exclude`` names modules (qualified names) left as they are. Returns the wrapped modules
    in definition order. The whole model is frozen first.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    unknown = set(exclude) - {name for name, _ in model.named_modules()}
    if unknown:
        raise ValueError(f"exclude: no module named {sorted(unknown)} in the model")
    targets = [(name, m) for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and name not in exclude]
    if not targets:
        raise ValueError("model: has no nn.Linear layer to wrap")
    wrapped = []
    for name, m in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        w = LoRALinear(m, rank, name=name)
        setattr(parent, attr, w)
        wrapped.append(w)
    return wrapped


def lora_modules(model: nn.Module) -> list[LoRALinear]:
    """The :class:`LoRALinear` modules of ``model`` in definition order."""
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def add_expert(model: nn.Module, generator: torch.Generator | None = None) -> int:
    """Add a fresh expert to every wrapped module; return its index (the same everywhere)."""
    indices = {m.add_expert(generator) for m in lora_modules(model)}
    if len(indices) != 1:
        raise RuntimeError("modules disagree on the number of experts")
    return indices.pop()


def expert_parameters(model: nn.Module, i: int) -> list[nn.Parameter]:
    """The LoRA factors ``A_i, B_i`` of expert ``i`` in every module."""
    return [p for m in lora_modules(model) for p in (m.A[i], m.B[i])]


def gate_parameters(model: nn.Module, i: int) -> list[nn.Parameter]:
    """The gate vectors ``v_i`` of expert ``i`` in every module."""
    return [m.gate[i] for m in lora_modules(model)]


@contextlib.contextmanager
def use_mode(model: nn.Module, mode: Off | Single | Routed | Merged) -> Iterator[None]:
    """Set ``mode`` on every wrapped module for the duration of the block."""
    mods = lora_modules(model)
    previous = [m.mode for m in mods]
    for m in mods:
        m.mode = mode
    try:
        yield
    finally:
        for m, p in zip(mods, previous, strict=True):
            m.mode = p


@contextlib.contextmanager
def capture_inputs(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Record the mean input of every wrapped module over the forward passes in the block.

    Yields a dict that is filled, on exit, with ``name -> mean input (d_in,)``; the number of
    tokens whose input was constant across its features goes to ``means.constant[name]``.
    """
    mods = lora_modules(model)
    for m in mods:
        m.capture, m.capture_sum, m.capture_n, m.capture_constant = True, None, 0, 0
    means = _Means()
    try:
        yield means
    finally:
        for m in mods:
            if m.capture_n:
                means[m.name] = m.capture_sum / m.capture_n
                means.constant[m.name] = m.capture_constant
            m.capture, m.capture_sum, m.capture_n, m.capture_constant = False, None, 0, 0


class _Means(dict):
    """Mean inputs per module, with the per-module count of constant-input tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.constant: dict[str, int] = {}
