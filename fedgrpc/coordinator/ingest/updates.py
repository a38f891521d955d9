"""One owner of an update's life: admit, check each chunk, hand it on, commit.

PushUpdate's servicer translates messages and calls `UpdateIngest.receive`
once; everything between the header and the acknowledgement happens here, in
the same order for every kind of round:

1. admit: the client's session token (registry), the round's rules (the
   sink's `check`), its record-level DP claim (`rounds.record_privacy`),
   the header's signature, nonce and base (`signatures`),
   and only then a ticket (nothing about the round changes before that);
2. each chunk: order, size, hash chain, signature and values checked
   (`wire.assemble`), then handed to the round's sink (`UpdateSink.add_chunk`);
3. the commit: chunk count and chain head checked, the update counted;
   an update that fails after admission is abandoned (the staged sum drops
   it whole; its round goes on), and counted against its client if the
   failure was the client's (`breakers`: repeat breakers sit rounds out).

Which sink takes an update is decided once per update: the round mode's
(secure aggregation's masked pushes) if it claims the header, else the plain
round's running sum.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

from fedgrpc.compress import BlockCodec
from fedgrpc.coordinator.faults import FaultHooks
from fedgrpc.coordinator.ingest.breakers import BrokenUploads
from fedgrpc.coordinator.ingest.signatures import UpdateAuthenticator
from fedgrpc.coordinator.ingest.sinks import UpdateSink
from fedgrpc.coordinator.rounds import record_privacy
from fedgrpc.coordinator.rounds.engine import RoundEngine
from fedgrpc.coordinator.rounds.records import Phase, Run, Ticket
from fedgrpc.coordinator.rounds.registry import ClientRegistry
from fedgrpc.crypto.signing import CommitProof
from fedgrpc.domain.requests import UpdateHeaderInfo
from fedgrpc.errors import TooLargeError
from fedgrpc.wire.frames import ChunkFrame

Part = TypeVar("Part")
"""One message of the stream as it arrives (the servicer's wire type)."""
SinkChooser = Callable[[UpdateHeaderInfo], UpdateSink | None]
"""The round mode's sink for a header, or None for the plain round's."""


@dataclass(frozen=True, slots=True)
class Receipt:
    """What a committed update's acknowledgement says."""

    round_id: int
    updates_in_round: int
    bytes_received: int
    update_sha256: bytes


class UpdateIngest:
    """Takes updates in for one coordinator (module docstring)."""

    def __init__(  # the collaborators an update passes through
        self,
        run: Run,
        clients: ClientRegistry,
        engine: RoundEngine,
        auth: UpdateAuthenticator,
        round_sink: UpdateSink,
        codec: BlockCodec,
        chunk_bytes: int,
        faults: FaultHooks,
    ) -> None:
        self._run = run
        self._clients = clients
        self._engine = engine
        self._auth = auth
        self._round_sink = round_sink
        self._codec = codec
        self._chunk_bytes = chunk_bytes
        self._faults = faults
        self.choose_sink: SinkChooser = lambda header: None
        """Set by a round mode that takes some updates itself."""
        self.seeding_pushes = 0
        """Initial-weights pushes admitted and not yet finished (at most one)."""
        self.broken = BrokenUploads(engine.config)

    def admit(self, header: UpdateHeaderInfo) -> tuple[Ticket, UpdateSink]:
        """Authenticate, check, then verify an update header before any chunk.

        The plain checks come first, so an honest client that is merely in
        the wrong round or codec hears that (not a signature failure); the
        signature is checked before anything about the round changes.
        """
        sink = self.choose_sink(header) or self._round_sink  # may refuse the codec
        self._run.check_running()
        client = self._clients.authenticate(header.client_id, header.session_token)
        sink.check(client, header)
        record_privacy.check_claim(client, header)  # any sink: a claim is a claim
        verifier = self._auth.verifier(client, header)  # signature, nonce, base
        ticket = sink.open(client, header)
        ticket.verifier = verifier
        return ticket, sink

    async def receive(
        self,
        header: UpdateHeaderInfo,
        stream: AsyncIterator[Part],
        part_of: Callable[[Part], ChunkFrame | CommitProof],
    ) -> Receipt:
        """Admit `header`, take the chunks of `stream` up to the commit, count it.

        `part_of` translates one stream message (a chunk or the commit; it
        raises for anything else). A failure after admission abandons the
        update before it propagates.

        Initial weights are staged whole (a model-sized buffer per push), so
        one seeding push at a time is admitted; another is refused with
        RESOURCE_EXHAUSTED until it ends (`_check_one_seeding`).
        """
        seeding = header.is_initial_weights
        if seeding:
            self._check_one_seeding()
        ticket, sink = self.admit(header)  # no await since the check: no race
        self.seeding_pushes += seeding
        try:
            receipt = await self._take_chunks(ticket, sink, stream, part_of)
        except BaseException as exc:
            reason = str(exc) or type(exc).__name__
            sink.abandon(ticket, reason)
            if self._clients_fault(ticket):
                self.broken.record(ticket.client, ticket.round_id, reason)
            raise
        finally:
            self.seeding_pushes -= seeding
        self._faults.update_committed(ticket.client.client_id, ticket.round_id)
        return receipt

    def _check_one_seeding(self) -> None:
        """Refuse a second concurrent initial-weights push (4 held 3.5 GB)."""
        if self.seeding_pushes:
            raise TooLargeError(
                "another client is uploading the initial weights; the coordinator "
                "takes one seeding push at a time (each stages a whole model). "
                "Retry once it finished: the model is then seeded, pull it"
            )

    def _clients_fault(self, ticket: Ticket) -> bool:
        """Whether a failed push is its client's doing, not the coordinator's.

        Not when the coordinator is stopping, nor when the push's round is no
        longer collecting (it closed under the push); initial weights are
        the seeding lease's business.
        """
        current = self._engine.current
        return (
            not self._run.stopping
            and ticket.round_id > 0
            and self._engine.phase is Phase.COLLECTING
            and current is not None
            and current.round_id == ticket.round_id
        )

    async def _take_chunks(
        self,
        ticket: Ticket,
        sink: UpdateSink,
        stream: AsyncIterator[Part],
        part_of: Callable[[Part], ChunkFrame | CommitProof],
    ) -> Receipt:
        """Chunks until the commit, each verified in full before it is added.

        Each chunk is hashed, then its position, chain link, signature and
        values are checked, and only then is it handed to the sink; all on
        this thread, as it arrives (`signatures` says why not on a pool).
        """
        check = sink.chunk_check(ticket)
        auth = self._auth
        async for message in stream:
            part = part_of(message)
            if isinstance(part, CommitProof):
                digest = check.finish(part.num_chunks, part)
                nbytes = check.payload_bytes
                self._run.check_running()
                in_round = await sink.commit(ticket, nbytes, digest)
                record_privacy.credit(ticket.client, ticket.header.record_dp)
                return Receipt(ticket.round_id, in_round, nbytes, digest)
            payload_hash = auth.payload_digest(part.payload, ticket.verifier)
            values = check.check(
                part.seq, part.offset, part.count, part.payload, part.proof,
                payload_hash,
            )  # fmt: skip
            self._run.check_running()
            sink.add_chunk(ticket, part.offset, values)
        raise check.missing_commit()

    def max_update_messages(self) -> int:
        """Chunks one update of this model takes at most (dense or coded)."""
        spec = self._engine.model.spec
        if spec is None:
            return 0
        dense_block = self._chunk_bytes // 4
        block = min(dense_block, self._codec.block_coordinates(self._chunk_bytes))
        return -(-spec.num_coordinates // max(1, block))
