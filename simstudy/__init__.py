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

__version__ = "0.1.0"
__all__ = ["MoEParams", "__version__"]


def __getattr__(name):
    # MoEParams loads numpy and scipy: only when asked for, so that `simstudy --help` and the
    # other commands' help start at once
    if name == "MoEParams":
        from simstudy.model.params import MoEParams

        return MoEParams
    raise AttributeError(f"module 'simstudy' has no attribute {name!r}")
