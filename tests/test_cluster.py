"""Cluster runs: a process-based dask cluster gives the same store as a local run; --jobs
bounds the tasks in flight; the SLURM backend builds one-thread worker processes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from simstudy.engine import load_results, run_study
from simstudy.engine.fakes import fake_task, timed_fake_task

distributed = pytest.importorskip("distributed")

DATA = Path(__file__).parent / "data"
SMALL = DATA / "engine_small.toml"
VOLATILE = ["seconds", "created"]


def table(store, spec=SMALL) -> pd.DataFrame:
    return (load_results(spec, store_dir=store).drop(columns=VOLATILE)
            .sort_values(["condition_id", "rep"]).reset_index(drop=True))


@pytest.fixture(scope="module")
def process_cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster:
        yield cluster


def test_a_process_cluster_gives_the_local_store(process_cluster, tmp_path):
    local = run_study(SMALL, jobs=1, store_dir=tmp_path / "local", progress=False,
                      task_fn=fake_task)
    remote = run_study(SMALL, backend="dask", scheduler=process_cluster.scheduler_address,
                       wait_for_workers=2, store_dir=tmp_path / "dask", progress=False,
                       task_fn=fake_task)
    assert local.run == remote.run == 18
    a, b = table(tmp_path / "local"), table(tmp_path / "dask")
    pd.testing.assert_frame_equal(a, b)
    # the rows were computed in the workers' processes, and say so
    assert (b["prov_host"] == a["prov_host"]).all()


def _most_at_once(df) -> int:
    events = sorted([(s, 1) for s in df["wall_start"]] + [(e, -1) for e in df["wall_end"]],
                    key=lambda ev: (ev[0], ev[1]))
    now = most = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


@pytest.mark.parametrize("jobs", [1, 2])
def test_jobs_means_tasks_in_flight_under_dask(process_cluster, tmp_path, jobs):
    run_study(SMALL, backend="dask", scheduler=process_cluster.scheduler_address, jobs=jobs,
              wait_for_workers=2, store_dir=tmp_path, progress=False, task_fn=timed_fake_task)
    df = load_results(SMALL, store_dir=tmp_path)
    assert len(df) == 18
    assert _most_at_once(df) == jobs


def test_the_slurm_backend_runs_on_its_cluster(tmp_path, monkeypatch):
    """The slurm path end to end, with a local cluster standing in for SLURMCluster."""
    from simstudy.engine import cluster as cluster_module

    seen = {}

    class FakeSLURM(distributed.LocalCluster):
        def __init__(self, cores, processes, job_script_prologue, **options):
            seen.update(cores=cores, processes=processes, prologue=job_script_prologue,
                        **options)
            super().__init__(n_workers=0, threads_per_worker=1, processes=False,
                             dashboard_address=":0")

        def scale(self, n=None, **kw):
            seen.setdefault("scaled", []).append(n)
            return super().scale(n, **kw)

    monkeypatch.setattr(cluster_module, "_slurm_class", lambda: FakeSLURM)
    summary = run_study(SMALL, backend="slurm", jobs=2, slurm={"queue": "short"},
                        store_dir=tmp_path, progress=False, task_fn=fake_task, wait_timeout=60)
    assert summary.run == 18 and 2 in seen["scaled"]
    assert seen["cores"] == seen["processes"] == 1 and seen["queue"] == "short"
    assert "export OMP_NUM_THREADS=1" in seen["prologue"]
    assert "export NUMBA_NUM_THREADS=1" in seen["prologue"]
    reference = tmp_path / "ref"
    run_study(SMALL, jobs=1, store_dir=reference, progress=False, task_fn=fake_task)
    pd.testing.assert_frame_equal(table(tmp_path), table(reference))


def test_slurm_options_and_their_errors():
    from simstudy.engine.cluster import parse_options, slurm_cluster

    assert parse_options(["queue=short", "cores=4", "memory=8GiB",
                          'job_extra_directives=["--gres=gpu:0"]']) == {
        "queue": "short", "cores": 4, "memory": "8GiB",
        "job_extra_directives": ["--gres=gpu:0"]}
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_options(["queue"])
    with pytest.raises(ValueError, match="processes = 2 must equal cores = 4"):
        slurm_cluster({"cores": 4, "processes": 2})
    with pytest.raises(ValueError, match="the slurm backend needs the number of worker"):
        run_study(SMALL, backend="slurm", task_fn=fake_task)


def test_the_slurm_job_script_has_one_thread_per_worker():
    pytest.importorskip("dask_jobqueue")
    from simstudy.engine.cluster import slurm_cluster

    cluster = slurm_cluster({"queue": "short", "account": "lab", "cores": 4,
                             "walltime": "02:00:00",
                             "scheduler_options": {"dashboard_address": ":0"}})
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH -p short" in script and "#SBATCH -A lab" in script
    assert "#SBATCH -t 02:00:00" in script and "--mem=" in script
    assert "--nthreads 1" in script and "--nworkers 4" in script
    assert "export OMP_NUM_THREADS=1" in script and "export NUMBA_NUM_THREADS=1" in script
