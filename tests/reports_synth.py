"""Synthetic tidy result tables with KNOWN slopes, for the report tests (no EM involved)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from simstudy.reports.theory import FitConfig, expectations


def synth_table(configs, n_values=(1000, 2000, 4000, 8000, 16000, 32000), reps=20, *,
                protocols=("strict",), slopes=None, sigma=0.3, seed=0, study="synth",
                status_probs=None) -> pd.DataFrame:
    """Tidy table where metric = C * n^slope * lognormal(0, sigma).

    slopes: dict (label, protocol, metric) -> slope, or metric -> slope; default: the theory's
    exponent (0.15 faster than the bound for bounds, -0.3 where the theory gives no
    guarantee). Metrics fixed at the truth (kind "fixed") are exactly 0, as the losses report.
    """
    rng = np.random.default_rng(seed)
    slopes = slopes or {}
    rows = []
    for cfg in configs:
        exp = expectations(cfg)
        for protocol in protocols:
            for n in n_values:
                for rep in range(reps):
                    row = {"study": study, "spec_hash": "h", "condition_id": f"{cfg.label}-"
                           f"{protocol}-{n}", "label": cfg.label, "protocol": protocol,
                           "design": "T" if cfg.truth.k == 3 else "S", "true_K": cfg.truth.K,
                           "n": n, "k": cfg.k, "K": cfg.K, "init": "near_truth", "rep": rep,
                           "status": "ok", "message": "", "stop_reason": "tol",
                           "n_iter": int(rng.integers(5, 50)), "seconds": 0.01,
                           "loglik": -1.2 * n + rng.normal(), "grad_norm": 1e-4,
                           "flag_var_floor": False, "flag_empty_expert": False,
                           "flag_non_finite": False, "params_json": "{}"}
                    if status_probs:
                        row["status"] = rng.choice(list(status_probs),
                                                   p=list(status_probs.values()))
                    for m, e in exp.items():
                        s = slopes.get((cfg.label, protocol, m), slopes.get(m))
                        if s is None and e.kind == "bound":
                            s = e.exponent - 0.15  # the theory's bounds are worst cases
                        elif s is None:
                            s = e.exponent if np.isfinite(e.exponent) else -0.3
                        val = 0.5 * n ** s * np.exp(sigma * rng.standard_normal())
                        row[m] = 0.0 if e.kind == "fixed" else val
                    for j, size in enumerate(cfg.cell_sizes, start=1):
                        row[f"cell_size_{j}"] = int(size)
                        # diagnostics: the lightest weight fades like n^-1/4 in a shared cell
                        w = np.exp(cfg.truth.beta0[j - 1]) / size
                        row[f"wmin_{j}"] = w * (n / 1000) ** -0.25 if size > 1 else w
                    row["ref_atom_cell"] = cfg.truth.ref + 1
                    row["max_abs_beta1"] = float(np.abs(cfg.truth.beta1).max())
                    row["loss_note"] = ""
                    rows.append(row)
    return pd.DataFrame(rows)


def design_config(label, design="T", K=None, k=None, Kbar=None, extra=()):
    from simstudy.model import get_design

    d = get_design(design, K)
    return FitConfig(label, d.params, d.inputs, k or d.params.k + len(extra), Kbar or d.params.K,
                     tuple(extra))
