"""A store you can trust: backups that lose nothing, provenance that never mixes silently,
corruption refused in one line, atomic exports, read-only and network storage, locking."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from simstudy.cli import main
from simstudy.engine import ProvenanceMismatchError, load_results, load_spec, store_path
from simstudy.engine import provenance as prov
from simstudy.engine import store as store_module
from simstudy.engine.errors import (
    LockUnsupportedError,
    StorageError,
    StoreCorruptError,
)
from simstudy.engine.fakes import fake_task, slow_fake_task
from simstudy.engine.store import ResultStore, StoreLock
from tests.engine_helpers import KILL, ROOT, SMALL, one_error_line
from tests.engine_helpers import run as run_any_jobs

FAKE = ["--task", "simstudy.engine.fakes:fake_task"]


def run(spec, store, **kw):
    """A fake run in this process (jobs = 1 unless given)."""
    return run_any_jobs(spec, store, **{"jobs": 1, **kw})


def rows_in(path) -> int:
    with ResultStore(path, readonly=True) as store:
        return store.verify()


def spec_copy(tmp_path, source=SMALL) -> Path:
    path = tmp_path / source.name
    path.write_text(source.read_text())
    return path


# -- --force-new: backups ------------------------------------------------------------------------
def test_force_new_backs_up_every_row_while_another_connection_is_open(tmp_path):
    spec = spec_copy(tmp_path)
    path = store_path("engine_small", tmp_path)
    run(spec, tmp_path, max_reps=1)
    # a notebook holds the store open: the run's last close cannot merge the write-ahead log,
    # so the newest rows live only in the -wal file
    notebook = sqlite3.connect(path)
    assert notebook.execute("SELECT COUNT(*) FROM tasks").fetchone()[0] == 6
    run(spec, tmp_path)
    assert Path(f"{path}-wal").stat().st_size > 0
    spec.write_text(SMALL.read_text().replace("root_seed = 7", "root_seed = 8"))
    summary = run(spec, tmp_path, force_new=True)
    assert summary.backup is not None and summary.backup.exists()
    assert rows_in(summary.backup) == 18  # the old code kept only the merged part
    with ResultStore(summary.backup, readonly=True) as old:
        assert old.meta()["spec_hash"] != load_spec(spec).spec_hash
    # the store was emptied in place, not moved under the notebook's feet
    assert notebook.execute("SELECT COUNT(*) FROM tasks").fetchone()[0] == 18
    notebook.close()
    assert rows_in(path) == 18 and summary.run == 18


def test_force_new_never_overwrites_a_backup(tmp_path, monkeypatch):
    # two --force-new runs in the same second
    monkeypatch.setattr(store_module.time, "strftime", lambda fmt: "20250101-000000")
    spec = spec_copy(tmp_path)
    run(spec, tmp_path)
    for seed in (8, 9):
        spec.write_text(SMALL.read_text().replace("root_seed = 7", f"root_seed = {seed}"))
        run(spec, tmp_path, force_new=True)
    backups = sorted(tmp_path.glob("engine_small.*.old.sqlite"))
    assert [b.name for b in backups] == ["engine_small.20250101-000000-2.old.sqlite",
                                         "engine_small.20250101-000000.old.sqlite"]
    hashes = set()
    for b in backups:
        with ResultStore(b, readonly=True) as old:
            assert old.verify() == 18
            hashes.add(old.meta()["spec_hash"])
    assert len(hashes) == 2  # two different backups, both whole


def test_force_new_removes_nothing_when_the_backup_is_short(tmp_path, monkeypatch):
    spec = spec_copy(tmp_path)
    run(spec, tmp_path)
    spec.write_text(SMALL.read_text().replace("root_seed = 7", "root_seed = 8"))
    real = ResultStore.row_count
    monkeypatch.setattr(ResultStore, "row_count", lambda self: real(self) + 1)
    with pytest.raises(StorageError, match="holds 18 rows but .* holds 19; nothing was "
                       "removed"):
        run(spec, tmp_path, force_new=True)
    monkeypatch.undo()
    assert rows_in(store_path("engine_small", tmp_path)) == 18


# -- provenance ----------------------------------------------------------------------------------
def test_rows_record_their_provenance(tmp_path):
    run(SMALL, tmp_path)
    df = load_results(SMALL, store_dir=tmp_path)
    mine = prov.collect(fake_task)
    assert (df["prov_task"] == "simstudy.engine.fakes:fake_task").all()
    for field in ("code", "simstudy", "host", "cpu", "python", "numpy", "scipy", "numba",
                  "blas"):
        assert (df[f"prov_{field}"] == mine[field]).all(), field
        assert mine[field], field
    assert len(mine["code"]) == 16 and df["created"].str.match(r"\d{4}-\d\d-\d\dT").all()


def test_fake_rows_never_count_as_real_results(tmp_path, capsys):
    """The issue's case: rows of --task fakes:fake_task, then a normal run."""
    args = ["run", str(SMALL), "--jobs", "1", "--no-progress", "--store-dir", str(tmp_path)]
    assert main(args + FAKE) == 0
    capsys.readouterr()
    assert main(args) == 2
    line = one_error_line(capsys)
    assert "holds 18 row(s) computed by other code or libraries" in line
    assert "task simstudy.engine.fakes:fake_task -> simstudy.engine.task:run_task" in line
    assert "--allow-mixed" in line and "--force-new" in line
    assert rows_in(store_path("engine_small", tmp_path)) == 18


def test_an_edited_estimator_does_not_mix(tmp_path, monkeypatch):
    spec = spec_copy(tmp_path)
    run(spec, tmp_path, max_reps=1)
    monkeypatch.setattr(prov, "_CACHE", {})
    monkeypatch.setattr(prov, "code_hash", lambda task_fn=None: "0123456789abcdef")
    with pytest.raises(ProvenanceMismatchError, match=r"code [0-9a-f]{16} -> 0123456789abcdef"):
        run(spec, tmp_path)
    # a complete store too: its rows would count as results of the edited code
    monkeypatch.undo()
    monkeypatch.setattr(prov, "_CACHE", {})
    run(spec, tmp_path)
    monkeypatch.setattr(prov, "_CACHE", {})
    monkeypatch.setattr(prov, "code_hash", lambda task_fn=None: "0123456789abcdef")
    with pytest.raises(ProvenanceMismatchError, match="holds 18 row"):
        run(spec, tmp_path)
    assert run(spec, tmp_path, allow_mixed=True).run == 0


def test_allow_mixed_and_force_new_are_the_two_ways_on(tmp_path, capsys):
    spec = spec_copy(tmp_path)
    run(spec, tmp_path, max_reps=1)
    summary = run(spec, tmp_path, task_fn=slow_fake_task, allow_mixed=True)
    assert summary.run == 12
    assert main(["status", str(spec), "--store-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "computed by (12 rows): simstudy.engine.fakes:slow_fake_task" in out
    assert "computed by (6 rows): simstudy.engine.fakes:fake_task" in out
    assert "note: the rows come from 2 different code or library versions" in out
    df = load_results(spec, store_dir=tmp_path)
    assert df.groupby("rep")["prov_task"].nunique().eq(1).all()
    # a new store: the mixed one is kept as a backup
    spec.write_text(spec.read_text().replace("replications = 3", "replications = 4"))
    summary = run(spec, tmp_path, force_new=True)
    assert summary.backup is not None and rows_in(summary.backup) == 18
    assert summary.run == 24 and set(load_results(spec, store_dir=tmp_path)["prov_task"]) == {
        "simstudy.engine.fakes:fake_task"}


def test_a_worker_with_other_code_is_refused_mid_run(tmp_path, monkeypatch):
    real = prov.collect
    calls = []

    def collect(task_fn):
        calls.append(task_fn)
        record = real(task_fn)
        # the parent's own record first, then "workers" on a node with another numpy
        return record if len(calls) == 1 else {**record, "numpy": "0.0.1", "host": "node7"}

    monkeypatch.setattr(prov, "collect", collect)
    with pytest.raises(ProvenanceMismatchError, match="a worker on host node7 computes with "
                       "other code .*numpy .* -> 0.0.1.*its result was not stored"):
        run(SMALL, tmp_path)
    assert rows_in(store_path("engine_small", tmp_path)) == 0


# -- corruption ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clean_store(tmp_path_factory):
    """A store of the 60-task study (its file has enough pages to corrupt the middle)."""
    folder = tmp_path_factory.mktemp("clean")
    run(KILL, folder)
    path = store_path("engine_kill", folder)
    assert not Path(f"{path}-wal").exists()  # merged: the whole store is in the one file
    return path


def _garbage_middle(b: bytearray) -> bytes:
    mid = len(b) // 2
    b[mid:mid + 8192] = bytes((i * 37 + 11) % 256 for i in range(8192))
    return bytes(b)


def _rot_a_digit(b: bytearray) -> bytes:
    i = b.find(b'"tv": ')
    j = i + len('"tv": ')
    b[j + 2] = ord("9") if b[j + 2] != ord("9") else ord("1")  # still valid JSON and SQLite
    return bytes(b)


def _zero_json(b: bytearray) -> bytes:
    i = b.find(b'{"hellinger"')
    b[i:i + 40] = bytes(40)
    return bytes(b)


CORRUPTIONS = {
    "8 KiB of garbage in the middle": (_garbage_middle, "corrupt"),
    "cut short by 1000 bytes": (lambda b: bytes(b[:-1000]), "corrupt"),
    "a changed digit in a stored metric": (_rot_a_digit, "fails its checksum"),
    "a row's JSON zeroed": (_zero_json, "fails its checksum"),
    "a garbage header": (lambda b: bytes(100) + bytes(b[100:]), "not a database"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_stores_are_refused_in_one_line(case, clean_store, tmp_path, capsys):
    damage, needle = CORRUPTIONS[case]
    path = store_path("engine_kill", tmp_path)
    path.write_bytes(damage(bytearray(clean_store.read_bytes())))
    cid = load_spec(KILL).conditions()[0].condition_id
    commands = [
        ["run", str(KILL), "--jobs", "1", "--no-progress", *FAKE],
        ["status", str(KILL)],
        ["export", str(KILL), "--out", str(tmp_path / "x.csv")],
        ["replay", str(KILL), "--condition", cid, "--rep", "0", *FAKE],
    ]
    for args in commands:
        assert main([*args, "--store-dir", str(tmp_path)]) == 1, (case, args)
        line = one_error_line(capsys)
        assert f"store {path} is corrupt" in line and needle in line, (case, args, line)
        assert "already stored" not in line
    assert not (tmp_path / "x.csv").exists()
    with pytest.raises(StoreCorruptError):
        load_results(KILL, store_dir=tmp_path)


def test_a_file_that_is_not_a_store(tmp_path, capsys):
    store_path("engine_small", tmp_path).write_text("this is not a database\n" * 50)
    assert main(["status", str(SMALL), "--store-dir", str(tmp_path)]) == 1
    assert "is corrupt (file is not a database)" in one_error_line(capsys)


# -- export --------------------------------------------------------------------------------------
@pytest.fixture()
def small_store(tmp_path):
    run(SMALL, tmp_path)
    return tmp_path


def test_export_refuses_to_overwrite_without_force(small_store, tmp_path, capsys):
    out = tmp_path / "out" / "x.csv"
    args = ["export", str(SMALL), "--store-dir", str(small_store), "--out", str(out)]
    assert main(args) == 0
    out.write_text("precious\n")
    assert main(args) == 2
    assert "exists; pass --force to replace it" in one_error_line(capsys)
    assert out.read_text() == "precious\n"
    assert main([*args, "--force"]) == 0
    assert len(pd.read_csv(out)) == 18


def test_export_on_a_full_disk_keeps_the_old_file(small_store, tmp_path, capsys, monkeypatch):
    out = tmp_path / "x.csv"
    out.write_text("previous export\n")

    def full_disk(self, path, **kw):
        Path(path).write_text("partial,row\n1,")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(pd.DataFrame, "to_csv", full_disk)
    assert main(["export", str(SMALL), "--store-dir", str(small_store), "--out", str(out),
                 "--force"]) == 1
    line = one_error_line(capsys)
    assert f"cannot write {out}: the disk is full" in line and "unchanged" in line
    assert out.read_text() == "previous export\n"
    assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name or p.suffix == ".csv"] == [
        "x.csv"]


def test_export_to_a_folder_or_an_unwritable_path(small_store, tmp_path, capsys):
    base = ["export", str(SMALL), "--store-dir", str(small_store)]
    assert main([*base, "--out", str(tmp_path)]) == 2
    assert "is a folder; give a file name" in one_error_line(capsys)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main([*base, "--out", str(blocker / "x.csv")]) == 1
    line = one_error_line(capsys)
    assert f"cannot create the folder {blocker}" in line


def test_export_has_tidy_columns(small_store, tmp_path):
    out = tmp_path / "x.parquet"
    assert main(["export", str(SMALL), "--store-dir", str(small_store), "--out", str(out)]) == 0
    df = pd.read_parquet(out)  # the format follows the suffix
    assert {"est_mean_y", "est_mean_x", "created", "prov_task", "prov_code", "prov_host",
            "init_noise", "n_init", "extra_atoms"} <= set(df.columns)
    stored = df["params_json"].map(json.loads)
    assert (stored.map(lambda p: p["mean_y"]) == df["est_mean_y"]).all()
    assert set(df.loc[df["label"] == "over", "extra_atoms"]) == {"[1]"}


def test_param_columns_of_a_real_fit():
    from simstudy.engine.results import param_columns

    params = {"beta0": [0.0, 1.5], "beta1": [[0.0, 0.0], [1.0, -2.0]], "a": [[1.0, 2.0],
              [3.0, 4.0]], "b": [0.5, -0.5], "v": [0.1, 0.2], "K": 1, "ref": 0}
    cols = param_columns(json.dumps(params))
    assert cols["est_beta0_2"] == 1.5 and cols["est_beta1_2_2"] == -2.0
    assert cols["est_a_1_2"] == 2.0 and cols["est_v_2"] == 0.2 and cols["est_b_1"] == 0.5
    assert "est_K" not in cols and "est_ref" not in cols and len(cols) == 14
    assert param_columns(None) == {}


# -- a changed spec ------------------------------------------------------------------------------
def test_status_and_export_notice_a_changed_spec(small_store, tmp_path, capsys):
    spec = tmp_path / "engine_small.toml"
    # fewer replications: 'missing' must never be negative
    spec.write_text(SMALL.read_text().replace("replications = 3", "replications = 2"))
    assert main(["status", str(spec), "--store-dir", str(small_store)]) == 2
    captured = capsys.readouterr()
    assert "12/12 tasks done, 0 missing" in captured.out
    # no negative count anywhere (a token, not a substring: the store's path may hold "-1")
    assert not re.search(r"(^|\s)-\d", captured.out), captured.out
    assert "the spec changed since these rows were stored" in captured.err
    assert "replication 2 but the spec asks for 2" in captured.err
    # another seed: no stored row belongs to the spec
    spec.write_text(SMALL.read_text().replace("root_seed = 7", "root_seed = 8"))
    assert main(["status", str(spec), "--store-dir", str(small_store)]) == 2
    assert "0/18 tasks done" in capsys.readouterr().out
    assert main(["export", str(spec), "--store-dir", str(small_store), "--out",
                 str(tmp_path / "x.csv")]) == 2
    line = one_error_line(capsys)
    assert "18 stored row(s) of 6 condition(s) are not in the spec any more" in line
    assert not (tmp_path / "x.csv").exists()
    with pytest.raises(ValueError, match="do not belong to this spec"):
        load_results(spec, store_dir=small_store, strict=True)


def test_every_command_works_from_any_directory(tmp_path):
    project = tmp_path / "project"
    (project / "studies").mkdir(parents=True)
    spec = project / "studies" / "engine_small.toml"
    spec.write_text(SMALL.read_text())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def simstudy(*args):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("SIMSTUDY_STORE_DIR", None)
        return subprocess.run([sys.executable, "-m", "simstudy", *args], cwd=elsewhere,
                              capture_output=True, text=True, timeout=300, env=env)

    proc = simstudy("run", str(spec), "--jobs", "1", "--no-progress", *FAKE)
    assert proc.returncode == 0, proc.stderr
    # the store is the project's, whatever the working directory
    assert store_path("engine_small", project / "results" / "store").is_file()
    proc = simstudy("status", str(spec))
    assert proc.returncode == 0 and "18/18 tasks done" in proc.stdout, proc.stderr
    proc = simstudy("export", str(spec))
    assert proc.returncode == 0, proc.stderr
    assert (project / "results" / "export" / "engine_small.csv").is_file()
    proc = simstudy("list", "--studies-dir", str(project / "studies"))
    assert proc.returncode == 0 and " 18 " in proc.stdout, proc.stdout
    assert not (elsewhere / "results").exists()


# -- read-only storage ---------------------------------------------------------------------------
def _wal_copy(tmp_path) -> Path:
    """A copy of a store whose newest rows are only in its write-ahead log."""
    src_dir = tmp_path / "src"
    run(SMALL, src_dir, max_reps=1)
    path = store_path("engine_small", src_dir)
    keeper = sqlite3.connect(path)  # blocks the merge of the log at the run's close
    keeper.execute("SELECT COUNT(*) FROM tasks").fetchone()
    run(SMALL, src_dir)
    dst = tmp_path / "ro"
    dst.mkdir()
    for suffix in ("", "-wal"):
        shutil.copyfile(f"{path}{suffix}", dst / f"{path.name}{suffix}")
    keeper.close()
    return dst


@pytest.mark.parametrize("with_log", [True, False])
def test_read_only_storage_is_readable(tmp_path, monkeypatch, capsys, with_log):
    """Where SQLite cannot open a WAL store read-only (no writable -shm), status still works."""
    folder = _wal_copy(tmp_path) if with_log else tmp_path / "ro"
    if not with_log:
        run(SMALL, folder)
    real = sqlite3.connect

    def read_only_storage(database, *args, **kwargs):
        conn = real(database, *args, **kwargs)
        if str(folder) in str(database) and "mode=ro" in str(database):
            raise sqlite3.OperationalError("unable to open database file")
        return conn

    monkeypatch.setattr(store_module.sqlite3, "connect", read_only_storage)
    assert main(["status", str(SMALL), "--store-dir", str(folder)]) == 0
    assert "18/18 tasks done" in capsys.readouterr().out
    assert len(load_results(SMALL, store_dir=folder)) == 18


def _unshare_available() -> bool:
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _unshare_available(), reason="needs user and mount namespaces")
def test_a_real_read_only_mount(tmp_path):
    """A read-only bind mount in a private mount namespace: reading works, writing says so."""
    folder = _wal_copy(tmp_path)
    script = (f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder} && "
              f"{sys.executable} -m simstudy status {SMALL} --store-dir {folder}; echo rc=$?; "
              f"{sys.executable} -m simstudy run {SMALL} --store-dir {folder} --jobs 1 "
              f"--no-progress --task simstudy.engine.fakes:fake_task; echo rc=$?")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True,
                          text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if "mount:" in proc.stderr and "rc=" not in proc.stdout:
        pytest.skip(f"bind mounts refused here: {proc.stderr.strip()[:200]}")
    assert "18/18 tasks done" in proc.stdout and "rc=0" in proc.stdout, proc.stdout + proc.stderr
    err = [line for line in proc.stderr.splitlines() if line.startswith("simstudy run")]
    assert proc.stdout.strip().endswith("rc=1"), proc.stdout
    assert len(err) == 1 and "read-only" in err[0] and "Traceback" not in proc.stderr, err


# -- locking and network filesystems -------------------------------------------------------------
def test_locked_by_another_run_is_not_a_filesystem_problem(tmp_path, capsys):
    held = StoreLock(store_path("engine_small", tmp_path)).acquire()
    try:
        assert main(["run", str(SMALL), "--store-dir", str(tmp_path), "--no-progress",
                     *FAKE]) == 1
        line = one_error_line(capsys)
        assert "is locked by another run (pid" in line and "cannot lock" not in line
    finally:
        held.release()


def test_a_filesystem_that_cannot_lock(tmp_path, capsys, monkeypatch):
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(LockUnsupportedError, match="cannot lock files .ENOLCK"):
        run(SMALL, tmp_path)
    assert main(["run", str(SMALL), "--store-dir", str(tmp_path), "--no-progress", *FAKE]) == 1
    line = one_error_line(capsys)
    assert "cannot lock files" in line and "this is not another run" in line
    assert "locked by another run" not in line


def test_network_filesystems_need_the_delete_journal(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(store_module, "filesystem_type", lambda path: "nfs4")
    args = ["run", str(SMALL), "--store-dir", str(tmp_path), "--no-progress", "--jobs", "1",
            *FAKE]
    assert main(args) == 2
    line = one_error_line(capsys)
    assert "on a nfs4 filesystem" in line and "--journal-mode delete" in line
    assert main([*args, "--journal-mode", "delete", "--max-reps", "1"]) == 0
    path = store_path("engine_small", tmp_path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert not Path(f"{path}-wal").exists()
    assert main(args) == 0  # the store keeps its journal mode: no option needed again
    assert rows_in(path) == 18
    assert main(["status", str(SMALL), "--store-dir", str(tmp_path)]) == 0


def test_filesystem_type_reads_the_mount_table(tmp_path):
    kind = store_module.filesystem_type(tmp_path)
    assert kind is None or (isinstance(kind, str) and kind)
    if Path("/proc/self/mounts").exists():
        assert kind is not None


# -- storage failures during a run ---------------------------------------------------------------
def test_disk_full_during_a_run_keeps_what_was_stored(tmp_path, capsys, monkeypatch):
    run(KILL, tmp_path, max_reps=2)
    real = ResultStore._connect_writer

    def small_disk(self, journal_mode):
        conn = real(self, journal_mode)
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + 1}")  # SQLite's own "disk is full"
        return conn

    monkeypatch.setattr(ResultStore, "_connect_writer", small_disk)
    args = ["run", str(KILL), "--store-dir", str(tmp_path), "--no-progress", "--jobs", "1",
            *FAKE]
    assert main(args) == 1
    line = one_error_line(capsys)
    assert "the disk is full" in line and "rerun the same command to resume" in line
    stored = rows_in(store_path("engine_kill", tmp_path))
    assert 4 <= stored < 60
    monkeypatch.undo()
    assert main(args) == 0
    clean = tmp_path / "clean"
    run(KILL, clean)
    a = load_results(KILL, store_dir=tmp_path).drop(columns=["seconds", "created"])
    b = load_results(KILL, store_dir=clean).drop(columns=["seconds", "created"])
    pd.testing.assert_frame_equal(a, b)


def test_a_read_only_folder_is_one_line(tmp_path, capsys, monkeypatch):
    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(store_module, "open", read_only, raising=False)
    assert main(["run", str(SMALL), "--store-dir", str(tmp_path), "--no-progress", *FAKE]) == 1
    line = one_error_line(capsys)
    assert "cannot create the store's lock file" in line and "read-only" in line


def test_a_too_long_study_name_is_refused_at_validation(tmp_path, capsys):
    name = "s" * 244
    spec = tmp_path / f"{name}.toml"
    spec.write_text(SMALL.read_text().replace('name = "engine_small"', f'name = "{name}"'))
    assert main(["run", str(spec), "--store-dir", str(tmp_path), "--no-progress", *FAKE]) == 2
    line = one_error_line(capsys)
    assert "key 'study.name': is 244 bytes long; at most 100" in line


_SCHEMA_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE conditions (condition_id TEXT PRIMARY KEY, label TEXT, protocol TEXT, design TEXT,
    true_K INTEGER, n INTEGER, n_experts INTEGER, n_selected INTEGER, init TEXT,
    content_json TEXT NOT NULL);
CREATE TABLE tasks (condition_id TEXT NOT NULL, rep INTEGER NOT NULL, spec_hash TEXT, n INTEGER,
    status TEXT, message TEXT, stop_reason TEXT, n_iter INTEGER, seconds REAL, loglik REAL,
    grad_norm REAL, flag_var_floor INTEGER, flag_empty_expert INTEGER, flag_non_finite INTEGER,
    params_json TEXT, metrics_json TEXT, created TEXT, PRIMARY KEY (condition_id, rep));
"""


def test_a_store_of_the_previous_schema(tmp_path, capsys):
    """Stores written before provenance existed stay readable; adding to them is asked for."""
    spec = load_spec(SMALL)
    path = store_path("engine_small", tmp_path)
    conn = sqlite3.connect(path)
    conn.executescript(_SCHEMA_1)
    rows = [(c.condition_id, r, spec.spec_hash, c.n, "ok", "", "tol", 5, 0.1, -10.0 - r, 1e-3,
             0, 0, 0, json.dumps({"mean_y": 0.1}), json.dumps({"hellinger": 0.01}),
             "2025-01-01T00:00:00+00:00") for c in spec.conditions() for r in range(2)]
    conn.executemany(f"INSERT INTO tasks VALUES ({', '.join('?' * 17)})", rows)
    conn.executemany("INSERT INTO meta VALUES (?, ?)", [("study", "engine_small"),
                                                        ("spec_hash", spec.spec_hash)])
    conn.commit()
    conn.close()
    assert main(["status", str(SMALL), "--store-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "12/18 tasks done" in out and "computed by (12 rows): unknown" in out
    assert len(load_results(SMALL, store_dir=tmp_path)) == 12
    args = ["run", str(SMALL), "--store-dir", str(tmp_path), "--no-progress", "--jobs", "1",
            *FAKE]
    assert main(args) == 2
    assert "rows stored before provenance was recorded" in one_error_line(capsys)
    assert main([*args, "--allow-mixed"]) == 0
    df = load_results(SMALL, store_dir=tmp_path)
    assert len(df) == 18 and df["prov_task"].isna().sum() == 12
    # an old row that rots is still caught (no checksum, but its JSON must read)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE tasks SET metrics_json = ? WHERE rep = 0 AND checksum IS NULL",
                     ("\0" * 20,))
    assert main(["status", str(SMALL), "--store-dir", str(tmp_path)]) == 1
    assert "holds unreadable JSON" in one_error_line(capsys)
