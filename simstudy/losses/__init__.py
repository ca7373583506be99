"""Losses of a fit: Voronoi losses D1/D2, per-parameter errors, density distances.

``compute_metrics(fitted, truth, inputs)`` gathers them in one flat dict (spec section 3).
"""

from simstudy.losses.discrepancies import VoronoiLosses, sum_of_k_largest, voronoi_losses
from simstudy.losses.distances import (
    DensityDistances,
    density_distances_at,
    expected_density_distances,
    input_sample,
)
from simstudy.losses.metrics import compute_metrics, metric_keys
from simstudy.losses.voronoi import RBAR, cell_sizes, rbar, voronoi_cells

__all__ = [
    "compute_metrics",
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
