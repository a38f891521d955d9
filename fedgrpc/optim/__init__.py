"""Outer optimizers: the round's mean pseudo-gradient in, new global weights out.

The coordinator's last step before sending weights back (aggregate -> optim ->
wire). A leaf package: it imports only `errors` and `config`, never gRPC.
`outer` holds the contract, `momentum` the SGD family (Nesterov, FedAvg,
FedAvgM), `adaptive` Reddi et al.'s (FedAdagrad, FedAdam, FedYogi) and
`builder` the name -> class mapping the config uses.
"""

from fedgrpc.optim.adaptive import (
    FedAdagradOuterOptimizer,
    FedAdamOuterOptimizer,
    FedYogiOuterOptimizer,
)
from fedgrpc.optim.builder import AdaptiveSettings, build_outer_optimizer
from fedgrpc.optim.momentum import (
    FedAvgMOuterOptimizer,
    FedAvgOuterOptimizer,
    NesterovOuterOptimizer,
)
from fedgrpc.optim.outer import OuterOptimizer, StateDict

__all__ = [
    "AdaptiveSettings",
    "FedAdagradOuterOptimizer",
    "FedAdamOuterOptimizer",
    "FedAvgMOuterOptimizer",
    "FedAvgOuterOptimizer",
    "FedYogiOuterOptimizer",
    "NesterovOuterOptimizer",
    "OuterOptimizer",
    "StateDict",
    "build_outer_optimizer",
]
