"""The runner and the store, with fake task functions (the point here is the engine)."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import pandas as pd
import pytest

from simstudy.cli import main as cli_main
from simstudy.engine import (
    TIDY_COLUMNS,
    StoreMismatchError,
    load_results,
    load_spec,
    run_study,
    store_path,
)
from simstudy.engine.fakes import failing_fake_task, fake_task, slow_fake_task
from simstudy.engine.store import ResultStore
from tests.engine_helpers import KILL, ROOT, SMALL, run

TIMING = ["seconds", "created"]


def comparable(df: pd.DataFrame) -> pd.DataFrame:
    """Rows minus timing columns, in a canonical order."""
    return (df.drop(columns=TIMING).sort_values(["condition_id", "rep"])
            .reset_index(drop=True))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted in-process run of the small study."""
    store = tmp_path_factory.mktemp("ref")
    summary = run(SMALL, store, jobs=1)
    return summary, comparable(load_results(SMALL, store_dir=store))


def test_run_stores_every_task(reference):
    summary, df = reference
    spec = load_spec(SMALL)
    assert summary.total == summary.run == len(spec.tasks()) == 18 and summary.skipped == 0
    assert len(df) == 18
    assert sum(summary.counts.values()) == 18
    assert list(df.columns[: len(TIDY_COLUMNS) - len(TIMING)]) == [
        c for c in TIDY_COLUMNS if c not in TIMING]
    assert {"hellinger", "tv", "loss_note"} <= set(df.columns)
    assert set(df["label"]) == {"exact", "over"} and set(df["protocol"]) == {"papers", "strict"}
    assert (df["study"] == "engine_small").all() and (df["spec_hash"] == spec.spec_hash).all()
    # tasks of one (n, rep) share their data: the fake's params_json summarises the data
    data_summary = df["params_json"].str.extract(r'"mean_y": ([^,]+)')[0]
    assert (data_summary.groupby([df["n"], df["rep"]]).nunique() == 1).all()
    assert data_summary.nunique() == 6


def test_jobs_two_and_reordered_spec_give_same_rows(reference, tmp_path):
    _, ref = reference
    run(SMALL, tmp_path / "a", jobs=2)
    assert comparable(load_results(SMALL, store_dir=tmp_path / "a")).equals(ref)
    # the same study written in another order (fits swapped) with another label
    text = SMALL.read_text()
    i = text.index("[[fit]]")
    fits = text[i:].split("[[fit]]")[1:]
    swapped = text[:i] + "".join("[[fit]]" + f for f in reversed(fits))
    swapped = swapped.replace('label = "over"', 'label = "over_renamed"')
    other = tmp_path / "engine_small.toml"
    other.write_text(swapped)
    summary = run(other, tmp_path / "b", jobs=2)
    assert summary.run == 18
    got = comparable(load_results(other, store_dir=tmp_path / "b"))
    got["label"] = got["label"].replace("over_renamed", "over")
    assert got.drop(columns="spec_hash").equals(ref.drop(columns="spec_hash"))


def test_growing_grid_resumes_with_new_tasks_only(reference, tmp_path):
    _, ref = reference
    text = SMALL.read_text()
    spec_file = tmp_path / "engine_small.toml"
    # first a smaller study: one n, two replications
    spec_file.write_text(text.replace("values = [60, 120]", "values = [120]")
                         .replace("replications = 3", "replications = 2"))
    first = run(spec_file, tmp_path, jobs=2)
    assert first.run == 3 * 2  # 3 conditions x 2 replications
    spec_file.write_text(text)
    second = run(spec_file, tmp_path, jobs=1)
    assert second.skipped == 6 and second.run == 12
    got = comparable(load_results(spec_file, store_dir=tmp_path))
    assert got.drop(columns="spec_hash").equals(ref.drop(columns="spec_hash"))
    # a rerun of a complete study does nothing
    assert run(spec_file, tmp_path, jobs=2).run == 0


def test_failing_task_is_stored_as_error(tmp_path):
    summary = run(SMALL, tmp_path, jobs=2, task_fn=failing_fake_task)
    df = load_results(SMALL, store_dir=tmp_path)
    assert len(df) == 18
    errors = df[df["status"] == "error"]
    assert summary.failed == 6 and len(errors) == 6 and set(errors["rep"]) == {1}
    assert errors["message"].str.startswith("RuntimeError: injected failure").all()
    assert errors["loglik"].isna().all() and errors["params_json"].isna().all()
    assert (df.loc[df["rep"] != 1, "status"] != "error").all()
    # errors count as done; --retry-errors reruns them (with a healthy task now, which is
    # another task function: mixing its rows in must be asked for)
    assert run(SMALL, tmp_path, jobs=1, task_fn=failing_fake_task).run == 0
    again = run(SMALL, tmp_path, jobs=1, retry_errors=True, allow_mixed=True)
    assert again.run == 6 and again.failed == 0
    assert (load_results(SMALL, store_dir=tmp_path)["status"] != "error").all()


def test_changed_spec_is_refused_unless_force_new(tmp_path):
    spec_file = tmp_path / "engine_small.toml"
    text = SMALL.read_text()
    spec_file.write_text(text)
    run(spec_file, tmp_path, jobs=1)
    path = store_path("engine_small", tmp_path)
    # a description change keeps every condition: allowed, nothing to do
    spec_file.write_text(text.replace("Tiny study", "A tiny study"))
    assert run(spec_file, tmp_path, jobs=1).run == 0
    last_hash = load_spec(spec_file).spec_hash
    for old, new in [("root_seed = 7", "root_seed = 8"), ("replications = 3", "replications = 2"),
                     ("values = [60, 120]", "values = [60]"),
                     ('protocols = ["papers", "strict"]', 'protocols = ["strict"]')]:
        spec_file.write_text(text.replace(old, new))
        with pytest.raises(StoreMismatchError, match="--force-new") as info:
            run(spec_file, tmp_path, jobs=1)
        assert "engine_small" in str(info.value)
    # the CLI says so in one line and exits 2
    spec_file.write_text(text.replace("root_seed = 7", "root_seed = 8"))
    code = cli_main(["run", str(spec_file), "--store-dir", str(tmp_path), "--no-progress",
                     "--task", "simstudy.engine.fakes:fake_task"])
    assert code == 2
    summary = run(spec_file, tmp_path, jobs=1, force_new=True)
    assert summary.run == 18 and summary.skipped == 0
    olds = list(tmp_path.glob("engine_small.*.old.sqlite"))
    assert len(olds) == 1
    with ResultStore(olds[0], readonly=True) as old_store:
        assert len(old_store.task_rows()) == 18
        assert old_store.meta()["spec_hash"] == last_hash != load_spec(SMALL).spec_hash
    with ResultStore(path, readonly=True) as store:
        assert store.meta()["spec_hash"] == load_spec(spec_file).spec_hash


def _default_sigint():
    # a test suite started in the background (`cmd &`) inherits SIGINT ignored, and Python
    # then never turns it into KeyboardInterrupt: give the run the default handling a
    # terminal user has
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_run(store_dir):
    cmd = [sys.executable, "-m", "simstudy", "run", str(KILL), "--jobs", "2", "--no-progress",
           "--store-dir", str(store_dir), "--task", "simstudy.engine.fakes:slow_fake_task"]
    return subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, preexec_fn=_default_sigint,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for_rows(proc, db, count, timeout=60.0) -> int:
    stored = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists():
            try:
                with sqlite3.connect(db, timeout=5) as conn:
                    stored = conn.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
            except sqlite3.OperationalError:
                stored = 0
            if stored >= count:
                break
        time.sleep(0.02)
    return stored


def test_interrupted_run_resumes_to_the_same_store(tmp_path):
    """SIGKILL a CLI run after some tasks are stored, resume, compare with a clean run."""
    kill_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    proc = start_run(kill_dir)
    db = store_path("engine_kill", kill_dir)
    try:
        wait_for_rows(proc, db, 4)
    finally:
        if proc.poll() is None:
            # the run and its loky workers share the session we started it in
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    total = len(load_spec(KILL).tasks())
    with ResultStore(db, readonly=True) as store:  # still readable after the kill
        after_kill = len(store.task_rows())
    assert 4 <= after_kill < total
    # resumed with the same task function (another one would be refused as mixed provenance)
    resumed = run_study(KILL, jobs=2, store_dir=kill_dir, progress=False,
                        task_fn=slow_fake_task)
    assert resumed.skipped == after_kill and resumed.run == total - after_kill
    run_study(KILL, jobs=1, store_dir=clean_dir, progress=False, task_fn=fake_task)
    # slow_fake_task is fake_task after a sleep: the same rows, another task name
    a = comparable(load_results(KILL, store_dir=kill_dir)).drop(columns="prov_task")
    b = comparable(load_results(KILL, store_dir=clean_dir)).drop(columns="prov_task")
    assert len(a) == total and a.equals(b)


@pytest.mark.parametrize("signum, code, says", [
    (signal.SIGINT, 130, "interrupted: "),  # Ctrl-C
    (signal.SIGTERM, 143, "stopped by SIGTERM: "),  # kill, a scheduler's time limit
])
def test_a_stopped_run_says_what_it_stored(tmp_path, signum, code, says):
    proc = start_run(tmp_path)
    db = store_path("engine_kill", tmp_path)
    try:
        wait_for_rows(proc, db, 2)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    err = err.decode()
    assert proc.returncode == code, err[-2000:]
    assert says in err and "task(s) done now" in err, err[-2000:]
    assert "rerun the same command to resume" in err and "Traceback" not in err
    with ResultStore(db, readonly=True) as store:
        assert 2 <= len(store.task_rows()) < len(load_spec(KILL).tasks())


def test_sigterm_handler_is_restored_after_a_run(tmp_path):
    from simstudy import cli

    before = signal.getsignal(signal.SIGTERM)
    with cli._sigterm_stops_run():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before


def test_dask_backend_matches_loky(reference, tmp_path):
    distributed = pytest.importorskip("distributed")
    _, ref = reference
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        summary = run(SMALL, tmp_path, backend="dask", scheduler=client, jobs=2)
        assert summary.run == 18
        # an address works too (the client is made and closed by the runner)
        shutil.rmtree(tmp_path)
        run(SMALL, tmp_path, backend="dask", scheduler=cluster.scheduler_address)
    assert comparable(load_results(SMALL, store_dir=tmp_path)).equals(ref)


def test_invalid_run_options(tmp_path):
    with pytest.raises(ValueError, match="backend: unknown backend 'spark'"):
        run(SMALL, tmp_path, backend="spark")
    with pytest.raises(ValueError, match="jobs: expected a positive integer"):
        run(SMALL, tmp_path, jobs=0)
    with pytest.raises(ValueError, match="scheduler: the dask backend needs"):
        run(SMALL, tmp_path, backend="dask")


def test_two_runs_never_share_a_store(tmp_path):
    from simstudy.engine.errors import StoreLockedError
    from simstudy.engine.store import StoreLock

    held = StoreLock(store_path("engine_small", tmp_path)).acquire()
    try:
        with pytest.raises(StoreLockedError, match="is locked by another run .pid "
                           f"{os.getpid()} on "):
            run(SMALL, tmp_path, jobs=1)
    finally:
        held.release()
    assert run(SMALL, tmp_path, jobs=1).run == 18  # released: the run goes ahead


def test_renamed_label_keeps_results(tmp_path):
    spec_file = tmp_path / "engine_small.toml"
    spec_file.write_text(SMALL.read_text())
    run(spec_file, tmp_path, jobs=1)
    spec_file.write_text(SMALL.read_text().replace('label = "over"', 'label = "overfit"'))
    assert run(spec_file, tmp_path, jobs=1).run == 0
    df = load_results(spec_file, store_dir=tmp_path)
    assert set(df["label"]) == {"exact", "overfit"} and len(df) == 18


def test_load_results_follows_the_spec(tmp_path):
    spec_file = tmp_path / "engine_small.toml"
    spec_file.write_text(SMALL.read_text())
    run(spec_file, tmp_path, jobs=1)
    # a narrower spec (one fit dropped, fewer replications) sees only its own tasks
    text = SMALL.read_text().replace("replications = 3", "replications = 2")
    spec_file.write_text(text[: text.index('[[fit]]\nlabel = "over"')])
    df = load_results(spec_file, store_dir=tmp_path)
    assert len(df) == 4 * 2 and set(df["label"]) == {"exact"} and df["rep"].max() == 1
    keys = ["label", "protocol", "n", "rep"]
    assert df[keys].equals(df[keys].sort_values(keys, ignore_index=True))


def test_malformed_task_result_is_an_error(tmp_path):
    from simstudy.engine.fakes import malformed_fake_task

    summary = run(SMALL, tmp_path, jobs=1, task_fn=malformed_fake_task)
    df = load_results(SMALL, store_dir=tmp_path)
    assert summary.failed == 18 and (df["status"] == "error").all()
    assert df.loc[df["rep"] == 0, "message"].str.contains("got 'fine'").all()
    assert df.loc[df["rep"] == 1, "message"].str.contains("got 'NoneType'").all()


def test_staged_run_keeps_whole_replications_and_completes_later(reference, tmp_path):
    _, ref_df = reference
    spec = load_spec(SMALL)
    reps = [t.rep for t in spec.tasks()]
    assert reps == sorted(reps), "tasks must be replication-major"
    first = run(SMALL, tmp_path, jobs=1, max_reps=1)
    n_conditions = len(spec.conditions())
    assert first.run == n_conditions
    assert set(load_results(SMALL, store_dir=tmp_path)["rep"]) == {0}
    rest = run(SMALL, tmp_path, jobs=1)
    assert rest.skipped == n_conditions
    assert rest.run == n_conditions * (spec.replications - 1)
    pd.testing.assert_frame_equal(comparable(load_results(SMALL, store_dir=tmp_path)), ref_df)
    with pytest.raises(ValueError, match="max_reps: expected a positive integer"):
        run(SMALL, tmp_path, max_reps=0)


def test_staged_by_n_runs_small_n_first_and_completes_later(reference, tmp_path):
    _, ref_df = reference
    spec = load_spec(SMALL)
    ns = sorted({c.n for c in spec.conditions()})
    assert len(ns) >= 2
    small = [c for c in spec.conditions() if c.n <= ns[0]]
    first = run(SMALL, tmp_path, jobs=1, max_n=ns[0], max_reps=1)
    assert first.total == first.run == len(small)
    assert set(load_results(SMALL, store_dir=tmp_path)["n"]) == {ns[0]}
    again = run(SMALL, tmp_path, jobs=1, max_n=ns[0], max_reps=1)
    assert again.run == 0 and again.skipped == len(small)
    rest = run(SMALL, tmp_path, jobs=1)
    assert rest.skipped == len(small) and rest.run == spec.n_tasks() - len(small)
    pd.testing.assert_frame_equal(comparable(load_results(SMALL, store_dir=tmp_path)), ref_df)
    with pytest.raises(ValueError, match="max_n: expected a positive integer"):
        run(SMALL, tmp_path, max_n=0)
