"""The project's one tiny transformer, shared by the JEI-DNN and PHATGOOSE proxies.

A pre-norm encoder (``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``) whose every dense
layer is a plain :class:`torch.nn.Linear` called as a module, so that a wrapper which replaces
``nn.Linear`` modules in place (PHATGOOSE's LoRA experts and gates, per module and per token)
sees every projection: ``blocks.<i>.attn.{q,k,v,o}``, ``blocks.<i>.mlp.{fc1,fc2}``, ``head``
and, for patch inputs, ``embed``. Nothing else holds a dense weight (token inputs use an
``nn.Embedding`` table, which is a lookup and not wrapped).

Stable API (other branches build on it; extend, don't change)
-------------------------------------------------------------
``TransformerConfig(width, depth, heads, mlp_ratio, n_outputs, n_tokens, vocab=None,
patch_dim=None, pool="cls", output="pooled", causal=False)``
    Exactly one of ``vocab`` (inputs are token ids, (n, n_tokens) int64) and ``patch_dim``
    (inputs are patch vectors, (n, n_tokens, patch_dim) float). ``pool`` is ``"cls"`` (a
    learned CLS token is prepended; the pooled vector is its final-normed state), ``"mean"``
    (mean over tokens of the final-normed states) or ``"last"`` (the last token's).
    ``output="pooled"`` makes :meth:`Transformer.forward` return (n, n_outputs) logits from
    the pooled vector; ``"tokens"`` returns (n, n_tokens, n_outputs), one prediction per input
    token. ``causal=True`` masks attention to earlier positions (use ``pool="last"`` then).
:class:`Transformer`
    ``embed_inputs(x)`` -> (n, seq_len, width) embeddings + positions (+ CLS in front);
    ``hidden_states(x)`` -> list of ``depth`` tensors (n, seq_len, width): the residual stream
    after each block (before the final norm); ``pool(h)`` -> (n, width): the *shared* final
    LayerNorm, then the pooling; ``block_features(x)`` -> (n, depth, width): ``pool`` of every
    block's output (what JEI-DNN's inference modules read); ``features(x)`` -> ``pool`` of the
    last block; ``forward(x)`` -> logits as set by ``output``.
:func:`macs`
    Multiply-adds per forward pass of one example, per piece (embedding, each block, final
    norm + pooling, head), counting every token; the dense part is checked exactly against
    ``torch.utils.flop_counter`` in the tests.
:func:`patchify`
    (n, H, W) images -> (n, (H/p)(W/p), p*p) patch vectors, row-major.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["TransformerConfig", "Transformer", "MacCount", "macs", "patchify"]

POOLS = ("cls", "mean", "last")
OUTPUTS = ("pooled", "tokens")


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class TransformerConfig:
    """Shape of the tiny transformer (see the module docstring for the meaning of each field)."""

    width: int = 48
    depth: int = 6
    heads: int = 4
    mlp_ratio: int = 2
    n_outputs: int = 10
    n_tokens: int = 16
    vocab: int | None = None
    patch_dim: int | None = None
    pool: str = "cls"
    output: str = "pooled"
    causal: bool = False

    def __post_init__(self):
        for name in ("width", "depth", "heads", "mlp_ratio", "n_outputs", "n_tokens"):
            _positive_int(name, getattr(self, name))
        if self.width % self.heads:
            raise ValueError(f"heads: must divide width {self.width}, got {self.heads}")
        if (self.vocab is None) == (self.patch_dim is None):
            raise ValueError("vocab/patch_dim: set exactly one (token ids or patch vectors)")
        if self.vocab is not None:
            _positive_int("vocab", self.vocab)
        if self.patch_dim is not None:
            _positive_int("patch_dim", self.patch_dim)
        if self.pool not in POOLS:
            raise ValueError(f"pool: must be one of {list(POOLS)}, got {self.pool!r}")
        if self.output not in OUTPUTS:
            raise ValueError(f"output: must be one of {list(OUTPUTS)}, got {self.output!r}")
        if self.causal and self.pool == "cls":
            # a CLS token in front of a causal mask would only ever see itself
            raise ValueError("pool: a causal model cannot pool a leading CLS token; use 'last'")

    @property
    def seq_len(self) -> int:
        """Tokens the blocks process: the inputs plus the CLS token when ``pool="cls"``."""
        return self.n_tokens + (self.pool == "cls")


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate ``q``, ``k``, ``v`` and ``o`` projections."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.heads, self.causal = cfg.heads, cfg.causal
        self.q = nn.Linear(cfg.width, cfg.width)
        self.k = nn.Linear(cfg.width, cfg.width)
        self.v = nn.Linear(cfg.width, cfg.width)
        self.o = nn.Linear(cfg.width, cfg.width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n, t, d = h.shape

        def split(z):
            return z.view(n, t, self.heads, d // self.heads).transpose(1, 2)

        att = F.scaled_dot_product_attention(
            split(self.q(h)), split(self.k(h)), split(self.v(h)), is_causal=self.causal
        )
        return self.o(att.transpose(1, 2).reshape(n, t, d))


class MLP(nn.Module):
    """Two-layer GELU MLP ``fc2(gelu(fc1(h)))``."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.width, cfg.mlp_ratio * cfg.width)
        self.fc2 = nn.Linear(cfg.mlp_ratio * cfg.width, cfg.width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(h)))


class Block(nn.Module):
    """Pre-norm transformer block: ``h + attn(norm1(h))``, then ``h + mlp(norm2(h))``."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width)
        self.attn = SelfAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.width)
        self.mlp = MLP(cfg)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.norm1(h))
        return h + self.mlp(self.norm2(h))


class Transformer(nn.Module):
    """Token-id or patch-vector encoder with per-block pooled representations.

    Parameters
    ----------
    cfg : TransformerConfig
    """

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.vocab is not None:
            self.embed: nn.Module = nn.Embedding(cfg.vocab, cfg.width)
        else:
            self.embed = nn.Linear(cfg.patch_dim, cfg.width)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.width)) if cfg.pool == "cls" else None
        self.pos = nn.Parameter(0.02 * torch.randn(1, cfg.seq_len, cfg.width))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, cfg.n_outputs)

    def _check_input(self, x: torch.Tensor) -> None:
        cfg = self.cfg
        want = (cfg.n_tokens,) if cfg.vocab is not None else (cfg.n_tokens, cfg.patch_dim)
        if tuple(x.shape[1:]) != want:
            raise ValueError(f"x: expected shape (n, {', '.join(map(str, want))}), "
                             f"got {tuple(x.shape)}")

    def embed_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings plus positions, (n, seq_len, width); the CLS token comes first."""
        self._check_input(x)
        e = self.embed(x)
        if self.cls is not None:
            e = torch.cat([self.cls.expand(e.shape[0], -1, -1), e], dim=1)
        return e + self.pos

    def hidden_states(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The residual stream after each block (before the final norm): ``depth`` tensors."""
        h = self.embed_inputs(x)
        out = []
        for block in self.blocks:
            h = block(h)
            out.append(h)
        return out

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        """Shared final LayerNorm, then CLS / mean / last-token pooling: (n, width)."""
        if self.cfg.pool == "cls":
            return self.norm(h[:, 0])
        if self.cfg.pool == "last":
            return self.norm(h[:, -1])
        return self.norm(h).mean(dim=1)

    def block_features(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`pool` of every block's output, (n, depth, width)."""
        return torch.stack([self.pool(h) for h in self.hidden_states(x)], dim=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`pool` of the last block, (n, width)."""
        return self.pool(self.hidden_states(x)[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.output == "pooled":
            return self.head(self.features(x))
        h = self.norm(self.hidden_states(x)[-1])
        return self.head(h[:, self.cfg.seq_len - self.cfg.n_tokens :])


@dataclass(frozen=True)
class MacCount:
    """Multiply-adds of one example's forward pass, piece by piece.

    ``embed``: patch projection of every input token (0 for an embedding lookup);
    ``block_dense``: one block's matrix products (q, k, v, o and the MLP on every token, plus
    the attention scores and the weighted values, N^2 D each); ``block_other``: one block's
    element-wise work in multiply-add equivalents (two LayerNorms at 2 per element, softmax at
    3 per score, GELU at 1 per hidden unit, two residual adds); ``pool``: the shared final norm
    and pooling of one block's output; ``head``: the output layer. Bias additions are not
    counted.
    """

    embed: float
    block_dense: float
    block_other: float
    pool: float
    head: float
    depth: int = field(default=1)

    @property
    def block(self) -> float:
        """One block, all of it."""
        return self.block_dense + self.block_other

    def through(self, n_blocks: int) -> float:
        """Embedding plus the first ``n_blocks`` blocks (no pooling, no head)."""
        if not 0 <= n_blocks <= self.depth:
            raise ValueError(f"n_blocks: must be in [0, {self.depth}], got {n_blocks}")
        return self.embed + n_blocks * self.block

    @property
    def total(self) -> float:
        """The plain forward pass: all blocks, one pooling and the head."""
        return self.through(self.depth) + self.pool + self.head


def macs(cfg: TransformerConfig) -> MacCount:
    """Multiply-adds per example of :class:`Transformer` ``(cfg)``, counting every token."""
    N, D, T = cfg.seq_len, cfg.width, cfg.n_tokens
    H = cfg.mlp_ratio * D
    embed = 0.0 if cfg.vocab is not None else float(T * cfg.patch_dim * D)
    dense = 4 * N * D * D + 2 * N * N * D + 2 * N * D * H
    other = 2 * (2 * N * D) + 3 * cfg.heads * N * N + N * H + 2 * N * D
    if cfg.output == "tokens":
        pool, head = 2.0 * T * D, float(T * D * cfg.n_outputs)
    else:
        pool = 2.0 * D if cfg.pool in ("cls", "last") else 2.0 * N * D + N * D
        head = float(D * cfg.n_outputs)
    return MacCount(float(embed), float(dense), float(other), pool, head, cfg.depth)


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """Cut (n, H, W) images into (n, (H/patch)(W/patch), patch^2) vectors, row-major."""
    if images.ndim != 3:
        raise ValueError(f"images: expected (n, H, W), got shape {tuple(images.shape)}")
    n, h, w = images.shape
    if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1 or h % patch \
            or w % patch:
        raise ValueError(f"patch: must be a positive integer dividing {h}x{w}, got {patch!r}")
    x = images.reshape(n, h // patch, patch, w // patch, patch).permute(0, 1, 3, 2, 4)
    return x.reshape(n, (h // patch) * (w // patch), patch * patch)
