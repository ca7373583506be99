"""Provenance of a stored result: which code, libraries and machine computed it.

Each worker process collects its provenance once (:func:`collect`) and returns it with every
result, so the store records what actually ran, also on a cluster. A provenance record has

- ``task``: the task function (``module:qualname``);
- ``code``: a sha256 (16 hex digits) of the source files that compute a result: the model, the
  estimator, the losses, ``engine/task.py`` and ``engine/seeds.py`` (plus the task function's
  own module when it lives elsewhere), and ``simstudy``: the package version;
- ``git``: ``git describe --always --dirty`` of the source tree, where it is a git checkout;
- ``python``, ``numpy``, ``scipy``, ``numba`` and ``blas`` (the BLAS library and version that
  numpy uses, from threadpoolctl);
- ``host``, ``cpu``, ``platform`` and ``blas_arch`` (the BLAS kernel chosen for this CPU).

The *compute key* (:func:`compute_key`) hashes the fields that decide the computed numbers
(:data:`KEY_FIELDS`: task, code, versions). Rows with different keys were computed by different
code or libraries; a run refuses to add rows of another key to a store unless told to
(``--allow-mixed``). Host, CPU and BLAS kernel are recorded but not part of the key: a cluster's
nodes differ there, and the differences they cause are at the level of rounding (about 1e-12
relative), which ``simstudy replay`` tolerates by default.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

__all__ = ["KEY_FIELDS", "collect", "compute_key", "record_id", "code_hash",
           "describe_key_change", "summary_line", "task_name"]

KEY_FIELDS = ("task", "code", "simstudy", "python", "numpy", "scipy", "numba", "blas")
_PACKAGE = Path(__file__).resolve().parents[1]  # simstudy/
# the source that computes a result (relative to the package folder)
_COMPUTE_SOURCES = ("model", "estimation", "losses", "engine/task.py", "engine/seeds.py")


def task_name(task_fn) -> str:
    """``module:qualname`` of a task function."""
    module = getattr(task_fn, "__module__", None) or "?"
    return f"{module}:{getattr(task_fn, '__qualname__', repr(task_fn))}"


def _source_files(extra: Path | None) -> list[Path]:
    files = []
    for rel in _COMPUTE_SOURCES:
        p = _PACKAGE / rel
        files += sorted(p.rglob("*.py")) if p.is_dir() else [p] if p.is_file() else []
    if extra is not None and extra.is_file() and extra not in files:
        files.append(extra)
    return files


@functools.lru_cache(maxsize=16)
def _hash_files(files: tuple[Path, ...]) -> str:
    h = hashlib.sha256()
    for f in files:
        try:
            rel = f.relative_to(_PACKAGE.parent).as_posix()
        except ValueError:
            rel = f.name
        h.update(rel.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def code_hash(task_fn=None) -> str:
    """Hash of the source that computes a result with ``task_fn`` (see the module docstring)."""
    extra = None
    module = sys.modules.get(getattr(task_fn, "__module__", "") or "")
    if module is not None and getattr(module, "__file__", None):
        extra = Path(module.__file__).resolve()
    return _hash_files(tuple(_source_files(extra)))


@functools.lru_cache(maxsize=1)
def _git_describe() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(_PACKAGE), "describe", "--always", "--dirty",
                              "--tags"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    # the installed distribution's version: no import (numba alone takes about a second)
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:  # pragma: no cover - not installed as a distribution
        try:
            return __import__(module).__version__
        except Exception:
            return None


@functools.lru_cache(maxsize=1)
def _machine() -> dict:
    import numpy as np
    from threadpoolctl import threadpool_info

    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": _version("scipy"),
        "numba": _version("numba"),
        "blas": ", ".join(sorted(f"{i.get('internal_api')} {i.get('version')}" for i in blas))
        or None,
        "blas_arch": ", ".join(sorted(str(i.get("architecture")) for i in blas)) or None,
        "host": socket.gethostname(),
        "cpu": _cpu(),
        "platform": platform.platform(),
        "git": _git_describe(),
    }


_CACHE: dict[str, dict] = {}


def collect(task_fn) -> dict:
    """This process's provenance for results of ``task_fn`` (cached per process)."""
    name = task_name(task_fn)
    if name not in _CACHE or _CACHE[name].get("pid") != os.getpid():
        import simstudy

        record = {"task": name, "code": code_hash(task_fn), "simstudy": simstudy.__version__,
                  **_machine()}
        # pid: only to notice a fork; dropped before storing
        _CACHE[name] = {**record, "pid": os.getpid()}
    out = dict(_CACHE[name])
    out.pop("pid")
    return out


def compute_key(record: dict) -> str:
    """Hash of the fields of a provenance record that decide the computed numbers."""
    payload = json.dumps({k: record.get(k) for k in KEY_FIELDS}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def record_id(record: dict) -> str:
    """Hash of the whole record (its row id in the store's provenance table)."""
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def describe_key_change(old: dict | None, new: dict) -> str:
    """'task a -> b, code x -> y' for the key fields that differ (old None: unrecorded)."""
    if old is None:
        return "rows stored before provenance was recorded (unknown code and versions)"
    parts = [f"{k} {old.get(k)} -> {new.get(k)}" for k in KEY_FIELDS if old.get(k) != new.get(k)]
    return ", ".join(parts) or "same key fields"


def summary_line(record: dict | None) -> str:
    """One readable line of a provenance record."""
    if record is None:
        return "unknown (stored before provenance was recorded)"
    git = f" (git {record['git']})" if record.get("git") else ""
    return (f"{record.get('task')}, simstudy {record.get('simstudy')}, code "
            f"{record.get('code')}{git}, python {record.get('python')}, numpy "
            f"{record.get('numpy')}, scipy {record.get('scipy')}, numba {record.get('numba')}, "
            f"BLAS {record.get('blas')}; host {record.get('host')} ({record.get('cpu')})")
