"""Shared helpers of the engine tests: the test studies, a fake run, one-line error checks."""

from __future__ import annotations

from pathlib import Path

from simstudy.engine import run_study
from simstudy.engine.fakes import fake_task

DATA = Path(__file__).parent / "data"
SMALL = DATA / "engine_small.toml"  # 6 conditions x 3 replications
KILL = DATA / "engine_kill.toml"    # 2 conditions x 30 replications of cheap tasks
ROOT = Path(__file__).resolve().parents[1]


def run(spec, store, **kw):
    """``run_study`` with the fake task, no progress bar (and any option overridden)."""
    kw.setdefault("progress", False)
    kw.setdefault("task_fn", fake_task)
    return run_study(spec, store_dir=store, **kw)


def one_error_line(capsys) -> str:
    """The single line a failed command printed on stderr (no traceback)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]
