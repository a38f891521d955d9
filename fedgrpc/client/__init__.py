"""The federated client: `DiLoCoClient` and the gRPC plumbing behind it.

The training loop calls the synchronous `DiLoCoClient` (in a torch.distributed
worker, `DistributedDiLoCoClient`, whose rank 0 holds the one `DiLoCoClient`).
By job:

    diloco, distributed   the synchronous API the training loop calls
    sync, reconnect       round logic: one sync point, and riding out faults
    weights, compressed   the local run's buffers; codec + error feedback
    proximal              FedProx's gradient term (`ClientConfig.proximal_mu`)
    transform             `update_transform`, a pseudo-gradient rewrite before
                          signing, for simulation and research only
    connection/           everything gRPC, behind `connection.Connection`, the
                          one sync/async boundary (one background loop)
    secure/               secure aggregation, a round mode the client holds
    status, admin         status codes -> `fedgrpc.errors`; the operator's view

Besides `fedgrpc.coordinator`, this is the only package that imports grpc.
"""

from fedgrpc.client.diloco import DiLoCoClient
from fedgrpc.client.distributed import DistributedDiLoCoClient

__all__ = ("DiLoCoClient", "DistributedDiLoCoClient")
