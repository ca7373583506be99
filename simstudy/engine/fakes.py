"""Fake task functions: cheap, deterministic stand-ins for :func:`run_task`.

They exercise the engine (seeds, parallelism, store, resume) without fitting anything: the
"fit" is a summary of the task's real data set, so results still depend on the data seed and
the fit seed exactly as real fits do. Used by the tests, the engine benchmark and
``simstudy run --task simstudy.engine.fakes:fake_task``.
"""

from __future__ import annotations

import json
import time

import numpy as np

from simstudy.engine.task import generate

__all__ = ["fake_task", "slow_fake_task", "failing_fake_task", "malformed_fake_task"]


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
