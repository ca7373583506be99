"""What trust costs in the store: checksummed, provenance-tagged commits against plain SQLite.

For the same rows (the result dict of a real fit of design T, k = 4, with its 40-odd metrics),
in one process:

- ``plain``: one ``INSERT`` and commit per row into a table of the same columns, WAL journal,
  ``synchronous=NORMAL`` (the old store's way);
- ``store``: :meth:`ResultStore.write` per row (checksum, provenance id, same journal);
- ``store, delete journal``: the same with ``journal_mode="delete"`` (network filesystems);
- ``verify``: checking every row's checksum (done on every open), and ``load_results`` (the
  tidy table with parameter and provenance columns), per row;
- ``provenance``: the first :func:`simstudy.engine.provenance.collect` of a process (code hash,
  git describe, versions), paid once per worker.

Each timing is repeated; the report gives the median and the range. Ratios are against
``plain`` measured in the same process. ``python -m benchmarks.bench_store [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from simstudy.engine import provenance as prov
from simstudy.engine.store import ResultStore

ROWS = {True: 300, False: 2000}
REPEATS = 5


def _result(i: int) -> dict:
    metrics = {f"err_{p}_{j}": 0.01 * (i + j) for p in ("beta1", "a", "b", "v")
               for j in range(1, 4)}
    metrics.update({f"cell_size_{j}": 1.0 for j in range(1, 4)}, D2=0.02 + i * 1e-6,
                   hellinger=0.01, tv=0.02, loss_note="")
    params = {"beta0": [0.5, 0.0, 1.0, 0.3], "beta1": [[-5.1], [0.0], [-9.8], [-4.7]],
              "a": [[1.0], [-1.0], [1.0], [0.9]], "b": [0.0, 3.0, -3.0, 0.1],
              "v": [0.2, 0.3, 0.25, 0.21], "K": 3, "ref": 1}
    return {"status": "ok", "message": "", "stop_reason": "strict", "n_iter": 120 + i,
            "seconds": 1.5, "loglik": -1234.5 - i, "grad_norm": 1e-7,
            "flags": {"var_floor": False, "empty_expert": False, "non_finite": False},
            "params_json": json.dumps(params), "metrics": metrics}


def _plain(path: Path, rows: list[dict]) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE tasks (condition_id TEXT, rep INTEGER, spec_hash TEXT, n INTEGER,"
                 " status TEXT, message TEXT, stop_reason TEXT, n_iter INTEGER, seconds REAL, "
                 "loglik REAL, grad_norm REAL, f1 INTEGER, f2 INTEGER, f3 INTEGER, params_json "
                 "TEXT, metrics_json TEXT, created TEXT, PRIMARY KEY (condition_id, rep))")
    for i, r in enumerate(rows):
        with conn:
            conn.execute("INSERT OR REPLACE INTO tasks VALUES "
                         "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         ("c", i, "h", 1000, r["status"], r["message"], r["stop_reason"],
                          r["n_iter"], r["seconds"], r["loglik"], r["grad_norm"], 0, 0, 0,
                          r["params_json"], json.dumps(r["metrics"]), "t"))
    conn.close()


def _store(path: Path, rows: list[dict], journal: str) -> None:
    with ResultStore(path, journal_mode=journal) as store:
        pid = store.add_provenance(prov.collect(_store))
        for i, r in enumerate(rows):
            store.write("c", i, "h", 1000, r, pid)


def _repeat(fn, folder: Path) -> list[float]:
    out = []
    for k in range(REPEATS):
        target = folder / f"r{k}.sqlite"
        t0 = time.perf_counter()
        fn(target)
        out.append(time.perf_counter() - t0)
    return out


def run(quick: bool = False) -> str:
    """Run the benchmark and return a markdown report."""
    n = ROWS[quick]
    rows = [_result(i) for i in range(n)]
    t0 = time.perf_counter()
    prov.collect(run)
    t_prov = time.perf_counter() - t0
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, fn in (("plain", lambda p: _plain(p, rows)),
                         ("store", lambda p: _store(p, rows, "wal")),
                         ("store, delete journal", lambda p: _store(p, rows, "delete"))):
            sub = folder / name.replace(" ", "_").replace(",", "")
            sub.mkdir()
            times[name] = _repeat(fn, sub)
        target = folder / "store" / "r0.sqlite"
        verify = []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            with ResultStore(target, readonly=True) as store:
                store.verify()
            verify.append(time.perf_counter() - t0)
        times["verify (open + every checksum)"] = verify
        reading = []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            with ResultStore(target, readonly=True) as store:
                store.task_rows()
            reading.append(time.perf_counter() - t0)
        times["read every row (verified)"] = reading
    base = statistics.median(times["plain"])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# Store cost",
        "",
        f"{n} rows (a design-T over-specified fit's result: 44 metrics, 4 experts), one commit "
        f"per row, {REPEATS} repeats; {os.cpu_count()} CPUs, load average {load:.1f} at the end."
        " Command: `python -m benchmarks.bench_store" + (" --quick`" if quick else "`") + ".",
        "",
        "| operation | median ms per row | range ms per row | ratio to plain |",
        "|---|---|---|---|",
    ]
    for name, ts in times.items():
        per = [t / n * 1e3 for t in ts]
        lines.append(f"| {name} | {statistics.median(per):.3f} | {min(per):.3f} - "
                     f"{max(per):.3f} | {statistics.median(ts) / base:.2f} |")
    lines += ["", f"First provenance record of a process: {t_prov * 1e3:.0f} ms (once per "
              "worker).", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_store",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{ROWS[True]} rows instead of "
                        f"{ROWS[False]}")
    parser.add_argument("--out", default="results/bench", help="folder of the report")
    args = parser.parse_args(argv)
    report = run(quick=args.quick)
    print(report)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "store.md").write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
