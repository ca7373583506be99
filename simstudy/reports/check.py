"""``simstudy check SPEC``: run a (small) study, fit the rates and fail on a regression.

Exit status 0 when the study passes, 1 when something fails (each failure printed), 2 on a usage
error (bad arguments, missing spec). A study fails when, under its headline protocol,

* a rate with a guarantee (exact rate, bound, plateau) is ``inconsistent`` with the theory
  (three-way verdicts of :mod:`simstudy.reports.verdicts`);
* a headline distance (:data:`DECIDED_METRICS`: D1, D2, hellinger, tv) is not decided
  (``inconclusive`` or ``no data``): the CI study is sized to decide them, so an undecided one
  means the estimates got noisier or the study shrank;
* a rate whose reference verdict was decided (consistent / shown) is no longer decided;
* a reference slope drifted by more than ``--tolerance`` from the committed reference
  (``results/ci_reference.json``), or its row is gone.

The pure decision logic is :func:`check_failures` (rate table + reference -> failures), which the
tests drive with hand-built tables; :func:`main` only runs the engine around it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

# numpy, pandas and the rate code load inside the functions: `simstudy check --help` is instant
from simstudy.reports.defaults import DEFAULT_BOOT, DEFAULT_TOL

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "DEFAULT_DRIFT_TOL",
    "DECIDED_METRICS",
    "make_reference",
    "read_reference",
    "write_reference",
    "check_failures",
    "check_table",
    "main",
]

#: allowed move of a slope away from the committed reference
DEFAULT_DRIFT_TOL = 0.1

#: headline metrics whose verdict must be decided
DECIDED_METRICS = ("D1", "D2", "hellinger", "tv")

_KEY = ("study", "label", "protocol", "metric")
# the verdict names (simstudy.reports.verdicts), spelled here so that --help loads nothing heavy
_GUARANTEED = ("rate", "bound", "plateau")
CONSISTENT, SHOWN, INCONSISTENT, NO_DATA = "consistent", "shown", "inconsistent", "no data"


def make_reference(rates: pd.DataFrame, spec_hash: str = "") -> dict:
    """A JSON-serialisable reference of the slopes and verdicts in a rate table."""
    import numpy as np

    rows = []
    for r in rates.itertuples(index=False):
        if np.isfinite(r.slope):
            rows.append({"study": r.study, "label": r.label, "protocol": r.protocol,
                         "metric": r.metric, "slope": float(r.slope),
                         "ci95": [float(r.ci95_low), float(r.ci95_high)],
                         "verdict": str(r.verdict), "n_used": int(r.n_used)})
    return {"format": 2, "spec_hash": spec_hash,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "rows": rows}


def write_reference(reference: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(reference, indent=1) + "\n")
    return path


def read_reference(path) -> dict:
    """Read a reference file written by :func:`write_reference`.

    Raises
    ------
    ValueError
        When the file is not a reference (no ``rows`` list, or a row without its keys).
    """
    path = Path(path)
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise ValueError(f"reference: {path} is not a rate reference (no 'rows' list)")
    for i, row in enumerate(data["rows"]):
        missing = {*_KEY, "slope"} - set(row)
        if missing:
            raise ValueError(f"reference: {path} row {i} lacks key(s) {sorted(missing)}")
    return data


def _ci_text(lo, hi) -> str:
    import numpy as np

    return f"[{lo:+.3f}, {hi:+.3f}]" if np.isfinite(lo) and np.isfinite(hi) else "[none]"


def check_failures(rates: pd.DataFrame, reference: dict | None,
                   tolerance: float = DEFAULT_DRIFT_TOL,
                   decided_metrics=DECIDED_METRICS) -> list[str]:
    """All reasons to fail, as readable lines (empty list: pass); see the module docstring.

    Rows not in the reference do not fail on drift (they are new).
    """
    import numpy as np

    if not (np.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance: must be finite and >= 0, got {tolerance}")
    fails = []
    ref_rows = {} if reference is None else {tuple(r[k] for k in _KEY): r
                                             for r in reference["rows"]}
    for r in rates.itertuples(index=False):
        if not r.headline or r.kind not in _GUARANTEED:
            continue
        key = tuple(getattr(r, k) for k in _KEY)
        name = "/".join(map(str, key))
        theory = (f"{r.expected:+.3f}" if r.kind == "rate" else
                  f"<= {r.expected:+.3f}" if r.kind == "bound" else "a plateau (0)")
        ci = _ci_text(r.ci95_low, r.ci95_high)
        before = ref_rows.get(key, {}).get("verdict")
        if r.verdict == INCONSISTENT:
            fails.append(f"theory: {name}: slope {r.slope:+.3f} 95% CI {ci} is inconsistent "
                         f"with {theory}")
        elif r.metric in decided_metrics and r.verdict not in (CONSISTENT, SHOWN):
            why = f" ({r.note})" if isinstance(r.note, str) and r.note else ""
            was = f"; the reference says {before}" if before else ""
            fails.append(f"undecided: {name}: {r.verdict}{why}, slope {r.slope:+.3f} 90% CI "
                         f"{_ci_text(r.ci90_low, r.ci90_high)} vs {theory}{was}")
        elif r.verdict == NO_DATA:
            fails.append(f"theory: {name}: no usable slope ({r.n_used} fits used; "
                         f"excluded {r.excluded or 'none'})")
        elif before in (CONSISTENT, SHOWN) and r.verdict not in (CONSISTENT, SHOWN):
            fails.append(f"undecided: {name}: now {r.verdict}, the reference says {before} "
                         f"(slope {r.slope:+.3f} 95% CI {ci})")
    if reference is not None:
        cur = {tuple(getattr(r, k) for k in _KEY): r for r in rates.itertuples(index=False)}
        for key, ref in ref_rows.items():
            name = "/".join(str(k) for k in key)
            r = cur.get(key)
            if r is None:
                fails.append(f"reference: {name}: row missing from the current rate table")
            elif not np.isfinite(r.slope):
                fails.append(f"reference: {name}: no slope now (reference {ref['slope']:+.3f})")
            elif abs(r.slope - ref["slope"]) > tolerance:
                fails.append(f"drift: {name}: slope {r.slope:+.3f} moved "
                             f"{r.slope - ref['slope']:+.3f} from the reference "
                             f"{ref['slope']:+.3f} (tolerance {tolerance})")
    return fails


def check_table(rates: pd.DataFrame, reference: dict | None) -> pd.DataFrame:
    """The console table: rates beside their reference slopes."""
    import numpy as np
    import pandas as pd

    from simstudy.reports.tables import theory_text as _theory_text

    ref = {}
    if reference is not None:
        ref = {tuple(r[k] for k in _KEY): r["slope"] for r in reference["rows"]}
    out = pd.DataFrame({
        "label": rates["label"], "protocol": rates["protocol"], "metric": rates["metric"],
        "theory": [_theory_text(k, e) for k, e in zip(rates["kind"], rates["expected"],
                                                       strict=True)],
        "slope": rates["slope"].round(3),
        "90% CI": [_ci_text(lo, hi) for lo, hi in zip(rates["ci90_low"], rates["ci90_high"],
                                                       strict=True)],
        "95% CI": [_ci_text(lo, hi) for lo, hi in zip(rates["ci95_low"], rates["ci95_high"],
                                                       strict=True)],
        "reference": [ref.get(tuple(r[k] for k in _KEY), np.nan)
                      for _, r in rates.iterrows()],
        "verdict": rates["verdict"], "fits": rates["n_used"],
        "headline": rates["headline"],
    })
    out["drift"] = (out["slope"] - out["reference"]).round(3)
    return out


def _parser() -> argparse.ArgumentParser:
    # the help shows plain text, not the docstring's reStructuredText markup
    p = argparse.ArgumentParser(prog="simstudy check",
                                description=__doc__.split("\n\n")[0].replace("``", ""))
    p.add_argument("spec", help="study spec TOML (e.g. studies/ci.toml)")
    p.add_argument("--reference", default="results/ci_reference.json",
                   help="committed reference slopes (default: %(default)s)")
    p.add_argument("--update-reference", action="store_true",
                   help="rewrite the reference from this run (never done automatically)")
    p.add_argument("--tolerance", type=float, default=DEFAULT_DRIFT_TOL,
                   help="allowed move of a slope from the reference (default: %(default)s)")
    p.add_argument("--theory-tolerance", type=float, default=DEFAULT_TOL,
                   help="tolerance delta on the exponent in the verdicts (default: %(default)s)")
    p.add_argument("--n-boot", type=int, default=DEFAULT_BOOT,
                   help="bootstrap resamples per rate (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=None, help="worker processes for the study")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--store-dir", metavar="DIR", default=None,
                   help="folder of the SQLite stores (default: results/store of the project "
                        "the spec is in)")
    p.add_argument("--force-new", action="store_true",
                   help="start a new store when the stored rows no longer match the spec or "
                        "were computed by other code (the old one is kept as a backup)")
    p.add_argument("--allow-mixed", action="store_true",
                   help="check rows computed by other code or library versions together")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``simstudy check``; returns the exit status."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    import numpy as np
    import pandas as pd

    from simstudy.reports.configs import configs_from_spec
    from simstudy.reports.rates import rate_table
    from simstudy.reports.theory import theory_table

    spec = Path(args.spec)
    try:
        if not spec.is_file():
            raise ValueError(f"spec: no such file {spec}")
        if not (np.isfinite(args.tolerance) and args.tolerance >= 0):
            raise ValueError(f"--tolerance: must be finite and >= 0, got {args.tolerance}")
        if args.n_boot < 99:
            raise ValueError(f"--n-boot: need at least 99 resamples, got {args.n_boot}")
        configs = configs_from_spec(spec)
        from simstudy.engine import load_results, run_study

        run_study(spec, jobs=args.jobs, progress=not args.no_progress,
                  store_dir=args.store_dir, force_new=args.force_new,
                  allow_mixed=args.allow_mixed)
        df = load_results(spec, store_dir=args.store_dir)
        rates = rate_table(df, theory_table(list(configs.values())),
                           tol=args.theory_tolerance, n_boot=args.n_boot)
        spec_hash = str(df["spec_hash"].iloc[0]) if "spec_hash" in df and len(df) else ""
        ref_path = Path(args.reference)
        if args.update_reference:
            write_reference(make_reference(rates, spec_hash), ref_path)
            print(f"reference written: {ref_path}")
        reference = read_reference(ref_path) if ref_path.is_file() else None
    except ValueError as exc:
        print(f"simstudy check: error: {exc}", file=sys.stderr)
        return 2
    with pd.option_context("display.width", 200, "display.max_rows", None,
                           "display.max_colwidth", 40):
        print(check_table(rates, reference).to_string(index=False))
    fails = check_failures(rates, reference, args.tolerance)
    if reference is None:
        fails.append(f"reference: no reference file {ref_path}; create it explicitly with "
                     "--update-reference")
    elif reference.get("spec_hash") and spec_hash and reference["spec_hash"] != spec_hash:
        print(f"note: the reference was made from spec {reference['spec_hash']}, "
              f"this run is {spec_hash}")
    if fails:
        print(f"\nFAIL: {len(fails)} problem(s)")
        for f in fails:
            print("  " + f)
        return 1
    print("\nPASS: no headline rate is inconsistent with the theory, every headline distance "
          "is decided, and every slope is within the reference tolerance")
    return 0
