"""One task: generate the data, fit, summarise.

:func:`run_task` is the default task function of the runner. It never raises: a fit that raises
is returned with status ``"error"`` and the message. Non-converged or degenerate fits are
outcomes (the status comes from :class:`~simstudy.estimation.FitResult`), never redrawn.

A task function takes a :class:`~simstudy.engine.spec.Task` and returns a dict with keys
``status, message, stop_reason, n_iter, seconds, loglik, grad_norm, flags (dict), params_json,
metrics (dict)``; :func:`error_result` builds the error form. Besides the losses, ``metrics``
holds the fit's diagnostics (:func:`fit_diagnostics`): the log-likelihood of the true
parameters on the same data and the gap, the passes, the global check, the certificate, the
smallest variance relative to var(y) and, for exact fits, whether each parameter's 95% Wald
interval covers the truth (``cover_<parameter>``). ``status`` is one of
:data:`STATUSES`; ``stop_reason`` is any short string (new ones need no change here);
``metrics`` maps names to floats or short strings, and the store keeps whatever keys it holds.

A fit that stops because it ran out of its time budget (``[em] max_seconds``; the estimator
reports ``stop_reason == "timeout"``) is stored with status ``"timeout"``.
"""

from __future__ import annotations

import json
import time
import warnings

import numpy as np

from simstudy.model.density import sample

__all__ = ["run_task", "generate", "fit_options", "check_fit_options", "error_result", "warmup",
           "fit_diagnostics", "RESULT_KEYS", "STATUSES"]

RESULT_KEYS = ("status", "message", "stop_reason", "n_iter", "seconds", "loglik", "grad_norm",
               "flags", "params_json", "metrics")
#: outcomes of a task; "timeout": the fit used up its time budget (max_seconds)
STATUSES = ("ok", "not_converged", "degenerate", "error", "timeout")


def error_result(exc: BaseException, seconds: float = float("nan")) -> dict:
    """The stored form of a task whose fit raised."""
    return {
        "status": "error",
        "message": f"{type(exc).__name__}: {exc}",
        "stop_reason": None,
        "n_iter": None,
        "seconds": seconds,
        "loglik": float("nan"),
        "grad_norm": float("nan"),
        "flags": {"var_floor": False, "empty_expert": False, "non_finite": False},
        "params_json": None,
        "metrics": {},
    }


def generate(task) -> tuple[np.ndarray, np.ndarray]:
    """The data set of the task's replication (depends on root seed, design, rep and n only)."""
    rng = np.random.default_rng(task.data_seed())
    return sample(task.truth(), task.n, task.inputs(), rng)


def fit_options(task) -> dict:
    """Keyword arguments of TopKMoEEM: the protocol's, then the fit's, then the [em] overrides."""
    from simstudy.estimation import protocol_options

    fit = task.fit
    # the papers' protocol takes the best of 5 starts for over-specified fits only
    opts = dict(protocol_options(task.protocol, task.n,
                                 over_specified=fit["k"] > task.truth().k))
    opts["init"] = fit["init"]
    if fit["init"] == "near_truth":
        opts["true_params"] = task.truth()
        opts["extra_atoms"] = tuple(fit["extra_atoms"])
    elif opts.get("truth_start"):
        # a data-started fit can start from the truth too when it has the truth's k experts
        if fit["k"] == task.truth().k:
            opts["true_params"] = task.truth()
        else:
            opts["truth_start"] = False
    if fit.get("init_noise") is not None:
        opts["init_noise"] = fit["init_noise"]
    if fit.get("n_init") is not None:
        opts["n_init"] = fit["n_init"]
    if fit.get("beta1_bound") is not None:
        opts["beta1_bound"] = fit["beta1_bound"]
    opts.update(task.em)
    return opts


def fit_diagnostics(res, truth, X, y) -> dict:
    """Per-fit diagnostics for the metrics dict (names outside the rate metrics' pattern).

    ``loglik_truth`` (l at the true parameters on the same data) and ``loglik_gap`` (fit
    minus truth: a negative gap means the fit is not the MLE); ``n_passes`` and
    ``passes_<kind>``; ``n_starts``, ``best_start``, ``start_reached_best`` (1/0, NaN without
    a global check) and ``start_gap``; ``var_min_rel`` (smallest fitted variance / var(y)) and
    ``flag_var_small``; the certificate's ``cert_*`` values; ``se_singular`` (1 when the
    observed information is singular) and, for exact fits (k = k*) with a non-singular
    information, ``cover_<name>`` = 1 when the 95% Wald interval of that parameter covers the
    true value (the reference expert's fixed gating excluded).
    """
    from simstudy.estimation.result import params_vector
    from simstudy.model import loglik

    l_truth = float(loglik(truth, X, y))
    out = {
        "loglik_truth": l_truth,
        "loglik_gap": float(res.loglik) - l_truth,
        "n_passes": float(res.n_passes),
        "n_starts": float(len(res.starts)),
        "best_start": str(res.best_start),
        "start_reached_best": (np.nan if res.start_reached_best is None
                               else float(res.start_reached_best)),
        "start_gap": float(res.start_gap),
        "var_min_rel": float(np.min(res.params.v) / max(float(np.var(y)), 1e-300)),
        "flag_var_small": float(bool(res.flags.get("var_small", False))),
        "se_singular": float(res.information == "singular"),
    }
    out.update({f"passes_{kind}": float(v) for kind, v in res.pass_counts.items()})
    if res.certificate is not None:
        out.update(res.certificate.to_metrics())
    if (res.information == "ok" and res.params.k == truth.k and res.params.ref == truth.ref
            and res.params.d == truth.d):
        ci = res.conf_int(0.05)
        true = params_vector(truth)
        for q, name in enumerate(res.names):
            if np.all(np.isfinite(ci[q])):
                out[f"cover_{name}"] = float(ci[q, 0] <= true[q] <= ci[q, 1])
    return out
def check_fit_options(task) -> tuple[str, str] | None:
    """Whether the estimator accepts the task's options, without data or fitting.

    Returns None, or ``(option, message)`` naming the first bad option (e.g. ``("acceleration",
    "'lbfgs' ... needs grad_tol")``), so that a spec is refused before anything runs.
    """
    import inspect

    from simstudy.estimation import TopKMoEEM

    opts = fit_options(task)
    accepted = inspect.signature(TopKMoEEM).parameters
    for option in opts:
        if option not in accepted:
            return option, f"{option}: the estimator of this version has no option {option!r}"
    est = TopKMoEEM(task.fit["k"], task.fit["K"], random_state=0, **opts)
    check = getattr(est, "_check_options", None)  # the estimator's own validation, if any
    if check is None:
        return None
    try:
        check()
    except ValueError as exc:
        option = str(exc).split(":", 1)[0].strip()
        return option, str(exc)
    return None


def run_task(task) -> dict:
    """Generate, fit and summarise one task (see the module docstring for the result keys).

    Warnings raised during the fit (e.g. a convergence warning) are not printed by the workers;
    their distinct messages go to the ``message`` field instead.
    """
    t0 = time.perf_counter()
    try:
        from simstudy.estimation import TopKMoEEM
        from simstudy.losses import compute_metrics

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            X, y = generate(task)
            est = TopKMoEEM(task.fit["k"], task.fit["K"],
                            random_state=np.random.default_rng(task.fit_seed()),
                            **fit_options(task))
            res = est.fit(X, y)
            metrics = compute_metrics(res.params, task.truth(), task.inputs())
            metrics.update(fit_diagnostics(res, task.truth(), X, y))
    except Exception as exc:  # a failed fit is an outcome of the study, the run goes on
        return error_result(exc, time.perf_counter() - t0)
    messages = list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))
    return {
        "status": "timeout" if res.stop_reason == "timeout" else res.status,
        "message": "; ".join(messages),
        "stop_reason": res.stop_reason,
        "n_iter": int(res.n_iter),
        "seconds": time.perf_counter() - t0,
        "loglik": float(res.loglik),
        "grad_norm": float(res.grad_norm),
        "flags": {k: bool(res.flags.get(k, False))
                  for k in ("var_floor", "empty_expert", "non_finite")},
        "params_json": json.dumps(res.params.to_dict()),
        "metrics": {k: (v if isinstance(v, str) else float(v)) for k, v in metrics.items()},
    }


def warmup(task) -> None:
    """Compile (or load from the numba cache) the EM kernels with a tiny fit in this process.

    Two processes that compile the same kernel for different signatures at once can leave
    numba's cache index pointing at the other signature's machine code (a segfault on the
    next load), so the first compile is serialised across processes by a lock file.
    """
    import fcntl
    import tempfile
    from dataclasses import replace
    from pathlib import Path

    small = replace(task, n=max(50, 10 * task.fit["k"]), em={**task.em, "max_iter": 3})
    lock = Path(tempfile.gettempdir()) / "simstudy-numba-compile.lock"
    try:
        fh = open(lock, "a")  # held for the duration of the warm-up
    except OSError:  # no writable temp folder: compile unserialised rather than not at all
        _warm(task, small)
        return
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        _warm(task, small)


def _warm(task, small) -> None:
    from simstudy.model import kernels_scan

    run_task(small)
    # the strict protocol's scans and continuation are not reached in three iterations
    kernels_scan.warm_up(task.truth().d, task.fit["k"], task.fit["K"])
