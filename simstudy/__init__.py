"""simstudy: simulation and benchmarking suite for top-K sparse softmax gating mixtures of experts.

Folders say what they hold:

- :mod:`simstudy.model` -- the top-K sparse softmax gating Gaussian MoE (parameters, designs,
  gating, densities, sampling) and its numba kernels;
- :mod:`simstudy.estimation` -- the generalized EM estimator of the maximum-likelihood fit;
- :mod:`simstudy.losses` -- Voronoi losses D1/D2, per-parameter errors, density distances;
- :mod:`simstudy.engine` -- study specs, seeds, the parallel runner and the results store;
- :mod:`simstudy.reports` -- rate regressions, theory table, tables, figures and the CI check;
- :mod:`simstudy.neural` -- torch benchmarks of neural gating (optional extra).
"""

from simstudy.model.params import MoEParams

__version__ = "0.1.0"
__all__ = ["MoEParams", "__version__"]
