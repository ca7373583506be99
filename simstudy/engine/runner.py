"""Run a study: expand the spec, skip finished tasks, fit the rest in parallel, store each result.

Workers only compute; the parent process receives every finished task and commits it to the
SQLite store at once (the parent is the single writer, also on a cluster), so killing a run
loses at most the tasks in flight, and rerunning resumes (see :mod:`simstudy.engine.store` for
what may change between runs). Tasks are made lazily, a bounded number at a time, so a large
study costs no memory up front.

Backends: ``loky`` (local worker processes, joblib), ``dask`` (an existing dask.distributed
scheduler) and ``slurm`` (worker jobs submitted through dask-jobqueue, see
:mod:`simstudy.engine.cluster`). ``jobs`` means the same for all three: the number of tasks
computed at once, one per single-threaded worker process.

Every result carries the provenance of the process that computed it
(:mod:`simstudy.engine.provenance`); a run refuses to add rows of another compute key to a store
unless ``allow_mixed``.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import os
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from simstudy.engine import provenance as prov
from simstudy.engine.errors import ClusterError, StorageError, WorkerLostError
from simstudy.engine.spec import StudySpec, load_spec
from simstudy.engine.store import (
    ProvenanceMismatchError,
    ResultStore,
    StoreLock,
    default_store_dir,
    store_path,
)
from simstudy.engine.task import STATUSES, error_result, run_task, warmup

__all__ = ["RunSummary", "run_study", "resolve_spec", "resolve_task_fn", "execute", "BACKENDS",
           "resolve_store_dir"]

BACKENDS = ("loky", "dask", "slurm")
#: default seconds to wait for the first workers: a scheduler (dask), a batch queue (slurm)
WAIT_TIMEOUT = {"dask": 60.0, "slurm": 1800.0}


@dataclass
class RunSummary:
    """What a run did. Counts are over the tasks run now (not those already stored)."""

    study: str
    store: Path
    total: int
    skipped: int
    run: int = 0
    counts: Counter = field(default_factory=Counter)
    elapsed: float = 0.0
    interrupted: bool = False
    backup: Path | None = None

    @property
    def failed(self) -> int:
        return self.counts["error"]

    @property
    def not_converged(self) -> int:
        return self.counts["not_converged"]

    @property
    def degenerate(self) -> int:
        return self.counts["degenerate"]

    @property
    def timeouts(self) -> int:
        return self.counts["timeout"]

    @property
    def done(self) -> int:
        """Tasks finished now, whatever their status."""
        return self.run

    def line(self) -> str:
        """The one-line summary printed at the end of a run."""
        head = "interrupted" if self.interrupted else "finished"
        timeouts = f", {self.timeouts} timed out" if self.timeouts else ""
        return (f"{self.study}: {head}: {self.run} task(s) done now ({self.counts['ok']} ok, "
                f"{self.failed} failed, {self.not_converged} non-converged, {self.degenerate} "
                f"degenerate{timeouts}), {self.skipped} already stored, "
                f"{self.total - self.skipped - self.run} missing; "
                f"elapsed {self.elapsed:.1f} s; store {self.store}")


def resolve_spec(spec_or_path, *, estimator_checks: bool = True) -> StudySpec:
    if isinstance(spec_or_path, StudySpec):
        return spec_or_path
    return load_spec(spec_or_path, estimator_checks=estimator_checks)


def resolve_store_dir(spec: StudySpec, store_dir=None) -> Path:
    """The store folder of a study: the one given, else :func:`default_store_dir`."""
    return Path(store_dir) if store_dir is not None else default_store_dir(spec.path)


def resolve_task_fn(name: str) -> Callable:
    """``"package.module:function"`` -> the function (the CLI's ``--task``)."""
    module, sep, attr = name.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"task: expected 'module:function', got {name!r}")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"task: cannot load {name!r} ({exc})") from None
    if not callable(fn):
        raise ValueError(f"task: {name!r} is not callable")
    return fn


_LIMITED_FOR_GOOD = False
_WATCHING = False


def _exit_with_parent(parent: int | None = None) -> None:
    """In a loky worker: exit as soon as the parent run (pid ``parent``) dies.

    A killed parent cannot tell its workers to stop: they would go on with the tasks already
    queued to them, or wait for tasks forever (no one stores their results). A daemon thread
    notices the re-parenting (``os.getppid()`` is no longer the run) and ends the process.
    """
    global _WATCHING
    if _WATCHING:
        return
    _WATCHING = True
    parent = os.getppid() if parent is None else parent

    def watch():
        while os.getppid() == parent:
            time.sleep(0.25)
        os._exit(1)

    threading.Thread(target=watch, name="simstudy-parent-watch", daemon=True).start()


def _loky_worker_init(parent: int) -> None:
    """Start-up of every loky worker: watch the parent before the first task arrives (an idle
    worker blocked on its task queue would otherwise outlive a killed parent for good).
    ``parent`` is the run's pid, passed in: the parent may die before this runs."""
    _exit_with_parent(parent)


def execute(task_fn: Callable, task, limit: str = "each") -> tuple[str, int, int, dict, dict]:
    """Run one task single-threaded; any exception becomes an error result.

    ``limit`` says how BLAS/OpenMP pools are held to one thread: ``"each"`` around this task
    (threadpoolctl costs a few ms per call), ``"process"`` once for the rest of this process
    (loky workers, which are ours alone; they also exit when the parent dies), ``"none"`` when
    the caller already did it.

    Returns ``(condition_id, rep, n, result, provenance)``, the provenance of this process.
    """
    global _LIMITED_FOR_GOOD
    t0 = time.perf_counter()
    if limit == "process":
        _exit_with_parent()
        if not _LIMITED_FOR_GOOD:
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=1)
            _LIMITED_FOR_GOOD = True
    if limit == "each":
        from threadpoolctl import threadpool_limits

        ctx = threadpool_limits(limits=1)
    else:
        ctx = contextlib.nullcontext()
    with ctx:
        try:
            result = task_fn(task)
            if not isinstance(result, dict) or result.get("status") not in STATUSES:
                got = result.get("status") if isinstance(result, dict) else type(result).__name__
                raise ValueError(f"task function: must return a dict whose 'status' is one of "
                                 f"{', '.join(STATUSES)}; got {got!r}")
        except Exception as exc:  # the run goes on; the failure is a stored outcome
            result = error_result(exc, time.perf_counter() - t0)
    return task.condition_id, task.rep, task.n, result, prov.collect(task_fn)


def run_study(spec_or_path, jobs: int | None = None, backend: str = "loky", scheduler=None,
              progress: bool = True, *, force_new: bool = False, retry_errors: bool = False,
              store_dir=None, task_fn: Callable | None = None, max_reps: int | None = None,
              max_n: int | None = None, allow_mixed: bool = False, journal_mode: str | None = None,
              wait_for_workers: int = 1, wait_timeout: float | None = None,
              slurm: dict | None = None) -> RunSummary:
    """Run every task of a study that is not in its store yet.

    Parameters
    ----------
    spec_or_path : StudySpec or path-like
        The study (a TOML file is validated first).
    jobs : int, optional
        Tasks computed at once, each in a single-threaded worker process: local processes
        (loky), tasks in flight on the cluster (dask; default: the workers' threads), worker
        processes requested (slurm; required). Default all local cores (-1); ``jobs=1`` with
        loky runs in this process.
    backend : {"loky", "dask", "slurm"}
    scheduler : str or distributed.Client, optional
        For ``backend="dask"``: a scheduler address, a scheduler file, or a client; default:
        the current default client.
    progress : bool
        Show a tqdm progress bar on stderr.
    force_new : bool
        If the store holds results the spec no longer describes, or rows of other provenance,
        start a new store (the old content is kept in a backup file) instead of raising.
    retry_errors : bool
        Rerun tasks stored with status ``"error"``.
    store_dir : path-like, optional
        Folder of the store (default :func:`~simstudy.engine.store.default_store_dir`).
    task_fn : callable, optional
        ``task -> result dict``; default :func:`simstudy.engine.task.run_task` (which is warmed
        up in this process first so that workers load compiled kernels from the numba cache).
    max_reps : int, optional
        A staged run: only replications ``0 .. max_reps - 1`` of every condition (a later run
        without it completes the rest). Default: all replications of the spec.
    max_n : int, optional
        A staged run: only the conditions with n <= ``max_n`` (e.g. the small sample sizes of
        every study first; a later run without it adds the large ones). Default: every n.
    allow_mixed : bool
        Add rows to a store whose rows were computed by other code or libraries (each row keeps
        its own provenance).
    journal_mode : {"wal", "delete"}, optional
        SQLite journal of the store (``"delete"`` on network filesystems); default: keep it.
    wait_for_workers, wait_timeout : int, float
        dask/slurm: start when this many workers are up; give up after this many seconds
        (default 60 for dask, 1800 for slurm, whose jobs wait in a queue).
    slurm : dict, optional
        ``backend="slurm"``: options of dask-jobqueue's SLURMCluster (queue, account, memory,
        walltime, cores, ...; see :func:`simstudy.engine.cluster.slurm_cluster`).

    Returns
    -------
    RunSummary

    Raises
    ------
    SpecError, StoreMismatchError, ProvenanceMismatchError, ValueError
        The user's to fix (exit status 2 in the CLI).
    EngineError
        The environment failed: storage, a corrupt or locked store, a lost worker, the cluster
        (exit status 1 in the CLI); each message says what to do next.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend: unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs == 0
                             or jobs < -1):
        raise ValueError(f"jobs: expected a positive integer or -1 (all cores), got {jobs!r}")
    if backend == "slurm" and (jobs is None or jobs < 1):
        raise ValueError("jobs: the slurm backend needs the number of worker processes to "
                         "request (--jobs N)")
    if max_reps is not None and (isinstance(max_reps, bool) or not isinstance(max_reps, int)
                                 or max_reps < 1):
        raise ValueError(f"max_reps: expected a positive integer, got {max_reps!r}")
    if max_n is not None and (isinstance(max_n, bool) or not isinstance(max_n, int)
                              or max_n < 1):
        raise ValueError(f"max_n: expected a positive integer, got {max_n!r}")
    if isinstance(wait_for_workers, bool) or not isinstance(wait_for_workers, int) \
            or wait_for_workers < 1:
        raise ValueError(f"wait_for_workers: expected an integer >= 1, got {wait_for_workers!r}")
    if wait_timeout is not None and not wait_timeout > 0:
        raise ValueError(f"wait_timeout: expected seconds > 0, got {wait_timeout!r}")
    default_task = task_fn is None
    spec = resolve_spec(spec_or_path, estimator_checks=default_task)
    task_fn = run_task if default_task else task_fn
    t0 = time.perf_counter()
    path = store_path(spec.name, resolve_store_dir(spec, store_dir))
    opts = dict(jobs=jobs, backend=backend, scheduler=scheduler, progress=progress,
                force_new=force_new, retry_errors=retry_errors, task_fn=task_fn,
                default_task=default_task, max_reps=max_reps, max_n=max_n, allow_mixed=allow_mixed,
                journal_mode=journal_mode, wait_for_workers=wait_for_workers,
                wait_timeout=wait_timeout or WAIT_TIMEOUT.get(backend, 60.0), slurm=slurm or {})
    with StoreLock(path):
        return _run_locked(spec, path, t0, **opts)


def _in_plan(keys, spec: StudySpec, reps: int, max_n: int | None = None) -> int:
    """How many of ``keys`` are tasks of the plan (conditions of the spec, rep < reps)."""
    ids = spec.condition_ids(max_n)
    return sum(1 for cid, rep in keys if cid in ids and rep < reps)


def _open_store(spec, path, force_new, allow_mixed, journal_mode, mine, summary):
    """Open and check the store; start a new one (after a backup) where allowed and needed."""
    store = ResultStore(path, journal_mode=journal_mode)
    try:
        store.verify()
        if store.mismatch(spec):
            if not force_new:
                store.check_compatible(spec)  # raises StoreMismatchError with the reasons
            summary.backup = store.backup_and_reset()
        # rows of another compute key would count as this run's results (even when nothing is
        # left to run, the summary and the reports would take them as such)
        others = {k: c for k, c in store.compute_keys().items() if k != prov.compute_key(mine)}
        if others and not allow_mixed:
            if not force_new:
                old = next((rec for rec, _ in store.provenance_summary()
                            if rec is None or prov.compute_key(rec) != prov.compute_key(mine)),
                           None)
                raise ProvenanceMismatchError(
                    f"store {path} holds {sum(others.values())} row(s) computed by other code or "
                    f"libraries than this run ({prov.describe_key_change(old, mine)}); adding "
                    "to it would mix them. Pass --allow-mixed to add rows anyway (each row "
                    "keeps its provenance), or --force-new to start a new store (the old one "
                    "is kept as a backup)")
            summary.backup = store.backup_and_reset()
        return store
    except BaseException:
        store.close()
        raise


def _run_locked(spec, path, t0, *, jobs, backend, scheduler, progress, force_new, retry_errors,
                task_fn, default_task, max_reps, max_n, allow_mixed, journal_mode, wait_for_workers,
                wait_timeout, slurm) -> RunSummary:
    mine = prov.collect(task_fn)
    reps = spec.replications if max_reps is None else min(max_reps, spec.replications)
    summary = RunSummary(study=spec.name, store=path, total=spec.n_tasks(max_reps, max_n),
                         skipped=0)
    store = _open_store(spec, path, force_new, allow_mixed, journal_mode, mine, summary)
    try:
        if summary.backup is not None:
            print(f"{spec.name}: previous store kept as {summary.backup}", file=sys.stderr)
        store.register(spec)
        if retry_errors:
            store.delete(store.done_keys(["error"]))
        done = store.done_keys()
        summary.skipped = _in_plan(done, spec, reps, max_n)
        n_pending = summary.total - summary.skipped
        pending = (t for t in spec.iter_tasks(max_reps, max_n) if t.key not in done)
        if n_pending:
            first = next(pending)
            pending = itertools.chain([first], pending)
            if default_task and not (jobs == 1 and backend == "loky"):
                # compile once here; workers then load the kernels from the numba cache
                warmup(first)
            try:
                _dispatch(pending, n_pending, task_fn, jobs, backend, scheduler, progress,
                          store, spec, summary, mine, allow_mixed, wait_for_workers,
                          wait_timeout, slurm)
            except KeyboardInterrupt:
                summary.interrupted = True
        summary.elapsed = time.perf_counter() - t0
        if summary.interrupted:
            raise KeyboardInterrupt(summary.line())
        return summary
    finally:
        store.close()


def _resume_hint(summary: RunSummary) -> str:
    return (f"{summary.run} task(s) stored by this run, {summary.skipped} before; rerun the same "
            "command to resume")


def _exit_codes(exc: BaseException) -> str:
    match = re.search(r"exit codes of the workers are (.+)", str(exc))
    return f" (exit code {match.group(1).strip()})" if match else ""


def _dispatch(pending: Iterator, n_pending, task_fn, jobs, backend, scheduler, progress, store,
              spec, summary, mine, allow_mixed, wait_for_workers, wait_timeout, slurm):
    from tqdm.auto import tqdm

    bar = tqdm(total=n_pending, disable=not progress, unit="task", file=sys.stderr,
               desc=spec.name, dynamic_ncols=True)
    key = prov.compute_key(mine)
    stored_records: dict[str, str] = {}

    def record(item):
        cid, rep, n, result, record = item
        rid = prov.record_id(record)
        if rid not in stored_records:
            if prov.compute_key(record) != key and not allow_mixed:
                raise ProvenanceMismatchError(
                    f"a worker on host {record.get('host')} computes with other code or "
                    f"libraries than this run ({prov.describe_key_change(mine, record)}); its "
                    "result was not stored. Give the workers the same environment, or pass "
                    f"--allow-mixed; {_resume_hint(summary)}")
            try:
                stored_records[rid] = store.add_provenance(record)
            except StorageError as exc:
                raise StorageError(f"{exc}; {_resume_hint(summary)}") from None
        try:
            store.write(cid, rep, spec.spec_hash, n, result, stored_records[rid])
        except StorageError as exc:
            raise StorageError(f"{exc}; {_resume_hint(summary)}") from None
        summary.run += 1
        summary.counts[result["status"]] += 1
        bar.update(1)
        bar.set_postfix(failed=summary.failed, nonconv=summary.not_converged,
                        degen=summary.degenerate, refresh=False)

    try:
        if backend == "loky":
            _dispatch_loky(pending, task_fn, jobs, record, summary)
        else:
            _dispatch_dask(pending, task_fn, jobs, backend, scheduler, record, summary,
                           wait_for_workers, wait_timeout, slurm)
    finally:
        bar.close()


def _dispatch_loky(pending, task_fn, jobs, record, summary):
    from joblib import Parallel, delayed, parallel_config
    from joblib.externals.loky.process_executor import BrokenProcessPool

    if jobs == 1:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1):
            for task in pending:
                record(execute(task_fn, task, limit="none"))
        return
    calls = (delayed(execute)(task_fn, t, "process") for t in pending)
    try:
        # inner_max_num_threads=1: numba/BLAS/OpenMP env vars set to 1 in every worker
        with parallel_config(backend="loky", n_jobs=-1 if jobs is None else jobs,
                             inner_max_num_threads=1, initializer=_loky_worker_init,
                             initargs=(os.getpid(),)):
            for item in Parallel(return_as="generator_unordered")(calls):
                record(item)
    except BrokenProcessPool as exc:
        raise WorkerLostError(
            f"{summary.study}: a worker process died{_exit_codes(exc)} (killed, often by the "
            "system when memory runs out, or crashed); " + _resume_hint(summary)) from None


def _dispatch_dask(pending, task_fn, jobs, backend, scheduler, record, summary,
                   wait_for_workers, wait_timeout, slurm):
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    cluster = None
    if backend == "slurm":
        from simstudy.engine.cluster import slurm_cluster

        cluster = slurm_cluster(slurm)
        cluster.scale(jobs)
        client, owned = _dask_client(cluster, wait_timeout)
    else:
        client, owned = _dask_client(scheduler, wait_timeout)
    futures = set()
    try:
        _wait_for_workers(client, wait_for_workers, wait_timeout)
        in_flight = jobs if jobs and jobs > 0 else max(1, sum(client.nthreads().values()))
        done_iter = as_completed()

        def submit_next() -> bool:
            task = next(pending, None)
            if task is None:
                return False
            # dask workers may be threads of someone else's process: limit per task
            fut = client.submit(execute, task_fn, task, "each", pure=False)
            futures.add(fut)
            done_iter.add(fut)
            return True

        for _ in range(in_flight):
            if not submit_next():
                break
        for fut in done_iter:
            futures.discard(fut)
            try:
                item = fut.result()
            except KilledWorker as exc:
                raise WorkerLostError(
                    f"{summary.study}: dask workers died running a task ({exc}); "
                    + _resume_hint(summary)) from None
            fut.release()
            record(item)
            submit_next()
    finally:
        if futures:
            with contextlib.suppress(Exception):
                client.cancel(list(futures))
        if owned:
            with contextlib.suppress(Exception):
                client.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()


def _wait_for_workers(client, n: int, timeout: float) -> None:

    try:
        client.wait_for_workers(n_workers=n, timeout=timeout)
    except (TimeoutError, OSError) as exc:
        have = len(client.scheduler_info().get("workers", {})) if client.status == "running" \
            else 0
        raise ClusterError(
            f"only {have} of {n} dask worker(s) joined the scheduler "
            f"{getattr(client.scheduler, 'address', '')} within {timeout:g} s "
            f"({type(exc).__name__}); start workers (e.g. `dask worker ADDRESS --nthreads 1`),"
            " check that they can reach the scheduler, or wait longer with --wait-timeout "
            "SECONDS") from None


def _dask_client(scheduler, timeout: float = 60.0):
    try:
        from distributed import Client, default_client
    except ImportError as exc:  # pragma: no cover - dask is a dependency
        raise ValueError(f"backend: the dask backend needs dask.distributed ({exc})") from None
    if scheduler is None:
        try:
            return default_client(), False
        except ValueError:
            raise ValueError("scheduler: the dask backend needs a scheduler address "
                             "(--scheduler tcp://host:8786), a scheduler file or a running "
                             "client") from None
    if isinstance(scheduler, str | Path):
        is_file = Path(scheduler).is_file()
        try:
            if is_file:
                return Client(scheduler_file=str(scheduler), timeout=f"{timeout}s"), True
            return Client(str(scheduler), timeout=f"{timeout}s"), True
        except (OSError, TimeoutError, ValueError) as exc:
            what = "scheduler file" if is_file else "scheduler"
            raise ClusterError(f"cannot connect to the dask {what} {str(scheduler)!r} within "
                               f"{timeout:g} s ({type(exc).__name__}: {exc}); is it running and "
                               "reachable from here?") from None
    if hasattr(scheduler, "scheduler_address") and not hasattr(scheduler, "submit"):
        return Client(scheduler), True  # a cluster object (LocalCluster, SLURMCluster)
    return scheduler, False

