"""Losses of a fit: Voronoi losses D1/D2, per-parameter errors, density distances.

``compute_metrics(fitted, truth, inputs)`` gathers them in one flat dict (spec section 3).
"""

from simstudy.losses.discrepancies import (
    PARAMS,
    VoronoiLosses,
    dense_fit_of_sparse_truth,
    param_exponent,
    power_mean,
    sum_of_k_largest,
    voronoi_losses,
)
from simstudy.losses.distances import (
    DensityDistances,
    density_distances_at,
    expected_density_distances,
    input_sample,
)
from simstudy.losses.metrics import DIAGNOSTIC_PREFIXES, compute_metrics, metric_keys
from simstudy.losses.voronoi import RBAR, cell_sizes, rbar, voronoi_cells

__all__ = [
    "compute_metrics",
    "DIAGNOSTIC_PREFIXES",
    "PARAMS",
    "param_exponent",
    "power_mean",
    "dense_fit_of_sparse_truth",
    "metric_keys",
    "VoronoiLosses",
    "voronoi_losses",
    "sum_of_k_largest",
    "DensityDistances",
    "density_distances_at",
    "expected_density_distances",
    "input_sample",
    "RBAR",
    "rbar",
    "voronoi_cells",
    "cell_sizes",
]
