"""``simstudy report SPEC... [--out DIR]``: tables, figures and a README.md under DIR.

For each spec: load the tidy results (engine), derive the theory table from the spec's design
and fits, fit the rates, write the tables and figures and a small ``<study>_meta.json``. Then
regenerate ``<out>/README.md`` from every study whose tables are under ``<out>/tables`` (so
building one study keeps the others listed).
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
from simstudy.reports.defaults import BOUND_RULES, DEFAULT_TOL

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["build_study", "write_readme", "versions", "main"]

_DISTANCES = ("D1", "D2", "hellinger", "tv")


def write_figures(*args, **kwargs):
    """:func:`simstudy.reports.figures.write_figures` (matplotlib loads on first use)."""
    from simstudy.reports.figures import write_figures as impl

    return impl(*args, **kwargs)


def sweep_figure(*args, **kwargs):
    """:func:`simstudy.reports.figures.sweep_figure` (matplotlib loads on first use)."""
    from simstudy.reports.figures import sweep_figure as impl

    return impl(*args, **kwargs)


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
    """'Computed by ...' lines of a study in the README ('' when the table had none)."""
    if not records:
        return ""
    lines = []
    for r in records:
        git = f" (git {r['git']})" if r.get("git") else ""
        lines.append(f"{r['fits']} fits computed by `{r.get('task')}`, simstudy "
                     f"{r.get('simstudy')}, code {r.get('code')}{git}, python {r.get('python')}, "
                     f"numpy {r.get('numpy')}, scipy {r.get('scipy')}, numba {r.get('numba')}, "
                     f"BLAS {r.get('blas')}; on {', '.join(r['hosts']) or 'unknown hosts'}.")
    if len(records) > 1:
        lines.append("**Mixed provenance**: these fits come from different code or library "
                     "versions.")
    return "\n".join(lines)


def build_study(study: str, df: pd.DataFrame, configs, out, *, spec_path=None,
                figures: bool = True, tol: float = DEFAULT_TOL,
                bound_rule: str = "upper", data_date: str = "unknown",
                planned: int | None = None) -> dict:
    """Theory, rates, summaries, tables and figures of one study.

    Parameters
    ----------
    study : str
        Study name (file prefix).
    df : pandas.DataFrame
        Tidy results (:mod:`simstudy.engine.results`).
    configs : dict or list of FitConfig
        The fitted configurations (from :func:`simstudy.reports.configs.configs_from_spec`).
    out : path
        Output root (``results``).
    planned : int, optional
        Number of tasks the spec describes; with it the report says how complete the study is.

    Returns
    -------
    dict
        ``theory``, ``rates``, ``summary`` (DataFrames), ``files`` (written paths), ``meta``.
    """
    from simstudy.reports.rates import INCLUDED_STATUSES, rate_table
    from simstudy.reports.summaries import per_n_summary
    from simstudy.reports.tables import write_tables
    from simstudy.reports.theory import theory_table

    if df.empty:
        raise ValueError(f"df: study {study!r} has no results; run it first")
    configs = list(configs.values()) if isinstance(configs, dict) else list(configs)
    labels = set(df["label"])
    theory = theory_table([c for c in configs if c.label in labels])
    rates = rate_table(df, theory, tol=tol, bound_rule=bound_rule)
    summary = per_n_summary(df)
    out = Path(out)
    files = write_tables(study, df, rates, summary, out)
    theory.to_csv(out / "tables" / f"{study}_theory.csv", index=False)
    files.append(out / "tables" / f"{study}_theory.csv")
    if figures:
        files += write_figures(study, df, theory, out)
    meta = {
        "study": study, "spec": str(spec_path) if spec_path else "",
        "spec_hash": str(df["spec_hash"].iloc[0]) if "spec_hash" in df.columns else "",
        "fits": int(len(df)), "planned": planned,
        # replications complete for every condition (tasks run replication-major)
        "complete_reps": int(df.groupby("condition_id")["rep"].nunique().min()),
        "status_counts": {str(k): int(v) for k, v in
                                                df["status"].value_counts().items()},
        "data_date": data_date, "statuses_used": list(INCLUDED_STATUSES),
        "verdict_tolerance": tol, "bound_rule": bound_rule,
        "files": sorted(str(p.relative_to(out)) for p in files),
        "provenance": _provenance(df),
    }
    (out / "tables" / f"{study}_meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return {"theory": theory, "rates": rates, "summary": summary, "files": files, "meta": meta}


def _completeness(meta: dict) -> str:
    """' of N planned (partial: R replications per condition so far)' or '' when complete."""
    planned = meta.get("planned")
    if not planned or meta["fits"] >= planned:
        return ""
    run = f"`simstudy run {meta['spec']}`" if meta.get("spec") else "`simstudy run SPEC`"
    return (f" of {planned} planned (**partial**: {meta.get('complete_reps', '?')} replications "
            f"of every condition so far; {run} completes it)")


def write_readme(out, command: str) -> Path:
    """Regenerate ``<out>/README.md`` from every ``<out>/tables/<study>_meta.json``."""
    import pandas as pd

    from simstudy.reports.tables import _ci, _theory_text, to_markdown

    out = Path(out)
    metas = []
    for p in sorted((out / "tables").glob("*_meta.json")):
        meta = json.loads(p.read_text())
        rates_csv = out / "tables" / f"{meta['study']}_rates.csv"
        if rates_csv.is_file():
            metas.append((meta, pd.read_csv(rates_csv, keep_default_na=True)))
    v = versions()
    lines = [
        "# simstudy results",
        "",
        "Generated by `simstudy report` (do not edit by hand). Command:",
        "",
        f"    {command}",
        "",
        "Built " + _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds") + " with "
        + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
        "Rates: OLS of log(metric) on log(n) over all replications, HC3 standard errors, 95% CI."
        " Fits used: status ok or not_converged (an estimate exists; dropping non-converged "
        "fits would select data sets on the outcome), and degenerate fits whose only flag is an "
        "empty expert (at true K = 1 the never-selected expert is empty by construction); "
        "errors, other degenerate fits (variance at the floor, non-finite), NaN and "
        "non-positive metrics are excluded and counted in each study's rate table. Verdicts: "
        "an exact rate is consistent when the CI overlaps theory +- tolerance; a slow-rate bound "
        "(n^-1/8 ... or faster) per the bound rule in the study's meta file; no guarantee: the "
        "slope is reported only. The headline is the strict protocol where a study has both.",
        "",
        "## Headline rates (density distances and D1/D2)",
        "",
    ]
    head = []
    verdicts = []
    for meta, r in metas:
        r = r[r["headline"].astype(bool)]
        d = r[r["metric"].isin(_DISTANCES)]
        for row in d.itertuples(index=False):
            head.append({"study": meta["study"], "label": row.label, "protocol": row.protocol,
                         "metric": row.metric, "theory": _theory_text(row.kind, row.expected),
                         "slope": row.slope, "95% CI": _ci(row.ci_low, row.ci_high),
                         "fits used": row.n_used, "verdict": row.verdict})
        p = r[~r["metric"].isin(_DISTANCES)]
        for (label, proto), g in p.groupby(["label", "protocol"], sort=False):
            counts = g["verdict"].str.replace(r" \(.*\)$", "", regex=True).value_counts()
            verdicts.append({"study": meta["study"], "label": label, "protocol": proto,
                             **{k: int(c) for k, c in counts.items()}})
    lines.append(to_markdown(pd.DataFrame(head)) if head else "(no studies built yet)\n")
    if verdicts:
        vt = pd.DataFrame(verdicts).fillna(0)
        for c in vt.columns[3:]:
            vt[c] = vt[c].astype(int)
        lines += ["## Per-parameter verdicts (counts of metrics per verdict, headline protocol)",
                  "", to_markdown(vt)]
    lines += ["## Studies", ""]
    for meta, _ in metas:
        s = meta["study"]
        counts = ", ".join(f"{k} {c}" for k, c in meta["status_counts"].items())
        lines += [f"### {s}", "",
                  f"Spec `{meta['spec']}` (hash `{meta['spec_hash']}`), {meta['fits']} fits"
                  f"{_completeness(meta)} "
                  f"({counts}); data from {meta['data_date']}; verdict tolerance "
                  f"{meta['verdict_tolerance']}, bound rule {meta['bound_rule']}.", ""]
        provenance = _provenance_text(meta.get("provenance") or [])
        if provenance:
            lines += [provenance, ""]
        for f in meta["files"]:
            lines.append(f"- [{f}]({f})")
        lines.append("")
    path = out / "README.md"
    path.write_text("\n".join(lines))
    return path


def _add_file_to_meta(out: Path, combined, path: Path) -> None:
    """List a cross-study figure in the first study's meta file (so the README links it)."""
    study = combined[0][0]["study"].iloc[0]
    mpath = out / "tables" / f"{study}_meta.json"
    meta = json.loads(mpath.read_text())
    meta["files"] = sorted({*meta["files"], str(path.relative_to(out))})
    mpath.write_text(json.dumps(meta, indent=1) + "\n")


def _store_file(name: str, spec: Path, store_dir) -> Path | None:
    """The store of a study (for the data date of tables without a creation time)."""
    try:
        from simstudy.engine.store import default_store_dir, store_path
    except ImportError:  # an engine stand-in (tests)
        return None
    return store_path(name, store_dir if store_dir is not None else default_store_dir(spec))


def _parser() -> argparse.ArgumentParser:
    # the help shows plain text, not the docstring's reStructuredText markup
    p = argparse.ArgumentParser(prog="simstudy report",
                                description=__doc__.split("\n\n")[0].replace("``", ""))
    p.add_argument("specs", nargs="+", metavar="SPEC", help="study spec TOML file(s)")
    p.add_argument("--out", default="results", help="output root (default: %(default)s)")
    p.add_argument("--sweep", metavar="NAME", default=None,
                   help="also draw one side-by-side figure NAME_sweep.png over all the given "
                        "specs (facets by study/label), e.g. the true-K sweep kept in one "
                        "spec per K")
    p.add_argument("--no-figures", action="store_true", help="tables and README only")
    p.add_argument("--theory-tolerance", type=float, default=DEFAULT_TOL,
                   help="tolerance on the exponent in the verdicts (default: %(default)s)")
    p.add_argument("--bound-rule", choices=BOUND_RULES, default="upper",
                   help="how slow-rate bounds are judged (default: %(default)s)")
    p.add_argument("--store-dir", metavar="DIR", default=None,
                   help="folder of the SQLite stores (default: results/store of the project "
                        "the spec is in)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``simstudy report``; returns the exit status (2 on a user error)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    import pandas as pd

    from simstudy.reports.configs import configs_from_spec, study_name

    combined = []
    try:
        from simstudy.engine import load_results, load_spec

        for spec in args.specs:
            path = Path(spec)
            if not path.is_file():
                raise ValueError(f"spec: no such file {path}")
            name = study_name(path)
            df = load_results(path, store_dir=args.store_dir)
            planned = len(load_spec(path).tasks())
            store = None if "created" in df.columns else _store_file(name, path, args.store_dir)
            res = build_study(name, df, configs_from_spec(path), args.out, spec_path=path,
                              figures=not args.no_figures, tol=args.theory_tolerance,
                              bound_rule=args.bound_rule, data_date=_data_date(df, store),
                              planned=planned)
            print(f"{name}: {len(res['files'])} files under {args.out}")
            if args.sweep:
                th = res["theory"].copy()
                th["label"] = name + "/" + th["label"]
                combined.append((df.assign(label=name + "/" + df["label"].astype(str)), th))
        if args.sweep and combined and not args.no_figures:
            fdir = Path(args.out) / "figures"
            path = fdir / f"{args.sweep}_sweep.png"
            if sweep_figure(pd.concat([c[0] for c in combined], ignore_index=True), path,
                            pd.concat([c[1] for c in combined], ignore_index=True)):
                print(f"wrote {path}")
                _add_file_to_meta(Path(args.out), combined, path)
        readme = write_readme(args.out, "simstudy report " + " ".join(argv))
    except ValueError as exc:
        print(f"simstudy report: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {readme}")
    return 0
