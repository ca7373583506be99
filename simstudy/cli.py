"""Command-line interface of simstudy.

Subcommands: ``run``, ``status``, ``replay``, ``export``, ``list`` (the study engine), ``check``
and ``report`` (rate checks and reports, :mod:`simstudy.reports`), ``neural`` (the torch
benchmarks, :mod:`simstudy.neural.cli`). ``simstudy SUBCOMMAND --help`` documents each; the
user guide is docs/cli.md.

Every failure prints one line ``simstudy COMMAND: error: ...`` and exits with status 2 when the
user can fix it (an invalid spec or option, a store that does not match its spec, mixed
provenance) or 1 when the environment failed (disk full, read-only storage, a corrupt or locked
store, a lost worker, no cluster workers, out of memory); 130 after Ctrl-C, 143 after SIGTERM
(both print what the run stored). No traceback, unless ``SIMSTUDY_TRACEBACK=1`` for an
unexpected error.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import signal
import sys
import threading
from pathlib import Path

__all__ = ["main", "build_parser", "compare_with_stored"]

EXIT_USER_ERROR = 2
EXIT_ENVIRONMENT = 1
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, what a shell or a scheduler expects
DEFAULT_RTOL = 1e-9
DEFAULT_ATOL = 1e-12


class UserError(Exception):
    """A problem of the command line, reported in one line (exit status 2)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="simstudy",
        description="Simulation studies of top-K sparse softmax gating mixtures of experts.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def spec_arg(p):
        p.add_argument("spec", metavar="SPEC", help="study file, e.g. studies/topk_exact.toml")

    def store_arg(p):
        p.add_argument("--store-dir", metavar="DIR", default=None,
                       help="folder of the SQLite stores (default: results/store of the "
                       "project the spec is in, i.e. beside its studies/ folder; or "
                       "$SIMSTUDY_STORE_DIR)")

    p = sub.add_parser("run", help="run the missing tasks of a study (resumable)",
                       description="Run every task of SPEC that is not in its store yet; each "
                       "finished task is committed at once, so an interrupted run resumes "
                       "where it stopped.")
    spec_arg(p)
    p.add_argument("--jobs", "-j", type=int, default=None, metavar="N",
                   help="tasks computed at once, one per single-threaded worker process: local "
                   "processes (loky; default all cores; 1 = in this process), tasks in flight "
                   "(dask; default the workers' threads), workers requested (slurm; required)")
    p.add_argument("--backend", choices=["loky", "dask", "slurm"], default="loky",
                   help="local processes (loky, default), an existing dask scheduler (dask), or "
                   "worker jobs submitted to SLURM through dask-jobqueue (slurm)")
    p.add_argument("--scheduler", metavar="ADDR", default=None,
                   help="dask scheduler address (tcp://10.0.0.1:8786) or scheduler file "
                   "(with --backend dask)")
    p.add_argument("--wait-for-workers", type=int, default=1, metavar="N",
                   help="dask/slurm: start when N workers are up (default 1)")
    p.add_argument("--wait-timeout", type=float, default=None, metavar="SECONDS",
                   help="dask/slurm: give up when the workers are not up after this long "
                   "(default 60 for dask, 1800 for slurm)")
    p.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                   help="slurm: an option of dask-jobqueue's SLURMCluster, repeatable (queue=, "
                   "account=, memory=4GiB, walltime=02:00:00, cores=4 workers per job, ...)")
    p.add_argument("--force-new", action="store_true",
                   help="if the spec no longer matches the stored results, or they were "
                   "computed by other code, start a new store (the old content is kept in a "
                   "backup file) instead of refusing")
    p.add_argument("--allow-mixed", action="store_true",
                   help="add rows to a store whose rows were computed by other code or library "
                   "versions (each row keeps its provenance)")
    p.add_argument("--retry-errors", action="store_true",
                   help="rerun tasks stored with status 'error'")
    p.add_argument("--journal-mode", choices=["wal", "delete"], default=None,
                   help="SQLite journal of the store: wal (default for a new store) or delete "
                   "(for a store on a network filesystem: NFS, Lustre, GPFS, SMB)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--max-reps", type=int, default=None, metavar="R",
                   help="staged run: only replications 0..R-1 of every condition (a later run "
                   "without it completes the rest)")
    p.add_argument("--max-n", type=int, default=None, metavar="N",
                   help="staged run: only the conditions with n <= N (a later run without it "
                   "adds the larger n)")
    p.add_argument("--task", metavar="MODULE:FUNC", default=None,
                   help="advanced: replace the task function (e.g. "
                   "simstudy.engine.fakes:fake_task to exercise the engine without fitting; its "
                   "rows are marked as such and never mix with real fits)")
    store_arg(p)

    p = sub.add_parser("status", help="done/missing/failed/non-converged per condition",
                       description="Print one line per condition of SPEC (tasks done, missing, "
                       "failed, non-converged, degenerate, timed out) and who computed the "
                       "stored rows. Exit status 2 when the store holds rows that the spec no "
                       "longer describes.")
    spec_arg(p)
    store_arg(p)

    p = sub.add_parser("replay", help="re-run one task and compare with the stored row",
                       description="Re-run one task in this process, print the fit "
                       "(parameters, log-likelihood, iterations, metrics) and compare every "
                       "stored column with it (timings excepted): numbers within a relative "
                       "tolerance (--rtol, default 1e-9) or exactly (--exact). Exit status 1 if "
                       "it differs.")
    spec_arg(p)
    p.add_argument("--condition", required=True, metavar="ID",
                   help="condition id (a unique prefix is enough; see `simstudy status`)")
    p.add_argument("--rep", required=True, type=int, metavar="R", help="replication index")
    p.add_argument("--rtol", type=float, default=DEFAULT_RTOL,
                   help="relative tolerance for numbers (default %(default)g)")
    p.add_argument("--atol", type=float, default=DEFAULT_ATOL,
                   help="absolute tolerance for numbers near zero (default %(default)g)")
    p.add_argument("--exact", action="store_true", help="numbers must be bitwise equal")
    p.add_argument("--task", metavar="MODULE:FUNC", default=None,
                   help="advanced: the task function the run used (default: the real fit)")
    store_arg(p)

    p = sub.add_parser("export", help="write the tidy results table (csv or parquet)",
                       description="Write the tidy table of SPEC's store: one row per task; "
                       "one column per condition setting, outcome, metric and fitted "
                       "parameter; the creation time and provenance of each row.")
    spec_arg(p)
    p.add_argument("--format", choices=["csv", "parquet"], default=None,
                   help="file format (default: from the --out suffix, else csv)")
    p.add_argument("--out", metavar="PATH", default=None,
                   help="output file (default: export/<study>.<format> beside the store folder, "
                   "e.g. results/export/)")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    store_arg(p)

    p = sub.add_parser("list", help="list the studies in a folder with their progress",
                       description="One line per study file: name, conditions, tasks, tasks "
                       "done and the description (or what is invalid).")
    p.add_argument("--studies-dir", metavar="DIR", default="studies",
                   help="folder of study files (default: studies)")
    store_arg(p)

    p = sub.add_parser("check", add_help=False, help="rate check of a study against theory "
                       "and a reference (simstudy check --help)")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p = sub.add_parser("report", add_help=False, help="tables, figures and a results README "
                       "(simstudy report --help)")
    p.add_argument("args", nargs=argparse.REMAINDER)
    sub.add_parser("neural", add_help=False, help="neural gating benchmarks (simstudy neural "
                   "--help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["neural"]:
        from simstudy.neural.cli import main as neural_main

        return neural_main(argv[1:])
    command = argv[0] if argv else None
    try:
        if command in ("check", "report"):
            return _forward(command, argv[1:])
        args = build_parser().parse_args(argv)
        handler = {"run": _cmd_run, "status": _cmd_status, "replay": _cmd_replay,
                   "export": _cmd_export, "list": _cmd_list}[args.command]
        return handler(args)
    except KeyboardInterrupt as exc:
        msg = str(exc) or "interrupted"
        if _terminated:
            msg = f"stopped by SIGTERM: {msg}"
        print(f"simstudy: {msg}; rerun the same command to resume", file=sys.stderr)
        return EXIT_TERMINATED if _terminated else EXIT_INTERRUPTED
    except SystemExit:
        raise
    except BaseException as exc:  # every failure: one line and an exit status
        from simstudy.engine.errors import EngineError, describe, want_traceback

        if isinstance(exc, UserError):
            msg, code = str(exc), EXIT_USER_ERROR
        else:
            msg, code = describe(exc)
            if want_traceback() and not isinstance(exc, EngineError | ValueError):
                raise
        msg = " ".join(msg.split())  # one line, whatever the message held
        print(f"simstudy {command}: error: {msg}", file=sys.stderr)
        return code


def _forward(command: str, argv: list[str]) -> int:
    module_name = {"check": "simstudy.reports.check", "report": "simstudy.reports.build"}[command]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise UserError(f"{module_name} is not available in this installation (the reports "
                            "package is missing)") from None
        raise
    return int(module.main(argv) or 0)


# -- helpers -------------------------------------------------------------------------------------
def _spec_and_store(args, estimator_checks: bool = False):
    from simstudy.engine.runner import resolve_store_dir
    from simstudy.engine.spec import load_spec
    from simstudy.engine.store import store_path

    spec = load_spec(args.spec, estimator_checks=estimator_checks)
    return spec, store_path(spec.name, resolve_store_dir(spec, args.store_dir))


def _open_readonly(path):
    from simstudy.engine.store import ResultStore

    return ResultStore(path, readonly=True)


def _print_table(rows, columns) -> None:
    widths = {c: max([len(c)] + [len(str(r[c])) for r in rows]) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns).rstrip())
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in columns).rstrip())


# -- subcommands ---------------------------------------------------------------------------------
_terminated = False


@contextlib.contextmanager
def _sigterm_stops_run():
    """Make SIGTERM (``kill``, a scheduler's time limit) stop a run as Ctrl-C does.

    The default action kills the process on the spot: the store stays consistent, but the run
    never says what it stored. Raising KeyboardInterrupt takes the Ctrl-C path instead, which
    stops the workers and prints the one-line summary. The previous handler is restored after.
    """
    global _terminated
    _terminated = False
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be set from the main thread (main() called from a thread)
        return

    def handler(signum, frame):
        global _terminated
        _terminated = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _cmd_run(args) -> int:
    from simstudy.engine.cluster import parse_options
    from simstudy.engine.runner import resolve_task_fn, run_study

    task_fn = resolve_task_fn(args.task) if args.task else None
    if args.slurm and args.backend != "slurm":
        raise UserError("--slurm: only with --backend slurm")
    with _sigterm_stops_run():
        summary = run_study(args.spec, jobs=args.jobs, backend=args.backend,
                            scheduler=args.scheduler, progress=not args.no_progress,
                            force_new=args.force_new, retry_errors=args.retry_errors,
                            store_dir=args.store_dir, task_fn=task_fn, max_reps=args.max_reps,
                            max_n=args.max_n,
                            allow_mixed=args.allow_mixed, journal_mode=args.journal_mode,
                            wait_for_workers=args.wait_for_workers,
                            wait_timeout=args.wait_timeout, slurm=parse_options(args.slurm))
    print(summary.line())
    return 0


def _status_rows(spec, path):
    """Per-condition counts (replications of the spec only), store notes, provenance."""
    counts, problems, provenance, meta = {}, [], [], {}
    if path.exists():
        with _open_readonly(path) as store:
            store.verify()
            counts = store.counts(max_rep=spec.replications)
            problems = store.mismatch(spec)
            provenance = store.provenance_summary()
            meta = store.meta()
    rows = []
    for c in spec.conditions():
        got = counts.get(c.condition_id, {})
        done = sum(got.values())
        rows.append({
            "condition": c.condition_id, "label": c.label, "protocol": c.protocol, "n": c.n,
            "done": done, "missing": spec.replications - done, "failed": got.get("error", 0),
            "non_conv": got.get("not_converged", 0), "degenerate": got.get("degenerate", 0),
            "timeout": got.get("timeout", 0),
        })
    return rows, problems, provenance, meta


def _cmd_status(args) -> int:
    from simstudy.engine.provenance import summary_line

    spec, path = _spec_and_store(args)
    rows, problems, provenance, meta = _status_rows(spec, path)
    _print_table(rows, list(rows[0]))
    total = spec.replications * len(rows)
    done = sum(r["done"] for r in rows)
    print(f"{spec.name}: {done}/{total} tasks done, {total - done} missing, "
          f"{sum(r['failed'] for r in rows)} failed, "
          f"{sum(r['non_conv'] for r in rows)} non-converged, "
          f"{sum(r['degenerate'] for r in rows)} degenerate, "
          f"{sum(r['timeout'] for r in rows)} timed out"
          + ("" if path.exists() else f" (no store yet at {path})"))
    if path.exists():
        print(f"store: {path} (spec_hash {meta.get('spec_hash', '?')} last ran, now "
              f"{spec.spec_hash})")
        for record, count in provenance:
            print(f"computed by ({count} rows): {summary_line(record)}")
        from simstudy.engine.provenance import compute_key

        keys = {None if r is None else compute_key(r) for r, _ in provenance}
        if len(keys) > 1:
            print(f"note: the rows come from {len(keys)} different code or library versions")
    if problems:
        print(f"simstudy status: the spec changed since these rows were stored: "
              f"{'; '.join(problems)}; `simstudy run` refuses to continue this store (restore "
              "the spec, or run with --force-new)", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


def _number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _close(a, b, rtol: float, atol: float, exact: bool) -> bool:
    if a is None or b is None:  # a NaN is stored as NULL
        return all(v is None or (isinstance(v, float) and math.isnan(v)) for v in (a, b))
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if exact:
        return a == b
    return math.isclose(a, b, rel_tol=rtol, abs_tol=atol)


def _tree_diffs(name, new, old, rtol, atol, exact, out) -> None:
    """Differences between two JSON values (numbers within the tolerance)."""
    if isinstance(new, list) and isinstance(old, list):
        if len(new) != len(old):
            out.append(f"{name}: {len(old)} entries stored, {len(new)} now")
            return
        for i, (a, b) in enumerate(zip(new, old, strict=True)):
            _tree_diffs(f"{name}[{i}]", a, b, rtol, atol, exact, out)
    elif isinstance(new, dict) and isinstance(old, dict):
        for key in sorted(set(new) | set(old)):
            if key not in new or key not in old:
                out.append(f"{name}.{key}: only {'stored' if key in old else 'now'}")
            else:
                _tree_diffs(f"{name}.{key}", new[key], old[key], rtol, atol, exact, out)
    elif (_number(new) or new is None) and (_number(old) or old is None) and \
            (new is not None or old is not None):
        if not _close(new, old, rtol, atol, exact):
            out.append(f"{name}: stored {old!r}, now {new!r}")
    elif new != old:
        out.append(f"{name}: stored {old!r}, now {new!r}")


def compare_with_stored(result: dict, stored: dict, *, n: int | None = None,
                        spec_hashes=None, rtol: float = DEFAULT_RTOL,
                        atol: float = DEFAULT_ATOL, exact: bool = False) -> list[str]:
    """Every stored column that a fresh task result does not reproduce (timings excepted).

    Numbers compare within ``rtol``/``atol`` (``math.isclose``) or bitwise with ``exact``;
    ``n`` is the condition's sample size and ``spec_hashes`` the spec versions known to the
    store (a row claiming another is reported).
    """
    diffs: list[str] = []
    if n is not None and stored.get("n") != n:
        diffs.append(f"n: stored {stored.get('n')!r}, the condition has {n}")
    if spec_hashes is not None and stored.get("spec_hash") not in spec_hashes:
        diffs.append(f"spec_hash: stored {stored.get('spec_hash')!r} is no spec version that "
                     "ran on this store")
    for key in ("status", "stop_reason", "n_iter"):
        if result.get(key) != stored.get(key):
            diffs.append(f"{key}: stored {stored.get(key)!r}, now {result.get(key)!r}")
    if (result.get("message") or "") != (stored.get("message") or ""):
        diffs.append(f"message: stored {stored.get('message')!r}, now {result.get('message')!r}")
    for key in ("loglik", "grad_norm"):
        if not _close(result.get(key), stored.get(key), rtol, atol, exact):
            diffs.append(f"{key}: stored {stored.get(key)!r}, now {result.get(key)!r}")
    flags = result.get("flags") or {}
    for f in ("var_floor", "empty_expert", "non_finite"):
        if bool(flags.get(f, False)) != bool(stored.get(f"flag_{f}")):
            diffs.append(f"flag_{f}: stored {bool(stored.get(f'flag_{f}'))}, now "
                         f"{bool(flags.get(f, False))}")
    new_params = json.loads(result["params_json"]) if result.get("params_json") else None
    old_params = json.loads(stored["params_json"]) if stored.get("params_json") else None
    _tree_diffs("params", new_params, old_params, rtol, atol, exact, diffs)
    # stored metrics went through JSON: compare the JSON round trip of the new ones
    new_metrics = json.loads(json.dumps(result.get("metrics") or {}))
    _tree_diffs("metric", new_metrics, stored.get("metrics") or {}, rtol, atol, exact, diffs)
    return diffs


def _cmd_replay(args) -> int:
    from simstudy.engine.provenance import compute_key, summary_line
    from simstudy.engine.runner import execute, resolve_task_fn
    from simstudy.engine.task import run_task

    if args.rtol < 0 or args.atol < 0 or not (math.isfinite(args.rtol)
                                              and math.isfinite(args.atol)):
        raise UserError("--rtol/--atol: must be finite and >= 0")
    spec, path = _spec_and_store(args, estimator_checks=not args.task)
    cond = spec.condition(args.condition)
    if not 0 <= args.rep < spec.replications:
        raise UserError(f"--rep: must be in 0..{spec.replications - 1}, got {args.rep}")
    task = spec.make_task(cond, args.rep)
    task_fn = resolve_task_fn(args.task) if args.task else run_task
    stored, hashes = None, None
    if path.exists():
        with _open_readonly(path) as store:
            store.verify()  # a store with any corrupt row is refused as a whole
            stored = store.get_task(cond.condition_id, args.rep)
            hashes = store.spec_hashes()
    _, _, _, result, record = execute(task_fn, task)
    print(f"study {spec.name}  condition {cond.condition_id} ({cond.label}, {cond.protocol}, "
          f"n={cond.n})  rep {args.rep}")
    print(f"status: {result['status']}  stop_reason: {result.get('stop_reason')}  "
          f"iterations: {result.get('n_iter')}  seconds: {result.get('seconds', float('nan')):.3f}")
    if result.get("message"):
        print(f"message: {result['message']}")
    print(f"loglik: {result.get('loglik')!r}  grad_norm: {result.get('grad_norm')!r}")
    params = json.loads(result["params_json"]) if result.get("params_json") else {}
    print("parameters:")
    for key, value in params.items():
        print(f"  {key} = {value}")
    print("metrics:")
    for key, value in (result.get("metrics") or {}).items():
        print(f"  {key} = {value!r}")
    if stored is None:
        print("stored row: none (task not run yet)")
        return 0
    print(f"stored by:   {summary_line(stored.get('provenance'))}")
    print(f"replayed by: {summary_line(record)}")
    if stored.get("provenance") is None or \
            compute_key(stored["provenance"]) != compute_key(record):
        print("note: the row was computed by other code or library versions than this replay")
    diffs = compare_with_stored(result, stored, n=cond.n, spec_hashes=hashes, rtol=args.rtol,
                                atol=args.atol, exact=args.exact)
    how = "exactly" if args.exact else f"within rtol {args.rtol:g}, atol {args.atol:g}"
    if diffs:
        print(f"equals stored row: NO ({how}; differs in {'; '.join(diffs)})")
        return 1
    print(f"equals stored row: yes (every stored column {how}; timings and creation time "
          "excepted)")
    return 0


def _cmd_export(args) -> int:
    from simstudy.engine.errors import storage_error
    from simstudy.engine.results import load_results

    spec, path = _spec_and_store(args)
    if not path.exists():
        raise UserError(f"no results yet for {spec.name!r} at {path} "
                        f"(run `simstudy run {args.spec}` first, or give --store-dir)")
    fmt = args.format
    if fmt is None:
        suffix = Path(args.out).suffix.lower() if args.out else ""
        fmt = "parquet" if suffix in (".parquet", ".pq") else "csv"
    out = Path(args.out) if args.out else path.parent.parent / "export" / f"{spec.name}.{fmt}"
    if out.is_dir():
        raise UserError(f"--out: {out} is a folder; give a file name, e.g. "
                        f"{out / f'{spec.name}.{fmt}'}")
    if out.exists() and not args.force:
        raise UserError(f"--out: {out} exists; pass --force to replace it")
    df = load_results(spec, store_dir=path.parent, strict=True)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(exc, out.parent, "cannot create the folder") from None
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        if fmt == "csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_parquet(tmp, index=False)
        os.replace(tmp, out)  # atomic: readers see the old file or the whole new one
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise storage_error(exc, out, "cannot write",
                                "an existing file there is unchanged") from None
        raise
    print(f"{spec.name}: wrote {len(df)} rows x {df.shape[1]} columns to {out}")
    return 0


def _cmd_list(args) -> int:
    from simstudy.engine.errors import EngineError
    from simstudy.engine.runner import resolve_store_dir
    from simstudy.engine.spec import SpecError, load_spec
    from simstudy.engine.store import store_path

    folder = Path(args.studies_dir)
    if not folder.is_dir():
        raise UserError(f"--studies-dir: no such folder {folder}")
    rows = []
    for path in sorted(folder.glob("*.toml")):
        try:
            spec = load_spec(path)
            status, problems, _, _ = _status_rows(
                spec, store_path(spec.name, resolve_store_dir(spec, args.store_dir)))
        except SpecError as exc:
            rows.append({"name": path.stem, "description": f"INVALID: {exc.detail}",
                         "conditions": "-", "tasks": "-", "done": "-"})
            continue
        except EngineError as exc:
            rows.append({"name": path.stem, "description": f"STORE PROBLEM: {exc}",
                         "conditions": "-", "tasks": "-", "done": "-"})
            continue
        note = " (CHANGED SPEC: stored rows it no longer describes)" if problems else ""
        rows.append({"name": spec.name, "description": spec.description + note,
                     "conditions": len(status), "tasks": len(status) * spec.replications,
                     "done": sum(r["done"] for r in status)})
    if not rows:
        print(f"no study files (*.toml) in {folder}")
        return 0
    _print_table(rows, ["name", "conditions", "tasks", "done", "description"])
    return 0
