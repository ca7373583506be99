"""The top-K sparse softmax gating Gaussian mixture of experts."""

from simstudy.model.density import (
    active_mask,
    expert_log_densities,
    gating_weights,
    log_density,
    log_gating_weights,
    loglik,
    sample,
)
from simstudy.model.designs import Design, design_P, design_S, design_T, get_design
from simstudy.model.inputs import UniformBox
from simstudy.model.params import MoEParams

__all__ = [
    "MoEParams",
    "UniformBox",
    "Design",
    "design_T",
    "design_S",
    "design_P",
    "get_design",
    "active_mask",
    "gating_weights",
    "log_gating_weights",
    "expert_log_densities",
    "log_density",
    "loglik",
    "sample",
]
