"""Asyncio glue around the round engine: waiting, fan-out, deadlines, memory bounds.

The engine decides; this module makes the decisions happen on time. It owns
the session event queues, the "model version changed" condition PullModel
waits on, a ticker that enforces round deadlines and session timeouts, and
the lock that serialises the engine's numeric steps (run on a worker thread
so a 400 MB add never stalls heartbeats).

Memory: the master weights, the outer momentum and one round sum are
model-sized; updates are added into the sum chunk by chunk as they arrive,
so any number of clients can push at once (a chunk-sized scratch each).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from fedgrpc.compress import make_codec
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.durability import CheckpointStore
from fedgrpc.coordinator.enrollment import (
    Enrollment,
    check_compatible,
    load_allowed_keys,
    load_identity,
)
from fedgrpc.coordinator.events import (
    RoundStartedEvent,
    SessionEnd,
    SessionEvent,
    round_started_event,
)
from fedgrpc.coordinator.metrics import CoordinatorMetrics
from fedgrpc.coordinator.registry import ClientRecord, ClientRegistry
from fedgrpc.coordinator.rounds import ChunkValues, RoundEngine
from fedgrpc.coordinator.signatures import UpdateAuthenticator
from fedgrpc.coordinator.state import (
    OpenRound,
    Phase,
    PublishedModel,
    Ticket,
)
from fedgrpc.crypto.keys import PublicKey
from fedgrpc.errors import ShuttingDownError
from fedgrpc.log import get_logger
from fedgrpc.wire.assemble import CodecChunkCheck, DenseChunkCheck
from fedgrpc.wire.convert import JoinInfo, UpdateHeaderInfo
from fedgrpc.wire.signed import JoinProof
from fedgrpc.wire.spec import ModelSpec

log = get_logger(__name__)
TICK_S = 0.2
"""How often deadlines and session timeouts are checked."""


@dataclass(frozen=True, slots=True)
class JoinResult:
    """What Join tells a new client."""

    client: ClientRecord
    spec: ModelSpec
    seed_model: bool
    current_round: int
    model_version: int
    round_nonce: bytes


class CoordinatorRuntime:
    """One coordinator's live state; every method runs on its event loop."""

    def __init__(
        self, config: CoordinatorConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self.clock = clock
        self.checkpoints = CheckpointStore(config)  # may resume an earlier run
        self.run_id = self.checkpoints.resumed_run_id or secrets.token_hex(8)
        self.registry = ClientRegistry(config.max_clients)
        self.engine = RoundEngine(config, self.registry, clock)
        self.enrollment = Enrollment(
            load_identity(config), load_allowed_keys(config), self.run_id, clock
        )
        self.auth = UpdateAuthenticator(config, self.run_id, self.engine)
        self.started_s = clock()
        self.bytes_received = 0
        self.bytes_sent = 0
        self.stopping = False
        self._sessions: dict[str, asyncio.Queue[SessionEvent]] = {}
        self._numeric_lock = asyncio.Lock()
        self._version_changed = asyncio.Condition()
        self._active_pulls = 0
        self._ticker: asyncio.Task[None] | None = None
        self._codec = make_codec(config.codec_config)  # decode is thread-safe
        self.metrics = CoordinatorMetrics(self)
        self.checkpoints.restore(self)

    async def start(self) -> None:
        """Start the deadline / session-timeout ticker."""
        self._ticker = asyncio.create_task(self._tick_forever(), name="fedgrpc-ticker")

    async def stop(self, reason: str = "coordinator shutting down") -> None:
        """Refuse new work, tell every session, wake every waiter."""
        async with self._numeric_lock:  # a round being applied finishes first
            self.stopping = True
            self.engine.phase = Phase.STOPPING
        for queue in self._sessions.values():
            queue.put_nowait(SessionEnd(reason, cause="shutdown"))
        async with self._version_changed:
            self._version_changed.notify_all()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        self.auth.close()

    def check_running(self) -> None:
        """Raise `ShuttingDownError` once the coordinator is stopping."""
        if self.stopping:
            raise ShuttingDownError("the coordinator is shutting down; retry later")

    # -- Join and Session --------------------------------------------------------

    def authenticate_join(self, proof: JoinProof) -> PublicKey:
        """The joiner's key, allowed and proven (`Enrollment.admit`)."""
        self.check_running()
        return self.enrollment.admit(proof)

    def join(self, request: JoinInfo, key: PublicKey) -> JoinResult:
        """Admit an authenticated client whose model and settings fit."""
        self.check_running()
        check_compatible(self.config, request)
        spec, name = request.spec, request.name
        self.engine.model.adopt_spec(spec)
        client = self.registry.admit(name, self.clock(), key)
        seed = self.engine.model.claim_seeding(client.client_id)
        current = self.engine.current
        log.info(
            "client_joined",
            client=client.client_id,
            name=client.name,
            key=key.short_fingerprint,
            seed=seed,
        )
        return JoinResult(
            client=client,
            spec=spec,
            seed_model=seed,
            current_round=current.round_id if current else 0,
            model_version=self.engine.model.version,
            round_nonce=self.engine.round_nonce(),
        )

    def open_session(
        self, client_id: str, token: bytes
    ) -> tuple[ClientRecord, asyncio.Queue[SessionEvent]]:
        """Mark a client connected; its queue starts with the open round, if any."""
        self.check_running()
        client = self.registry.authenticate(client_id, token)
        previous = self._sessions.get(client_id)
        if previous is not None:
            previous.put_nowait(SessionEnd("replaced by a newer session", "evicted"))
        queue: asyncio.Queue[SessionEvent] = asyncio.Queue()
        self._sessions[client_id] = queue
        client.connected, client.last_seen_s = True, self.clock()
        current = self.engine.current
        if self.engine.phase is Phase.COLLECTING and current is not None:
            queue.put_nowait(self._round_started(current))
        log.info("session_opened", client=client_id)
        return client, queue

    def touch(self, client: ClientRecord) -> None:
        """Record a heartbeat."""
        client.last_seen_s = self.clock()

    async def close_session(
        self, client: ClientRecord, queue: asyncio.Queue[SessionEvent]
    ) -> None:
        """The client left (or timed out): the round stops waiting for it."""
        if self._sessions.get(client.client_id) is queue:
            del self._sessions[client.client_id]
            client.connected = False
            self.registry.left(client)
            log.info("session_closed", client=client.client_id)
            await self.maybe_close_round()
            self._forget_departed()

    def _forget_departed(self) -> None:
        """Drop clients that left for good, once the open round does not count them."""
        current, needed = self.engine.current, set[str]()
        if current is not None:  # a push still streaming will count too
            needed = current.contributors | {
                t.client.client_id for t in current.streaming.values()
            }
        for client_id in self.registry.forget_departed(needed):
            log.info("client_forgotten", client=client_id)

    def _broadcast(self, event: SessionEvent) -> None:
        for queue in self._sessions.values():
            queue.put_nowait(event)

    # -- PushUpdate --------------------------------------------------------------

    def admit(self, header: UpdateHeaderInfo) -> Ticket:
        """Authenticate, check, then verify an update header before any chunk.

        The plain checks come first, so an honest client that is merely in
        the wrong round or codec hears that (not a signature failure); the
        signature is checked before anything about the round changes.
        """
        self.check_running()
        client = self.registry.authenticate(header.client_id, header.session_token)
        self.engine.check_header(client, header)
        verifier = self.auth.verifier(client, header)  # signature, nonce, base
        ticket = self.engine.open_ticket(client, header)
        ticket.verifier = verifier
        return ticket

    def chunk_check(self, ticket: Ticket) -> DenseChunkCheck | CodecChunkCheck:
        """The validator for this update's chunks: raw float32 or the codec's."""
        n, chunk_bytes = ticket.header.num_coordinates, self.config.chunk_bytes
        if ticket.header.codec == "dense-fp32":
            return DenseChunkCheck(n, chunk_bytes, ticket.verifier)
        spec = self.engine.model.require_spec()
        block = self._codec.block_coordinates(chunk_bytes)
        return CodecChunkCheck(spec, self._codec, block, ticket.verifier)

    def max_update_messages(self) -> int:
        """Chunks one update of this model takes at most (dense or coded)."""
        spec = self.engine.model.spec
        if spec is None:
            return 0
        dense_block = self.config.chunk_bytes // 4
        block = min(dense_block, self._codec.block_coordinates(self.config.chunk_bytes))
        return -(-spec.num_coordinates // max(1, block))

    def add_chunk(self, ticket: Ticket, offset: int, values: ChunkValues) -> None:
        """Add one checked chunk to its round (or to the initial weights)."""
        self.check_running()
        self.engine.add_chunk(ticket, offset, values)

    def abandon(self, ticket: Ticket, reason: str) -> None:
        """A push failed after admission; its round may have to be discarded."""
        self.engine.abandon(ticket, reason)
        log.warning(
            "update_abandoned",
            client=ticket.client.client_id,
            round=ticket.round_id,
            touched_sum=ticket.touched_sum,
            reason=reason,
        )

    async def commit(self, ticket: Ticket, nbytes: int, digest: bytes) -> int:
        """Count a complete, verified update; returns the updates in its round.

        `digest` (the chain head) is logged in full: it is what `fedgrpc
        verify --hash` checks an exported update against.
        """
        self.check_running()
        in_round = self.engine.commit(ticket, nbytes)
        self.bytes_received += nbytes
        log.info(
            "update_committed",
            client=ticket.client.client_id,
            round=ticket.round_id,
            bytes=nbytes,
            updates_in_round=in_round,
            initial=ticket.header.is_initial_weights,
            update_sha256=digest.hex(),
        )
        if ticket.header.is_initial_weights:
            await asyncio.shield(self.save_checkpoint())  # version 0 is durable too
            await self._announce_new_model()
        elif in_round == 1 and self.engine.current is not None:
            # The first update set the round's deadline: announce it.
            self._broadcast(self._round_started(self.engine.current))
        await self.maybe_close_round()
        return in_round

    # -- closing rounds ----------------------------------------------------------

    async def maybe_close_round(self) -> None:
        """Close the open round if it is complete or past its deadline."""
        if self.engine.close_reason() is None:
            return
        # Shielded: a caller cancelled mid-close (a client hanging up on its
        # commit) must not stop it between the outer step and its checkpoint.
        await asyncio.shield(self._close_round())

    async def save_checkpoint(self) -> None:
        """Checkpoint now (after seeding, at shutdown), between numeric steps."""
        async with self._numeric_lock:
            await self.checkpoints.save(self)

    async def _close_round(self) -> None:
        async with self._numeric_lock:
            reason = self.engine.close_reason()
            if reason is None:
                return
            closing = self.engine.begin_close()
            applied = await asyncio.to_thread(
                self.engine.apply, closing, self._active_pulls > 0
            )
            result = self.engine.finish_close(closing, applied, reason)
            if applied:  # before anyone hears of the new version (durability.py)
                await self.checkpoints.save(self)
        self._forget_departed()  # the closed round no longer counts anyone
        self.metrics.round_closed(result)
        # Both counts on every outcome: a skipped round's committed updates
        # were thrown away, and a bare "updates=2" read as if they counted.
        log.info(
            "round_closed",
            round=result.round_id,
            outcome=result.outcome.value,
            version=result.model_version,
            updates_applied=result.num_updates if applied else 0,
            updates_discarded=0 if applied else result.num_updates,
            reason=result.reason,
            seconds=round(result.duration_s, 3),
            bytes=result.bytes_received,
            train_loss=round(result.mean_train_loss, 4),
        )
        self._broadcast(result)
        await self._announce_new_model()

    async def _announce_new_model(self) -> None:
        current = self.engine.current
        if current is not None:
            self._broadcast(self._round_started(current))
        async with self._version_changed:
            self._version_changed.notify_all()

    # -- PullModel ---------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def pull(
        self, client_id: str, token: bytes, min_version: int
    ) -> AsyncIterator[PublishedModel]:
        """Wait for a model of at least `min_version`; hold it while it streams."""
        self.registry.authenticate(client_id, token)

        def ready() -> bool:
            published = self.engine.model.published
            return self.stopping or (
                published is not None
                and published.version >= min_version
                and self.engine.phase is not Phase.APPLYING
                and self.checkpoints.is_durable(published.version)
            )

        async with self._version_changed:
            await self._version_changed.wait_for(ready)
        self.check_running()
        published = self.engine.model.published
        assert published is not None
        self._active_pulls += 1
        try:
            yield published
        finally:
            self._active_pulls -= 1

    # -- ticker ------------------------------------------------------------------

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self._evict_silent_sessions()
                await self.maybe_close_round()
            except Exception:  # the ticker must outlive any one bad tick
                log.exception("ticker_failed")

    def _evict_silent_sessions(self) -> None:
        limit = self.clock() - self.config.session_timeout_s
        for client in self.registry.connected():
            if client.last_seen_s < limit and client.client_id in self._sessions:
                log.warning("session_timed_out", client=client.client_id)
                self._sessions[client.client_id].put_nowait(
                    SessionEnd("no heartbeat within session_timeout_s", "evicted")
                )

    def current_round(self) -> OpenRound | None:
        """The open round, for status."""
        return self.engine.current

    def _round_started(self, current: OpenRound) -> RoundStartedEvent:
        return round_started_event(current, self.clock())
