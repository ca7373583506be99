"""Reports: theory table, rate regressions and verdicts, summaries, tables, figures, CI check.

* :mod:`~simstudy.reports.theory` -- expected exponents derived from the design and the fit;
* :mod:`~simstudy.reports.configs` -- fitted configurations from a spec or a tidy table;
* :mod:`~simstudy.reports.rates` -- OLS log(metric) ~ log(n) with HC3 SE, verdicts;
* :mod:`~simstudy.reports.summaries` -- per-n means, medians, MCSEs, status counts;
* :mod:`~simstudy.reports.tables`, :mod:`~simstudy.reports.figures` -- files under results/;
* :mod:`~simstudy.reports.build` (``simstudy report``), :mod:`~simstudy.reports.check`
  (``simstudy check``).
"""

from simstudy.reports.check import check_failures, make_reference
from simstudy.reports.configs import configs_from_spec, configs_from_table
from simstudy.reports.rates import INCLUDED_STATUSES, RateFit, fit_rate, rate_table, verdict
from simstudy.reports.summaries import per_n_summary
from simstudy.reports.theory import FitConfig, expectations, theory_table

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
