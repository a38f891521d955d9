"""Where an admitted update's chunks go: the `UpdateSink` a round takes them with.

Ingest (`ingest.updates`) owns an update's life and is the same for every
kind of round; a sink is what differs. The plain round's `RoundSink` hands
each checked chunk to the open round's Accumulator (`RoundEngine.add_chunk`;
by default it stages the update until its commit), or stages initial
weights; secure aggregation's sink (`secure.pushes`) keeps masked chunks
apart until the ring sum is unmasked.

`UpdateSink.add_chunk` is the one narrow hand-off from ingest to whatever
holds a round's updates: the round's Accumulator (the staged sum, or the
per-update disk spool a robust rule needs), which the engine opens from
`RoundStages`; ingest does not change with it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from fedgrpc.compress import BlockCodec
from fedgrpc.coordinator.rounds.engine import ChunkValues, RoundEngine
from fedgrpc.coordinator.rounds.records import Run, Ticket
from fedgrpc.coordinator.rounds.registry import ClientRecord
from fedgrpc.domain.requests import UpdateHeaderInfo
from fedgrpc.log import get_logger
from fedgrpc.wire.assemble import ChunkStream, CodecChunkCheck, DenseChunkCheck

log = get_logger(__name__)
ChunkCheck = ChunkStream[Any]
"""Checks one update's chunks in order and returns their values."""
Committed = Callable[[Ticket, int], Awaitable[None]]
"""Called after a plain update counted, with the updates now in its round."""


class UpdateSink(Protocol):
    """Takes the chunks of updates a round accepts (module docstring)."""

    def check(self, client: ClientRecord, header: UpdateHeaderInfo) -> None:
        """Refuse a header this round cannot take (before its signature)."""

    def open(self, client: ClientRecord, header: UpdateHeaderInfo) -> Ticket:
        """Start taking a checked header's chunks."""

    def chunk_check(self, ticket: Ticket) -> ChunkCheck:
        """The validator of this update's chunks."""

    def add_chunk(self, ticket: Ticket, offset: int, values: ChunkValues) -> None:
        """Hold one checked chunk's values (the Accumulator's slot)."""

    async def commit(self, ticket: Ticket, nbytes: int, digest: bytes) -> int:
        """Count a complete, verified update; returns the updates in its round."""

    def abandon(self, ticket: Ticket, reason: str) -> None:
        """Forget an update that failed after admission."""


class RoundSink:
    """The plain round: chunks go into the open round's running sum."""

    def __init__(
        self,
        engine: RoundEngine,
        run: Run,
        codec: BlockCodec,
        chunk_bytes: int,
        committed: Committed,
    ) -> None:
        self._engine = engine
        self._run = run
        self._codec = codec  # decode is thread-safe
        self._chunk_bytes = chunk_bytes
        self._committed = committed

    def check(self, client: ClientRecord, header: UpdateHeaderInfo) -> None:
        """The engine's header rules (round, base version, shape, one per client)."""
        self._engine.check_header(client, header)

    def open(self, client: ClientRecord, header: UpdateHeaderInfo) -> Ticket:
        """A ticket in the open round (or for the initial weights)."""
        return self._engine.open_ticket(client, header)

    def chunk_check(self, ticket: Ticket) -> ChunkCheck:
        """Raw float32 values, or the federation codec's blocks."""
        n, chunk_bytes = ticket.header.num_coordinates, self._chunk_bytes
        if ticket.header.codec == "dense-fp32":
            return DenseChunkCheck(n, chunk_bytes, ticket.verifier)
        spec = self._engine.model.require_spec()
        block = self._codec.block_coordinates(chunk_bytes)
        current = self._engine.current
        fragment = None if current is None else current.fragment
        span = None if fragment is None else (fragment.coord_start, fragment.coord_stop)
        return CodecChunkCheck(spec, self._codec, block, ticket.verifier, span)

    def add_chunk(self, ticket: Ticket, offset: int, values: ChunkValues) -> None:
        """Into the round's sum, weighted by the update's samples."""
        self._engine.add_chunk(ticket, offset, values)

    async def commit(self, ticket: Ticket, nbytes: int, digest: bytes) -> int:
        """Count the update; the runtime then announces and maybe closes.

        `digest` (the chain head) is logged in full: it is what `fedgrpc
        verify --hash` checks an exported update against.
        """
        in_round = self._engine.commit(ticket, nbytes)
        self._run.bytes_received += nbytes
        log.info(
            "update_committed",
            client=ticket.client.client_id,
            round=ticket.round_id,
            bytes=nbytes,
            updates_in_round=in_round,
            initial=ticket.header.is_initial_weights,
            update_sha256=digest.hex(),
        )
        await self._committed(ticket, in_round)
        return in_round

    def abandon(self, ticket: Ticket, reason: str) -> None:
        """Forget the push: its stage (or spool file) is dropped whole.

        The round goes on without it; `voided` stays in the log for an
        Accumulator that cannot drop a partial update (a plugin's).
        """
        voided = self._engine.abandon(ticket, reason)
        log.warning(
            "update_abandoned",
            client=ticket.client.client_id,
            round=ticket.round_id,
            touched_sum=ticket.touched_sum,
            voided=voided,
            reason=reason,
        )
