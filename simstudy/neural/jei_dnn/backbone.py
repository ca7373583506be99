"""A tiny ViT over 8x8 digits, its multiply-add count per block, and cached CLS features.

The backbone is trained once per seed on the training split and then frozen. What JEI-DNN
needs from it is, for every example, the CLS representation after each block passed through
the *shared* final LayerNorm (the IMs read those) and the backbone head's logits (the last
exit); :func:`extract_features` computes them once so each lambda trains in seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ViTConfig", "TinyViT", "train_backbone", "extract_features", "block_macs"]


@dataclass(frozen=True)
class ViTConfig:
    """Shape of the tiny ViT (defaults: 2x2 patches -> 16 patch tokens + CLS, width 48, L = 6)."""

    image: int = 8
    patch: int = 2
    width: int = 48
    depth: int = 6
    heads: int = 4
    mlp_ratio: int = 2
    n_classes: int = 10

    def __post_init__(self):
        if self.image % self.patch:
            raise ValueError(f"patch: must divide the image size {self.image}, got {self.patch}")
        if self.width % self.heads:
            raise ValueError(f"heads: must divide width {self.width}, got {self.heads}")
        if self.depth < 2:
            raise ValueError(f"depth: need at least 2 blocks for early exits, got {self.depth}")

    @property
    def tokens(self) -> int:
        """Sequence length: patch tokens plus the CLS token."""
        return (self.image // self.patch) ** 2 + 1


class Block(nn.Module):
    """Pre-norm transformer block (multi-head self-attention + GELU MLP)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.heads = cfg.heads
        self.norm1 = nn.LayerNorm(cfg.width)
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.width)
        self.norm2 = nn.LayerNorm(cfg.width)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.width, cfg.mlp_ratio * cfg.width),
            nn.GELU(),
            nn.Linear(cfg.mlp_ratio * cfg.width, cfg.width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        qkv = self.qkv(self.norm1(x)).view(n, t, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (n, heads, t, d / heads)
        att = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(att.transpose(1, 2).reshape(n, t, d))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """ViT with a CLS token, L blocks, one shared final LayerNorm and a linear head."""

    def __init__(self, cfg: ViTConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or ViTConfig()
        self.embed = nn.Linear(cfg.patch**2, cfg.width)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos = nn.Parameter(0.02 * torch.randn(1, cfg.tokens, cfg.width))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, cfg.n_classes)

    def patches(self, images: torch.Tensor) -> torch.Tensor:
        """(n, 8, 8) -> (n, patches, patch^2)."""
        p = self.cfg.patch
        n, h, w = images.shape
        x = images.reshape(n, h // p, p, w // p, p).permute(0, 1, 3, 2, 4)
        return x.reshape(n, (h // p) * (w // p), p * p)

    def cls_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """CLS token after every block, through the shared final norm: L tensors (n, width)."""
        x = self.embed(self.patches(images))
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        feats = []
        for blk in self.blocks:
            x = blk(x)
            feats.append(self.norm(x[:, 0]))
        return feats

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.cls_features(images)[-1])


def block_macs(cfg: ViTConfig) -> dict[str, float]:
    """Multiply-adds of each piece, counting all ``cfg.tokens`` tokens.

    Returns a dict with ``embed`` (patch embedding of every patch token, plus adding CLS and
    positions), ``block`` (one transformer block: two LayerNorms ~ 2 N D each, QKV 3 N D^2,
    scores N^2 D, weighted values N^2 D, output projection N D^2, softmax ~ 3 heads N^2,
    MLP 2 r N D^2), ``norm`` (final LayerNorm of the CLS token only) and ``head``
    (a linear classifier D x C on one token).
    """
    N, D, C, r = cfg.tokens, cfg.width, cfg.n_classes, cfg.mlp_ratio
    embed = (N - 1) * cfg.patch**2 * D + N * D
    attn = 3 * N * D * D + 2 * N * N * D + N * D * D + 3 * cfg.heads * N * N
    block = 2 * 2 * N * D + attn + 2 * r * N * D * D
    return {
        "embed": float(embed),
        "block": float(block),
        "norm": float(2 * D),
        "head": float(D * C + C),
    }


def train_backbone(
    data,
    cfg: ViTConfig | None = None,
    epochs: int = 40,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 3e-3,
) -> tuple[TinyViT, dict]:
    """Train the ViT on ``data.train`` (AdamW, cosine schedule, random 1-pixel shifts).

    Keeps the weights of the epoch with the best validation accuracy. Returns the frozen
    model (eval mode, ``requires_grad`` off) and a small log dict.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = TinyViT(cfg)
    X = torch.tensor(data.train.X)
    y = torch.tensor(data.train.y)
    Xv, yv = torch.tensor(data.val.X), torch.tensor(data.val.y)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * math.ceil(len(y) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    best, best_state, log = -1.0, None, {"val_acc": []}
    for _ in range(epochs):
        model.train()
        for idx in np.array_split(rng.permutation(len(y)), math.ceil(len(y) / batch_size)):
            xb = X[idx]
            # augmentation: shift by up to one pixel (digits are small; this curbs overfitting)
            dx, dy = (int(v) for v in rng.integers(-1, 2, size=2))
            xb = torch.roll(F.pad(xb, (1, 1, 1, 1)), shifts=(dy, dx), dims=(1, 2))[:, 1:-1, 1:-1]
            loss = F.cross_entropy(model(xb), y[idx], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            acc = float((model(Xv).argmax(1) == yv).float().mean())
        log["val_acc"].append(acc)
        if acc >= best:
            best, best_state = acc, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    log["best_val_acc"] = best
    return model, log


@torch.no_grad()
def extract_features(model: TinyViT, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cached inputs of the exits: CLS features (n, L, width) and head logits (n, C)."""
    model.eval()
    feats = model.cls_features(torch.tensor(X))
    logits = model.head(feats[-1])
    return torch.stack(feats, dim=1).numpy(), logits.numpy()
