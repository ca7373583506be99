"""Maximum-likelihood estimation of top-K sparse softmax gating MoE by generalized EM."""

from simstudy.estimation.em import TopKMoEEM
from simstudy.estimation.protocols import PROTOCOLS, protocol_options
from simstudy.estimation.result import ConvergenceWarning, FitResult

__all__ = ["TopKMoEEM", "FitResult", "ConvergenceWarning", "protocol_options", "PROTOCOLS"]
