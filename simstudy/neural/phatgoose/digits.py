"""The digits family: the negative control of the PHATGOOSE benchmark (not the main proxy).

Variants of 8x8 digit classification sharing one label space.

The base task is plain digit recognition on scikit-learn's bundled ``load_digits`` (1,797 images,
no download). Every other task applies a fixed chain of *operations* to the base task: input
transforms (rotation, flips, a cyclic shift, intensity inversion) or a label permutation.
Held-in tasks apply one operation each and get a LoRA expert; held-out tasks chain two held-in
operations and are never trained on (zero-shot targets).

Why it is a negative control (measured on the first version of this benchmark): whole-image
transforms leave a task's identity in only 7-20% of a token's activation variance, so routing
fails even held-in, and compositions of whole-image transforms cannot be assembled by mixing
experts per token. :class:`DigitsFamily` adapts it to the benchmark's family interface.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

N_CLASSES = 10
IMAGE_SIDE = 8
LABEL_SHIFT = 3


def _rot90(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.rot90(x, 1, axes=(1, 2)), y


def _flip_lr(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x[:, :, ::-1], y


def _flip_ud(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x[:, ::-1, :], y


def _roll(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # shift by one 2x2 patch column (cyclic) so that the shift permutes whole patch tokens
    return np.roll(x, 2, axis=2), y


def _invert(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return 1.0 - x, y


def _label_shift(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x, (y + LABEL_SHIFT) % N_CLASSES


OPERATIONS = {
    "rot90": _rot90,
    "flip_lr": _flip_lr,
    "flip_ud": _flip_ud,
    "roll": _roll,
    "invert": _invert,
    "label_shift": _label_shift,
}


@dataclass(frozen=True)
class Task:
    """One member of the family: the base task after ``ops`` (applied left to right).

    Parameters
    ----------
    name : str
        Task name (the operation names joined by ``+``; ``"base"`` for no operation).
    ops : tuple of str
        Operation names, keys of :data:`OPERATIONS`.
    held_out : bool
        True for a zero-shot task that no expert is trained on.
    """

    name: str
    ops: tuple[str, ...] = field(default=())
    held_out: bool = False

    def __post_init__(self) -> None:
        for op in self.ops:
            if op not in OPERATIONS:
                raise ValueError(f"ops: unknown operation {op!r}; known: {sorted(OPERATIONS)}")

    def apply(self, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Transform base-task ``images`` (n, 8, 8) in [0, 1] and ``labels`` (n,)."""
        x, y = np.asarray(images, dtype=np.float32), np.asarray(labels, dtype=np.int64)
        if x.ndim != 3 or x.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
            raise ValueError(f"images: expected shape (n, 8, 8), got {x.shape}")
        for op in self.ops:
            x, y = OPERATIONS[op](x, y)
        return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y)


BASE_TASK = Task("base")
HELD_IN = tuple(Task(op, (op,)) for op in OPERATIONS)
# pairs of held-in operations: purely spatial pairs (rot180 = flip_lr then flip_ud), and pairs of
# operations that act on different parts of the network (intensity vs layout vs label)
HELD_OUT_OPS = (
    ("flip_lr", "flip_ud"),
    ("invert", "flip_lr"),
    ("invert", "rot90"),
    ("roll", "flip_ud"),
    ("rot90", "label_shift"),
    ("invert", "label_shift"),
)
HELD_OUT = tuple(Task("+".join(ops), ops, held_out=True) for ops in HELD_OUT_OPS)


def get_task(name: str) -> Task:
    """Return the base, held-in or held-out task called ``name``."""
    for task in (BASE_TASK, *HELD_IN, *HELD_OUT):
        if task.name == name:
            return task
    known = [t.name for t in (BASE_TASK, *HELD_IN, *HELD_OUT)]
    raise ValueError(f"name: unknown task {name!r}; known: {known}")


@dataclass(frozen=True)
class DigitsSplit:
    """Base-task images in [0, 1] and labels, split once into train and test."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_split(test_fraction: float = 0.3, seed: int = 0) -> DigitsSplit:
    """Load the bundled digits and split them (stratified by label, seeded).

    Every task of the family uses the same split, so no test image is ever seen in training
    under any transform.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction: must lie in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for c in range(N_CLASSES):
        idx = np.flatnonzero(y == c)
        n_test = int(round(test_fraction * len(idx)))
        test[rng.choice(idx, size=n_test, replace=False)] = True
    return DigitsSplit(x[~test], y[~test], x[test], y[test])


class DigitsFamily:
    """The digits tasks behind the benchmark's family interface (see :mod:`.tokens`).

    Inputs are (n, 8, 8) images cut into 16 2x2-patch tokens inside the transformer; one label
    per image. The patch embedding is not given LoRA experts: zero patches (the digit's
    background) are constant vectors, and a constant input standardises to zero and ties every
    routing score.
    """

    name = "digits"
    per_token = False
    lora_exclude = ("embed",)

    def __init__(self, seed: int = 0, test_fraction: float = 0.3) -> None:
        self.seed = int(seed)
        self.split = load_split(test_fraction, seed)

    @property
    def held_in_tasks(self) -> tuple[Task, ...]:
        return HELD_IN

    @property
    def held_out_tasks(self) -> tuple[Task, ...]:
        return HELD_OUT

    def to_dict(self) -> dict:
        return {"family": "digits", "seed": self.seed, "held_in": [t.ops for t in HELD_IN],
                "held_out": [t.ops for t in HELD_OUT]}

    def task_data(self, task: Task, split: str) -> dict[str, np.ndarray]:
        """``x`` (n, 8, 8) float32 and ``y`` (n,) of ``task`` on the train or test split."""
        if split not in ("train", "test"):
            raise ValueError(f"split: must be 'train' or 'test', got {split!r}")
        x, y = (self.split.x_train, self.split.y_train) if split == "train" else \
            (self.split.x_test, self.split.y_test)
        x, y = task.apply(x, y)
        return {"x": x, "y": y}

    def base_data(self) -> dict[str, np.ndarray]:
        """The base model's task: plain digit recognition on the training split."""
        return self.task_data(BASE_TASK, "train")

    def raw_embedding(self, x: np.ndarray) -> np.ndarray:
        """Retrieval's query embedding: the raw pixels."""
        return np.asarray(x, dtype=np.float64).reshape(len(x), -1)

    def transformer_config(self, width: int, depth: int, heads: int, mlp_ratio: int):
        from simstudy.neural.transformer import TransformerConfig

        return TransformerConfig(width=width, depth=depth, heads=heads, mlp_ratio=mlp_ratio,
                                 n_outputs=N_CLASSES, n_tokens=(IMAGE_SIDE // 2) ** 2,
                                 patch_dim=4, pool="mean", output="pooled")

    def prepare_input(self, x):
        """Images (n, 8, 8) -> patch vectors (n, 16, 4), as the transformer reads them."""
        import torch

        from simstudy.neural.transformer import patchify

        return patchify(torch.as_tensor(x), 2)
