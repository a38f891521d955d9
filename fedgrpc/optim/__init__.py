"""Outer optimizers: the round's mean pseudo-gradient in, new global weights out.

The coordinator's last step before sending weights back (aggregate -> optim ->
wire). A leaf package: it imports only `errors` and `config`, never gRPC.
"""

from fedgrpc.optim.outer import (
    FedAvgOuterOptimizer,
    NesterovOuterOptimizer,
    OuterOptimizer,
    StateDict,
    build_outer_optimizer,
)

__all__ = [
    "FedAvgOuterOptimizer",
    "NesterovOuterOptimizer",
    "OuterOptimizer",
    "StateDict",
    "build_outer_optimizer",
]
