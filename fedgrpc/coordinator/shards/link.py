"""A shard's vote: ProposeCommit to the leader, from the engine's apply thread.

The engine calls the link (its `ShardGate`) on the worker thread that
applies rounds, so a plain blocking gRPC channel is right: the event loop
keeps serving while the shard waits for the decision, including the
leader's own ShardService when the leader votes to itself.

Anything short of an APPLY answer skips the round here: an unreachable
leader, a timeout, a refused call. A shard never applies a round it could
not confirm every other shard applies.
"""

from __future__ import annotations

import grpc

from fedgrpc._proto.v1 import shard_pb2, shard_pb2_grpc
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.rounds.sharding import ShardVerdict
from fedgrpc.crypto.admin_token import read_admin_token
from fedgrpc.crypto.tls import load_client_tls
from fedgrpc.log import get_logger

log = get_logger(__name__)
SHARD_TOKEN_HEADER = "x-fedgrpc-shard-token"
"""Metadata key carrying the shards' shared secret (`shard_token_file`)."""
ANSWER_MARGIN_S = 5.0
"""Seconds a shard waits for the leader beyond the leader's own timeout."""


class ShardLink:
    """Votes for one shard; callable as the engine's `ShardGate`."""

    def __init__(self, config: CoordinatorConfig) -> None:
        """Read the token and open a channel to the leader (connects lazily).

        Raises:
            ConfigError: `shard_token_file` unusable (`read_admin_token`).
        """
        self.index, self.count = config.shard_index, config.shard_count
        self.token = read_admin_token(config.shard_token_file, "shard_token_file")
        self.leader = config.shard_peers[0]
        self.timeout_s = config.shard_commit_timeout_s + ANSWER_MARGIN_S
        self._channel = _leader_channel(config)
        self._stub = shard_pb2_grpc.ShardServiceStub(self._channel)

    def __call__(
        self,
        round_id: int,
        base_version: int,
        clients: tuple[str, ...],
        total_weight: float,
        usable: bool,
    ) -> ShardVerdict:
        """Propose; returns the leader's verdict (`ShardGate`).

        The next round id is the earliest this shard should open next (the
        leader's advice), 0 when the leader gave none.
        """
        request = shard_pb2.ProposeCommitRequest(
            round_id=round_id,
            base_version=base_version,
            shard_index=self.index,
            shard_count=self.count,
            client_ids=clients,
            total_weight=total_weight,
            usable=usable,
        )
        try:
            answer = self._stub.ProposeCommit(
                request,
                timeout=self.timeout_s,
                metadata=((SHARD_TOKEN_HEADER, self.token.decode()),),
            )
        except grpc.RpcError as exc:
            reason = (
                f"the shards' leader {self.leader} did not decide round {round_id}: "
                f"{exc.code().name} {exc.details()}"
            )
            log.warning("shard_round_unconfirmed", round=round_id, reason=reason)
            return ShardVerdict(reason, 0)
        following = answer.next_round_id
        partial = tuple(answer.partial_clients)
        if answer.decision == shard_pb2.ProposeCommitResponse.DECISION_APPLY:
            return ShardVerdict(None, following, partial)
        reason = f"the shards skip round {round_id}: {answer.reason}"
        log.warning(
            "shard_round_skipped",
            round=round_id,
            reason=answer.reason,
            partial_clients=len(partial),
        )
        return ShardVerdict(reason, following, partial)

    def close(self) -> None:
        """Close the channel to the leader."""
        self._channel.close()


def _leader_channel(config: CoordinatorConfig) -> grpc.Channel:
    """Plaintext, or TLS verified by `shard_tls_ca` (+ a client certificate).

    The leader's ShardService shares its TLS port with the clients', so a
    shard serving TLS dials TLS; the shared token still authenticates the
    vote, TLS keeps it (and the token) off the wire in clear.

    Raises:
        ConfigError: a TLS file unreadable, not PEM, or expired (named).
    """
    if not config.shard_tls_ca:
        return grpc.insecure_channel(config.shard_peers[0])
    tls = load_client_tls(
        config.shard_tls_ca, config.shard_tls_cert, config.shard_tls_key, "shard_"
    )
    credentials = grpc.ssl_channel_credentials(
        tls.ca, tls.private_key, tls.certificate_chain
    )
    return grpc.secure_channel(config.shard_peers[0], credentials)
