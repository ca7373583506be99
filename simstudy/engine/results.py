"""The tidy results table: one row per stored task (COMMON.md engine contract)."""

from __future__ import annotations

import pandas as pd

from simstudy.engine.runner import resolve_spec
from simstudy.engine.store import ResultStore, store_path

__all__ = ["load_results", "TIDY_COLUMNS", "metric_order"]

TIDY_COLUMNS = (
    "study", "spec_hash", "condition_id", "label", "protocol", "design", "true_K", "n", "k", "K",
    "init", "rep", "status", "message", "stop_reason", "n_iter", "seconds", "loglik", "grad_norm",
    "flag_var_floor", "flag_empty_expert", "flag_non_finite", "params_json",
)

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


def load_results(spec_or_path, store_dir=None) -> pd.DataFrame:
    """Tidy DataFrame of the stored tasks of a study, one row per task.

    Only tasks of the spec as it is now are returned (conditions it describes, replications
    below its count); labels come from the spec. ``spec_hash`` is the hash of the spec that
    computed the row (rows of a grown study may differ there).

    Columns: ``TIDY_COLUMNS`` then every metric key of ``compute_metrics`` as its own column
    (``loss_note`` as a string). Rows are sorted by label, protocol, n, rep. A study without a
    store yet gives an empty frame with the fixed columns.
    """
    spec = resolve_spec(spec_or_path)
    path = store_path(spec.name, store_dir)
    if not path.exists():
        return pd.DataFrame(columns=list(TIDY_COLUMNS))
    with ResultStore(path, readonly=True) as store:
        rows = store.task_rows()
    conditions = {c.condition_id: c for c in spec.conditions()}
    rows = [r for r in rows
            if r["condition_id"] in conditions and r["rep"] < spec.replications]
    metric_keys = metric_order({k for r in rows for k in r["metrics"]})
    records = []
    for r in rows:
        cond = conditions[r["condition_id"]]
        rec = {c: r.get(c) for c in TIDY_COLUMNS}
        rec.update(study=spec.name, label=cond.label, protocol=cond.protocol,
                   design=cond.design_name, true_K=cond.true_K, k=cond.k, K=cond.K,
                   init=cond.init)
        for key in metric_keys:
            rec[key] = r["metrics"].get(key, "" if key == "loss_note" else float("nan"))
        records.append(rec)
    df = pd.DataFrame.from_records(records, columns=list(TIDY_COLUMNS) + metric_keys)
    df = df.sort_values(["label", "protocol", "n", "rep"], kind="stable", ignore_index=True)
    for c in ("flag_var_floor", "flag_empty_expert", "flag_non_finite"):
        df[c] = df[c].astype(bool)
    for c in ("loglik", "grad_norm", "seconds"):
        df[c] = df[c].astype(float)
    df["n_iter"] = df["n_iter"].astype("Int64")
    for key in metric_keys:
        if key != "loss_note" and not df[key].map(lambda v: isinstance(v, str)).any():
            df[key] = df[key].astype(float)
    return df
