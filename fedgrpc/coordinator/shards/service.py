"""ShardService on every shard: the leader decides, the others refuse politely.

Authentication first: every call must carry the shards' shared secret
(`shard_token_file`) as `x-fedgrpc-shard-token`, compared in constant time
(`hmac.compare_digest`), else UNAUTHENTICATED; a forged APPLY or a flood of
SKIPs would otherwise let anyone who reaches the port void or split rounds.
"""

from __future__ import annotations

import hmac
from typing import Any

import grpc

from fedgrpc._proto.v1 import shard_pb2
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.shards.board import CommitBoard, Proposal, next_round_id
from fedgrpc.coordinator.shards.link import SHARD_TOKEN_HEADER
from fedgrpc.crypto.admin_token import read_admin_token
from fedgrpc.wire.frames import Malformed, lenient

Response = shard_pb2.ProposeCommitResponse


class ShardServicer:
    """ProposeCommit: check the caller, check the proposal, await the decision."""

    def __init__(self, config: CoordinatorConfig) -> None:
        """A leader gets a `CommitBoard`; every shard checks the token.

        Raises:
            ConfigError: `shard_token_file` unusable.
        """
        self.index, self.count = config.shard_index, config.shard_count
        self.token = read_admin_token(config.shard_token_file, "shard_token_file")
        self.board = (
            CommitBoard(self.count, config.shard_commit_timeout_s)
            if self.index == 0
            else None
        )

    async def ProposeCommit(  # noqa: N802 (the RPC's name)
        self,
        message: shard_pb2.ProposeCommitRequest | Malformed,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> Response:
        """See shard.proto (UNAUTHENTICATED, FAILED_PRECONDITION, INVALID_ARGUMENT)."""
        sent = dict(context.invocation_metadata() or ()).get(SHARD_TOKEN_HEADER, "")
        given = sent.encode() if isinstance(sent, str) else bytes(sent)
        if not hmac.compare_digest(given, self.token):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "ShardService needs the shards' shared secret (shard_token_file) "
                f"in {SHARD_TOKEN_HEADER}",
            )
        if isinstance(message, Malformed):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{message.type_name} did not parse: {message.reason}",
            )
        board = self.board
        if board is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"this coordinator is shard {self.index}; proposals go to the "
                "leader, shard 0 (the first of shard_peers)",
            )
        request = message
        if request.shard_count != self.count or request.shard_index >= self.count:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"proposal from shard {request.shard_index} of "
                f"{request.shard_count}; this federation has {self.count} shards",
            )
        proposal = Proposal(
            request.shard_index,
            request.base_version,
            tuple(request.client_ids),
            request.total_weight,
            request.usable,
        )
        apply, reason = await board.propose(request.round_id, proposal)
        decision = Response.DECISION_APPLY if apply else Response.DECISION_SKIP
        return Response(
            decision=decision,
            reason=reason,
            next_round_id=next_round_id(board),
            partial_clients=board.partial(request.round_id),
        )


def add_shard_service(servicer: ShardServicer, server: grpc.aio.Server) -> None:
    """Register ShardService with a deserializer that tolerates garbage."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "ProposeCommit": grpc.unary_unary_rpc_method_handler(
            servicer.ProposeCommit,
            request_deserializer=lenient(shard_pb2.ProposeCommitRequest),
            response_serializer=Response.SerializeToString,
        ),
    }
    service = shard_pb2.DESCRIPTOR.services_by_name["ShardService"].full_name
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service, handlers),)
    )
