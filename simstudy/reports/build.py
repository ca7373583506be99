"""``simstudy report SPEC... [--out results]``: data, tables, figures and results/README.md.

For each spec: load the tidy results (from the study's SQLite store when it has one, else from
the committed per-fit data ``<out>/data/<study>.parquet``; ``--from-data`` insists on the data),
write that data file (so the committed results can be rebuilt without rerunning a fit or having
the store), derive the theory table from the spec's design and fits, fit the rates, write the
tables and figures and a small ``<study>_meta.json``. Then regenerate ``<out>/README.md`` from
every study whose tables are under ``<out>/tables`` (so building one study keeps the others).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING

# numpy, pandas, statsmodels and matplotlib load inside the functions, so that
# `simstudy report --help` is instant
from simstudy.reports.defaults import DEFAULT_BOOT, DEFAULT_TOL

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["build_study", "write_readme", "versions", "data_path", "write_data", "read_data",
           "load_study_data", "main"]

_DISTANCES = ("D1", "D2", "hellinger", "tv")


def versions() -> dict[str, str]:
    """Versions of the packages the numbers depend on."""
    import numba
    import numpy as np
    import pandas as pd
    import statsmodels

    import simstudy

    return {"python": platform.python_version(), "numpy": np.__version__,
            "numba": numba.__version__, "statsmodels": statsmodels.__version__,
            "pandas": pd.__version__, "simstudy": simstudy.__version__}


def _data_date(df: pd.DataFrame, store: Path | None) -> str:
    for col in ("created", "created_at", "finished"):
        if col in df.columns and df[col].notna().any():
            return str(df[col].dropna().astype(str).max())
    if store is not None and store.is_file():
        ts = _dt.datetime.fromtimestamp(store.stat().st_mtime, _dt.UTC)
        return ts.isoformat(timespec="seconds") + " (store file time)"
    return "unknown"


def _provenance(df: pd.DataFrame) -> list[dict]:
    """Who computed the fits: one record per distinct code/library version, with its hosts."""
    keys = [c for c in df.columns if c.startswith("prov_") and c not in ("prov_host", "prov_cpu")]
    if not keys:
        return []
    out = []
    for values, g in df.groupby(keys, dropna=False, sort=False):
        values = values if isinstance(values, tuple) else (values,)
        rec = {k[len("prov_"):]: (None if v != v else v) for k, v in zip(keys, values,
                                                                         strict=True)}
        hosts = g["prov_host"].dropna() if "prov_host" in g else []
        rec.update(fits=int(len(g)), hosts=sorted({str(h) for h in hosts}))
        out.append(rec)
    return sorted(out, key=lambda r: -r["fits"])


def _provenance_text(records: list[dict]) -> str:
    """'Computed by ...' lines of a study in the README ('' when the table had none).

    One line per code and library version; the git commits it was run from are listed in it,
    since a commit alone changes no number (the code hash covers the computing source).
    """
    if not records:
        return ""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        key = tuple((k, str(v)) for k, v in sorted(r.items()) if k not in ("git", "fits", "hosts"))
        groups.setdefault(key, []).append(r)
    lines = []
    for rs in groups.values():
        r = rs[0]
        commits = [(g["git"], g["fits"]) for g in rs if g.get("git")]
        if len(commits) == 1:
            git = f" (git {commits[0][0]})"
        elif commits:
            git = " (git " + ", ".join(f"{c}: {f}" for c, f in commits) + " fits)"
        else:
            git = ""
        hosts = sorted({h for g in rs for h in g["hosts"]})
        lines.append(f"{sum(g['fits'] for g in rs)} fits computed by `{r.get('task')}`, simstudy "
                     f"{r.get('simstudy')}, code {r.get('code')}{git}, python {r.get('python')}, "
                     f"numpy {r.get('numpy')}, scipy {r.get('scipy')}, numba {r.get('numba')}, "
                     f"BLAS {r.get('blas')}; on {', '.join(hosts) or 'unknown hosts'}.")
    if len(groups) > 1:
        lines.append("**Mixed provenance**: these fits come from different code or library "
                     "versions.")
    return "\n".join(lines)


def _store_file(name: str, spec: Path, store_dir) -> Path | None:
    """The store of a study (for the data date of tables without a creation time)."""
    try:
        from simstudy.engine.store import default_store_dir, store_path
    except ImportError:  # an engine stand-in (tests)
        return None
    return store_path(name, store_dir if store_dir is not None else default_store_dir(spec))


def data_path(out, study: str) -> Path:
    """Where the per-fit data of a study are committed: ``<out>/data/<study>.parquet``."""
    return Path(out) / "data" / f"{study}.parquet"


def write_data(df: pd.DataFrame, path) -> Path:
    """Write the tidy per-fit table (one row per fit) as parquet, columns as they are."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, index=False, compression="zstd")
    return path


def read_data(path) -> pd.DataFrame:
    """Read a per-fit data file written by :func:`write_data`."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data: no per-fit data file {path}")
    return pd.read_parquet(path)


def load_study_data(spec_path, out, *, from_data: bool = False,
                    store_dir=None) -> tuple[pd.DataFrame, str]:
    """(tidy table, where it came from) for one spec: its store, else its committed data.

    Raises
    ------
    ValueError
        When neither has results (or ``from_data`` and there is no data file).
    """
    from simstudy.engine import load_results
    from simstudy.reports.configs import study_name

    name = study_name(spec_path)
    path = data_path(out, name)
    if not from_data:
        df = load_results(spec_path) if store_dir is None else load_results(
            spec_path, store_dir=store_dir)
        if len(df):
            return df, "store"
    if path.is_file():
        df = read_data(path)
        if "study" in df.columns and len(df) and set(df["study"]) != {name}:
            raise ValueError(f"data: {path} holds study {sorted(set(df['study']))}, not {name!r}")
        return df, str(path)
    raise ValueError(f"study {name!r} has no results: no rows in its store and no data file "
                     f"{path}; run `simstudy run {spec_path}` first")


def build_study(study: str, df: pd.DataFrame, configs, out, *, spec_path=None,
                figures: bool = True, tol: float = DEFAULT_TOL, n_boot: int = DEFAULT_BOOT,
                source: str = "", planned: int | None = None,
                data_date: str = "unknown") -> dict:
    """Theory, rates, summaries, tables and figures of one study.

    Parameters
    ----------
    study : str
        Study name (file prefix).
    df : pandas.DataFrame
        Tidy results (one row per fit).
    configs : dict or list of FitConfig
        The fitted configurations (from :func:`simstudy.reports.configs.configs_from_spec`).
    out : path
        Output root (``results``).
    n_boot : int
        Bootstrap resamples per rate.
    source : str
        Where ``df`` came from (the store or a data file), for the meta file.
    planned : int, optional
        Number of tasks the spec describes; with it the report says how complete the study is.

    Returns
    -------
    dict
        ``theory``, ``rates``, ``summary``, ``factorial`` (DataFrames), ``files`` (written
        paths), ``meta``.
    """
    from simstudy.reports.coverage import write_fit_checks
    from simstudy.reports.factorial import factorial_table
    from simstudy.reports.rates import INCLUDED_STATUSES, partition_table, rate_table
    from simstudy.reports.summaries import diagnostic_summary, per_n_summary
    from simstudy.reports.tables import write_tables
    from simstudy.reports.theory import theory_table

    if df.empty:
        raise ValueError(f"df: study {study!r} has no results; run it first")
    configs = list(configs.values()) if isinstance(configs, dict) else list(configs)
    labels = set(df["label"])
    theory = theory_table([c for c in configs if c.label in labels])
    rates = rate_table(df, theory, tol=tol, n_boot=n_boot)
    summary = per_n_summary(df, theory)
    fac = factorial_table(df, theory, n_boot=n_boot)
    out = Path(out)
    _remove_previous(study, out)
    files = write_tables(study, df, rates, summary, out,
                         partitions=partition_table(df, theory),
                         diagnostics=diagnostic_summary(df, theory), factorial=fac, tol=tol)
    files += write_fit_checks(study, df, out)  # coverage, certificates, global checks
    theory.to_csv(out / "tables" / f"{study}_theory.csv", index=False)
    files.append(out / "tables" / f"{study}_theory.csv")
    key_figures = []
    if figures:
        from simstudy.reports.figures import write_figures

        figs = write_figures(study, df, rates, theory, out, factorial=fac)
        files += figs
        key_figures = _key_figures(study, figs, theory, out)
    reps = df.groupby("condition_id")["rep"].nunique() if "condition_id" in df.columns else None
    meta = {
        "study": study, "spec": str(spec_path) if spec_path else "",
        "spec_hash": str(df["spec_hash"].iloc[0]) if "spec_hash" in df.columns else "",
        "fits": int(len(df)), "planned": planned, "source": source,
        # replications complete for every condition (tasks run replication-major)
        "complete_reps": int(reps.min()) if reps is not None and len(reps) else None,
        "n_range": [float(df["n"].min()), float(df["n"].max())],
        "n_levels": int(df["n"].nunique()),
        "protocols": list(dict.fromkeys(df["protocol"])),
        "designs": {str(k): str(v) for k, v in df.groupby("label")["design"].first().items()}
        if "design" in df.columns else {},
        "status_counts": {str(k): int(v) for k, v in df["status"].value_counts().items()},
        "data_date": data_date,
        "statuses_used": list(INCLUDED_STATUSES), "verdict_tolerance": tol, "n_boot": n_boot,
        "data": str(data_path(out, study).relative_to(out)),
        "key_figures": key_figures,
        "files": sorted(str(p.relative_to(out)) for p in files),
        "provenance": _provenance(df),
    }
    (out / "tables" / f"{study}_meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return {"theory": theory, "rates": rates, "summary": summary, "factorial": fac,
            "files": files, "meta": meta}


def _remove_previous(study: str, out: Path) -> None:
    """Delete the files the previous build of ``study`` listed in its meta file, so a rebuild
    never leaves a stale figure or table behind (the data file stays)."""
    mpath = out / "tables" / f"{study}_meta.json"
    if not mpath.is_file():
        return
    try:
        files = json.loads(mpath.read_text()).get("files", [])
    except ValueError:
        return
    root = out.resolve()
    for f in files:
        p = (out / f).resolve()
        if p.is_file() and root in p.parents and p.suffix in (".csv", ".md", ".png", ".json"):
            p.unlink()


def _key_figures(study: str, figs, theory: pd.DataFrame, out: Path) -> list[str]:
    """The figures the README shows inline: the study's D1/D2 figure (or Hellinger where D is
    undefined), the parameter panels of over-specified fits, and the factorial."""
    names = {p.name: str(p.relative_to(out)) for p in figs}
    keys = []
    for m in ("D2", "D1", "hellinger"):
        if f"{study}_{m}.png" in names:
            keys.append(names[f"{study}_{m}.png"])
            break
    for label, g in theory.groupby("label", sort=False):
        if int(g["k"].iloc[0]) > int(g["k_star"].iloc[0]) and (g["kind"] == "bound").any():
            for stem in (f"{study}_params_{label}_multi.png", f"{study}_factorial_{label}.png"):
                if stem in names:
                    keys.append(names[stem])
    if f"{study}_divergence.png" in names:
        keys.append(names[f"{study}_divergence.png"])
    return keys


_RATE_FORMAT = ("slope", "ci95_low", "ci95_high", "verdict", "headline", "n_levels")
#: the order studies are listed in (others follow alphabetically)
STUDY_ORDER = ("topk_exact", "topk_over", "topk_over2", "topk_kbar_sweep", "topk_kbar_bounded",
               "topk_K_sweep", "topk_planar", "dense_exact", "dense_over", "dense_over2")


def _study_key(name: str):
    return (STUDY_ORDER.index(name), "") if name in STUDY_ORDER else (len(STUDY_ORDER), name)


def _built(out: Path):
    """(meta, rates, theory, factorial) of every study built under ``out`` by this version
    (a study whose tables an older simstudy wrote is skipped, and named)."""
    import pandas as pd

    found, stale = [], []
    for p in sorted((out / "tables").glob("*_meta.json")):
        meta = json.loads(p.read_text())
        t = out / "tables"
        rates_csv = t / f"{meta['study']}_rates.csv"
        if not rates_csv.is_file():
            continue
        rates = pd.read_csv(rates_csv, keep_default_na=True)
        if not set(_RATE_FORMAT) <= set(rates.columns) or "n_boot" not in meta:
            stale.append(meta["study"])
            continue
        # tables from before the decide projection: nothing projected (not stale)
        for col in ("decide_as", "decide_reps", "decide_n_max"):
            if col not in rates.columns:
                rates[col] = float("nan")
        theory_csv = t / f"{meta['study']}_theory.csv"
        theory = pd.read_csv(theory_csv) if theory_csv.is_file() else None
        fac_csv = t / f"{meta['study']}_factorial.csv"
        fac = pd.read_csv(fac_csv) if fac_csv.is_file() else None
        found.append((meta, rates, theory, fac))
    found.sort(key=lambda b: _study_key(b[0]["study"]))
    return found, stale


def atoms_table(built) -> pd.DataFrame:
    """Expert 1 fitted by m = 1, 2, 3 atoms, per design: the headline slope of each of its
    parameters beside the theory's exponent (first study listed for each design and m)."""
    import pandas as pd

    rows, seen = [], set()
    # the dedicated studies first (topk_exact before the K sweep's identical K = 2 fit)
    for meta, rates, theory, _ in sorted(built, key=lambda b: ("sweep" in b[0]["study"],
                                                               b[0]["study"])):
        if theory is None:
            continue
        for label, th in theory.groupby("label", sort=False):
            design = meta.get("designs", {}).get(str(label))
            m = int(str(th["cell_sizes"].iloc[0]).split(",")[0])
            kinds = th.set_index("metric")["kind"]
            if design is None or kinds.get("err_b_1") not in ("rate", "bound"):
                continue
            if (design, m) in seen:
                continue
            seen.add((design, m))
            r = rates[(rates["label"] == label) & rates["headline"].astype(bool)]
            for p in ("beta1", "a", "b", "v"):
                row = r[r["metric"] == f"err_{p}_1"]
                if row.empty:
                    continue
                x = row.iloc[0]
                rows.append({"design": design, "m": m, "param": p,
                             "study": meta["study"], "label": label,
                             "protocol": x["protocol"], "expected": x["expected"],
                             "tol": meta["verdict_tolerance"], "slope": x["slope"],
                             "ci95_low": x["ci95_low"], "ci95_high": x["ci95_high"],
                             "verdict": x["verdict"], "n_min": x["n_min"],
                             "n_max": x["n_max"], "n_levels": x["n_levels"],
                             "reps_min": x["reps_min"], "reps_max": x["reps_max"]})
    out = pd.DataFrame(rows, columns=["design", "m", "param", "study", "label", "protocol",
                                      "expected", "tol", "slope", "ci95_low", "ci95_high",
                                      "verdict", "n_min", "n_max", "n_levels", "reps_min",
                                      "reps_max"])
    # only designs with something to compare (e.g. not the K sweep's K = 3 truth)
    several = out.groupby("design")["m"].transform("nunique") >= 2
    return out[several].reset_index(drop=True)


def write_cross_study(out, figures: bool = True) -> list[Path]:
    """Outputs that combine studies: ``tables/expert1_atoms.{csv,md}`` and
    ``figures/expert1_atoms.png`` (expert 1 fitted by m = 1, 2, 3 atoms)."""
    import pandas as pd

    from simstudy.reports.figures import atoms_figure, save_figure
    from simstudy.reports.tables import (
        range_text,
        reps_text,
        slope_ci_text,
        theory_text,
        to_markdown,
    )

    out = Path(out)
    built, _ = _built(out)
    at = atoms_table(built)
    written = []
    if at.empty or at["m"].nunique() < 2:
        return written
    at = at.sort_values(["design", "param", "m"], kind="stable")
    at.to_csv(out / "tables" / "expert1_atoms.csv", index=False)
    show = pd.DataFrame({
        "design": at["design"], "parameter": at["param"], "m": at["m"],
        "study/label": at["study"] + "/" + at["label"],
        "theory": [theory_text("rate" if m == 1 else "bound", e)
                   for m, e in zip(at["m"], at["expected"], strict=True)],
        "slope [95% CI]": [slope_ci_text(s, lo, hi) for s, lo, hi in zip(
            at["slope"], at["ci95_low"], at["ci95_high"], strict=True)],
        "verdict": at["verdict"],
        "n range": [range_text(a, b, c) for a, b, c in zip(at["n_min"], at["n_max"],
                                                           at["n_levels"], strict=True)],
        "fits per n": [reps_text(a, b) for a, b in zip(at["reps_min"], at["reps_max"],
                                                         strict=True)]})
    (out / "tables" / "expert1_atoms.md").write_text(
        "# Expert 1 fitted by m atoms\n\nHeadline slopes of expert 1's weighted errors "
        "for m = 1 (exact fit), 2 and 3 atoms against the theory: n^-1/2 for m = 1, "
        "n^-1/(2 rbar(m)) for beta1 and b, n^-1/rbar(m) for a and v (rbar(2) = 4, "
        "rbar(3) = 6).\n\n" + to_markdown(show))
    written += [out / "tables" / "expert1_atoms.csv", out / "tables" / "expert1_atoms.md"]
    if figures:
        p = save_figure(atoms_figure(at), out / "figures" / "expert1_atoms.png")
        written += [p] if p else []
    return written


def _completeness(meta: dict) -> str:
    """' of N planned (partial: R replications per condition so far)' or '' when complete."""
    planned = meta.get("planned")
    if not planned or meta["fits"] >= planned:
        return ""
    run = f"`simstudy run {meta['spec']}`" if meta.get("spec") else "`simstudy run SPEC`"
    return (f" of {planned} planned (**partial**: {meta.get('complete_reps', '?')} replications "
            f"of every condition so far; {run} completes it)")


def _headline_rows(meta: dict, r: pd.DataFrame, metrics) -> list[dict]:
    from simstudy.reports.tables import (
        decide_text,
        range_text,
        reps_text,
        slope_ci_text,
        theory_text,
    )

    rows = []
    for row in r[r["metric"].isin(metrics)].itertuples(index=False):
        rows.append({
            "study": meta["study"], "label": row.label, "metric": row.metric,
            "theory": theory_text(row.kind, row.expected),
            "slope [95% CI]": slope_ci_text(row.slope, row.ci95_low, row.ci95_high),
            "verdict": row.verdict,
            "to decide (projected)": decide_text(row.decide_as, row.decide_reps,
                                                 row.decide_n_max),
            "upper half [95% CI]": slope_ci_text(row.slope_upper, row.ci95_low_upper,
                                                 row.ci95_high_upper),
            "upper-half verdict": row.verdict_upper,
            "q0.9 slope": row.slope_q90,
            "n range": range_text(row.n_min, row.n_max, row.n_levels),
            "fits per n": reps_text(row.reps_min, row.reps_max),
        })
    return rows


def write_readme(out, command: str) -> Path:
    """Regenerate ``<out>/README.md`` from every ``<out>/tables/<study>_meta.json``."""
    import pandas as pd

    from simstudy.reports.factorial import format_factorial
    from simstudy.reports.tables import to_markdown
    from simstudy.reports.verdicts import MIN_LEVELS, MIN_REPS

    out = Path(out)
    built, stale = _built(out)
    metas = [(meta, rates, fac) for meta, rates, _, fac in built]
    head, slow, verdicts, facs = [], [], [], []
    for meta, r, fac in metas:
        r = r[r["headline"].astype(bool)]
        head += _headline_rows(meta, r, _DISTANCES)
        multi = r[(r["kind"] == "bound")]
        slow += _headline_rows(meta, multi, multi["metric"].unique())
        p = r[~r["metric"].isin(_DISTANCES)]
        for (label, proto), g in p.groupby(["label", "protocol"], sort=False):
            counts = g["verdict"].value_counts()
            verdicts.append({"study": meta["study"], "label": label, "protocol": proto,
                             **{k: int(c) for k, c in counts.items()}})
        if fac is not None and len(fac):
            keep = fac[fac["metric"].isin(_DISTANCES) | (fac["kind"] == "bound")]
            facs.append(format_factorial(keep).assign(study=meta["study"]))
    v = versions()
    lines = [
        "# simstudy results",
        "",
        "## Headline rates (density distances and D1/D2, headline protocol)",
        "",
        to_markdown(pd.DataFrame(head)) if head else "(no studies built yet)\n",
        "Slopes: median regression of log(loss) on log(n) over all replications, 95% "
        "intervals from resampling replications within each n. Verdicts as in "
        "[docs/rates.md](../docs/rates.md): an exact rate is *consistent* when its 90% interval "
        "lies inside theory +- tolerance, *inconsistent* when its 95% interval lies outside; "
        "*inconclusive* otherwise, and whenever a study has fewer than "
        f"{MIN_LEVELS} sample sizes or {MIN_REPS} usable fits at the median n. `upper half`: "
        "the same over the upper half of the n range (a slope still bending towards the theory "
        "shows there). Every row says its n range and fits per n.",
        "",
    ]
    if slow:
        lines += ["## Slow rates of multiply-fitted experts (bounds: n^-r or faster)", "",
                  to_markdown(pd.DataFrame(slow)),
                  "A bound is *shown* when the 95% interval's upper end is <= bound + "
                  "tolerance, *inconsistent* when its lower end is above it.", ""]
    figs = [(meta["study"], f) for meta, _, _ in metas for f in meta.get("key_figures", [])]
    fac_figs = [x for x in figs if "_factorial_" in x[1]]
    figs = [x for x in figs if "_factorial_" not in x[1]]
    if figs:
        lines += ["## Key figures", "",
                  "Points: replications; open markers: per-n medians; solid: median regression "
                  "(slope and 95% interval in the legend); dashed: the theory's slope.", ""]
        for study, f in figs:
            lines += [f"![{study}: {Path(f).stem}]({f})", ""]
    atoms_md = out / "tables" / "expert1_atoms.md"
    if atoms_md.is_file() and (out / "figures" / "expert1_atoms.png").is_file():
        text = atoms_md.read_text().split("\n", 2)[2]
        lines += ["## Expert 1 fitted by m = 1, 2, 3 atoms", "",
                  "![expert 1 fitted by m atoms](figures/expert1_atoms.png)", "", text]
    if facs:
        ft = pd.concat(facs, ignore_index=True)
        ft = ft[["study", *[c for c in ft.columns if c != "study"]]]
        lines += ["## Where the papers' slopes come from (protocol factorial)", "",
                  "Slope under each protocol, and `papers - strict` split exactly into the "
                  "effect of the start (noise shrinking with n vs fixed) and of the stopping "
                  "rule (tol 1e-6 vs strict convergence); tables/<study>_factorial.md has every "
                  "metric.", "", to_markdown(ft)]
        for study, f in fac_figs:
            lines += [f"![{study}: {Path(f).stem}]({f})", ""]
    if verdicts:
        vt = pd.DataFrame(verdicts).fillna(0)
        for c in vt.columns[3:]:
            vt[c] = vt[c].astype(int)
        lines += ["## Per-parameter verdicts (counts of metrics per verdict, headline protocol)",
                  "", to_markdown(vt)]
    lines += ["## Studies", ""]
    for meta, _, _ in metas:
        s = meta["study"]
        counts = ", ".join(f"{k} {c}" for k, c in meta["status_counts"].items())
        lines += [f"### {s}", "",
                  f"Spec `{meta['spec']}` (hash `{meta['spec_hash']}`), {meta['fits']} fits"
                  f"{_completeness(meta)} ({counts}), protocols "
                  f"{', '.join(meta.get('protocols', []))}; per-fit data "
                  f"[`{meta.get('data', '')}`]({meta.get('data', '')}) from "
                  f"{meta.get('data_date', 'unknown')}; verdict tolerance "
                  f"{meta['verdict_tolerance']}, {meta.get('n_boot', '?')} bootstrap "
                  "resamples.", ""]
        provenance = _provenance_text(meta.get("provenance") or [])
        if provenance:
            lines += [provenance, ""]
        for f in meta["files"]:
            lines.append(f"- [{f}]({f})")
        lines.append("")
    if stale:
        lines += ["Tables of " + ", ".join(stale) + " were written by an older simstudy and "
                  "are not summarised here; `make study` rebuilds them.", ""]
    lines += ["## Provenance", "",
              "Generated by `simstudy report` (do not edit by hand); every table and figure "
              "can be rebuilt from the per-fit data under `data/` without rerunning a fit "
              "(`simstudy report --from-data SPEC...`). Command:", "", f"    {command}", "",
              "Built " + _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds") + " with "
              + ", ".join(f"{k} {val}" for k, val in v.items()) + ".", ""]
    path = out / "README.md"
    path.write_text("\n".join(lines))
    return path


def _parser() -> argparse.ArgumentParser:
    # the help shows plain text, not the docstring's reStructuredText markup
    p = argparse.ArgumentParser(prog="simstudy report",
                                description=__doc__.split("\n\n")[0].replace("``", ""))
    p.add_argument("specs", nargs="+", metavar="SPEC", help="study spec TOML file(s)")
    p.add_argument("--out", default="results", help="output root (default: %(default)s)")
    p.add_argument("--store-dir", metavar="DIR", default=None,
                   help="folder of the SQLite stores (default: results/store of the project "
                        "the spec is in)")
    p.add_argument("--from-data", action="store_true",
                   help="read the committed per-fit data (<out>/data/<study>.parquet), never "
                        "the store")
    p.add_argument("--sweep", metavar="NAME", default=None,
                   help="also draw NAME_sweep.png: the headline distances of all the given "
                        "specs side by side (facets by study/label)")
    p.add_argument("--no-figures", action="store_true", help="tables and README only")
    p.add_argument("--theory-tolerance", type=float, default=DEFAULT_TOL,
                   help="tolerance delta on the exponent in the verdicts (default: %(default)s)")
    p.add_argument("--n-boot", type=int, default=DEFAULT_BOOT,
                   help="bootstrap resamples per rate (default: %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``simstudy report``; returns the exit status (2 on a user error)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    import pandas as pd

    from simstudy.reports.configs import configs_from_spec, study_name

    combined = []
    try:
        if args.n_boot < 99:
            raise ValueError(f"--n-boot: need at least 99 resamples, got {args.n_boot}")
        from simstudy.engine import load_spec

        for spec in args.specs:
            path = Path(spec)
            if not path.is_file():
                raise ValueError(f"spec: no such file {path}")
            name = study_name(path)
            df, source = load_study_data(path, args.out, from_data=args.from_data,
                                         store_dir=args.store_dir)
            if source == "store":
                write_data(df, data_path(args.out, name))
            planned = len(load_spec(path).tasks())
            store = (None if "created" in df.columns or source != "store"
                     else _store_file(name, path, args.store_dir))
            res = build_study(name, df, configs_from_spec(path), args.out, spec_path=path,
                              figures=not args.no_figures, tol=args.theory_tolerance,
                              n_boot=args.n_boot, source=source, planned=planned,
                              data_date=_data_date(df, store))
            print(f"{name}: {len(df)} fits from {source}; {len(res['files'])} files under "
                  f"{args.out}")
            if args.sweep:
                combined.append((df.assign(label=name + "/" + df["label"].astype(str)),
                                 res["rates"].assign(label=name + "/" + res["rates"]["label"]),
                                 res["theory"].assign(label=name + "/" + res["theory"]["label"])))
        if args.sweep and combined and not args.no_figures:
            from simstudy.reports.figures import metric_figure, save_figure

            sdf, srates, sth = (pd.concat([c[i] for c in combined], ignore_index=True)
                                for i in range(3))
            for m in ("hellinger", "D2", "D1"):
                fig = metric_figure(sdf, m, srates, sth, title=f"{args.sweep}: {m} vs n")
                p = save_figure(fig, Path(args.out) / "figures" / f"{args.sweep}_sweep_{m}.png")
                if p:
                    print(f"wrote {p}")
        for p in write_cross_study(args.out, figures=not args.no_figures):
            print(f"wrote {p}")
        readme = write_readme(args.out, "simstudy report " + " ".join(argv))
    except ValueError as exc:
        print(f"simstudy report: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {readme}")
    return 0


