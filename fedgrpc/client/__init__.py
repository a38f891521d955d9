"""The federated client: `DiLoCoClient` and the gRPC plumbing behind it.

The training loop calls the synchronous `DiLoCoClient` (in a torch.distributed
worker, `DistributedDiLoCoClient`, whose rank 0 holds the one `DiLoCoClient`);
everything that talks gRPC (`link`, `session`, `transfer`) runs on one
background asyncio loop (`connection.BackgroundLoop`), and `status` maps the
coordinator's status codes back to `fedgrpc.errors`. Besides
`fedgrpc.coordinator`, this is the only package that imports grpc.
"""

from fedgrpc.client.diloco import DiLoCoClient
from fedgrpc.client.distributed import DistributedDiLoCoClient

__all__ = ("DiLoCoClient", "DistributedDiLoCoClient")
