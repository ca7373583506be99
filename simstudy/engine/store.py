"""The results store: one SQLite file per study (``<store dir>/<study>.sqlite``).

Tables
------
``meta(key, value)``
    study name, spec_hash of the spec that last ran, its canonical content (JSON), schema
    version, creation and update times.
``specs(spec_hash, content_json, first_run)``
    every version of the spec that ran on this store (a grown study has several).
``conditions(condition_id, label, protocol, design, true_K, n, n_experts, n_selected, init,
content_json)``
    one row per condition of the spec; the content is what the condition id hashes. Labels are
    metadata: a renamed label is updated in place. (SQLite names are case-insensitive, so
    the fitted k and K are stored as n_experts and n_selected.)
``provenance(provenance_id, compute_key, record_json)``
    who computed the rows (:mod:`simstudy.engine.provenance`): task function, code hash,
    versions, host.
``tasks(condition_id, rep, spec_hash, n, status, message, stop_reason, n_iter, seconds, loglik,
grad_norm, flag_var_floor, flag_empty_expert, flag_non_finite, params_json, metrics_json,
created, provenance_id, checksum)``
    one row per finished task, primary key (condition_id, rep); committed as soon as the parent
    receives it, so a killed run loses only tasks in flight. ``metrics_json`` holds whatever
    scalars the task returns (new metrics need no schema change); ``checksum`` is a sha256 of
    every other column, checked whenever the row is read.

Trust: opening a store runs SQLite's ``quick_check``; every row read is checked against its
checksum (and for a well-formed result). A store that fails either is refused with
:class:`~simstudy.engine.errors.StoreCorruptError`, naming the file.

Resume rule: a store can be continued by a spec when every condition already in the store is a
condition of the spec and every stored replication index is < the spec's replications. Adding
sample sizes, fits, protocols or replications is therefore allowed (only the new tasks run); any
change that alters or drops existing conditions (design, seeds, fit settings, protocols, [em]
overrides, removing n values or replications) is refused with :class:`StoreMismatchError`
unless the run starts a new store (``force_new``): the old content is first copied with
SQLite's online backup API to ``<study>.<time>.old.sqlite`` (never overwriting a backup) and
the copy's row count checked, and only then is the store emptied in place.

Journal modes: WAL (the default for a new store) lets readers work while a run writes; it needs
shared memory between processes on one host, which network filesystems (NFS, Lustre, GPFS, SMB)
do not provide, so a store there is refused in WAL mode with a message to use
``journal_mode="delete"``. Stores opened read-only (status, export, list, replay, report) work on
read-only storage too (see :meth:`ResultStore.__init__`).
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import json
import math
import os
import shutil
import socket
import sqlite3
import tempfile
import time
from collections import Counter
from pathlib import Path

from simstudy.engine.errors import (
    EXIT_USER,
    LockUnsupportedError,
    StorageError,
    StoreCorruptError,
    StoreLockedError,
    storage_error,
)

__all__ = ["ResultStore", "StoreMismatchError", "ProvenanceMismatchError", "StoreLock",
           "store_path", "default_store_dir", "DEFAULT_STORE_DIR", "TASK_COLUMNS",
           "JOURNAL_MODES", "NETWORK_FILESYSTEMS", "filesystem_type"]

DEFAULT_STORE_DIR = Path("results") / "store"
SCHEMA_VERSION = "2"
JOURNAL_MODES = ("wal", "delete")
#: filesystems where SQLite's WAL mode is unsafe (no shared memory across hosts)
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs",
                       "ceph", "glusterfs", "fuse.glusterfs", "fuse.sshfs", "9p", "afs",
                       "panfs", "fuse.s3fs", "fuse.gcsfuse")
_STATUSES = ("ok", "not_converged", "degenerate", "error", "timeout")

# result columns of the tasks table, in order (after condition_id, rep; before checksum)
TASK_COLUMNS = (
    "spec_hash", "n", "status", "message", "stop_reason", "n_iter", "seconds", "loglik",
    "grad_norm", "flag_var_floor", "flag_empty_expert", "flag_non_finite", "params_json",
    "metrics_json", "created", "provenance_id",
)
_ROW_COLUMNS = ("condition_id", "rep", *TASK_COLUMNS)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS specs (spec_hash TEXT PRIMARY KEY, content_json TEXT NOT NULL,
    first_run TEXT);
CREATE TABLE IF NOT EXISTS conditions (
    condition_id TEXT PRIMARY KEY, label TEXT, protocol TEXT, design TEXT, true_K INTEGER,
    n INTEGER, n_experts INTEGER, n_selected INTEGER, init TEXT, content_json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS provenance (provenance_id TEXT PRIMARY KEY,
    compute_key TEXT NOT NULL, record_json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    condition_id TEXT NOT NULL, rep INTEGER NOT NULL, spec_hash TEXT, n INTEGER, status TEXT,
    message TEXT, stop_reason TEXT, n_iter INTEGER, seconds REAL, loglik REAL, grad_norm REAL,
    flag_var_floor INTEGER, flag_empty_expert INTEGER, flag_non_finite INTEGER,
    params_json TEXT, metrics_json TEXT, created TEXT, provenance_id TEXT, checksum TEXT,
    PRIMARY KEY (condition_id, rep));
"""

_CORRUPT_HINT = ("its rows cannot be trusted: restore a copy (backups made by --force-new are "
                 "<study>.<time>.old.sqlite beside it) or move it away to start a new store")


class StoreMismatchError(ValueError):
    """The store holds results of conditions that the spec no longer describes."""

    exit_code = EXIT_USER


class ProvenanceMismatchError(StoreMismatchError):
    """The store holds rows computed by other code or libraries than this run's."""


def store_path(study: str, store_dir=None) -> Path:
    """Path of a study's store: ``<store_dir>/<study>.sqlite`` (default ``results/store``)."""
    return Path(DEFAULT_STORE_DIR if store_dir is None else store_dir) / f"{study}.sqlite"


def default_store_dir(spec_path) -> Path:
    """Where a study's store lives when no folder is given.

    ``$SIMSTUDY_STORE_DIR`` when set; else ``results/store`` of the project the spec belongs
    to: beside the spec's folder when that folder is called ``studies``
    (``proj/studies/x.toml`` -> ``proj/results/store``), else inside the spec's folder. So every
    command finds the same store from any working directory.
    """
    env = os.environ.get("SIMSTUDY_STORE_DIR")
    if env:
        return Path(env)
    folder = Path(spec_path).resolve().parent
    root = folder.parent if folder.name == "studies" else folder
    return root / DEFAULT_STORE_DIR


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")


def _real(value):
    # SQLite turns NaN into NULL anyway; be explicit
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _checksum(row: tuple) -> str:
    """sha256 of a task row's columns (``_ROW_COLUMNS`` order), 32 hex digits."""
    payload = json.dumps(list(row), separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def filesystem_type(path) -> str | None:
    """The filesystem type of the mount holding ``path`` (Linux ``/proc/self/mounts``)."""
    try:
        with open("/proc/self/mounts") as fh:
            mounts = [line.split()[:3] for line in fh]
    except OSError:
        return None
    target = str(Path(path).resolve())
    best, kind = "", None
    for entry in mounts:
        if len(entry) < 3:
            continue
        point = entry[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, entry[2]
    return kind


def _existing_parent(path: Path) -> Path:
    p = path.resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


class StoreLock:
    """An exclusive advisory lock (``<store>.lock``) so that two runs never share a store.

    The lock file records who holds it (pid, host, start time), so a refused run can say so.
    ``flock`` is released by the kernel when the holder dies, so a killed run never leaves a
    stale lock.
    """

    def __init__(self, store: Path):
        self.path = Path(str(store) + ".lock")
        self._fh = None

    def acquire(self) -> StoreLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(self.path, "a+")  # noqa: SIM115 - held until release()
        except OSError as exc:
            raise storage_error(exc, self.path, "cannot create the store's lock file") from None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no locking
            self._fh = fh
            return self
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = self._holder(fh)
            fh.close()
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                raise StoreLockedError(
                    f"store {str(self.path)[:-5]} is locked by another run{holder}; wait for it "
                    "to finish or stop it (its finished tasks are kept)") from None
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL,
                             getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)):
                raise LockUnsupportedError(
                    f"the filesystem of {self.path.parent} cannot lock files "
                    f"({errno.errorcode.get(exc.errno, exc.errno)}: {exc.strerror}); this is "
                    "not another run: put the store on a local disk with --store-dir (on a "
                    "network filesystem also use --journal-mode delete)") from None
            raise storage_error(exc, self.path, "cannot lock") from None
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": _now()[:19]}))
            fh.flush()
        except OSError:
            pass  # the holder note is a courtesy; the lock is what matters
        self._fh = fh
        return self

    @staticmethod
    def _holder(fh) -> str:
        try:
            fh.seek(0)
            info = json.loads(fh.read() or "{}")
            return f" (pid {info['pid']} on {info['host']} since {info['since']} UTC)"
        except (OSError, ValueError, KeyError, TypeError):
            return ""

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing the file releases the lock
            self._fh = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


class ResultStore:
    """A study's SQLite store.

    Parameters
    ----------
    path : path-like
        The database file; parent folders are created (writer only).
    readonly : bool
        Open an existing store without writing anything (status, export, list, replay,
        report). This works on read-only storage: if SQLite cannot open the store read-only
        there (a WAL store needs a writable ``-shm`` file), an unmerged write-ahead log is read
        from a private copy and a merged store is opened ``immutable``.
    journal_mode : {"wal", "delete"}, optional
        Writer only. Default: keep the store's mode (WAL for a new store). ``"delete"`` is
        the mode for network filesystems.

    Raises
    ------
    FileNotFoundError
        ``readonly`` and no store at ``path``.
    StoreCorruptError, StorageError, StoreMismatchError
    """

    def __init__(self, path, readonly: bool = False, journal_mode: str | None = None):
        self.path = Path(path)
        self.readonly = readonly
        self._tmp = None
        if journal_mode is not None and journal_mode not in JOURNAL_MODES:
            raise ValueError(f"journal_mode: expected one of {', '.join(JOURNAL_MODES)}, got "
                             f"{journal_mode!r}")
        if readonly:
            if not self.path.is_file():
                raise FileNotFoundError(f"no results store at {self.path}")
            self.conn = self._connect_readonly()
        else:
            self.conn = self._connect_writer(journal_mode)
        try:
            self._quick_check()
            if not readonly:
                self._create_or_migrate()
        except BaseException:
            self.close()
            raise

    # -- opening -------------------------------------------------------------------------------
    def _fail(self, exc, doing: str, hint: str = ""):
        err = storage_error(exc, self.path, doing, hint)
        if isinstance(err, StoreCorruptError):
            return StoreCorruptError(f"store {self.path} is corrupt ({exc}); {_CORRUPT_HINT}")
        return err

    def _connect_readonly(self) -> sqlite3.Connection:
        uri = self.path.resolve().as_uri()
        try:
            conn = sqlite3.connect(f"{uri}?mode=ro", uri=True)
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.DatabaseError as exc:
            name = getattr(exc, "sqlite_errorname", "")
            if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "not a database" in \
                    str(exc) or "malformed" in str(exc):
                raise self._fail(exc, "cannot read") from None
            with_wal = Path(f"{self.path}-wal")
        # read-only storage: WAL readers need to create the -shm file, which fails there
        try:
            if with_wal.is_file() and with_wal.stat().st_size > 0:
                # the log holds committed rows not yet merged: read them from a private copy
                self._tmp = tempfile.TemporaryDirectory(prefix="simstudy-readonly-")
                copy = Path(self._tmp.name) / self.path.name
                shutil.copyfile(self.path, copy)
                shutil.copyfile(with_wal, Path(f"{copy}-wal"))
                conn = sqlite3.connect(copy)
            else:
                conn = sqlite3.connect(f"{uri}?immutable=1", uri=True)
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return conn
        except (sqlite3.Error, OSError) as exc:
            raise self._fail(exc, "cannot read") from None

    def _connect_writer(self, journal_mode: str | None) -> sqlite3.Connection:
        existed = self.path.is_file() and self.path.stat().st_size > 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=10)
            current = conn.execute("PRAGMA journal_mode").fetchone()[0].lower()
        except (sqlite3.Error, OSError) as exc:
            raise self._fail(exc, "cannot open the store") from None
        want = journal_mode or (current if existed and current in JOURNAL_MODES else "wal")
        if want == "wal":
            fs = filesystem_type(_existing_parent(self.path.parent))
            if fs in NETWORK_FILESYSTEMS:
                conn.close()
                err = StorageError(
                    f"store {self.path} is on a {fs} filesystem, where SQLite's WAL journal "
                    "is unsafe (it needs memory shared by the readers and the writer); rerun "
                    "with --journal-mode delete, or use --store-dir on a local disk")
                err.exit_code = EXIT_USER
                raise err
        try:
            if want != current:
                got = conn.execute(f"PRAGMA journal_mode={want}").fetchone()[0].lower()
                if got != want:
                    conn.close()
                    raise StorageError(
                        f"store {self.path}: SQLite cannot use journal mode {want} here (it "
                        f"kept {got}); another program may have the store open, or the "
                        "filesystem cannot do it (try --journal-mode delete)")
            # every task is its own commit; NORMAL keeps WAL durable across process kills
            conn.execute("PRAGMA synchronous=NORMAL" if want == "wal" else
                         "PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            conn.close()
            raise self._fail(exc, "cannot open the store") from None
        self.journal_mode = want
        return conn

    def _quick_check(self) -> None:
        try:
            rows = self.conn.execute("PRAGMA quick_check").fetchall()
        except sqlite3.DatabaseError as exc:
            raise self._fail(exc, "cannot check") from None
        if [r[0] for r in rows] != ["ok"]:
            lines = [ln.strip() for r in rows for ln in str(r[0]).splitlines()
                     if ln.strip() and not ln.startswith("***")] or ["no answer"]
            more = f" and {len(lines) - 1} more problem(s)" if len(lines) > 1 else ""
            raise StoreCorruptError(f"store {self.path} is corrupt (SQLite quick_check: "
                                    f"{lines[0]}{more}); {_CORRUPT_HINT}")

    def _create_or_migrate(self) -> None:
        try:
            with self.conn:
                self.conn.executescript(_SCHEMA)
                cols = {r[1] for r in self.conn.execute("PRAGMA table_info(tasks)")}
                for col in ("provenance_id", "checksum"):
                    if col not in cols:  # a schema-1 store: its rows have neither
                        self.conn.execute(f"ALTER TABLE tasks ADD COLUMN {col} TEXT")
                meta = self.meta()
                if meta.get("spec_hash") and meta.get("spec_json"):
                    self.conn.execute("INSERT OR IGNORE INTO specs VALUES (?, ?, ?)",
                                      (meta["spec_hash"], meta["spec_json"],
                                       meta.get("updated")))
        except sqlite3.Error as exc:
            raise self._fail(exc, "cannot set up the store") from None

    # -- context manager -----------------------------------------------------------------------
    def close(self) -> None:
        conn = getattr(self, "conn", None)
        if conn is not None:
            conn.close()
            self.conn = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        try:
            return self.conn.execute(sql, args).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc) or "no such column" in str(exc):
                return []  # an older or empty store
            raise self._fail(exc, "cannot read") from None
        except sqlite3.DatabaseError as exc:
            raise self._fail(exc, "cannot read") from None

    def _columns(self, prefix: str = "") -> str:
        """The select list of a task row plus its checksum; NULL for the columns that a store
        of schema 1 (opened read-only, so not migrated) does not have."""
        have = {r[1] for r in self._query("PRAGMA table_info(tasks)")}
        return ", ".join(f"{prefix}{c}" if c in have else f"NULL AS {c}"
                         for c in (*_ROW_COLUMNS, "checksum"))

    def _commit(self, statements, doing: str, hint: str = "") -> None:
        """Run ``(sql, args)`` pairs in one transaction; failures become one-line errors."""
        try:
            with self.conn:
                for sql, args in statements:
                    if isinstance(args, list):
                        self.conn.executemany(sql, args)
                    else:
                        self.conn.execute(sql, args)
        except sqlite3.Error as exc:
            raise self._fail(exc, doing, hint) from None

    # -- meta, specs and conditions ------------------------------------------------------------
    def meta(self) -> dict[str, str]:
        return dict(self._query("SELECT key, value FROM meta"))

    def spec_hashes(self) -> set[str]:
        """Hashes of every spec version that ran on this store."""
        hashes = {h for (h,) in self._query("SELECT spec_hash FROM specs")}
        meta = self.meta()
        return hashes | ({meta["spec_hash"]} if meta.get("spec_hash") else set())

    def stored_conditions(self) -> dict[str, dict]:
        """condition_id -> its stored row (as a dict)."""
        try:
            cur = self.conn.execute("SELECT * FROM conditions")
            cols = [c[0] for c in cur.description]
            return {row[0]: dict(zip(cols, row, strict=True)) for row in cur.fetchall()}
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return {}
            raise self._fail(exc, "cannot read") from None

    def mismatch(self, spec) -> list[str]:
        """Why ``spec`` cannot continue this store (empty: it can)."""
        meta = self.meta()
        if meta.get("study") not in (None, spec.name):
            return [f"the store belongs to study {meta['study']!r}, not {spec.name!r}"]
        wanted = spec.condition_ids()
        stored = self._query("SELECT condition_id, COUNT(*), MAX(rep) FROM tasks "
                             "GROUP BY condition_id")
        stale = [cid for cid, _, _ in stored if cid not in wanted]
        problems = []
        if stale:
            labels = self.stored_conditions()
            names = sorted({f"{labels.get(c, {}).get('label', '?')}"
                            f"/{labels.get(c, {}).get('protocol', '?')}"
                            f"/n={labels.get(c, {}).get('n', '?')}" for c in stale})
            rows = sum(count for cid, count, _ in stored if cid not in wanted)
            shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
            problems.append(f"{rows} stored row(s) of {len(stale)} condition(s) are not in the "
                            f"spec any more ({shown})")
        max_rep = max((m for _, _, m in stored), default=None)
        if max_rep is not None and max_rep >= spec.replications:
            problems.append(f"the store has replication {max_rep} but the spec asks for "
                            f"{spec.replications}")
        return problems

    def check_compatible(self, spec) -> None:
        """Raise :class:`StoreMismatchError` if the store cannot be resumed by ``spec``."""
        problems = self.mismatch(spec)
        if problems:
            raise StoreMismatchError(
                f"the spec {spec.path} changed in a way that alters results already in "
                f"{self.path} (stored spec_hash {self.meta().get('spec_hash', '?')}, now "
                f"{spec.spec_hash}): " + "; ".join(problems)
                + ". Rerun with --force-new to start a new store (the old one is kept as a "
                "backup), or restore the spec.")

    def register(self, spec) -> None:
        """Record the spec (meta, spec history) and its conditions; labels are updated."""
        now = _now()
        meta = self.meta()
        content = json.dumps(spec.content(), sort_keys=True)
        rows = {
            "study": spec.name,
            "spec_hash": spec.spec_hash,
            "spec_json": content,
            "spec_path": str(spec.path),
            "schema_version": SCHEMA_VERSION,
            "created": meta.get("created", now),
            "updated": now,
        }
        self._commit([
            ("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(rows.items())),
            ("INSERT OR IGNORE INTO specs VALUES (?, ?, ?)", (spec.spec_hash, content, now)),
            ("INSERT OR REPLACE INTO conditions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
             [(c.condition_id, c.label, c.protocol, c.design_name, c.true_K, c.n, c.k, c.K,
               c.init, json.dumps(c.content, sort_keys=True)) for c in spec.conditions()]),
        ], "cannot write to the store")

    # -- provenance ----------------------------------------------------------------------------
    def add_provenance(self, record: dict) -> str:
        """Store a provenance record (once) and return its id."""
        from simstudy.engine.provenance import compute_key, record_id

        pid = record_id(record)
        self._commit([("INSERT OR IGNORE INTO provenance VALUES (?, ?, ?)",
                       (pid, compute_key(record), json.dumps(record, sort_keys=True)))],
                     "cannot write to the store")
        return pid

    def provenance_records(self) -> dict[str, dict]:
        """provenance_id -> record."""
        return {pid: json.loads(text) for pid, text in
                self._query("SELECT provenance_id, record_json FROM provenance")}

    def compute_keys(self) -> Counter:
        """Rows per compute key (None: rows stored without provenance)."""
        return Counter({key: count for key, count in self._query(
            "SELECT p.compute_key, COUNT(*) FROM tasks t LEFT JOIN provenance p "
            "USING (provenance_id) GROUP BY p.compute_key")})

    def provenance_summary(self) -> list[tuple[dict | None, int]]:
        """(record, rows) per provenance record, most rows first (None: unrecorded)."""
        records = self.provenance_records()
        if "provenance_id" not in {r[1] for r in self._query("PRAGMA table_info(tasks)")}:
            total = self.row_count()
            return [(None, total)] if total else []
        counts = self._query("SELECT provenance_id, COUNT(*) FROM tasks GROUP BY provenance_id")
        out = [(records.get(pid) if pid else None, count) for pid, count in counts]
        return sorted(out, key=lambda item: -item[1])

    # -- tasks ---------------------------------------------------------------------------------
    def done_keys(self, statuses=None) -> set[tuple[str, int]]:
        """(condition_id, rep) of stored tasks, optionally only those with given statuses."""
        sql = "SELECT condition_id, rep FROM tasks"
        args: tuple = ()
        if statuses is not None:
            statuses = tuple(statuses)
            sql += f" WHERE status IN ({', '.join('?' * len(statuses))})"
            args = statuses
        return {(c, int(r)) for c, r in self._query(sql, args)}

    def delete(self, keys) -> None:
        self._commit([("DELETE FROM tasks WHERE condition_id = ? AND rep = ?", list(keys))],
                     "cannot write to the store")

    def write(self, condition_id: str, rep: int, spec_hash: str, n: int, result: dict,
              provenance_id: str | None = None) -> None:
        """Insert one finished task (with its checksum) and commit at once."""
        flags = result.get("flags") or {}
        row = (
            condition_id, int(rep), spec_hash, int(n), result["status"],
            result.get("message") or "", result.get("stop_reason"),
            None if result.get("n_iter") is None else int(result["n_iter"]),
            _real(result.get("seconds")), _real(result.get("loglik")),
            _real(result.get("grad_norm")),
            int(bool(flags.get("var_floor", False))), int(bool(flags.get("empty_expert", False))),
            int(bool(flags.get("non_finite", False))),
            result.get("params_json"), json.dumps(result.get("metrics") or {}), _now(),
            provenance_id,
        )
        cols = ", ".join((*_ROW_COLUMNS, "checksum"))
        self._commit([(f"INSERT OR REPLACE INTO tasks ({cols}) VALUES "
                       f"({', '.join('?' * (len(row) + 1))})", (*row, _checksum(row)))],
                     "cannot write a result to the store")

    def _verify(self, row: tuple, checksum) -> None:
        """Refuse a row that fails its checksum or is not a well-formed result."""
        d = dict(zip(_ROW_COLUMNS, row, strict=True))
        where = f"row (condition {d['condition_id']}, rep {d['rep']})"
        problem = None
        if checksum is not None and checksum != _checksum(row):
            problem = "fails its checksum"
        elif d["status"] not in _STATUSES:
            problem = f"has an unknown status {d['status']!r}"
        else:
            try:
                metrics = json.loads(d["metrics_json"] or "{}")
                params = None if d["params_json"] is None else json.loads(d["params_json"])
                if not isinstance(metrics, dict) or not (params is None
                                                         or isinstance(params, dict)):
                    raise ValueError("not a JSON object")
            except ValueError:
                problem = "holds unreadable JSON"
        if problem:
            raise StoreCorruptError(f"store {self.path} is corrupt: {where} {problem}; "
                                    f"{_CORRUPT_HINT}")

    def verify(self) -> int:
        """Check every row; return the number of rows (raises StoreCorruptError)."""
        rows = self._query(f"SELECT {self._columns()} FROM tasks")
        for row in rows:
            self._verify(row[:-1], row[-1])
        return len(rows)

    def task_rows(self, where: str | None = None, args: tuple = ()) -> list[dict]:
        """Stored tasks joined with their condition and provenance, as dicts (verified).

        ``metrics`` (parsed) and ``provenance`` (the record, or None) replace their JSON.
        """
        records = self.provenance_records()
        rows = self._query(
            f"SELECT {self._columns('t.')}, c.label, c.protocol, c.design, c.true_K, "
            "c.n_experts, c.n_selected, c.init FROM tasks t LEFT JOIN conditions c "
            "USING (condition_id) " + (f"WHERE {where} " if where else "")
            + "ORDER BY c.label, c.protocol, t.n, t.rep", args)
        out = []
        width = len(_ROW_COLUMNS)
        for row in rows:
            self._verify(row[:width], row[width])
            d = dict(zip(_ROW_COLUMNS, row[:width], strict=True))
            d.update(zip(("label", "protocol", "design", "true_K", "k", "K", "init"),
                         row[width + 1:], strict=True))
            d["metrics"] = json.loads(d.pop("metrics_json") or "{}")
            d["provenance"] = records.get(d["provenance_id"])
            out.append(d)
        return out

    def get_task(self, condition_id: str, rep: int) -> dict | None:
        """One stored task (as in :meth:`task_rows`) or None."""
        rows = self.task_rows("t.condition_id = ? AND t.rep = ?", (condition_id, int(rep)))
        return rows[0] if rows else None

    def counts(self, max_rep: int | None = None) -> dict[str, dict[str, int]]:
        """condition_id -> {status: count}, over replications < ``max_rep`` if given."""
        sql = "SELECT condition_id, status, COUNT(*) FROM tasks"
        args: tuple = ()
        if max_rep is not None:
            sql += " WHERE rep < ?"
            args = (int(max_rep),)
        out: dict[str, dict[str, int]] = {}
        for cid, status, count in self._query(sql + " GROUP BY condition_id, status", args):
            out.setdefault(cid, {})[status] = count
        return out

    def row_count(self) -> int:
        return self._query("SELECT COUNT(*) FROM tasks")[0][0]

    # -- starting over -------------------------------------------------------------------------
    def backup_and_reset(self) -> Path:
        """Copy the store to a new ``<study>.<time>.old.sqlite``, check it, then empty the store.

        The copy uses SQLite's online backup API (a consistent snapshot, the write-ahead log
        included, even while other programs have the store open); a backup file is never
        overwritten. Nothing is removed unless the copy holds every row.
        """
        stamp = time.strftime("%Y%m%d-%H%M%S")
        stem = self.path.name[: -len(".sqlite")] if self.path.name.endswith(".sqlite") \
            else self.path.name
        for i in range(1, 10_000):
            dest = self.path.with_name(f"{stem}.{stamp}{'' if i == 1 else f'-{i}'}.old.sqlite")
            try:
                os.close(os.open(dest, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                break
            except FileExistsError:
                continue
            except OSError as exc:
                raise storage_error(exc, dest, "cannot create the backup",
                                    "nothing was removed") from None
        rows = self.row_count()
        try:
            target = sqlite3.connect(dest)
            try:
                self.conn.backup(target)
            finally:
                target.close()
            with ResultStore(dest, readonly=True) as copy:
                copied = copy.verify()
        except (sqlite3.Error, OSError, StorageError) as exc:
            raise StorageError(f"backup of {self.path} to {dest} failed ({exc}); nothing was "
                               "removed") from None
        if copied != rows:
            raise StorageError(f"backup {dest} holds {copied} rows but {self.path} holds {rows};"
                               " nothing was removed")
        self._commit([(f"DELETE FROM {table}", ()) for table in
                      ("tasks", "conditions", "provenance", "specs", "meta")],
                     "cannot empty the store", f"its backup is {dest}")
        return dest
