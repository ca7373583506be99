"""The frozen base model: a tiny vision transformer over 2x2 patch tokens of 8x8 digits.

Every linear layer is a plain :class:`torch.nn.Linear` here; :func:`simstudy.neural.phatgoose.lora.
attach_lora` later wraps each of them so that experts, gates and routers act per module and per
token, as in the paper (which routes in every linear layer of T5).
"""

from __future__ import annotations

import torch
from torch import nn

from simstudy.neural.phatgoose.tasks import IMAGE_SIDE, N_CLASSES


def patchify(images: torch.Tensor, patch: int = 2) -> torch.Tensor:
    """Cut (n, 8, 8) images into (n, (8/patch)^2, patch^2) tokens, row-major."""
    n, h, w = images.shape
    if h % patch or w % patch:
        raise ValueError(f"patch: image side {h}x{w} is not a multiple of {patch}")
    x = images.reshape(n, h // patch, patch, w // patch, patch)
    return x.permute(0, 1, 3, 2, 4).reshape(n, (h // patch) * (w // patch), patch * patch)


class SelfAttention(nn.Module):
    """Multi-head self-attention with explicit ``qkv`` and ``out`` linear layers."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"heads: width {width} is not divisible by heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n, t, w = h.shape
        q, k, v = self.qkv(h).reshape(n, t, 3, self.heads, w // self.heads).unbind(2)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) / (w // self.heads) ** 0.5, dim=-1)
        return self.out((att @ v).transpose(1, 2).reshape(n, t, w))


class Block(nn.Module):
    """Pre-norm transformer block: attention then a two-layer GELU MLP, both residual."""

    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, mlp_ratio * width)
        self.fc2 = nn.Linear(mlp_ratio * width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.norm1(h))
        return h + self.fc2(nn.functional.gelu(self.fc1(self.norm2(h))))


class TinyViT(nn.Module):
    """Patch-token transformer classifier for 8x8 images.

    Parameters
    ----------
    width : int
        Token width.
    depth : int
        Number of transformer blocks.
    heads : int
        Attention heads per block.
    mlp_ratio : int
        Hidden width of each MLP as a multiple of ``width``.
    patch : int
        Patch side in pixels (2 gives 16 tokens of 4 pixels).
    """

    def __init__(
        self, width: int = 48, depth: int = 2, heads: int = 4, mlp_ratio: int = 2, patch: int = 2
    ) -> None:
        super().__init__()
        for name, value in (("width", width), ("depth", depth), ("heads", heads),
                            ("mlp_ratio", mlp_ratio), ("patch", patch)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name}: must be a positive integer, got {value!r}")
        if IMAGE_SIDE % patch:
            raise ValueError(f"patch: must divide the image side {IMAGE_SIDE}, got {patch}")
        self.patch = patch
        n_tokens = (IMAGE_SIDE // patch) ** 2
        self.embed = nn.Linear(patch * patch, width)
        self.pos = nn.Parameter(torch.zeros(n_tokens, width))
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, N_CLASSES)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Mean-pooled final representation (n, width): the retrieval query embedding."""
        h = self.embed(patchify(images, self.patch)) + self.pos
        for block in self.blocks:
            h = block(h)
        return self.norm(h).mean(dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def freeze(model: nn.Module) -> nn.Module:
    """Turn off gradients for every parameter of ``model`` (in place) and return it."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model
