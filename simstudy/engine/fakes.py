"""Fake task functions: cheap, deterministic stand-ins for :func:`run_task`.

They exercise the engine (seeds, parallelism, store, resume) without fitting anything: the
"fit" is a summary of the task's real data set, so results still depend on the data seed and
the fit seed exactly as real fits do. Used by the tests, the engine benchmark and
``simstudy run --task simstudy.engine.fakes:fake_task``.
"""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np

from simstudy.engine.task import generate

__all__ = ["fake_task", "slow_fake_task", "failing_fake_task", "malformed_fake_task",
           "budget_fake_task", "killing_fake_task", "timed_fake_task", "stuck_fake_task"]


def fake_task(task) -> dict:
    """Summarise the task's data and draw from the fit seed; statuses cycle with the data."""
    t0 = time.perf_counter()
    X, y = generate(task)
    noise = np.random.default_rng(task.fit_seed()).standard_normal(3)
    loglik = float(-0.5 * np.sum(y**2) + noise[0])
    # a deterministic status mix, so status counts are exercised
    status = ("ok", "ok", "not_converged", "degenerate")[int(abs(noise[1]) * 1000) % 4]
    return {
        "status": status,
        "message": "",
        "stop_reason": "tol" if status == "ok" else "max_iter",
        "n_iter": int(abs(noise[2]) * 100) + 1,
        "seconds": time.perf_counter() - t0,
        "loglik": loglik,
        "grad_norm": float(abs(noise[2])),
        "flags": {"var_floor": status == "degenerate", "empty_expert": False,
                  "non_finite": False},
        "params_json": json.dumps({"mean_y": float(np.mean(y)), "mean_x": float(np.mean(X))}),
        "metrics": {"hellinger": float(abs(np.mean(y)) / np.sqrt(task.n)),
                    "tv": float(np.std(y)), "loss_note": ""},
    }


def slow_fake_task(task) -> dict:
    """:func:`fake_task` after a short sleep (to interrupt runs mid-way in tests)."""
    time.sleep(0.05)
    return fake_task(task)


def failing_fake_task(task) -> dict:
    """:func:`fake_task`, but replication 1 raises (the runner must store an error row)."""
    if task.rep == 1:
        raise RuntimeError(f"injected failure in {task.condition_id} rep 1")
    return fake_task(task)


def malformed_fake_task(task):
    """Returns something that is not a result (the runner must store an error row)."""
    return {"status": "fine"} if task.rep == 0 else None


def budget_fake_task(task) -> dict:
    """:func:`fake_task` that honours the time budget ``[em] max_seconds`` like the estimator.

    Replication 1 "iterates" past its budget and stops with ``stop_reason = "timeout"`` (status
    ``"timeout"``); the others finish well inside it.
    """
    result = fake_task(task)
    budget = task.em.get("max_seconds")
    if budget is not None and task.rep == 1:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < budget:
            time.sleep(min(0.01, budget))
        result.update(status="timeout", stop_reason="timeout",
                      seconds=time.perf_counter() - t0)
    return result


def killing_fake_task(task) -> dict:
    """:func:`fake_task`, but replication 1 kills its own process with SIGKILL.

    Only for runs with worker processes (``jobs >= 2``): it stands for a worker killed by the
    system (out of memory) or crashing in compiled code.
    """
    if task.rep == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return fake_task(task)


def timed_fake_task(task) -> dict:
    """:func:`fake_task` after 0.2 s, with the wall-clock start and end as metrics.

    The stored (start, end) intervals show how many tasks ran at once.
    """
    start = time.time()
    time.sleep(0.2)
    result = fake_task(task)
    result["metrics"].update(wall_start=start, wall_end=time.time())
    return result


def stuck_fake_task(task) -> dict:
    """:func:`fake_task` after 60 s: a fit that takes long (to kill runs while tasks run)."""
    time.sleep(60)
    return fake_task(task)
