"""Small helpers shared by the neural benchmarks: threads, seeding, tables and JSON I/O."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np

__all__ = [
    "set_threads",
    "seed_everything",
    "write_table",
    "read_json",
    "write_json",
    "load_tensors",
    "CacheRefused",
]


def set_threads(n: int = 1) -> None:
    """Limit torch's intra-op threads (the machines are shared; the spec asks for <= 2)."""
    import torch

    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"threads: must be an integer >= 1, got {n!r}")
    torch.set_num_threads(int(n))


def seed_everything(seed: int) -> np.random.Generator:
    """Seed python, numpy and torch; return a numpy Generator for explicit use."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 -- legacy global state, seeded for libraries
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def write_table(df, path_stem: Path, digits: int = 3) -> tuple[Path, Path]:
    """Write a pandas DataFrame as ``<stem>.csv`` and a markdown ``<stem>.md``.

    The markdown goes through the project's one table writer,
    :func:`simstudy.reports.tables.to_markdown`; the CSV keeps full precision.
    """
    from simstudy.reports.tables import to_markdown

    path_stem = Path(path_stem)
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    csv = path_stem.with_suffix(".csv")
    md = path_stem.with_suffix(".md")
    df.to_csv(csv, index=False)
    md.write_text(to_markdown(df, digits))
    return csv, md


class CacheRefused(ValueError):
    """A cache file that is not plain data (it would need pickle to load)."""


def load_tensors(path: Path):
    """Load a torch cache file as data only (``weights_only=True``).

    A file that needs arbitrary unpickling -- one crafted to run code, or written by an old
    version that stored objects -- is refused with :class:`CacheRefused` (a ValueError naming
    the file); nothing in it is executed.
    """
    import pickle

    import torch

    path = Path(path)
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CacheRefused(
            f"{path}: refused to load the cache file: it is not plain tensor data ({first}); "
            "delete it to recompute"
        ) from None


def read_json(path: Path):
    """Load a JSON file, or None when it does not exist."""
    path = Path(path)
    if not path.exists():
        return None
    return json.loads(path.read_text())


def write_json(path: Path, data) -> None:
    """Write JSON atomically (temp file + rename), so an interrupted run leaves no torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)
