"""The engine's failures, each with the one line a user reads and an exit status.

Exit statuses follow one rule: **2** when the user can fix it by changing the command or the
spec (an invalid spec, a store that no longer matches its spec, mixed provenance, an option that
does not fit the filesystem), **1** when the environment failed (disk full, read-only storage,
a corrupt store, a worker killed, no cluster workers, out of memory, a store locked by another
run). :func:`describe` turns any exception into that line and status; the CLI prints it and
never a traceback (``SIMSTUDY_TRACEBACK=1`` shows one for unexpected errors).
"""

from __future__ import annotations

import errno
import os
import sqlite3

__all__ = [
    "EXIT_USER",
    "EXIT_ENVIRONMENT",
    "EngineError",
    "StorageError",
    "StoreCorruptError",
    "StoreLockedError",
    "LockUnsupportedError",
    "WorkerLostError",
    "ClusterError",
    "storage_error",
    "describe",
]

EXIT_USER = 2
EXIT_ENVIRONMENT = 1


class EngineError(Exception):
    """A failure of the environment, reported in one line (exit status ``exit_code``)."""

    exit_code = EXIT_ENVIRONMENT


class StorageError(EngineError):
    """The store or an output file cannot be written or read (disk full, read-only, ...)."""


class StoreCorruptError(EngineError):
    """The store file fails SQLite's quick_check or a row fails its checksum."""


class StoreLockedError(EngineError):
    """Another run holds the store's lock."""


class LockUnsupportedError(EngineError):
    """The store's filesystem cannot lock files (e.g. NFS without a lock daemon)."""


class WorkerLostError(EngineError):
    """A worker process died (killed, out of memory); finished tasks are kept."""


class ClusterError(EngineError):
    """The dask scheduler cannot be reached or has no workers in time."""


_ENOSPC = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _os_reason(exc: OSError) -> str:
    code = exc.errno
    if code in _ENOSPC:
        return "the disk is full (no space left on the device)"
    if code == errno.EROFS:
        return "the filesystem is read-only"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if code == errno.ENAMETOOLONG:
        return "the file name is too long for the filesystem"
    if code == errno.EISDIR:
        return "it is a folder, not a file"
    if code == errno.ENOENT:
        return "no such file or folder"
    return exc.strerror or str(exc)


def _sqlite_reason(exc: sqlite3.Error) -> tuple[str, type[EngineError]]:
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc)
    if name.startswith("SQLITE_FULL") or "disk is full" in text:
        return "the disk is full (no space left on the device)", StorageError
    if name.startswith("SQLITE_READONLY") or "readonly" in text:
        return "the store cannot be written (read-only storage or file)", StorageError
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in text \
            or "not a database" in text:
        return f"the file is corrupt ({text})", StoreCorruptError
    if name.startswith("SQLITE_NOMEM"):
        return "out of memory", StorageError
    if name.startswith("SQLITE_CANTOPEN") or "unable to open" in text:
        return "the file cannot be opened (missing folder, permissions or read-only storage)", \
            StorageError
    if name.startswith("SQLITE_BUSY") or "database is locked" in text:
        return "another program holds a write lock on the store (a DB browser, a notebook?)", \
            StorageError
    if name.startswith("SQLITE_IOERR") or "disk I/O error" in text:
        return f"disk I/O error ({text})", StorageError
    return text, StorageError


def storage_error(exc: BaseException, path, doing: str, hint: str = "") -> EngineError:
    """A one-line :class:`EngineError` for an OSError or sqlite3.Error while ``doing`` ``path``.

    ``hint`` (what to do next, e.g. "rerun to resume") is appended.
    """
    if isinstance(exc, sqlite3.Error):
        reason, cls = _sqlite_reason(exc)
    elif isinstance(exc, OSError):
        reason, cls = _os_reason(exc), StorageError
        if exc.filename and str(exc.filename) != str(path):
            reason += f" ({exc.filename})"
    else:
        reason, cls = str(exc), StorageError
    return cls(f"{doing} {path}: {reason}" + (f"; {hint}" if hint else ""))


def describe(exc: BaseException) -> tuple[str, int]:
    """The one line and exit status for any exception raised by a command."""
    from simstudy.engine.spec import SpecError
    from simstudy.engine.store import StoreMismatchError

    if isinstance(exc, EngineError):
        return str(exc), exc.exit_code
    if isinstance(exc, SpecError | StoreMismatchError | ValueError):
        return str(exc), EXIT_USER
    if isinstance(exc, MemoryError):
        return ("out of memory (" + (str(exc) or "MemoryError") + "); use fewer --jobs, smaller "
                "sample sizes or a machine with more memory"), EXIT_ENVIRONMENT
    if isinstance(exc, sqlite3.Error):
        return storage_error(exc, "the store", "using").args[0], EXIT_ENVIRONMENT
    if isinstance(exc, OSError):
        where = f" {exc.filename}" if exc.filename else ""
        return f"cannot use{where}: {_os_reason(exc)}", EXIT_ENVIRONMENT
    return (f"internal error: {type(exc).__name__}: {exc} (set SIMSTUDY_TRACEBACK=1 to see "
            "where; please report it)"), EXIT_ENVIRONMENT


def want_traceback() -> bool:
    """Whether the user asked for tracebacks of unexpected errors."""
    return os.environ.get("SIMSTUDY_TRACEBACK", "") not in ("", "0")
