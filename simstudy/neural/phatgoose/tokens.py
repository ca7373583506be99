"""The per-token task family: the main PHATGOOSE proxy (spec ``neural.md`` section 3).

Sequences of ``seq_len`` tokens, one label per token (``n_labels`` classes shared by all tasks).
The vocabulary holds ``n_domains`` slices of ``symbols`` domain tokens each, then
``n_templates`` template tokens shared by every domain. Each domain ``g`` has its own skill,
three fixed random tables drawn from the family's seed:

``perm[g]``
    symbol -> label: a domain token's label is ``perm[g][s]`` (a permutation of the labels);
``shift[g]``
    template -> 1..n_labels-1: a domain token right after template ``j`` gets its label shifted
    by ``shift[g][j]`` (mod ``n_labels``): the skill depends on the previous token;
``tmpl_label[g]``
    template -> label: a template token's label is ``tmpl_label[g][j]`` where ``g`` is the
    domain of the nearest preceding domain token: the domain is visible to a template token
    only through its context (like a prompt), so routing it needs attention.

A sequence of a task over domains ``G`` starts with a domain token; every later position is a
template token with probability ``template_fraction``, else a domain token of a domain drawn
uniformly from ``G`` (token by token). Held-in tasks are single domains (one expert each);
held-out tasks mix 2-3 domains, so no single expert solves them but per-token, per-module mixing
of the held-in experts can. The base model is pre-trained on the family's structure with tables of
its own (:meth:`TokenFamily.base_sample`): it learns the domains, the role of context and of
the previous token, but none of the tasks' skills.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np

__all__ = ["TokenFamily", "TokenTask", "DEFAULT_HELD_OUT"]

# pairs and triples of domains (0-based); each domain appears in some mixture
DEFAULT_HELD_OUT = ((0, 1), (2, 3), (4, 5), (1, 4), (0, 2, 5), (1, 3, 4))
#: template fraction of the base model's pre-training data (fixed: one base for every family)
BASE_TEMPLATE_FRACTION = 0.3


@dataclass(frozen=True)
class TokenTask:
    """A task of the family: sequences over ``domains``; ``held_out`` for zero-shot tasks."""

    name: str
    domains: tuple[int, ...]
    held_out: bool = False


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < low:
        raise ValueError(f"{name}: must be an integer >= {low}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class TokenFamily:
    """Parameters of the family (all tables derive from ``seed``).

    Parameters
    ----------
    n_domains, symbols, n_templates, seq_len, n_labels : int
        Sizes (see the module docstring); ``symbols`` must equal ``n_labels`` (each domain's
        skill permutes the labels).
    template_fraction : float
        Probability that a position after the first holds a template token, in [0, 1).
    seed : int
        Seed of the skill tables, of the base task's tables and of the data sets.
    held_out : tuple of tuple of int
        Domains of each held-out mixture (2 or 3 distinct domains each).
    n_train, n_test, n_base : int
        Sequences in each task's training and test set, and in the base model's training set.
    """

    n_domains: int = 6
    symbols: int = 10
    n_templates: int = 6
    seq_len: int = 12
    n_labels: int = 10
    template_fraction: float = 0.3
    seed: int = 0
    held_out: tuple[tuple[int, ...], ...] = DEFAULT_HELD_OUT
    n_train: int = 4096
    n_test: int = 1024
    n_base: int = 32768

    def __post_init__(self) -> None:
        _check_int("n_domains", self.n_domains, 2)
        _check_int("symbols", self.symbols, 2)
        _check_int("n_templates", self.n_templates, 1)
        _check_int("seq_len", self.seq_len, 2)
        _check_int("n_labels", self.n_labels, 2)
        _check_int("seed", self.seed, 0)
        for name in ("n_train", "n_test", "n_base"):
            _check_int(name, getattr(self, name), 1)
        if self.symbols != self.n_labels:
            raise ValueError(f"symbols: must equal n_labels = {self.n_labels} (a domain's skill "
                             f"permutes the labels), got {self.symbols}")
        if not 0.0 <= self.template_fraction < 1.0:
            raise ValueError(f"template_fraction: must lie in [0, 1), got "
                             f"{self.template_fraction!r}")
        for doms in self.held_out:
            if not 2 <= len(doms) <= 3 or len(set(doms)) != len(doms) \
                    or not all(0 <= g < self.n_domains for g in doms):
                raise ValueError(f"held_out: each mixture needs 2-3 distinct domains in "
                                 f"[0, {self.n_domains - 1}], got {doms!r}")

    # -- vocabulary and tasks --------------------------------------------------------------
    @property
    def vocab(self) -> int:
        return self.n_domains * self.symbols + self.n_templates

    @property
    def first_template(self) -> int:
        return self.n_domains * self.symbols

    @property
    def held_in_tasks(self) -> tuple[TokenTask, ...]:
        return tuple(TokenTask(f"d{g}", (g,)) for g in range(self.n_domains))

    @property
    def held_out_tasks(self) -> tuple[TokenTask, ...]:
        return tuple(TokenTask("mix" + "".join(str(g) for g in doms), tuple(doms), True)
                     for doms in self.held_out)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["held_out"] = [list(h) for h in self.held_out]
        return d

    # -- tables ----------------------------------------------------------------------------
    @cached_property
    def tables(self) -> dict[str, np.ndarray]:
        """The skill tables and the base task's maps (fixed by ``seed``)."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 7_001]))
        D, S, J, C = self.n_domains, self.symbols, self.n_templates, self.n_labels
        return {
            "perm": np.stack([rng.permutation(C) for _ in range(D)])[:, :S],
            "shift": rng.integers(1, C, size=(D, J)),
            "tmpl_label": rng.integers(0, C, size=(D, J)),
            "base_perm": np.stack([rng.permutation(C) for _ in range(D)])[:, :S],
            "base_shift": rng.integers(1, C, size=(D, J)),
            "base_tmpl_label": rng.integers(0, C, size=(D, J)),
        }

    # -- sampling --------------------------------------------------------------------------
    def _label(self, tab: dict, prefix: str, dom, sym, tmpl, is_t) -> tuple[np.ndarray, ...]:
        """Token ids, labels and governing domains from the drawn positions (see module doc)."""
        n, L = dom.shape
        S = self.symbols
        x = np.where(is_t, self.first_template + tmpl, dom * S + sym)
        # governing domain: forward-fill the domain of the last domain token
        pos = np.where(~is_t, np.arange(L)[None, :], 0)
        gov = np.take_along_axis(dom, np.maximum.accumulate(pos, axis=1), axis=1)
        prev_t = np.zeros((n, L), dtype=bool)
        prev_t[:, 1:] = is_t[:, :-1]
        prev_j = np.zeros((n, L), dtype=np.int64)
        prev_j[:, 1:] = tmpl[:, :-1]
        shift = np.where(prev_t, tab[prefix + "shift"][gov, prev_j], 0)
        y_dom = (tab[prefix + "perm"][gov, sym] + shift) % self.n_labels
        y = np.where(is_t, tab[prefix + "tmpl_label"][gov, tmpl], y_dom)
        return x.astype(np.int64), y.astype(np.int64), gov

    def _positions(self, n: int, fraction: float, rng: np.random.Generator):
        L = self.seq_len
        is_t = rng.random((n, L)) < fraction
        is_t[:, 0] = False
        sym = rng.integers(0, self.symbols, size=(n, L))
        tmpl = rng.integers(0, self.n_templates, size=(n, L))
        return is_t, sym, tmpl

    def sample(self, domains, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``n`` sequences of the task over ``domains``.

        Returns
        -------
        dict
            ``x`` (n, L) token ids, ``y`` (n, L) labels, ``domain`` (n, L) the domain that
            governs each label (for a template token: of the nearest preceding domain token),
            ``template`` (n, L) bool.
        """
        domains = np.asarray(tuple(domains), dtype=np.int64)
        if domains.size < 1 or np.any((domains < 0) | (domains >= self.n_domains)):
            raise ValueError(f"domains: must be indices in [0, {self.n_domains - 1}], got "
                             f"{domains.tolist()}")
        n = _check_int("n", n, 1)
        is_t, sym, tmpl = self._positions(n, self.template_fraction, rng)
        dom = domains[rng.integers(0, domains.size, size=(n, self.seq_len))]
        x, y, gov = self._label(self.tables, "", dom, sym, tmpl, is_t)
        return {"x": x, "y": y, "domain": gov, "template": is_t}

    def base_sample(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The base model's pre-training task: the family's structure with its own tables.

        Each sequence mixes 1-3 random domains token by token (template fraction
        :data:`BASE_TEMPLATE_FRACTION`, whatever the family's), labelled by tables drawn
        independently of every task's (``base_perm``, ``base_shift``, ``base_tmpl_label``). So
        the base model learns what a pre-trained language model knows -- which domain ("topic")
        a token belongs to, that a template token's meaning comes from its context, and that a
        token's predecessor matters -- but none of the tasks' skills: on every task it is at
        chance. The same base model serves every template fraction.
        """
        n = _check_int("n", n, 1)
        D = self.n_domains
        is_t, sym, tmpl = self._positions(n, BASE_TEMPLATE_FRACTION, rng)
        chosen = np.argsort(rng.random((n, D)), axis=1)[:, :3]  # 3 distinct domains per row
        m = rng.integers(1, min(3, D) + 1, size=(n, 1))
        pick = (rng.random((n, self.seq_len)) * m).astype(np.int64)
        dom = np.take_along_axis(chosen, pick, axis=1)
        x, y, _ = self._label(self.tables, "base_", dom, sym, tmpl, is_t)
        return {"x": x, "y": y}

    def raw_embedding(self, x: np.ndarray) -> np.ndarray:
        """Retrieval's query embedding of raw inputs: the bag of tokens (counts per id)."""
        x = np.asarray(x)
        out = np.zeros((x.shape[0], self.vocab))
        np.add.at(out, (np.repeat(np.arange(x.shape[0]), x.shape[1]), x.reshape(-1)), 1.0)
        return out

    # -- the benchmark's family interface --------------------------------------------------
    name = "tokens"
    per_token = True
    lora_exclude = ()  # token ids enter by an embedding lookup, which is not wrapped

    def task_data(self, task: TokenTask, split: str) -> dict[str, np.ndarray]:
        """The fixed train (``n_train`` sequences) or test (``n_test``) set of ``task``."""
        if split not in ("train", "test"):
            raise ValueError(f"split: must be 'train' or 'test', got {split!r}")
        key = [self.seed, 1 if split == "train" else 2, *task.domains, len(task.domains)]
        rng = np.random.default_rng(np.random.SeedSequence(key))
        return self.sample(task.domains, self.n_train if split == "train" else self.n_test, rng)

    def base_data(self) -> dict[str, np.ndarray]:
        """The base model's fixed training set (``n_base`` sequences of the generic task)."""
        return self.base_sample(self.n_base, np.random.default_rng(
            np.random.SeedSequence([self.seed, 3])))

    def transformer_config(self, width: int, depth: int, heads: int, mlp_ratio: int):
        from simstudy.neural.transformer import TransformerConfig

        return TransformerConfig(width=width, depth=depth, heads=heads, mlp_ratio=mlp_ratio,
                                 n_outputs=self.n_labels, n_tokens=self.seq_len,
                                 vocab=self.vocab, pool="mean", output="tokens")

    def prepare_input(self, x):
        import torch

        return torch.as_tensor(x)
