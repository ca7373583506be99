"""Cluster runs: dask-jobqueue's SLURMCluster with one thread per worker process.

Why one thread per worker process: a fit is a Python EM loop around numba and BLAS kernels. In
one process, threads would share the GIL during the Python parts and the kernels' own thread
pools would oversubscribe the cores; separate single-threaded processes scale linearly and give
results that do not depend on how tasks are packed. So a SLURM job of ``cores = C`` runs ``C``
worker processes of one thread each, with BLAS/OpenMP/numba pinned to one thread, and
``--jobs N`` asks for ``N`` such workers (``ceil(N / C)`` SLURM jobs).

The parent (``simstudy run``, on a login node or in its own small job) is the only process that
writes the store; workers only compute and send results back. Options not given here come from
dask-jobqueue's own configuration (``~/.config/dask/jobqueue.yaml``, section ``jobqueue.slurm``).
See ``docs/cluster.md``.
"""

from __future__ import annotations

import json

__all__ = ["slurm_cluster", "parse_options", "THREAD_VARIABLES"]

#: set to 1 in every worker job, before Python starts (numba reads its variable at import)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "NUMBA_NUM_THREADS")


def parse_options(items) -> dict:
    """``["queue=short", "cores=4"]`` -> ``{"queue": "short", "cores": 4}``.

    Values are integers when they look like one, JSON when they start with ``[`` or ``{``
    (``job_extra_directives=["--gres=gpu:0"]``), strings otherwise.
    """
    out = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--slurm: expected KEY=VALUE, got {item!r}")
        value = value.strip()
        if value.lstrip("-").isdigit():
            out[key] = int(value)
        elif value[:1] in "[{":
            try:
                out[key] = json.loads(value)
            except ValueError as exc:
                raise ValueError(f"--slurm: {key}: invalid JSON value {value!r} ({exc})") \
                    from None
        else:
            out[key] = value
    return out


def _slurm_class():
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise ValueError("backend: the slurm backend needs dask-jobqueue; install the "
                         "'cluster' extra (pip install 'simstudy[cluster]')") from None
    return SLURMCluster


def slurm_cluster(options: dict | None = None):
    """A SLURMCluster whose worker processes have one thread each (not yet scaled).

    Parameters
    ----------
    options : dict
        Keyword arguments of ``dask_jobqueue.SLURMCluster`` (``queue``, ``account``,
        ``memory``, ``walltime``, ``job_extra_directives``, ...). ``cores`` (default 1) is the
        number of single-threaded worker processes per SLURM job; ``processes``, if given,
        must equal it. ``memory`` defaults to 2 GiB per worker unless configured.
    """
    import dask

    opts = dict(options or {})
    cores = opts.pop("cores", 1)
    if isinstance(cores, bool) or not isinstance(cores, int) or cores < 1:
        raise ValueError(f"--slurm: cores must be an integer >= 1, got {cores!r}")
    processes = opts.pop("processes", cores)
    if processes != cores:
        raise ValueError(f"--slurm: processes = {processes} must equal cores = {cores} (one "
                         "thread per worker process; see docs/cluster.md)")
    if "memory" not in opts and not dask.config.get("jobqueue.slurm.memory", None):
        opts["memory"] = f"{2 * cores}GiB"
    prologue = [f"export {v}=1" for v in THREAD_VARIABLES]
    prologue += list(opts.pop("job_script_prologue", None)
                     or dask.config.get("jobqueue.slurm.job-script-prologue", None) or [])
    return _slurm_class()(cores=cores, processes=processes, job_script_prologue=prologue,
                          **opts)
