"""Defaults of the report and check commands, in a module without heavy imports.

The command-line parsers show them in ``--help``, which must not wait for numpy, pandas,
statsmodels and matplotlib to load.
"""

#: tolerance on the exponent for a verdict (see :func:`simstudy.reports.rates.verdict`)
DEFAULT_TOL = 0.1

#: how a slow-rate bound is judged: "upper" (as the task states: the whole CI must be at least
#: as fast as the bound, CI upper end <= bound + tol) or "overlap" (not significantly slower:
#: CI lower end <= bound + tol)
BOUND_RULES = ("upper", "overlap")
