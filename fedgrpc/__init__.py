"""fedgrpc: DiLoCo-style federated training over gRPC.

Embed `DiLoCoClient` in an existing PyTorch loop; run the coordinator with
`fedgrpc serve`. The client (and with it grpc) is imported on first use, so
`import fedgrpc.wire` or the config types stay cheap in processes that never
talk to a coordinator. `Coordinator` runs the `fedgrpc serve` pipeline
in-process (also imported on first use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedgrpc.compress import Dense, TopK
from fedgrpc.config import ClientConfig, CoordinatorConfig
from fedgrpc.errors import (
    ConfigError,
    CoordinatorUnavailableError,
    FedGrpcError,
    IncompatibleClientError,
    IncompleteUpdateError,
    InvalidUpdateError,
    ModelMismatchError,
    PrivacyBudgetExceededError,
    ShuttingDownError,
    TooLargeError,
    UnknownClientError,
    WrongRoundError,
)
from fedgrpc.version import __version__

if TYPE_CHECKING:
    from fedgrpc.client import DiLoCoClient, DistributedDiLoCoClient
    from fedgrpc.coordinator.inprocess import Coordinator


__all__ = [
    "ClientConfig",
    "ConfigError",
    "Coordinator",
    "CoordinatorConfig",
    "CoordinatorUnavailableError",
    "Dense",
    "DiLoCoClient",
    "DistributedDiLoCoClient",
    "FedGrpcError",
    "IncompatibleClientError",
    "IncompleteUpdateError",
    "InvalidUpdateError",
    "ModelMismatchError",
    "PrivacyBudgetExceededError",
    "ShuttingDownError",
    "TooLargeError",
    "TopK",
    "UnknownClientError",
    "WrongRoundError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name == "Coordinator":
        from fedgrpc.coordinator.inprocess import Coordinator

        return Coordinator
    if name == "DiLoCoClient":
        from fedgrpc.client import DiLoCoClient

        return DiLoCoClient
    if name == "DistributedDiLoCoClient":
        from fedgrpc.client import DistributedDiLoCoClient

        return DistributedDiLoCoClient
    raise AttributeError(f"module 'fedgrpc' has no attribute {name!r}")
