"""PushUpdate of masked updates: the secure runtime's routing by codec.

`secure_runtime.SecureRuntime` builds on this class. Split from it so the
runtime keeps the round's phases (setup, advance, unmask, abort) and this
module the one job of taking pushes: masked pushes (CODEC_SECAGG_RING) go
to the open `SecureRound`'s buffers and never to a sum; initial weights go
the usual way; any other codec is refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.faults import NO_FAULTS, FaultHooks
from fedgrpc.coordinator.rounds import ChunkValues
from fedgrpc.coordinator.runtime import CoordinatorRuntime
from fedgrpc.coordinator.secure_round import SecureRound
from fedgrpc.coordinator.state import Phase, Ticket
from fedgrpc.domain.requests import UpdateHeaderInfo
from fedgrpc.errors import InvalidUpdateError, WrongRoundError
from fedgrpc.log import get_logger
from fedgrpc.wire.assemble import CodecChunkCheck, DenseChunkCheck
from fedgrpc.wire.ring import RingChunkCheck

log = get_logger("fedgrpc.coordinator.secure_runtime")  # one logger for the runtime
SECAGG_CODEC = "secagg-ring"


class MaskedPushRuntime(CoordinatorRuntime):
    """`CoordinatorRuntime` whose pushes go to the open masked round."""

    def __init__(
        self,
        config: CoordinatorConfig,
        clock: Callable[[], float] = time.monotonic,
        faults: FaultHooks = NO_FAULTS,
    ) -> None:
        super().__init__(config, clock, faults)
        self.secure: SecureRound | None = None
        """The current (or last) masked round."""

    def admit(self, header: UpdateHeaderInfo) -> Ticket:
        """Masked pushes open a buffer; initial weights go the usual way."""
        if header.codec != SECAGG_CODEC:
            if not header.is_initial_weights:
                raise InvalidUpdateError(
                    f"update codec {header.codec} is refused: this federation uses "
                    "secure aggregation, push masked updates with CODEC_SECAGG_RING"
                )
            return super().admit(header)
        self.check_running()
        client = self.registry.authenticate(header.client_id, header.session_token)
        rnd = self._round_for(header)
        if header.num_coordinates == 0:  # "I left this round": stop waiting for it
            rnd.drop(client.client_id)
        rnd.check_push(client.client_id, header)
        verifier = self.auth.verifier(client, header)
        ticket = Ticket(client, header, rnd.round_id, np.empty(0, np.float32))
        ticket.verifier = verifier
        rnd.open_buffer(ticket)
        return ticket

    def _round_for(self, header: UpdateHeaderInfo) -> SecureRound:
        current, rnd = self.engine.current, self.secure
        if (
            self.engine.phase is not Phase.COLLECTING
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

    def chunk_check(  # type: ignore[override]  # adds a third check kind
        self, ticket: Ticket
    ) -> DenseChunkCheck | CodecChunkCheck | RingChunkCheck:
        """Masked pushes carry ring elements; others as in the base runtime."""
        rnd = self.secure
        if ticket.header.codec != SECAGG_CODEC or rnd is None:
            return super().chunk_check(ticket)
        n, chunk_bytes = rnd.announce.num_positions, self.config.chunk_bytes
        return RingChunkCheck(n, chunk_bytes, rnd.ring, ticket.verifier)

    def add_chunk(self, ticket: Ticket, offset: int, values: ChunkValues) -> None:
        """Masked chunks go to the push's buffer, never to any sum yet."""
        if ticket.header.codec != SECAGG_CODEC:
            return super().add_chunk(ticket, offset, values)
        self.check_running()
        assert isinstance(values, np.ndarray)  # RingChunkCheck returns arrays
        self._secure_for(ticket).add_chunk(ticket, offset, values)
        return None

    async def commit(self, ticket: Ticket, nbytes: int, digest: bytes) -> int:
        """A verified masked push joins the ring sum; may close the phase."""
        if ticket.header.codec != SECAGG_CODEC:
            return await super().commit(ticket, nbytes, digest)
        self.check_running()
        in_round = self._secure_for(ticket).commit(ticket, nbytes)
        self.bytes_received += nbytes
        client, header = ticket.client, ticket.header
        client.updates_accepted += 1
        client.samples_contributed += header.num_samples
        client.last_train_loss, client.last_round = header.train_loss, ticket.round_id
        log.info("masked_update_committed", client=client.client_id,
                 round=ticket.round_id, bytes=nbytes, updates_in_round=in_round,
                 update_sha256=digest.hex())  # fmt: skip
        await self.maybe_close_round()
        return in_round

    def abandon(self, ticket: Ticket, reason: str) -> None:
        """A failed masked push only drops its client (nothing reached the sum)."""
        if ticket.header.codec != SECAGG_CODEC:
            return super().abandon(ticket, reason)
        if self.secure is not None and self.secure.round_id == ticket.round_id:
            self.secure.discard(ticket)
        log.warning("masked_update_abandoned", client=ticket.client.client_id,
                    round=ticket.round_id, reason=reason)  # fmt: skip
        return None

    def _secure_for(self, ticket: Ticket) -> SecureRound:
        rnd = self.secure
        if rnd is None or rnd.round_id != ticket.round_id:
            raise WrongRoundError(
                f"secure round {ticket.round_id} closed while this update streamed"
            )
        return rnd
