"""The shared tiny transformer: shapes, a slow loop reference, pooling, MAC counts, wrapping."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from simstudy.neural.transformer import (  # noqa: E402
    Transformer,
    TransformerConfig,
    macs,
    patchify,
)

pytestmark = pytest.mark.torch
torch.set_num_threads(1)

CONFIGS = [
    TransformerConfig(width=8, depth=2, heads=2, n_outputs=3, n_tokens=5, patch_dim=4),
    TransformerConfig(width=12, depth=3, heads=3, n_outputs=4, n_tokens=6, vocab=7, pool="mean"),
    TransformerConfig(width=8, depth=1, heads=1, n_outputs=5, n_tokens=4, vocab=5, pool="last",
                      causal=True),
    TransformerConfig(width=8, depth=2, heads=4, n_outputs=6, n_tokens=7, vocab=6, pool="mean",
                      output="tokens", causal=True),
]


def _inputs(cfg, n, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    if cfg.vocab is not None:
        return torch.randint(0, cfg.vocab, (n, cfg.n_tokens), generator=g)
    return torch.randn(n, cfg.n_tokens, cfg.patch_dim, generator=g, dtype=dtype)


# -- a slow, obviously-correct reference: loops over examples, heads and positions ------------
def _layernorm(x, mod):
    mu = x.mean()
    var = ((x - mu) ** 2).mean()
    return (x - mu) / math.sqrt(var + mod.eps) * mod.weight + mod.bias


def _linear(x, mod):
    return mod.weight @ x + mod.bias


def _gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def reference_forward(model: Transformer, x) -> tuple[list, torch.Tensor]:
    """Per-block pooled features (list of (width,) per example) and outputs, by loops."""
    cfg = model.cfg
    dh = cfg.width // cfg.heads
    feats_all, outs = [], []
    for i in range(x.shape[0]):
        if cfg.vocab is not None:
            toks = [model.embed.weight[int(t)] for t in x[i]]
        else:
            toks = [_linear(v, model.embed) for v in x[i]]
        if cfg.pool == "cls":
            toks = [model.cls[0, 0]] + toks
        h = [t + model.pos[0, p] for p, t in enumerate(toks)]
        feats = []
        for blk in model.blocks:
            a = [_layernorm(t, blk.norm1) for t in h]
            q = [_linear(t, blk.attn.q) for t in a]
            k = [_linear(t, blk.attn.k) for t in a]
            v = [_linear(t, blk.attn.v) for t in a]
            att = []
            for p in range(len(h)):
                heads = []
                for j in range(cfg.heads):
                    sl = slice(j * dh, (j + 1) * dh)
                    keys = range(p + 1) if cfg.causal else range(len(h))
                    s = torch.stack([q[p][sl] @ k[r][sl] / math.sqrt(dh) for r in keys])
                    w = torch.softmax(s, 0)
                    heads.append(sum(w[m] * v[r][sl] for m, r in enumerate(keys)))
                att.append(_linear(torch.cat(heads), blk.attn.o))
            h = [t + o for t, o in zip(h, att, strict=True)]
            m = [_layernorm(t, blk.norm2) for t in h]
            h = [t + _linear(_gelu(_linear(u, blk.mlp.fc1)), blk.mlp.fc2) for t, u in zip(h, m,
                                                                                          strict=True)]
            normed = [_layernorm(t, model.norm) for t in h]
            if cfg.pool == "cls":
                feats.append(normed[0])
            elif cfg.pool == "last":
                feats.append(normed[-1])
            else:
                feats.append(sum(normed) / len(normed))
        feats_all.append(feats)
        if cfg.output == "pooled":
            outs.append(_linear(feats[-1], model.head))
        else:
            first = cfg.seq_len - cfg.n_tokens
            outs.append(torch.stack([_linear(t, model.head) for t in normed[first:]]))
    return feats_all, torch.stack(outs)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.pool}-{c.output}-causal{c.causal}")
def test_forward_matches_loop_reference(cfg):
    torch.manual_seed(1)
    model = Transformer(cfg).double()
    with torch.no_grad():  # a non-trivial CLS/positions/norms, not their zero/one init
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = _inputs(cfg, 3, dtype=torch.float64)
    with torch.no_grad():
        out = model(x)
        bf = model.block_features(x)
        ref_feats, ref_out = reference_forward(model, x)
    assert bf.shape == (3, cfg.depth, cfg.width)
    torch.testing.assert_close(out, ref_out, rtol=1e-9, atol=1e-10)
    for i in range(3):
        torch.testing.assert_close(bf[i], torch.stack(ref_feats[i]), rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(model.features(x), bf[:, -1])
    hs = model.hidden_states(x)
    assert len(hs) == cfg.depth and hs[0].shape == (3, cfg.seq_len, cfg.width)
    if cfg.output == "pooled":
        assert out.shape == (3, cfg.n_outputs)
    else:
        assert out.shape == (3, cfg.n_tokens, cfg.n_outputs)


def test_causal_model_ignores_later_tokens():
    cfg = CONFIGS[3]
    model = Transformer(cfg)
    x = _inputs(cfg, 4)
    x2 = x.clone()
    x2[:, -1] = (x2[:, -1] + 1) % cfg.vocab
    with torch.no_grad():
        a, b = model(x), model(x2)
    torch.testing.assert_close(a[:, :-1], b[:, :-1])
    assert not torch.allclose(a[:, -1], b[:, -1])


class _Spy(nn.Module):
    """Stands in for a wrapped linear layer and records that it was called."""

    def __init__(self, inner, name, calls):
        super().__init__()
        self.inner, self.name, self.calls = inner, name, calls

    def forward(self, u):
        self.calls.append(self.name)
        return self.inner(u)


def test_every_dense_weight_is_a_linear_module_called_as_a_module():
    """PHATGOOSE replaces nn.Linear modules in place: each must be used through its module."""
    for cfg in CONFIGS:
        model = Transformer(cfg)
        linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
        expected = 6 * cfg.depth + 1 + (cfg.patch_dim is not None)
        assert len(linear) == expected
        owned = {f"{n}.weight" for n in linear} | {f"{n}.bias" for n in linear}
        rest = [n for n, _ in model.named_parameters() if n not in owned]
        # what is left: norms, positions, CLS and an embedding *table*
        assert all(n.startswith(("blocks.", "norm.", "pos", "cls", "embed.")) for n in rest)
        assert all("norm" in n or n in ("pos", "cls", "embed.weight") for n in rest)

        calls = []
        for name in linear:
            parent, _, attr = name.rpartition(".")
            owner = model.get_submodule(parent) if parent else model
            setattr(owner, attr, _Spy(getattr(owner, attr), name, calls))
        model(_inputs(cfg, 2))
        assert sorted(set(calls)) == sorted(linear)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.pool}-{c.output}")
def test_mac_count_matches_flop_counter(cfg):
    """Dense layers against torch's own counter (2 flops per multiply-add); attention products
    counted on an explicit q k^T / weights v of the same shapes."""
    from torch.utils.flop_counter import FlopCounterMode

    model = Transformer(cfg)
    n = 3
    with FlopCounterMode(display=False) as fc:
        model(_inputs(cfg, n))
    mc = macs(cfg)
    N, D = cfg.seq_len, cfg.width
    attention = 2 * N * N * D
    linear_part = mc.embed + cfg.depth * (mc.block_dense - attention) + mc.head
    assert fc.get_total_flops() / 2 / n == pytest.approx(linear_part, rel=1e-12)
    q = torch.randn(n, cfg.heads, N, D // cfg.heads)
    with FlopCounterMode(display=False) as fa:
        torch.softmax(q @ q.transpose(-1, -2), -1) @ q
    assert fa.get_total_flops() / 2 / n == attention
    assert mc.total == pytest.approx(mc.embed + cfg.depth * mc.block + mc.pool + mc.head)
    assert mc.through(0) == mc.embed
    with pytest.raises(ValueError, match="n_blocks"):
        mc.through(cfg.depth + 1)


def test_mac_count_grows_with_tokens_and_width():
    a = macs(TransformerConfig(n_tokens=16, patch_dim=4))
    b = macs(TransformerConfig(n_tokens=4, patch_dim=16))
    c = macs(TransformerConfig(n_tokens=16, patch_dim=4, width=96, heads=4))
    assert a.block > b.block and c.block > a.block


def test_config_validation():
    with pytest.raises(ValueError, match="vocab/patch_dim"):
        TransformerConfig()
    with pytest.raises(ValueError, match="vocab/patch_dim"):
        TransformerConfig(vocab=3, patch_dim=4)
    with pytest.raises(ValueError, match="heads: must divide width"):
        TransformerConfig(vocab=3, width=10, heads=4)
    with pytest.raises(ValueError, match="pool: must be one of"):
        TransformerConfig(vocab=3, pool="max")
    with pytest.raises(ValueError, match="output: must be one of"):
        TransformerConfig(vocab=3, output="seq")
    with pytest.raises(ValueError, match="causal"):
        TransformerConfig(vocab=3, causal=True)
    with pytest.raises(ValueError, match="depth: must be a positive integer"):
        TransformerConfig(vocab=3, depth=0)
    with pytest.raises(ValueError, match="x: expected shape"):
        Transformer(TransformerConfig(vocab=3, n_tokens=4))(torch.zeros(2, 5, dtype=torch.long))
    assert TransformerConfig(vocab=3, n_tokens=4).seq_len == 5
    assert TransformerConfig(vocab=3, n_tokens=4, pool="mean").seq_len == 4


def test_patchify_hand_example():
    img = torch.arange(16.0).reshape(1, 4, 4)
    p = patchify(img, 2)
    assert p.shape == (1, 4, 4)
    assert p[0, 0].tolist() == [0, 1, 4, 5] and p[0, 3].tolist() == [10, 11, 14, 15]
    np.testing.assert_array_equal(patchify(img, 1)[0, :, 0].numpy(), np.arange(16.0))
    with pytest.raises(ValueError, match="patch"):
        patchify(img, 3)
    with pytest.raises(ValueError, match="images"):
        patchify(img[0], 2)
