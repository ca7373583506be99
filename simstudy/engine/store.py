"""The results store: one SQLite file per study (``results/store/<study>.sqlite``, WAL mode).

Tables
------
``meta(key, value)``
    study name, spec_hash of the spec that last ran, its canonical content (JSON), schema
    version, creation and update times.
``conditions(condition_id, label, protocol, design, true_K, n, n_experts, n_selected, init,
content_json)``
    one row per condition of the spec; the content is what the condition id hashes. Labels are
    metadata: a renamed label is updated in place. (SQLite names are case-insensitive, so
    the fitted k and K are stored as n_experts and n_selected.)
``tasks(condition_id, rep, spec_hash, n, status, message, stop_reason, n_iter, seconds, loglik,
grad_norm, flag_var_floor, flag_empty_expert, flag_non_finite, params_json, metrics_json,
created)``
    one row per finished task, primary key (condition_id, rep); committed as soon as the parent
    receives it, so a killed run loses only tasks in flight.

Resume rule: a store can be continued by a spec when every condition already in the store is a
condition of the spec and every stored replication index is < the spec's replications. Adding
sample sizes, fits, protocols or replications is therefore allowed (only the new tasks run); any
change that alters or drops existing conditions (design, seeds, fit settings, protocols, [em]
overrides, removing n values or replications) is refused with :class:`StoreMismatchError`
unless the run starts a new store (``force_new``), which keeps the old file renamed.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import sqlite3
from pathlib import Path

__all__ = ["ResultStore", "StoreMismatchError", "store_path", "DEFAULT_STORE_DIR", "TASK_COLUMNS"]

DEFAULT_STORE_DIR = Path("results") / "store"
SCHEMA_VERSION = "1"

# result columns of the tasks table, in order (after condition_id, rep)
TASK_COLUMNS = (
    "spec_hash", "n", "status", "message", "stop_reason", "n_iter", "seconds", "loglik",
    "grad_norm", "flag_var_floor", "flag_empty_expert", "flag_non_finite", "params_json",
    "metrics_json", "created",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS conditions (
    condition_id TEXT PRIMARY KEY, label TEXT, protocol TEXT, design TEXT, true_K INTEGER,
    n INTEGER, n_experts INTEGER, n_selected INTEGER, init TEXT, content_json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    condition_id TEXT NOT NULL, rep INTEGER NOT NULL, spec_hash TEXT, n INTEGER, status TEXT,
    message TEXT, stop_reason TEXT, n_iter INTEGER, seconds REAL, loglik REAL, grad_norm REAL,
    flag_var_floor INTEGER, flag_empty_expert INTEGER, flag_non_finite INTEGER,
    params_json TEXT, metrics_json TEXT, created TEXT,
    PRIMARY KEY (condition_id, rep));
"""


class StoreMismatchError(ValueError):
    """The store holds results of conditions that the spec no longer describes."""


def store_path(study: str, store_dir=None) -> Path:
    """Path of a study's store: ``<store_dir>/<study>.sqlite`` (default ``results/store``)."""
    return Path(DEFAULT_STORE_DIR if store_dir is None else store_dir) / f"{study}.sqlite"


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _real(value):
    # SQLite turns NaN into NULL anyway; be explicit
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class ResultStore:
    """A study's SQLite store.

    Parameters
    ----------
    path : path-like
        The database file; parent folders are created.
    readonly : bool
        Open without creating anything (for status/export of an existing store).
    """

    def __init__(self, path, readonly: bool = False):
        self.path = Path(path)
        if readonly:
            if not self.path.exists():
                raise FileNotFoundError(f"no results store at {self.path}")
            self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path)
            self.conn.execute("PRAGMA journal_mode=WAL")
            # every task is its own commit; NORMAL keeps WAL durable across process kills
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.executescript(_SCHEMA)
            self.conn.commit()

    # -- context manager -----------------------------------------------------------------------
    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- meta and conditions -------------------------------------------------------------------
    def meta(self) -> dict[str, str]:
        try:
            return dict(self.conn.execute("SELECT key, value FROM meta"))
        except sqlite3.OperationalError:
            return {}

    def stored_conditions(self) -> dict[str, dict]:
        """condition_id -> its stored row (as a dict)."""
        try:
            cur = self.conn.execute("SELECT * FROM conditions")
        except sqlite3.OperationalError:
            return {}
        cols = [c[0] for c in cur.description]
        return {row[0]: dict(zip(cols, row, strict=True)) for row in cur}

    def check_compatible(self, spec) -> None:
        """Raise :class:`StoreMismatchError` if the store cannot be resumed by ``spec``."""
        meta = self.meta()
        if meta.get("study") not in (None, spec.name):
            raise StoreMismatchError(
                f"store {self.path} belongs to study {meta['study']!r}, not {spec.name!r}")
        wanted = {c.condition_id for c in spec.conditions()}
        stale = [cid for cid, _ in self.conn.execute(
            "SELECT DISTINCT condition_id, 1 FROM tasks") if cid not in wanted]
        max_rep = self.conn.execute("SELECT MAX(rep) FROM tasks").fetchone()[0]
        problems = []
        if stale:
            labels = self.stored_conditions()
            names = sorted({f"{labels.get(c, {}).get('label', '?')}"
                            f"/{labels.get(c, {}).get('protocol', '?')}"
                            f"/n={labels.get(c, {}).get('n', '?')}" for c in stale})
            shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
            problems.append(f"{len(stale)} stored condition(s) are not in the spec any more "
                            f"({shown})")
        if max_rep is not None and max_rep >= spec.replications:
            problems.append(f"the store has replication {max_rep} but the spec asks for "
                            f"{spec.replications}")
        if problems:
            raise StoreMismatchError(
                f"the spec {spec.path} changed in a way that alters results already in "
                f"{self.path} (stored spec_hash {meta.get('spec_hash', '?')}, now "
                f"{spec.spec_hash}): " + "; ".join(problems)
                + ". Rerun with --force-new to start a new store (the old one is kept renamed), "
                "or restore the spec.")

    def register(self, spec) -> None:
        """Record the spec (meta) and its conditions; labels of known conditions are updated."""
        now = _now()
        meta = self.meta()
        rows = {
            "study": spec.name,
            "spec_hash": spec.spec_hash,
            "spec_json": json.dumps(spec.content(), sort_keys=True),
            "spec_path": str(spec.path),
            "schema_version": SCHEMA_VERSION,
            "created": meta.get("created", now),
            "updated": now,
        }
        with self.conn:
            self.conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", rows.items())
            self.conn.executemany(
                "INSERT OR REPLACE INTO conditions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(c.condition_id, c.label, c.protocol, c.design_name, c.true_K, c.n, c.k, c.K,
                  c.init, json.dumps(c.content, sort_keys=True)) for c in spec.conditions()],
            )

    # -- tasks ---------------------------------------------------------------------------------
    def done_keys(self, statuses=None) -> set[tuple[str, int]]:
        """(condition_id, rep) of stored tasks, optionally only those with given statuses."""
        sql = "SELECT condition_id, rep FROM tasks"
        args: tuple = ()
        if statuses is not None:
            statuses = tuple(statuses)
            sql += f" WHERE status IN ({', '.join('?' * len(statuses))})"
            args = statuses
        return {(c, int(r)) for c, r in self.conn.execute(sql, args)}

    def delete(self, keys) -> None:
        with self.conn:
            self.conn.executemany("DELETE FROM tasks WHERE condition_id = ? AND rep = ?",
                                  list(keys))

    def write(self, condition_id: str, rep: int, spec_hash: str, n: int, result: dict) -> None:
        """Insert one finished task and commit at once."""
        flags = result.get("flags") or {}
        row = (
            condition_id, int(rep), spec_hash, int(n), result["status"],
            result.get("message", ""), result.get("stop_reason"),
            None if result.get("n_iter") is None else int(result["n_iter"]),
            _real(result.get("seconds")), _real(result.get("loglik")),
            _real(result.get("grad_norm")),
            int(bool(flags.get("var_floor", False))), int(bool(flags.get("empty_expert", False))),
            int(bool(flags.get("non_finite", False))),
            result.get("params_json"), json.dumps(result.get("metrics") or {}), _now(),
        )
        with self.conn:
            self.conn.execute(
                f"INSERT OR REPLACE INTO tasks VALUES ({', '.join('?' * (len(TASK_COLUMNS) + 2))})",
                row,
            )

    def task_rows(self, where: str | None = None, args: tuple = ()) -> list[dict]:
        """Stored tasks joined with their condition, as dicts (metrics parsed)."""
        cur = self.conn.execute(
            "SELECT t.condition_id, t.rep, c.label, c.protocol, c.design, c.true_K, "
            "c.n_experts AS k, c.n_selected AS K, c.init, "
            + ", ".join(f"t.{c}" for c in TASK_COLUMNS)
            + " FROM tasks t LEFT JOIN conditions c USING (condition_id) "
            + (f"WHERE {where} " if where else "")
            + "ORDER BY c.label, c.protocol, t.n, t.rep", args)
        cols = [c[0] for c in cur.description]
        out = []
        for row in cur:
            d = dict(zip(cols, row, strict=True))
            d["metrics"] = json.loads(d.pop("metrics_json") or "{}")
            out.append(d)
        return out

    def get_task(self, condition_id: str, rep: int) -> dict | None:
        """One stored task (as in :meth:`task_rows`) or None."""
        rows = self.task_rows("t.condition_id = ? AND t.rep = ?", (condition_id, int(rep)))
        return rows[0] if rows else None

    def counts(self) -> dict[str, dict[str, int]]:
        """condition_id -> {status: count}."""
        out: dict[str, dict[str, int]] = {}
        for cid, status, count in self.conn.execute(
                "SELECT condition_id, status, COUNT(*) FROM tasks GROUP BY condition_id, status"):
            out.setdefault(cid, {})[status] = count
        return out
