"""Defaults of the report and check commands, in a module without heavy imports.

The command-line parsers show them in ``--help``, which must not wait for numpy, pandas,
statsmodels and matplotlib to load.
"""

#: tolerance delta on the exponent in the verdicts (:mod:`simstudy.reports.verdicts`)
DEFAULT_TOL = 0.1

#: bootstrap resamples per rate (:mod:`simstudy.reports.rates`)
DEFAULT_BOOT = 999
