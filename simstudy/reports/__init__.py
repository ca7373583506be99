"""Reports: theory table, rate regressions and verdicts, summaries, tables, figures, CI check.

* :mod:`~simstudy.reports.theory` -- expected exponents derived from the design and the fit;
* :mod:`~simstudy.reports.configs` -- fitted configurations from a spec or a tidy table;
* :mod:`~simstudy.reports.rates` -- OLS log(metric) ~ log(n) with HC3 SE, verdicts;
* :mod:`~simstudy.reports.summaries` -- per-n means, medians, MCSEs, status counts;
* :mod:`~simstudy.reports.tables`, :mod:`~simstudy.reports.figures` -- files under results/;
* :mod:`~simstudy.reports.build` (``simstudy report``), :mod:`~simstudy.reports.check`
  (``simstudy check``).
"""

# the names below load on first use (PEP 562): `simstudy report --help` and
# `simstudy check --help` must not wait for numpy, pandas, statsmodels and matplotlib
_EXPORTS = {
    "check_failures": "check",
    "make_reference": "check",
    "configs_from_spec": "configs",
    "configs_from_table": "configs",
    "INCLUDED_STATUSES": "rates",
    "RateFit": "rates",
    "fit_rate": "rates",
    "rate_table": "rates",
    "verdict": "rates",
    "per_n_summary": "summaries",
    "FitConfig": "theory",
    "expectations": "theory",
    "theory_table": "theory",
}

__all__ = [
    "FitConfig",
    "expectations",
    "theory_table",
    "configs_from_spec",
    "configs_from_table",
    "INCLUDED_STATUSES",
    "RateFit",
    "fit_rate",
    "rate_table",
    "verdict",
    "per_n_summary",
    "check_failures",
    "make_reference",
]


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"simstudy.reports.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'simstudy.reports' has no attribute {name!r}")
