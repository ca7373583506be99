"""Command-line interface of simstudy.

Subcommands: ``run``, ``status``, ``replay``, ``export``, ``list`` (the study engine), ``check``
and ``report`` (rate checks and reports, :mod:`simstudy.reports`), ``neural`` (the torch
benchmarks, :mod:`simstudy.neural.cli`). ``simstudy SUBCOMMAND --help`` documents each.
User errors (an invalid spec, a store that does not match its spec, a bad option) exit with a
one-line message and a non-zero status, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A problem to report in one line (no traceback)."""


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
                       help="folder of the SQLite stores (default: results/store)")

    p = sub.add_parser("run", help="run the missing tasks of a study (resumable)",
                       description="Run every task of SPEC that is not in its store yet; each "
                       "finished task is committed at once, so an interrupted run resumes "
                       "where it stopped.")
    spec_arg(p)
    p.add_argument("--jobs", "-j", type=int, default=None, metavar="N",
                   help="parallel workers (default: all local cores; 1 = in this process)")
    p.add_argument("--backend", choices=["loky", "dask"], default="loky",
                   help="joblib backend: local processes (loky, default) or a dask cluster")
    p.add_argument("--scheduler", metavar="ADDR", default=None,
                   help="dask scheduler address, e.g. tcp://10.0.0.1:8786 (with --backend dask)")
    p.add_argument("--force-new", action="store_true",
                   help="if the spec no longer matches the stored results, start a new store "
                   "(the old file is kept, renamed) instead of refusing")
    p.add_argument("--retry-errors", action="store_true",
                   help="rerun tasks stored with status 'error'")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--max-reps", type=int, default=None, metavar="R",
                   help="staged run: only replications 0..R-1 of every condition (a later run "
                   "without it completes the rest)")
    p.add_argument("--task", metavar="MODULE:FUNC", default=None,
                   help="advanced: replace the task function (e.g. "
                   "simstudy.engine.fakes:fake_task to exercise the engine without fitting)")
    store_arg(p)

    p = sub.add_parser("status", help="done/missing/failed/non-converged per condition",
                       description="Print one line per condition of SPEC: tasks done, "
                       "missing, failed (error), non-converged and degenerate.")
    spec_arg(p)
    store_arg(p)

    p = sub.add_parser("replay", help="re-run one task and compare with the stored row",
                       description="Re-run one task in this process and print the fit "
                       "(parameters, log-likelihood, iterations, metrics) and whether it "
                       "equals the stored row (timings excepted). Exit status 1 if it differs.")
    spec_arg(p)
    p.add_argument("--condition", required=True, metavar="ID",
                   help="condition id (a unique prefix is enough; see `simstudy status`)")
    p.add_argument("--rep", required=True, type=int, metavar="R", help="replication index")
    p.add_argument("--task", metavar="MODULE:FUNC", default=None,
                   help="advanced: the task function the run used (default: the real fit)")
    store_arg(p)

    p = sub.add_parser("export", help="write the tidy results table (csv or parquet)",
                       description="Write the tidy table (one row per task, metrics as "
                       "columns) of SPEC's store.")
    spec_arg(p)
    p.add_argument("--format", choices=["csv", "parquet"], default="csv",
                   help="file format (default csv)")
    p.add_argument("--out", metavar="PATH", default=None,
                   help="output file (default results/export/<study>.<format>)")
    store_arg(p)

    p = sub.add_parser("list", help="list the studies in a folder with their progress",
                       description="One line per study file: name, description, conditions, "
                       "tasks and tasks done.")
    p.add_argument("--studies-dir", metavar="DIR", default="studies",
                   help="folder of study files (default: studies)")
    store_arg(p)

    p = sub.add_parser("check", add_help=False, help="rate check of a study against theory "
                       "and a reference (simstudy.reports.check)")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p = sub.add_parser("report", add_help=False, help="tables, figures and results/README.md "
                       "(simstudy.reports.build)")
    p.add_argument("args", nargs=argparse.REMAINDER)
    sub.add_parser("neural", add_help=False, help="neural gating benchmarks (simstudy.neural)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["neural"]:
        from simstudy.neural.cli import main as neural_main

        return neural_main(argv[1:])
    if argv[:1] in (["check"], ["report"]):
        return _forward(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    handler = {"run": _cmd_run, "status": _cmd_status, "replay": _cmd_replay,
               "export": _cmd_export, "list": _cmd_list}[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt as exc:
        msg = str(exc) or "interrupted"
        print(f"simstudy: {msg}; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UserError, ValueError, FileNotFoundError) as exc:
        # SpecError and StoreMismatchError are ValueErrors: one line, no traceback
        print(f"simstudy {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


def _forward(command: str, argv: list[str]) -> int:
    module_name = {"check": "simstudy.reports.check", "report": "simstudy.reports.build"}[command]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            print(f"simstudy {command}: error: {module_name} is not available in this "
                  "installation (the reports package is missing)", file=sys.stderr)
            return EXIT_USER_ERROR
        raise
    return int(module.main(argv) or 0)


# -- subcommands ---------------------------------------------------------------------------------
def _cmd_run(args) -> int:
    from simstudy.engine.runner import resolve_task_fn, run_study

    task_fn = resolve_task_fn(args.task) if args.task else None
    summary = run_study(args.spec, jobs=args.jobs, backend=args.backend,
                        scheduler=args.scheduler, progress=not args.no_progress,
                        force_new=args.force_new, retry_errors=args.retry_errors,
                        store_dir=args.store_dir, task_fn=task_fn, max_reps=args.max_reps)
    print(summary.line())
    return 0


def _status_table(spec, store_dir):
    from simstudy.engine.store import ResultStore, store_path

    path = store_path(spec.name, store_dir)
    counts = {}
    if path.exists():
        with ResultStore(path, readonly=True) as store:
            counts = store.counts()
    rows = []
    for c in spec.conditions():
        got = counts.get(c.condition_id, {})
        done = sum(got.values())
        rows.append({
            "condition": c.condition_id, "label": c.label, "protocol": c.protocol, "n": c.n,
            "done": done, "missing": spec.replications - done, "failed": got.get("error", 0),
            "non_conv": got.get("not_converged", 0), "degenerate": got.get("degenerate", 0),
        })
    return rows, path


def _print_table(rows, columns) -> None:
    widths = {c: max([len(c)] + [len(str(r[c])) for r in rows]) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in columns))


def _cmd_status(args) -> int:
    from simstudy.engine.spec import load_spec

    spec = load_spec(args.spec)
    rows, path = _status_table(spec, args.store_dir)
    _print_table(rows, list(rows[0]))
    total = spec.replications * len(rows)
    done = sum(r["done"] for r in rows)
    print(f"{spec.name}: {done}/{total} tasks done, {total - done} missing, "
          f"{sum(r['failed'] for r in rows)} failed, "
          f"{sum(r['non_conv'] for r in rows)} non-converged, "
          f"{sum(r['degenerate'] for r in rows)} degenerate"
          + ("" if path.exists() else f" (no store yet at {path})"))
    return 0


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return (a is None or (isinstance(a, float) and math.isnan(a))) and \
                (b is None or (isinstance(b, float) and math.isnan(b)))
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def compare_with_stored(result: dict, stored: dict) -> list[str]:
    """Fields (timings excepted) where a fresh task result differs from its stored row."""
    diffs = []
    for key in ("status", "message", "stop_reason", "n_iter", "loglik", "grad_norm",
                "params_json"):
        new = result.get(key)
        if key in ("loglik", "grad_norm") and new is not None:
            new = float(new)
        old = stored.get(key)
        if key == "message":
            new, old = new or "", old or ""
        if not _same(new, old):
            diffs.append(key)
    flags = result.get("flags") or {}
    for f in ("var_floor", "empty_expert", "non_finite"):
        if bool(flags.get(f, False)) != bool(stored.get(f"flag_{f}")):
            diffs.append(f"flag_{f}")
    # stored metrics went through JSON: compare the JSON round trip of the new ones
    new_metrics = json.loads(json.dumps(result.get("metrics") or {}))
    old_metrics = stored.get("metrics") or {}
    for key in sorted(set(new_metrics) | set(old_metrics)):
        if not _same(new_metrics.get(key), old_metrics.get(key)):
            diffs.append(f"metric {key}")
    return diffs


def _cmd_replay(args) -> int:
    from simstudy.engine.runner import execute, resolve_task_fn
    from simstudy.engine.spec import load_spec
    from simstudy.engine.store import ResultStore, store_path
    from simstudy.engine.task import run_task

    spec = load_spec(args.spec)
    cond = spec.condition(args.condition)
    if not 0 <= args.rep < spec.replications:
        raise UserError(f"--rep: must be in 0..{spec.replications - 1}, got {args.rep}")
    task = spec.make_task(cond, args.rep)
    task_fn = resolve_task_fn(args.task) if args.task else run_task
    _, _, _, result = execute(task_fn, task)
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
    path = store_path(spec.name, args.store_dir)
    stored = None
    if path.exists():
        with ResultStore(path, readonly=True) as store:
            stored = store.get_task(cond.condition_id, args.rep)
    if stored is None:
        print("stored row: none (task not run yet)")
        return 0
    diffs = compare_with_stored(result, stored)
    if diffs:
        print(f"equals stored row: NO (differs in {', '.join(diffs)})")
        return 1
    print("equals stored row: yes (all fields but timings)")
    return 0


def _cmd_export(args) -> int:
    from simstudy.engine.results import load_results
    from simstudy.engine.spec import load_spec
    from simstudy.engine.store import store_path

    spec = load_spec(args.spec)
    if not store_path(spec.name, args.store_dir).exists():
        raise UserError(f"no results yet for {spec.name!r} "
                        f"(run `simstudy run {args.spec}` first)")
    df = load_results(spec, store_dir=args.store_dir)
    out = Path(args.out) if args.out else Path("results") / "export" / f"{spec.name}.{args.format}"
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.format == "csv":
        df.to_csv(out, index=False)
    else:
        df.to_parquet(out, index=False)
    print(f"{spec.name}: wrote {len(df)} rows x {df.shape[1]} columns to {out}")
    return 0


def _cmd_list(args) -> int:
    from simstudy.engine.spec import SpecError, load_spec

    folder = Path(args.studies_dir)
    if not folder.is_dir():
        raise UserError(f"--studies-dir: no such folder {folder}")
    rows = []
    for path in sorted(folder.glob("*.toml")):
        try:
            spec = load_spec(path)
        except SpecError as exc:
            rows.append({"name": path.stem, "description": f"INVALID: {exc.reason}",
                         "conditions": "-", "tasks": "-", "done": "-"})
            continue
        status, _ = _status_table(spec, args.store_dir)
        rows.append({"name": spec.name, "description": spec.description,
                     "conditions": len(status), "tasks": len(status) * spec.replications,
                     "done": sum(r["done"] for r in status)})
    if not rows:
        print(f"no study files (*.toml) in {folder}")
        return 0
    _print_table(rows, ["name", "conditions", "tasks", "done", "description"])
    return 0
