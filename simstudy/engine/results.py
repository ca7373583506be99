"""The tidy results table: one row per stored task, one column per variable.

This is the single builder of the table that ``simstudy export`` writes, the reports read and
per-replication data files are made from. Columns, in order:

- :data:`TIDY_COLUMNS`: the study and spec hash, the condition (id, label, protocol, design,
  true K, n, fitted k and K, init, init noise, number of starts, extra atoms as JSON), the
  replication, the outcome (status, message, stop reason, iterations, seconds, log-likelihood,
  gradient norm, flags), ``params_json`` (the fitted parameters as stored), ``created`` (UTC time
  the row was stored) and the provenance (``prov_*``: task function, code hash, simstudy version,
  git describe, host, CPU, python, numpy, scipy, numba, BLAS; see
  :mod:`simstudy.engine.provenance`);
- every metric the task returned, one column each, in :func:`metric_order` (new metrics from
  the estimator or the losses appear without any change here);
- the fitted parameters, one column each (:data:`PARAM_PREFIX`): ``est_beta0_j``,
  ``est_beta1_j_l``, ``est_a_j_l``, ``est_b_j``, ``est_v_j`` for fitted expert j = 1..k and input
  coordinate l = 1..d (any other numeric entry of the stored parameters the same way).
"""

from __future__ import annotations

import json

import pandas as pd

from simstudy.engine.runner import resolve_spec, resolve_store_dir
from simstudy.engine.store import ResultStore, StoreMismatchError, store_path

__all__ = ["load_results", "TIDY_COLUMNS", "PROVENANCE_COLUMNS", "PARAM_PREFIX", "metric_order",
           "param_columns"]

#: provenance fields exported as prov_<field>
PROVENANCE_FIELDS = ("task", "code", "simstudy", "git", "host", "cpu", "python", "numpy",
                     "scipy", "numba", "blas")
PROVENANCE_COLUMNS = tuple(f"prov_{f}" for f in PROVENANCE_FIELDS)
TIDY_COLUMNS = (
    "study", "spec_hash", "condition_id", "label", "protocol", "design", "true_K", "n", "k", "K",
    "init", "init_noise", "n_init", "extra_atoms", "rep", "status", "message", "stop_reason",
    "n_iter", "seconds", "loglik", "grad_norm", "flag_var_floor", "flag_empty_expert",
    "flag_non_finite", "params_json", "created", *PROVENANCE_COLUMNS,
)
PARAM_PREFIX = "est_"
_SKIP_PARAMS = ("K", "ref")  # structure, already columns (K) or fixed by the design (ref)

_GLOBAL = ("D1", "D2", "hellinger", "tv")
_PER_EXPERT = ("err_beta1", "err_a", "err_b", "err_v", "mass", "cell_size")


def metric_order(keys) -> list[str]:
    """Metric columns in a fixed order: D1, D2, hellinger, tv, per-expert by expert, the rest."""
    keys = set(keys)
    out = [k for k in _GLOBAL if k in keys]
    js = sorted({int(k.rsplit("_", 1)[1]) for k in keys
                 if k.rsplit("_", 1)[0] in _PER_EXPERT and k.rsplit("_", 1)[-1].isdigit()})
    for j in js:
        out += [f"{b}_{j}" for b in _PER_EXPERT if f"{b}_{j}" in keys]
    return out + sorted(keys - set(out))


def _is_number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def param_columns(params_json: str | None) -> dict[str, float]:
    """Stored parameters as ``est_<name>[_j[_l]]`` -> value (numbering from 1)."""
    if not params_json:
        return {}
    out = {}
    for name, value in json.loads(params_json).items():
        if name in _SKIP_PARAMS:
            continue
        if _is_number(value):
            out[f"{PARAM_PREFIX}{name}"] = float(value)
        elif isinstance(value, list):
            for j, item in enumerate(value, 1):
                if _is_number(item):
                    out[f"{PARAM_PREFIX}{name}_{j}"] = float(item)
                elif isinstance(item, list):
                    for m, x in enumerate(item, 1):
                        if _is_number(x):
                            out[f"{PARAM_PREFIX}{name}_{j}_{m}"] = float(x)
    return out


def load_results(spec_or_path, store_dir=None, *, strict: bool = False) -> pd.DataFrame:
    """Tidy DataFrame of the stored tasks of a study, one row per task (see the module doc).

    Only tasks of the spec as it is now are returned (conditions it describes, replications
    below its count); labels come from the spec. ``spec_hash`` is the hash of the spec that
    computed the row (rows of a grown study may differ there). Rows are sorted by label,
    protocol, n, rep. A study without a store yet gives an empty frame with the fixed columns.

    Parameters
    ----------
    spec_or_path : StudySpec or path-like
    store_dir : path-like, optional
        Default: :func:`~simstudy.engine.store.default_store_dir` of the spec.
    strict : bool
        Raise :class:`~simstudy.engine.store.StoreMismatchError` when the store holds rows the
        spec no longer describes (the spec changed since they were computed), instead of
        leaving them out.
    """
    spec = resolve_spec(spec_or_path, estimator_checks=False)
    path = store_path(spec.name, resolve_store_dir(spec, store_dir))
    if not path.exists():
        return pd.DataFrame(columns=list(TIDY_COLUMNS))
    with ResultStore(path, readonly=True) as store:
        if strict and store.mismatch(spec):
            try:
                store.check_compatible(spec)
            except StoreMismatchError as exc:
                raise StoreMismatchError(str(exc).split(". Rerun with")[0] + ": its rows do not "
                                         "belong to this spec; restore the spec that made them "
                                         "(or run the new one with --force-new)") from None
        rows = store.task_rows()
    conditions = {c.condition_id: c for c in spec.conditions()}
    rows = [r for r in rows
            if r["condition_id"] in conditions and r["rep"] < spec.replications]
    metric_keys = metric_order({k for r in rows for k in r["metrics"]})
    records, param_keys = [], {}
    for r in rows:
        cond = conditions[r["condition_id"]]
        rec = {c: r.get(c) for c in TIDY_COLUMNS}
        record = r.get("provenance") or {}
        rec.update({f"prov_{f}": record.get(f) for f in PROVENANCE_FIELDS})
        rec.update(study=spec.name, label=cond.label, protocol=cond.protocol,
                   design=cond.design_name, true_K=cond.true_K, k=cond.k, K=cond.K,
                   init=cond.init, init_noise=cond.fit.init_noise, n_init=cond.fit.n_init,
                   extra_atoms=json.dumps(list(cond.fit.extra_atoms)),
                   flag_var_floor=r.get("flag_var_floor"),
                   flag_empty_expert=r.get("flag_empty_expert"),
                   flag_non_finite=r.get("flag_non_finite"))
        for key in metric_keys:
            rec[key] = r["metrics"].get(key, "" if key == "loss_note" else float("nan"))
        params = param_columns(r.get("params_json"))
        param_keys.update(dict.fromkeys(params))
        rec.update(params)
        records.append(rec)
    columns = list(TIDY_COLUMNS) + metric_keys + list(param_keys)
    df = pd.DataFrame.from_records(records, columns=columns)
    df = df.sort_values(["label", "protocol", "n", "rep"], kind="stable", ignore_index=True)
    for c in ("flag_var_floor", "flag_empty_expert", "flag_non_finite"):
        df[c] = df[c].astype(bool)
    for c in ("loglik", "grad_norm", "seconds", "init_noise", *param_keys):
        df[c] = df[c].astype(float)
    df["n_iter"] = df["n_iter"].astype("Int64")
    df["n_init"] = df["n_init"].astype("Int64")
    for key in metric_keys:
        if key != "loss_note" and not df[key].map(lambda v: isinstance(v, str)).any():
            df[key] = df[key].astype(float)
    return df
