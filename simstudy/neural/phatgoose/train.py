"""Training loops: the base model, one LoRA expert, its PHATGOOSE gate, the multitask LoRA."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from simstudy.neural.phatgoose.lora import (
    Off,
    Single,
    add_expert,
    expert_parameters,
    gate_parameters,
    use_mode,
)


@dataclass(frozen=True)
class TrainConfig:
    """Sizes and optimisation settings of one benchmark run.

    ``gate_steps`` x ``gate_batch`` is the PHATGOOSE gate budget (the paper: 100 steps of 1,024
    examples); ``multitask_steps`` defaults to ``expert_steps`` times the number of held-in tasks
    (as many examples as all experts together). ``arrow_temperature`` is the reference's 10.
    """

    width: int = 32
    depth: int = 2
    heads: int = 2
    mlp_ratio: int = 2
    rank: int = 4
    batch: int = 128
    base_steps: int = 1500
    base_lr: float = 3e-3
    expert_steps: int = 400
    expert_lr: float = 1e-2
    gate_steps: int = 100
    gate_batch: int = 1024
    gate_lr: float = 1e-2
    multitask_steps: int | None = None
    top_k: int = 2
    arrow_temperature: float = 10.0
    retrieval_per_task: int = 256

    def __post_init__(self) -> None:
        for name in ("width", "depth", "heads", "mlp_ratio", "rank", "batch", "base_steps",
                     "expert_steps", "gate_steps", "gate_batch", "top_k", "retrieval_per_task"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"{name}: must be a positive integer, got {v!r}")
        v = self.multitask_steps
        if v is not None and (isinstance(v, bool) or int(v) != v or v < 1):
            raise ValueError(f"multitask_steps: must be a positive integer or None, got {v!r}")
        for name in ("base_lr", "expert_lr", "gate_lr", "arrow_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)!r}")

    def n_multitask_steps(self, n_tasks: int) -> int:
        return self.multitask_steps or self.expert_steps * n_tasks

    def to_dict(self) -> dict:
        return asdict(self)


def _batches(n: int, batch: int, steps: int, gen: torch.Generator):
    """Indices of ``steps`` minibatches, reshuffling at every pass over the ``n`` examples."""
    perm, pos = torch.randperm(n, generator=gen), 0
    for _ in range(steps):
        if pos + batch > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        yield perm[pos : pos + batch]
        pos += batch


def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over examples, or over every token for per-token outputs (n, L, C)."""
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def fit(
    model: nn.Module,
    params: Sequence[nn.Parameter],
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    lr: float,
    batch: int,
    gen: torch.Generator,
) -> float:
    """Adam on ``params`` only (cosine-decayed lr), cross-entropy; returns the wall time (s)."""
    params = list(params)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    model.train()
    t0 = time.perf_counter()
    for idx in _batches(len(y), min(batch, len(y)), steps, gen):
        loss = loss_fn(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    seconds = time.perf_counter() - t0
    model.eval()
    for p in params:
        p.requires_grad_(False)
    return seconds


def train_base(model: nn.Module, cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor,
               gen: torch.Generator) -> float:
    """Train all of the base model's parameters on its task; return the time."""
    return fit(model, list(model.parameters()), x, y, cfg.base_steps, cfg.base_lr, cfg.batch,
               gen)


def train_expert(
    model: nn.Module, cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator,
    steps: int | None = None,
) -> tuple[int, float]:
    """Add a LoRA expert to every module and train only its factors; return (index, seconds)."""
    i = add_expert(model, gen)
    with use_mode(model, Single(i)):
        seconds = fit(model, expert_parameters(model, i), x, y, steps or cfg.expert_steps,
                      cfg.expert_lr, cfg.batch, gen)
    return i, seconds


def train_gate(
    model: nn.Module, i: int, cfg: TrainConfig, x: torch.Tensor, y: torch.Tensor,
    gen: torch.Generator, steps: int | None = None,
) -> float:
    """PHATGOOSE step: train only expert ``i``'s gate vectors (base and LoRA frozen)."""
    with use_mode(model, Single(i, gated=True)):
        return fit(model, gate_parameters(model, i), x, y, steps or cfg.gate_steps,
                   cfg.gate_lr, cfg.gate_batch, gen)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, mode=None, chunk: int = 1024) -> torch.Tensor:
    """Predicted labels of ``x`` under ``mode`` (default: the base model): (n,) or (n, L)."""
    model.eval()
    out = []
    with use_mode(model, mode or Off()):
        for s in range(0, len(x), chunk):
            out.append(model(x[s : s + chunk]).argmax(dim=-1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mode=None) -> float:
    """Fraction of examples (or tokens) of ``x`` labelled as ``y`` under ``mode``."""
    return float((predict(model, x, mode) == y).float().mean())
