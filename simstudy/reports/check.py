"""``simstudy check SPEC``: run a (small) study, fit the rates and fail on a regression.

Exit status 0 when every headline rate with a guarantee is consistent with the theory and every
slope stays within ``--tolerance`` of the committed reference; 1 when something fails (each
failure printed); 2 on a usage error (bad arguments, missing spec).

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
from simstudy.reports.defaults import BOUND_RULES, DEFAULT_TOL

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "DEFAULT_DRIFT_TOL",
    "DEFAULT_MAX_HALFWIDTH",
    "PRECISION_METRICS",
    "make_reference",
    "read_reference",
    "write_reference",
    "check_failures",
    "check_table",
    "main",
]

#: allowed move of a slope away from the committed reference
DEFAULT_DRIFT_TOL = 0.15

_KEY = ("study", "label", "protocol", "metric")


def make_reference(rates: pd.DataFrame, spec_hash: str = "") -> dict:
    """A JSON-serialisable reference of the slopes in a rate table."""
    import numpy as np

    rows = []
    for r in rates.itertuples(index=False):
        if np.isfinite(r.slope):
            rows.append({"study": r.study, "label": r.label, "protocol": r.protocol,
                         "metric": r.metric, "slope": float(r.slope), "se": float(r.se),
                         "n_used": int(r.n_used)})
    return {"format": 1, "spec_hash": spec_hash,
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


#: widest 95% CI half-width accepted for a headline exact rate of a PRECISION_METRICS metric:
#: a CI wider than this "overlaps" any plausible exponent, so a pass would be vacuous
DEFAULT_MAX_HALFWIDTH = 0.25

#: metrics the CI study is sized to pin (spec section 5: about +-0.1); per-parameter errors are
#: noisier at CI scale (measured: CI half-widths up to 0.3 on studies/ci.toml), so they are
#: gated on inconsistency and drift only
PRECISION_METRICS = ("D1", "D2", "hellinger", "tv")


def check_failures(rates: pd.DataFrame, reference: dict | None,
                   tolerance: float = DEFAULT_DRIFT_TOL,
                   max_halfwidth: float = DEFAULT_MAX_HALFWIDTH) -> list[str]:
    """All reasons to fail, as readable lines (empty list: pass).

    (a) a headline row (strict protocol where the study has it) of a metric with a guarantee
        (kind "rate" or "bound") whose verdict is "inconsistent", or which has no usable slope
        ("no data": every fit excluded is a failure too, never a silent pass);
        or, for D1/D2/hellinger/tv, whose 95% CI is wider than +- ``max_halfwidth`` (the
        overlap rule would pass it whatever the truth; grow the study instead);
    (b) with a reference: a reference slope whose row is gone or has no slope, or that moved by
        more than ``tolerance``. Rows not in the reference do not fail (they are new).
    """
    import numpy as np

    from simstudy.reports.theory import BOUND, RATE

    if not (np.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance: must be finite and >= 0, got {tolerance}")
    if not max_halfwidth > 0:
        raise ValueError(f"max_halfwidth: must be > 0, got {max_halfwidth}")
    fails = []
    for r in rates.itertuples(index=False):
        if not r.headline or r.kind not in (RATE, BOUND):
            continue
        name = f"{r.study}/{r.label}/{r.protocol}/{r.metric}"
        if r.verdict == "inconsistent":
            theory = f"{r.expected:+.3f}" if r.kind == RATE else f"<= {r.expected:+.3f}"
            fails.append(f"theory: {name}: slope {r.slope:+.3f} 95% CI [{r.ci_low:+.3f}, "
                         f"{r.ci_high:+.3f}] vs theory {theory}")
        elif (r.kind == RATE and r.metric in PRECISION_METRICS
              and (r.ci_high - r.ci_low) / 2 > max_halfwidth):
            fails.append(f"precision: {name}: 95% CI [{r.ci_low:+.3f}, {r.ci_high:+.3f}] is "
                         f"wider than +-{max_halfwidth}: the check would be vacuous")
        elif r.verdict == "no data":
            fails.append(f"theory: {name}: no usable slope ({r.n_used} fits used; "
                         f"excluded {r.excluded or 'none'})")
    if reference is not None:
        cur = {tuple(getattr(r, k) for k in _KEY): r for r in rates.itertuples(index=False)}
        for ref in reference["rows"]:
            key = tuple(ref[k] for k in _KEY)
            name = "/".join(str(k) for k in key)
            r = cur.get(key)
            if r is None:
                fails.append(f"reference: {name}: row missing from the current rate table")
            elif not np.isfinite(r.slope):
                fails.append(f"reference: {name}: no slope now (reference {ref['slope']:+.3f})")
            elif abs(r.slope - ref["slope"]) > tolerance:
                fails.append(f"reference: {name}: slope {r.slope:+.3f} moved "
                             f"{r.slope - ref['slope']:+.3f} from the reference "
                             f"{ref['slope']:+.3f} (tolerance {tolerance})")
    return fails


def check_table(rates: pd.DataFrame, reference: dict | None) -> pd.DataFrame:
    """The console table: rates beside their reference slopes."""
    import numpy as np
    import pandas as pd

    from simstudy.reports.theory import RATE

    ref = {}
    if reference is not None:
        ref = {tuple(r[k] for k in _KEY): r["slope"] for r in reference["rows"]}
    out = pd.DataFrame({
        "label": rates["label"], "protocol": rates["protocol"], "metric": rates["metric"],
        "theory": [("" if not np.isfinite(e) else (f"{e:+.3f}" if k == RATE else f"<={e:+.3f}"))
                   for k, e in zip(rates["kind"], rates["expected"], strict=True)],
        "slope": rates["slope"].round(3), "ci_low": rates["ci_low"].round(3),
        "ci_high": rates["ci_high"].round(3),
        "reference": [ref.get(tuple(r[k] for k in _KEY), np.nan)
                      for _, r in rates.iterrows()],
        "verdict": rates["verdict"], "headline": rates["headline"],
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
                   help="tolerance on the exponent in the verdicts (default: %(default)s)")
    p.add_argument("--max-ci-halfwidth", type=float, default=DEFAULT_MAX_HALFWIDTH,
                   help="widest accepted 95%% CI half-width of a headline D1/D2/hellinger/tv rate "
                        "(default: %(default)s)")
    p.add_argument("--bound-rule", choices=BOUND_RULES, default="upper",
                   help="slow-rate bounds: 'upper' (CI upper end <= bound + tol) or 'overlap' "
                        "(CI lower end <= bound + tol) (default: %(default)s)")
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
        if not args.max_ci_halfwidth > 0:
            raise ValueError(f"--max-ci-halfwidth: must be > 0, got {args.max_ci_halfwidth}")
        configs = configs_from_spec(spec)
        from simstudy.engine import load_results, run_study

        run_study(spec, jobs=args.jobs, progress=not args.no_progress,
                  store_dir=args.store_dir, force_new=args.force_new,
                  allow_mixed=args.allow_mixed)
        df = load_results(spec, store_dir=args.store_dir)
        rates = rate_table(df, theory_table(list(configs.values())),
                           tol=args.theory_tolerance, bound_rule=args.bound_rule)
        spec_hash = str(df["spec_hash"].iloc[0]) if "spec_hash" in df and len(df) else ""
        ref_path = Path(args.reference)
        if args.update_reference:
            write_reference(make_reference(rates, spec_hash), ref_path)
            print(f"reference written: {ref_path}")
        reference = read_reference(ref_path) if ref_path.is_file() else None
    except ValueError as exc:
        print(f"simstudy check: error: {exc}", file=sys.stderr)
        return 2
    with pd.option_context("display.width", 200, "display.max_rows", None):
        print(check_table(rates, reference).to_string(index=False))
    fails = check_failures(rates, reference, args.tolerance, args.max_ci_halfwidth)
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
    print("\nPASS: every headline rate with a guarantee is consistent with the theory "
          "and within the reference tolerance")
    return 0
