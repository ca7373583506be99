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

from simstudy.reports.check import check_failures, make_reference
from simstudy.reports.configs import configs_from_spec, configs_from_table
from simstudy.reports.factorial import factorial_table
from simstudy.reports.rates import (
    INCLUDED_STATUSES,
    RateFit,
    RateFits,
    fit_rate,
    fit_rates,
    rate_table,
)
from simstudy.reports.summaries import per_n_summary
from simstudy.reports.theory import FitConfig, expectations, theory_table
from simstudy.reports.verdicts import verdict

__all__ = [
    "FitConfig",
    "expectations",
    "theory_table",
    "configs_from_spec",
    "configs_from_table",
    "INCLUDED_STATUSES",
    "RateFit",
    "RateFits",
    "fit_rate",
    "fit_rates",
    "rate_table",
    "verdict",
    "factorial_table",
    "per_n_summary",
    "check_failures",
    "make_reference",
]
