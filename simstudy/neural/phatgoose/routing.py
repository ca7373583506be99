"""Post-hoc routers among LoRA experts: PHATGOOSE, Average Activation, Arrow and Retrieval.

PHATGOOSE and Average Activation share one rule, per module and per token: standardise the token
activation ``u`` and every expert's router vector ``v_i`` (zero mean, unit variance across the
``d`` features), score ``u_std . v_i,std / sqrt(d)``, keep the top 2, softmax over the two. They
differ only in the vectors: the trained gate vectors (PHATGOOSE) or the expert's mean module input
(Average Activation). Arrow scores ``|u . v_i| / T`` with ``v_i`` the top right singular vector of
``B_i A_i``. Retrieval routes a whole example to the expert owning its nearest stored example.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from simstudy.neural.phatgoose.lora import LoRALinear, lora_modules

SCORES = ("standardised", "arrow")


def standardise(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Zero mean, unit (population) variance along the last axis; ``eps`` guards constant rows."""
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def standardised_scores(u: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """PHATGOOSE scores ``u_std . v_i,std / sqrt(d)``: (..., d) x (m, d) -> (..., m)."""
    d = u.shape[-1]
    return standardise(u) @ standardise(vectors).T / d**0.5


def arrow_scores(u: torch.Tensor, vectors: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Arrow scores ``|u . v_i| / T`` (the sign of a singular vector is arbitrary)."""
    return (u @ vectors.T).abs() / temperature


def top_k_softmax(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Softmax over the ``k`` largest scores of each row, 0 elsewhere (k is capped at m)."""
    if int(k) != k or k < 1:
        raise ValueError(f"k: must be a positive integer, got {k!r}")
    k = min(int(k), scores.shape[-1])
    values, idx = scores.topk(k, dim=-1)
    return torch.zeros_like(scores).scatter(-1, idx, torch.softmax(values, dim=-1))


class VectorRouter:
    """Route each token of each module among ``experts`` from one vector per expert and module.

    Parameters
    ----------
    vectors : dict of str to torch.Tensor
        Module name -> (m, d_in) router vectors, row j for ``experts[j]``.
    experts : sequence of int
        Expert indices (in the LoRA modules) of the candidates.
    score : {"standardised", "arrow"}
        Scoring rule (PHATGOOSE / Average Activation, or Arrow).
    top_k : int
        Experts kept per token.
    temperature : float
        Arrow's ``T``.
    record : bool
        Accumulate per-module routing statistics in :attr:`stats`.
    """

    def __init__(
        self,
        vectors: dict[str, torch.Tensor],
        experts: Sequence[int],
        score: str = "standardised",
        top_k: int = 2,
        temperature: float = 1.0,
        record: bool = False,
    ) -> None:
        if score not in SCORES:
            raise ValueError(f"score: must be one of {SCORES}, got {score!r}")
        if int(top_k) != top_k or top_k < 1:
            raise ValueError(f"top_k: must be a positive integer, got {top_k!r}")
        if not temperature > 0:
            raise ValueError(f"temperature: must be positive, got {temperature!r}")
        self.experts = tuple(int(i) for i in experts)
        if not self.experts:
            raise ValueError("experts: need at least one candidate expert")
        for name, v in vectors.items():
            if v.ndim != 2 or v.shape[0] != len(self.experts):
                raise ValueError(
                    f"vectors: module {name!r} has shape {tuple(v.shape)}, expected "
                    f"({len(self.experts)}, d_in)"
                )
        self.vectors = {k: v.detach() for k, v in vectors.items()}
        self.score, self.top_k, self.temperature = score, int(top_k), float(temperature)
        self.record = record
        self.stats: dict[str, dict[str, torch.Tensor | int]] = {}
        self.targets: torch.Tensor | None = None
        self.groups: torch.Tensor | None = None
        self.n_groups = 1

    def scores(self, name: str, u: torch.Tensor) -> torch.Tensor:
        """Router scores (..., m) of the tokens ``u`` at module ``name``."""
        v = self.vectors[name]
        if self.score == "arrow":
            return arrow_scores(u, v, self.temperature)
        return standardised_scores(u, v)

    def weights(
        self, name: str, u: torch.Tensor, module: LoRALinear | None = None
    ) -> tuple[torch.Tensor, tuple[int, ...]]:
        """Top-k softmax weights (..., m) and the candidate expert indices."""
        w = top_k_softmax(self.scores(name, u), self.top_k)
        if self.record:
            flat = w.detach().reshape(-1, w.shape[-1])
            st = self.stats.setdefault(
                name, {"weight_sum": torch.zeros(flat.shape[1]),
                       "top1": torch.zeros(flat.shape[1]), "n": 0}
            )
            top1 = flat.argmax(dim=1)
            st["weight_sum"] += flat.sum(dim=0)
            st["top1"] += torch.bincount(top1, minlength=flat.shape[1])
            st["n"] += flat.shape[0]
            if self.targets is not None:
                self._record_accuracy(st, top1)
        return w, self.experts

    def _record_accuracy(self, st: dict, top1: torch.Tensor) -> None:
        """Top-1 hits on the per-token target expert, per token group."""
        n_tok, n_t = top1.shape[0], self.targets.numel()
        if n_tok % n_t:
            raise ValueError(f"targets: {n_t} targets do not tile the {n_tok} tokens seen")
        rep = n_tok // n_t  # one target per example tiles over its tokens (pooled families)
        tgt = self.targets.reshape(-1).repeat_interleave(rep)
        grp = self.groups.reshape(-1).repeat_interleave(rep)
        hit = (top1 == tgt).to(torch.float64)
        st.setdefault("hits", torch.zeros(self.n_groups, dtype=torch.float64))
        st.setdefault("count", torch.zeros(self.n_groups, dtype=torch.float64))
        st["hits"] += torch.bincount(grp, weights=hit, minlength=self.n_groups)
        st["count"] += torch.bincount(grp, minlength=self.n_groups).to(torch.float64)

    def set_targets(self, targets: torch.Tensor | None, groups: torch.Tensor | None = None,
                    n_groups: int = 1) -> None:
        """Per-token target positions (among the candidates) and groups for the next forward.

        ``targets`` and ``groups`` share a shape: (n, L) per token or (n,) per example (tiled
        over the example's tokens). None stops the accuracy recording.
        """
        if targets is not None:
            groups = torch.zeros_like(targets) if groups is None else groups
            if groups.shape != targets.shape:
                raise ValueError(f"groups: shape {tuple(groups.shape)} differs from targets "
                                 f"{tuple(targets.shape)}")
        self.targets = None if targets is None else targets.long()
        self.groups = None if targets is None else groups.long()
        self.n_groups = int(n_groups)

    def reset_stats(self) -> None:
        self.stats = {}


def phatgoose_router(model: nn.Module, experts: Sequence[int], **kw) -> VectorRouter:
    """Router whose vectors are the trained PHATGOOSE gates ``v_i`` of each module."""
    vectors = {m.name: torch.stack([m.gate[i].detach() for i in experts])
               for m in lora_modules(model)}
    return VectorRouter(vectors, experts, score="standardised", **kw)


def average_activation_router(
    means: Sequence[dict[str, torch.Tensor]], experts: Sequence[int], **kw
) -> VectorRouter:
    """Router whose vectors are each expert's mean module input over its own training data.

    ``means[j]`` is the output of :func:`~simstudy.neural.phatgoose.lora.capture_inputs` for
    ``experts[j]``.
    """
    if len(means) != len(experts):
        raise ValueError(f"means: got {len(means)} activation sets for {len(experts)} experts")
    vectors = {name: torch.stack([m[name] for m in means]) for name in means[0]}
    return VectorRouter(vectors, experts, score="standardised", **kw)


def top_right_singular_vector(delta: torch.Tensor) -> torch.Tensor:
    """Unit right singular vector (d_in,) of the largest singular value of ``delta``."""
    _, _, vh = torch.linalg.svd(delta.detach().double(), full_matrices=False)
    return vh[0].to(delta.dtype)


def arrow_router(
    model: nn.Module, experts: Sequence[int], temperature: float = 10.0, **kw
) -> VectorRouter:
    """Arrow: vectors are the top right singular vectors of each expert's ``B_i A_i``; scores
    ``|u . v_i| / T`` with the reference's temperature T = 10 by default."""
    vectors = {m.name: torch.stack([top_right_singular_vector(m.delta(i)) for i in experts])
               for m in lora_modules(model)}
    return VectorRouter(vectors, experts, score="arrow", temperature=temperature, **kw)


class RetrievalRouter:
    """Route a whole example to the expert whose stored example is nearest (cosine).

    Parameters
    ----------
    keys : torch.Tensor
        (N, q) query embeddings of stored examples.
    owners : torch.Tensor
        (N,) expert index owning each stored example.
    """

    def __init__(self, keys: torch.Tensor, owners: torch.Tensor) -> None:
        if keys.ndim != 2 or owners.shape != (keys.shape[0],):
            raise ValueError(
                f"owners: shape {tuple(owners.shape)} does not match keys {tuple(keys.shape)}"
            )
        self.keys = nn.functional.normalize(keys.detach(), dim=1)
        self.owners = owners.long()

    def assign(self, queries: torch.Tensor) -> torch.Tensor:
        """Expert index (n,) for each query embedding (n, q)."""
        sims = nn.functional.normalize(queries.detach(), dim=1) @ self.keys.T
        return self.owners[sims.argmax(dim=1)]
