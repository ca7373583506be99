"""Reports: theory table, rate regressions and verdicts, summaries, tables, figures, CI check.

* :mod:`~simstudy.reports.theory` -- expected exponents derived from the design and the fit;
* :mod:`~simstudy.reports.configs` -- fitted configurations from a spec or a tidy table;
* :mod:`~simstudy.reports.rates` -- median / 0.9-quantile regression of log(loss) on log(n)
  with bootstrap intervals (:mod:`~simstudy.reports.quantreg` refits the resamples);
* :mod:`~simstudy.reports.verdicts` -- three-way verdicts against the theory;
* :mod:`~simstudy.reports.factorial` -- the 2 x 2 protocol factorial (start x stopping rule);
* :mod:`~simstudy.reports.summaries` -- per-n means, medians, MCSEs, diagnostics;
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
    "factorial_table": "factorial",
    "INCLUDED_STATUSES": "rates",
    "RateFit": "rates",
    "RateFits": "rates",
    "fit_rate": "rates",
    "fit_rates": "rates",
    "rate_table": "rates",
    "verdict": "verdicts",
    "per_n_summary": "summaries",
    "FitConfig": "theory",
    "expectations": "theory",
    "theory_table": "theory",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"simstudy.reports.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'simstudy.reports' has no attribute {name!r}")
