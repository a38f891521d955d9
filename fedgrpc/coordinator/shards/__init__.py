"""Parameter sharding between coordinators: the leader's board, its service, the link.

`board.CommitBoard` decides each round on the leader (shard 0),
`service.ShardServicer` serves it as `ShardService` (token-checked), and
`link.ShardLink` is every shard's vote (the engine's `ShardGate`).
"""

from fedgrpc.coordinator.shards.board import CommitBoard, Proposal
from fedgrpc.coordinator.shards.link import SHARD_TOKEN_HEADER, ShardLink
from fedgrpc.coordinator.shards.service import ShardServicer, add_shard_service

__all__ = [
    "SHARD_TOKEN_HEADER",
    "CommitBoard",
    "Proposal",
    "ShardLink",
    "ShardServicer",
    "add_shard_service",
]
