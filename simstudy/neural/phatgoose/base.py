"""The frozen base model: the project's shared tiny transformer, shaped by the task family.

Every dense layer of :class:`simstudy.neural.transformer.Transformer` is a plain
:class:`torch.nn.Linear` called as a module, so :func:`simstudy.neural.phatgoose.lora.attach_lora`
wraps each of them and experts, gates and routers act per module and per token, as in the paper
(which routes in every linear layer of T5).
"""

from __future__ import annotations

from torch import nn

from simstudy.neural.transformer import Transformer


def build_base(family, width: int, depth: int, heads: int, mlp_ratio: int) -> Transformer:
    """A fresh (untrained) base model for ``family`` (token ids or digit patches)."""
    return Transformer(family.transformer_config(width, depth, heads, mlp_ratio))


def freeze(model: nn.Module) -> nn.Module:
    """Turn off gradients for every parameter of ``model`` (in place) and return it."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model
