"""Masked PushUpdates: secure aggregation's `UpdateSink`.

Masked pushes (CODEC_SECAGG_RING) go to the open `SecureRound`'s buffers and
never to a sum; initial weights go the plain round's way; any other codec is
refused (`SecureMode.sink_for` routes). Ingest (`ingest.updates`) runs the
same admit/check/commit steps as for a plain update around these.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedgrpc.coordinator.ingest.sinks import ChunkCheck
from fedgrpc.coordinator.round_mode import RoundContext
from fedgrpc.coordinator.rounds.admission import check_shard
from fedgrpc.coordinator.rounds.engine import ChunkValues
from fedgrpc.coordinator.rounds.records import Phase, Ticket
from fedgrpc.coordinator.rounds.registry import ClientRecord
from fedgrpc.coordinator.rounds.weighting import check_claims, saturating_add
from fedgrpc.coordinator.secure.masked_round import SecureRound
from fedgrpc.domain.requests import UpdateHeaderInfo
from fedgrpc.errors import WrongRoundError
from fedgrpc.log import get_logger
from fedgrpc.wire.ring import RingChunkCheck

log = get_logger("fedgrpc.coordinator.secure.mode")  # one logger for the mode
SECAGG_CODEC = "secagg-ring"


class MaskedPushes:
    """Takes masked updates into the open masked round (module docstring)."""

    def __init__(
        self, context: RoundContext, masked_round: Callable[[], SecureRound | None]
    ) -> None:
        self._context = context
        self._engine = context.engine
        self._masked_round = masked_round

    def check(self, client: ClientRecord, header: UpdateHeaderInfo) -> None:
        """Only for the masked round collecting now; num_coordinates=0 leaves it."""
        config = self._context.config
        check_claims(config, header)
        if config.shard_count > 1:  # another shard's range, or a whole model
            check_shard(config, header)
        rnd = self._round_for(header)
        if header.num_coordinates == 0:  # "I left this round": stop waiting for it
            rnd.drop(client.client_id)
        rnd.check_push(client.client_id, header)

    def open(self, client: ClientRecord, header: UpdateHeaderInfo) -> Ticket:
        """A ticket whose chunks fill a buffer of the masked round."""
        rnd = self._round_for(header)
        ticket = Ticket(client, header, rnd.round_id, np.empty(0, np.float32))
        rnd.open_buffer(ticket)
        return ticket

    def _round_for(self, header: UpdateHeaderInfo) -> SecureRound:
        current, rnd = self._engine.current, self._masked_round()
        if (
            self._engine.phase is not Phase.COLLECTING
            or current is None
            or rnd is None
            or rnd.round_id != current.round_id
            or header.round_id != current.round_id
        ):
            raise WrongRoundError(
                f"masked update for round {header.round_id}, but no secure round "
                "with that id is collecting; pull the latest model and take part "
                "in the next round"
            )
        if header.base_version != current.base_version:
            raise WrongRoundError(
                f"update was computed from model version {header.base_version}; "
                f"round {current.round_id} starts from {current.base_version}"
            )
        return rnd

    def chunk_check(self, ticket: Ticket) -> ChunkCheck:
        """Masked pushes carry ring elements at the round's positions."""
        rnd = self._secure_for(ticket)
        n, chunk_bytes = rnd.announce.vector_length, self._context.config.chunk_bytes
        return RingChunkCheck(n, chunk_bytes, rnd.ring, ticket.verifier)

    def add_chunk(self, ticket: Ticket, offset: int, values: ChunkValues) -> None:
        """Masked chunks go to the push's buffer, never to any sum yet."""
        assert isinstance(values, np.ndarray)  # RingChunkCheck returns arrays
        self._secure_for(ticket).add_chunk(ticket, offset, values)

    async def commit(self, ticket: Ticket, nbytes: int, digest: bytes) -> int:
        """A verified masked push joins the ring sum; may close the phase."""
        in_round = self._secure_for(ticket).commit(ticket, nbytes)
        self._context.run.bytes_received += nbytes
        client, header = ticket.client, ticket.header
        client.updates_accepted = saturating_add(client.updates_accepted, 1)
        client.samples_contributed = saturating_add(
            client.samples_contributed, header.num_samples
        )
        client.last_train_loss, client.last_round = header.train_loss, ticket.round_id
        log.info("masked_update_committed", client=client.client_id,
                 round=ticket.round_id, bytes=nbytes, updates_in_round=in_round,
                 update_sha256=digest.hex())  # fmt: skip
        await self._context.close_round()
        return in_round

    def abandon(self, ticket: Ticket, reason: str) -> None:
        """A failed masked push only drops its client (nothing reached the sum)."""
        rnd = self._masked_round()
        if rnd is not None and rnd.round_id == ticket.round_id:
            rnd.discard(ticket)
        log.warning("masked_update_abandoned", client=ticket.client.client_id,
                    round=ticket.round_id, reason=reason)  # fmt: skip

    def _secure_for(self, ticket: Ticket) -> SecureRound:
        rnd = self._masked_round()
        if rnd is None or rnd.round_id != ticket.round_id:
            raise WrongRoundError(
                f"secure round {ticket.round_id} closed while this update streamed"
            )
        return rnd
