"""Run a study: expand the spec, skip finished tasks, fit the rest in parallel, store each result.

Workers only compute; the parent process receives every finished task (joblib
``return_as="generator_unordered"``) and commits it to the SQLite store at once, so killing a
run loses at most the tasks in flight, and rerunning resumes (see :mod:`simstudy.engine.store`
for what may change between runs).
"""

from __future__ import annotations

import contextlib
import importlib
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from simstudy.engine.spec import StudySpec, load_spec
from simstudy.engine.store import ResultStore, StoreMismatchError, store_path
from simstudy.engine.task import error_result, run_task, warmup

__all__ = ["RunSummary", "run_study", "resolve_spec", "resolve_task_fn", "execute", "BACKENDS"]

BACKENDS = ("loky", "dask")
STATUSES = ("ok", "not_converged", "degenerate", "error")


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
    def done(self) -> int:
        """Tasks finished now, whatever their status."""
        return self.run

    def line(self) -> str:
        """The one-line summary printed at the end of a run."""
        head = "interrupted" if self.interrupted else "finished"
        return (f"{self.study}: {head}: {self.run} task(s) done now ({self.counts['ok']} ok, "
                f"{self.failed} failed, {self.not_converged} non-converged, {self.degenerate} "
                f"degenerate), {self.skipped} already stored, "
                f"{self.total - self.skipped - self.run} missing; "
                f"elapsed {self.elapsed:.1f} s; store {self.store}")


def resolve_spec(spec_or_path) -> StudySpec:
    return spec_or_path if isinstance(spec_or_path, StudySpec) else load_spec(spec_or_path)


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


def execute(task_fn: Callable, task, limit: str = "each") -> tuple[str, int, int, dict]:
    """Run one task single-threaded; any exception becomes an error result.

    ``limit`` says how BLAS/OpenMP pools are held to one thread: ``"each"`` around this task
    (threadpoolctl costs a few ms per call), ``"process"`` once for the rest of this process
    (loky workers, which are ours alone), ``"none"`` when the caller already did it.
    """
    global _LIMITED_FOR_GOOD
    t0 = time.perf_counter()
    if limit == "process" and not _LIMITED_FOR_GOOD:
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
    return task.condition_id, task.rep, task.n, result


def _open_store(spec: StudySpec, store_dir, force_new: bool) -> ResultStore:
    path = store_path(spec.name, store_dir)
    store = ResultStore(path)
    try:
        store.check_compatible(spec)
    except StoreMismatchError:
        if not force_new:
            store.close()
            raise
        store.close()  # closing the last connection checkpoints and removes the WAL
        stamp = time.strftime("%Y%m%d-%H%M%S")
        old = path.with_name(f"{path.stem}.{stamp}.old.sqlite")
        shutil.move(str(path), str(old))
        for suffix in ("-wal", "-shm"):
            side = Path(str(path) + suffix)
            if side.exists():
                side.unlink()
        print(f"{spec.name}: previous store kept as {old}", file=sys.stderr)
        store = ResultStore(path)
    return store


def run_study(spec_or_path, jobs: int | None = None, backend: str = "loky", scheduler=None,
              progress: bool = True, *, force_new: bool = False, retry_errors: bool = False,
              store_dir=None, task_fn: Callable | None = None,
              max_reps: int | None = None) -> RunSummary:
    """Run every task of a study that is not in its store yet.

    Parameters
    ----------
    spec_or_path : StudySpec or path-like
        The study (a TOML file is validated first).
    jobs : int, optional
        Worker processes (loky) or concurrent tasks (dask); default all local cores (-1).
        ``jobs=1`` runs in this process.
    backend : {"loky", "dask"}
    scheduler : str or distributed.Client, optional
        For ``backend="dask"``: the scheduler address or a client; default: the current
        default client.
    progress : bool
        Show a tqdm progress bar on stderr.
    force_new : bool
        If the store holds results the spec no longer describes, start a new store (the old
        file is kept renamed) instead of raising.
    retry_errors : bool
        Rerun tasks stored with status ``"error"``.
    store_dir : path-like, optional
        Folder of the store (default ``results/store``).
    task_fn : callable, optional
        ``task -> result dict``; default :func:`simstudy.engine.task.run_task` (which is warmed
        up in this process first so that workers load compiled kernels from the numba cache).
    max_reps : int, optional
        A staged run: only replications ``0 .. max_reps - 1`` of every condition (a later run
        without it completes the rest). Default: all replications of the spec.

    Returns
    -------
    RunSummary

    Raises
    ------
    SpecError, StoreMismatchError, ValueError
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend: unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs == 0
                             or jobs < -1):
        raise ValueError(f"jobs: expected a positive integer or -1 (all cores), got {jobs!r}")
    if max_reps is not None and (isinstance(max_reps, bool) or not isinstance(max_reps, int)
                                 or max_reps < 1):
        raise ValueError(f"max_reps: expected a positive integer, got {max_reps!r}")
    spec = resolve_spec(spec_or_path)
    default_task = task_fn is None
    task_fn = run_task if default_task else task_fn
    t0 = time.perf_counter()
    lock = _lock_store(store_path(spec.name, store_dir))
    try:
        return _run_locked(spec, jobs, backend, scheduler, progress, force_new, retry_errors,
                           store_dir, task_fn, default_task, t0, max_reps)
    finally:
        lock.close()  # closing the file releases the lock (so does the death of the process)


def _lock_store(path: Path):
    """Hold an exclusive advisory lock next to the store, so two runs never share it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path.with_name(path.name + ".lock"), "w")  # held until the run ends
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no locking
        return handle
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ValueError(f"store: another run is writing to {path}; wait for it to finish or "
                         "stop it (its finished tasks are kept)") from None
    return handle


def _run_locked(spec, jobs, backend, scheduler, progress, force_new, retry_errors, store_dir,
                task_fn, default_task, t0, max_reps=None) -> RunSummary:
    store = _open_store(spec, store_dir, force_new)
    try:
        store.register(spec)
        if retry_errors:
            store.delete(store.done_keys(["error"]))
        done = store.done_keys()
        tasks = spec.tasks()
        if max_reps is not None:
            tasks = [t for t in tasks if t.rep < max_reps]
        pending = [t for t in tasks if t.key not in done]
        summary = RunSummary(study=spec.name, store=store.path, total=len(tasks),
                             skipped=len(tasks) - len(pending))
        if pending:
            if default_task and not (jobs == 1 and backend == "loky"):
                # compile once here; workers then load the kernels from the numba cache
                warmup(pending[0])
            try:
                _dispatch(pending, task_fn, jobs, backend, scheduler, progress, store, spec,
                          summary)
            except KeyboardInterrupt:
                summary.interrupted = True
        summary.elapsed = time.perf_counter() - t0
        if summary.interrupted:
            raise KeyboardInterrupt(summary.line())
        return summary
    finally:
        store.close()


def _dispatch(pending, task_fn, jobs, backend, scheduler, progress, store, spec, summary):
    from joblib import Parallel, delayed, parallel_config
    from tqdm.auto import tqdm

    bar = tqdm(total=len(pending), disable=not progress, unit="task", file=sys.stderr,
               desc=spec.name, dynamic_ncols=True)

    def record(item):
        cid, rep, n, result = item
        store.write(cid, rep, spec.spec_hash, n, result)
        summary.run += 1
        summary.counts[result["status"]] += 1
        bar.update(1)
        bar.set_postfix(failed=summary.failed, nonconv=summary.not_converged,
                        degen=summary.degenerate, refresh=False)

    try:
        if jobs == 1 and backend == "loky":
            from threadpoolctl import threadpool_limits

            with threadpool_limits(limits=1):
                for task in pending:
                    record(execute(task_fn, task, limit="none"))
            return
        if backend == "loky":
            calls = (delayed(execute)(task_fn, t, "process") for t in pending)
            # inner_max_num_threads=1: numba/BLAS/OpenMP env vars set to 1 in every worker
            with parallel_config(backend="loky", n_jobs=-1 if jobs is None else jobs,
                                 inner_max_num_threads=1):
                for item in Parallel(return_as="generator_unordered")(calls):
                    record(item)
        else:
            # dask workers may be threads of someone else's process: limit per task
            calls = (delayed(execute)(task_fn, t, "each") for t in pending)
            client, owned = _dask_client(scheduler)
            try:
                with parallel_config(backend="dask", n_jobs=-1 if jobs is None else jobs,
                                     client=client):
                    for item in Parallel(return_as="generator_unordered")(calls):
                        record(item)
            finally:
                if owned:
                    client.close()
    finally:
        bar.close()


def _dask_client(scheduler):
    try:
        from distributed import Client, default_client
    except ImportError as exc:  # pragma: no cover - dask is a dependency
        raise ValueError(f"backend: the dask backend needs dask.distributed ({exc})") from None
    if scheduler is None:
        try:
            return default_client(), False
        except ValueError:
            raise ValueError("scheduler: the dask backend needs a scheduler address "
                             "(--scheduler tcp://host:8786) or a running client") from None
    if isinstance(scheduler, str):
        try:
            return Client(scheduler, timeout="10s"), True
        except OSError as exc:
            raise ValueError(f"scheduler: cannot connect to {scheduler!r} ({exc})") from None
    return scheduler, False
