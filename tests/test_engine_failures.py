"""Failures of the environment during a run: one line, an exit status, a way to resume.

A killed worker, a killed parent (its workers must not live on), out of memory, a dask
scheduler without workers or out of reach, a fit that runs out of its time budget.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from simstudy.cli import main
from simstudy.engine import load_results, load_spec, run_study, store_path
from simstudy.engine.errors import ClusterError
from simstudy.engine.fakes import budget_fake_task, fake_task
from simstudy.engine.store import ResultStore
from tests.engine_helpers import KILL, ROOT, SMALL, one_error_line


def simstudy(*args, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "simstudy", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, **kw)


def test_a_killed_worker_is_one_line_with_a_resume_hint(tmp_path):
    proc = simstudy("run", str(SMALL), "--jobs", "2", "--no-progress", "--store-dir",
                    str(tmp_path), "--task", "simstudy.engine.fakes:killing_fake_task")
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "a worker process died" in err[0] and "rerun the same command to resume" in err[0]
    assert "SIGKILL" in err[0] or "-9" in err[0], err[0]
    # what finished before the kill is kept (replication 0 comes first)
    with ResultStore(store_path("engine_small", tmp_path), readonly=True) as store:
        reps = {r["rep"] for r in store.task_rows()}
    assert 1 not in reps


def _descendants(pid):
    psutil = pytest.importorskip("psutil")
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _alive(procs):
    import psutil

    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def test_workers_exit_when_the_parent_is_killed(tmp_path):
    """SIGKILL of the parent only: its loky workers (busy on long tasks) are gone in seconds."""
    pytest.importorskip("psutil")
    cmd = [sys.executable, "-m", "simstudy", "run", str(KILL), "--jobs", "2", "--no-progress",
           "--store-dir", str(tmp_path), "--task", "simstudy.engine.fakes:stuck_fake_task"]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        workers = []
        while time.monotonic() < deadline and proc.poll() is None:
            workers = [p for p in _descendants(proc.pid)
                       if "loky" in " ".join(p.cmdline()) or "joblib" in " ".join(p.cmdline())]
            if len(workers) >= 2:
                break
            time.sleep(0.2)
        assert len(workers) >= 2, proc.stderr.read().decode()[-2000:] if proc.poll() else ""
        time.sleep(1.0)  # the workers are inside their (60 s) tasks now
        family = _descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while _alive(family) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(family), [(p.pid, p.cmdline()) for p in _alive(family)]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the session
        except ProcessLookupError:
            pass


def test_out_of_memory_is_one_line(tmp_path, capsys, monkeypatch):
    import simstudy.engine.runner as runner

    def no_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(runner, "run_study", no_memory)
    assert main(["run", str(SMALL), "--store-dir", str(tmp_path)]) == 1
    line = one_error_line(capsys)
    assert "out of memory" in line and "fewer --jobs" in line


def test_a_memory_error_inside_a_task_is_its_outcome(tmp_path):
    def hungry(task):
        if task.rep == 2:
            raise MemoryError("cannot allocate 80 GiB")
        return fake_task(task)

    summary = run_study(SMALL, jobs=1, store_dir=tmp_path, progress=False, task_fn=hungry)
    df = load_results(SMALL, store_dir=tmp_path)
    assert summary.failed == 6 and len(df) == 18
    assert (df.loc[df["rep"] == 2, "message"] == "MemoryError: cannot allocate 80 GiB").all()


def test_an_unexpected_error_is_one_line_unless_asked(tmp_path, capsys, monkeypatch):
    import simstudy.engine.runner as runner

    def bug(*args, **kwargs):
        raise KeyError("oops")

    monkeypatch.setattr(runner, "run_study", bug)
    monkeypatch.delenv("SIMSTUDY_TRACEBACK", raising=False)
    assert main(["run", str(SMALL), "--store-dir", str(tmp_path)]) == 1
    line = one_error_line(capsys)
    assert "internal error: KeyError: 'oops'" in line and "SIMSTUDY_TRACEBACK=1" in line
    monkeypatch.setenv("SIMSTUDY_TRACEBACK", "1")
    with pytest.raises(KeyError):
        main(["run", str(SMALL), "--store-dir", str(tmp_path)])


# -- dask ----------------------------------------------------------------------------------------
def test_a_scheduler_without_workers(tmp_path, capsys):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=None) as c:
        t0 = time.monotonic()
        with pytest.raises(ClusterError, match=r"only 0 of 1 dask worker\(s\) joined the "
                           r"scheduler .* within 1 s.*--wait-timeout"):
            run_study(SMALL, backend="dask", scheduler=c.scheduler_address, wait_timeout=1,
                      store_dir=tmp_path, progress=False, task_fn=fake_task)
        assert time.monotonic() - t0 < 30
        assert main(["run", str(SMALL), "--backend", "dask", "--scheduler",
                     c.scheduler_address, "--wait-timeout", "1", "--store-dir", str(tmp_path),
                     "--no-progress", "--task", "simstudy.engine.fakes:fake_task"]) == 1
        assert "dask worker(s) joined" in one_error_line(capsys)


def test_a_scheduler_out_of_reach(tmp_path, capsys):
    pytest.importorskip("distributed")
    assert main(["run", str(SMALL), "--backend", "dask", "--scheduler", "tcp://127.0.0.1:9",
                 "--wait-timeout", "1", "--store-dir", str(tmp_path), "--no-progress",
                 "--task", "simstudy.engine.fakes:fake_task"]) == 1
    line = one_error_line(capsys)
    assert "cannot connect to the dask scheduler 'tcp://127.0.0.1:9'" in line


# -- time budget ---------------------------------------------------------------------------------
def test_a_time_budget_is_recorded_as_timeout(tmp_path, capsys):
    spec = tmp_path / "engine_small.toml"
    spec.write_text(SMALL.read_text().replace("[[fit]]", "[em]\nmax_seconds = 0.05\n\n[[fit]]",
                                              1))
    loaded = load_spec(spec, estimator_checks=False)
    assert loaded.em["max_seconds"] == 0.05
    assert all(c.content["em"] == {"max_seconds": 0.05} for c in loaded.conditions())
    assert main(["run", str(spec), "--jobs", "1", "--no-progress", "--store-dir", str(tmp_path),
                 "--task", "simstudy.engine.fakes:budget_fake_task"]) == 0
    assert "6 timed out" in capsys.readouterr().out
    df = load_results(spec, store_dir=tmp_path)
    timed_out = df[df["status"] == "timeout"]
    assert set(timed_out["rep"]) == {1} and len(timed_out) == 6
    assert (timed_out["stop_reason"] == "timeout").all() and (timed_out["seconds"] >= 0.05).all()
    assert main(["status", str(spec), "--store-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[-1] == "timeout" and "6 timed out" in out
    # without a budget the same task never times out
    again = run_study(SMALL, jobs=1, store_dir=tmp_path / "b", progress=False,
                      task_fn=budget_fake_task)
    assert again.timeouts == 0


def test_the_real_task_maps_a_timeout_stop_to_the_timeout_status(monkeypatch):
    import types

    import numpy as np

    import simstudy.estimation as estimation
    from simstudy.engine.task import run_task

    spec = load_spec(SMALL)
    task = spec.make_task(spec.conditions()[0], 0)

    class OutOfTime:
        def __init__(self, k, K, **kw):
            self.k, self.K = k, K

        def fit(self, X, y):
            return types.SimpleNamespace(status="not_converged", stop_reason="timeout",
                                         n_iter=3, loglik=-1.0, grad_norm=0.5, flags={},
                                         params=task.truth(), n_passes=3, starts=["near_truth"],
                                         best_start="near_truth", start_reached_best=None,
                                         start_gap=0.0, pass_counts={}, certificate=None,
                                         information="singular", names=[])

    monkeypatch.setattr(estimation, "TopKMoEEM", OutOfTime)
    result = run_task(task)
    assert result["status"] == "timeout" and result["stop_reason"] == "timeout"
    assert np.isfinite(result["metrics"]["hellinger"])


def test_max_seconds_reaches_the_estimator(tmp_path):
    """[em] max_seconds is validated and passed to the fit (a fit out of time ends "timeout")."""
    from simstudy.engine.task import fit_options

    spec = tmp_path / "engine_small.toml"
    spec.write_text(SMALL.read_text().replace("[[fit]]", "[em]\nmax_seconds = 60\n\n[[fit]]", 1))
    loaded = load_spec(spec)
    assert loaded.em["max_seconds"] == 60.0
    assert fit_options(loaded.make_task(loaded.conditions()[0], 0))["max_seconds"] == 60.0
