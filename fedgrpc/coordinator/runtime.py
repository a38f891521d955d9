"""The coordinator's runtime: builds the round pipeline and runs it on one event loop.

The engine decides; this module makes the decisions happen on time. It
builds the collaborators (run, clients, engine, enrollment, ingest, sessions,
checkpoints, metrics, and a round mode if one is configured) and hands each
the few others it needs, and wakes `waiters` (PullModel and `wait_until`)
whenever what they wait on changed. What it keeps itself: a ticker that
enforces round deadlines and session timeouts, and the lock that serialises
the engine's numeric steps (run on a worker thread so a 400 MB add never
stalls heartbeats).

Memory: the master weights, the outer momentum and one round sum are
model-sized; updates are added into the sum chunk by chunk as they arrive,
so any number of clients can push at once (a chunk-sized scratch each).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from fedgrpc.compress import make_codec
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.enrollment import (
    Enrollment,
    check_compatible,
    load_allowed_keys,
    load_identity,
)
from fedgrpc.coordinator.faults import NO_FAULTS, FaultHooks
from fedgrpc.coordinator.ingest.signatures import UpdateAuthenticator
from fedgrpc.coordinator.ingest.sinks import RoundSink
from fedgrpc.coordinator.ingest.updates import UpdateIngest
from fedgrpc.coordinator.ops.allocator import release_free_heap
from fedgrpc.coordinator.ops.checkpoint_store import CheckpointStore
from fedgrpc.coordinator.ops.durable_gate import DurableGate
from fedgrpc.coordinator.ops.init_model_file import choose_initial_model
from fedgrpc.coordinator.ops.metrics import CoordinatorMetrics
from fedgrpc.coordinator.ops.round_costs import RoundCosts
from fedgrpc.coordinator.ops.round_log import log_round_closed
from fedgrpc.coordinator.round_mode import ModeFactory, RoundContext, RoundMode
from fedgrpc.coordinator.rounds import pacing
from fedgrpc.coordinator.rounds.engine import RoundEngine
from fedgrpc.coordinator.rounds.records import (
    OpenRound,
    Phase,
    PublishedModel,
    RoundResult,
    Run,
    Ticket,
)
from fedgrpc.coordinator.rounds.registry import ClientRecord, ClientRegistry
from fedgrpc.coordinator.sessions import (
    RoundStartedEvent,
    SessionEnd,
    SessionQueue,
    Sessions,
    round_started_event,
)
from fedgrpc.coordinator.strategy.wiring import NO_PLUGINS, StagePlugins
from fedgrpc.coordinator.waiters import Waiters
from fedgrpc.crypto.keys import PublicKey
from fedgrpc.domain.model_spec import ModelSpec
from fedgrpc.domain.requests import JoinInfo
from fedgrpc.log import get_logger
from fedgrpc.wire.signed import JoinProof

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
    run_finished: bool = False
    """The run's last round closed: pull the final model, push nothing."""


class CoordinatorRuntime:
    """One coordinator's live state; every method runs on its event loop."""

    def __init__(
        self,
        config: CoordinatorConfig,
        clock: Callable[[], float] = time.monotonic,
        faults: FaultHooks = NO_FAULTS,
        mode: ModeFactory | None = None,
        plugins: StagePlugins = NO_PLUGINS,
    ) -> None:
        self.config = config
        self.clock = clock
        self.metrics = CoordinatorMetrics()
        self.checkpoints = CheckpointStore(config, self.metrics, faults)
        self.run = Run(self.checkpoints.resumed_run_id or secrets.token_hex(8), clock())
        self.registry = ClientRegistry(config.max_clients)
        self.engine = RoundEngine(config, self.registry, clock, plugins)
        self.enrollment = Enrollment(
            load_identity(config), load_allowed_keys(config), self.run.run_id, clock
        )
        self.auth = UpdateAuthenticator(config, self.run.run_id, self.engine)
        self.sessions = Sessions()
        self._numeric_lock = asyncio.Lock()
        self.durable = DurableGate(
            self.checkpoints, self.engine, self.registry, self.run,
            self._numeric_lock, self.metrics, config.checkpoint_retry_max_s,
        )  # fmt: skip
        self.waiters = Waiters(self.engine, self.run, self.checkpoints)
        self.costs = RoundCosts()  # per round: outer step, checkpoint, bytes down
        self._ticker: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.metrics.watch(self.run, self.engine, self.registry)
        self.checkpoints.restore(self.engine, self.registry, self.run)
        choose_initial_model(config, self.engine.model)
        self.mode: RoundMode | None = None if mode is None else mode(self._context())
        """The round mode (secure aggregation), None for plain rounds."""
        self.ingest = self._build_ingest(faults)

    def _context(self) -> RoundContext:
        return RoundContext(
            self.config, self.clock, self.run, self.engine, self.registry,
            self.sessions, self.enrollment.identity, self.metrics.registry,
            self.maybe_close_round,
        )  # fmt: skip

    def _build_ingest(self, faults: FaultHooks) -> UpdateIngest:
        codec = make_codec(self.config.codec_config)
        chunk_bytes = self.config.chunk_bytes
        sink = RoundSink(
            self.engine, self.run, codec, chunk_bytes, self._update_committed
        )
        ingest = UpdateIngest(
            self.run, self.registry, self.engine, self.auth, sink, codec,
            chunk_bytes, faults,
        )  # fmt: skip
        if self.mode is not None:
            ingest.choose_sink = self.mode.sink_for
        return ingest

    async def start(self) -> None:
        """Start the deadline / session-timeout ticker."""
        self._ticker = asyncio.create_task(self._tick_forever(), name="fedgrpc-ticker")

    async def stop(self, reason: str = "coordinator shutting down") -> None:
        """Refuse new work, tell every session, wake every waiter."""
        async with self._numeric_lock:  # a round being applied finishes first
            self.run.stopping = True
            self.engine.phase = Phase.STOPPING
        self.sessions.broadcast(SessionEnd(reason, cause="shutdown"))
        await self.waiters.wake()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        await self.durable.close()
        self.engine.stages.close()  # the run's spool directory, if any

    # -- Join and Session --------------------------------------------------------

    def authenticate_join(self, proof: JoinProof) -> PublicKey:
        """The joiner's key, allowed and proven (`Enrollment.admit`)."""
        self.run.check_running()
        return self.enrollment.admit(proof)

    def join(self, request: JoinInfo, key: PublicKey) -> JoinResult:
        """Admit an authenticated client whose model and settings fit."""
        if self.mode is not None:
            self.mode.check_join(request)
        self.run.check_running()
        check_compatible(self.config, request)
        spec, name = request.spec, request.name
        if self.engine.adopt_spec(spec):  # version 0 from init_model, just laid out
            self._spawn(self._initial_model_ready())
        self.engine.model.check_frozen(request.frozen_sha256)
        current = self.engine.current  # its clients are never evicted for a joiner
        in_use = current.ids_in_use if current is not None else frozenset
        client = self.registry.admit(name, self.clock(), key, in_use)
        client.agree_hashes(self.config, request)
        seed = self.engine.model.claim_seeding(client.client_id)
        if seed:  # the seeder decides the weights, and so the frozen base
            self.engine.model.adopt_frozen(request.frozen_sha256)
        log.info(
            "client_joined",
            client=client.client_id,
            name=client.name,
            key=key.short_fingerprint,
            seed=seed,
        )
        return JoinResult(
            client=client,
            spec=self.engine.model.spec or spec,  # the federation's: dtypes may differ
            seed_model=seed,
            current_round=current.round_id if current else 0,
            model_version=self.engine.model.version,
            round_nonce=self.engine.round_nonce(),
            run_finished=self.engine.finished,
        )

    def open_session(
        self, client_id: str, token: bytes
    ) -> tuple[ClientRecord, SessionQueue]:
        """Mark a client connected; its queue starts with the open round, if any."""
        self.run.check_running()
        client = self.registry.authenticate(client_id, token)
        queue = self.sessions.open(client_id)
        client.connected, client.last_seen_s = True, self.clock()
        current = self.engine.current
        if self.engine.phase is Phase.COLLECTING and current is not None:
            before = current.selected
            self.engine.reselect(only_if_short=True)
            if current.selected != before:  # tell everyone who takes part now
                self._announce_round(current)
            else:
                queue.put_nowait(self._started_event(current, client_id))
        elif self.engine.finished and self.engine.history:
            queue.put_nowait(self.engine.history[-1])  # it says the run finished
        log.info("session_opened", client=client_id)
        if self.mode is not None:
            self.mode.session_opened(client_id, queue)
        return client, queue

    def touch(self, client: ClientRecord) -> None:
        """Record a heartbeat."""
        client.last_seen_s = self.clock()

    async def close_session(self, client: ClientRecord, queue: SessionQueue) -> None:
        """The client left (or timed out): the round stops waiting for it."""
        if not self.sessions.is_current(client.client_id, queue):
            return
        if self.mode is not None:
            self.mode.session_lost(client.client_id)
        self.sessions.close(client.client_id, queue)
        client.connected = False
        self.registry.left(client)
        log.info("session_closed", client=client.client_id)
        current = self.engine.current
        if current is not None:
            before = current.selected
            self.engine.reselect(only_if_short=True)
            if current.selected != before:
                self._announce_round(current)
        await self.maybe_close_round()
        self._forget_departed()
        await self.waiters.wake()  # `wait_finished` counts who is left

    def _forget_departed(self) -> None:
        """Drop clients that left for good, once the open round does not count them."""
        current, needed = self.engine.current, set[str]()
        if current is not None:  # a push still streaming will count too
            needed = current.contributors | {
                t.client.client_id for t in current.streaming.values()
            }
        for client_id in self.registry.forget_departed(needed):
            log.info("client_forgotten", client=client_id)

    async def _initial_model_ready(self) -> None:
        """Version 0 exists (from `init_model`): make it durable, announce round 1."""
        await asyncio.shield(self.save_checkpoint())
        await self.durable.announce(self._announce_new_model)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)  # held until done: the loop keeps weak refs
        task.add_done_callback(self._background.discard)

    # -- after an update counted ---------------------------------------------------

    async def _update_committed(self, ticket: Ticket, in_round: int) -> None:
        """Announce what a plain update changed, then close its round if done."""
        if ticket.header.is_initial_weights:
            await asyncio.shield(self.save_checkpoint())  # version 0 is durable too
            await self.durable.announce(self._announce_new_model)
        elif in_round == 1 and self.engine.current is not None:
            # The first update set the round's deadline: announce it.
            self._announce_round(self.engine.current)
        if self.engine.model.upstream is not None:  # a leaf: its close waits on the
            return self._spawn(self.maybe_close_round())  # root; ack the push now
        await self.maybe_close_round()

    # -- closing rounds ----------------------------------------------------------

    async def maybe_close_round(self) -> None:
        """Close the open round if it is complete or past its deadline."""
        if self.mode is not None:
            await self.mode.before_close()
        before = self.engine.current
        if self.engine.close_reason() is not None:
            # Shielded: a caller cancelled mid-close (a client hanging up on its
            # commit) must not stop it between the outer step and its checkpoint.
            await asyncio.shield(self._close_round())
        if self.mode is not None and self.engine.current is not before:
            await self.mode.after_close()

    async def save_checkpoint(self) -> bool:
        """Checkpoint now (after seeding, at shutdown), between numeric steps."""
        async with self._numeric_lock:
            return await self.durable.save()

    async def _close_round(self) -> None:
        async with self._numeric_lock:
            reason = self.engine.close_reason()
            if reason is None or not self.durable.serving:  # no round applies then
                return
            closing, started = self.engine.begin_close(), time.perf_counter()
            await asyncio.to_thread(release_free_heap)  # ingest's, before the sum
            applied = await asyncio.to_thread(
                self.engine.apply, closing, self.waiters.pulls_active
            )
            result = self.engine.finish_close(closing, applied, reason)
            applied_at = time.perf_counter()
            # Before anyone hears of the new version (checkpoint_store), and
            # the last round's always: it is the run's final checkpoint.
            if applied or result.run_finished:
                await self.durable.save()
            self.costs.record(result.round_id, started, applied_at, self.run.bytes_sent)
        self._forget_departed()  # the closed round no longer counts anyone
        self.metrics.round_closed(result)
        log_round_closed(result, applied, self.config.max_rounds)
        await self.durable.announce(functools.partial(self._announce_new_model, result))

    async def wait_finished(self, linger_s: float) -> None:
        """Return once the run finished and its clients left (or `linger_s` later).

        Clients pull the final model after the last round closes and then
        leave; the coordinator stays up for that, but one that keeps its
        session open must not hold the process forever.
        """
        await self.wait_until(lambda: self.engine.finished and self.durable.serving)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(linger_s):
                # A client leaves after its final pull; close_session wakes us.
                await self.wait_until(lambda: not self.registry.connected())

    async def _announce_new_model(self, closed: RoundResult | None = None) -> None:
        if closed is not None:  # RoundClosed first: it names the new version
            self.sessions.broadcast(closed)
        current = self.engine.current
        if current is not None:
            self._announce_round(current)
        await self.waiters.wake()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once `predicate()` holds; woken by closes, new models and stop."""
        await self.waiters.wait_until(predicate)

    # -- PullModel ---------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def pull(
        self, client_id: str, token: bytes, min_version: int
    ) -> AsyncIterator[PublishedModel]:
        """Wait for a model of at least `min_version`; hold it while it streams."""
        self.registry.authenticate(client_id, token)
        async with self.waiters.pull(min_version) as published:
            yield published

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
            if client.last_seen_s < limit and client.client_id in self.sessions:
                log.warning("session_timed_out", client=client.client_id)
                self.sessions.send(
                    client.client_id,
                    SessionEnd("no heartbeat within session_timeout_s", "evicted"),
                )

    def _announce_round(self, current: OpenRound) -> None:
        """RoundStarted to every session, each saying whether it was selected."""
        for client_id in list(self.sessions):
            self.sessions.send(client_id, self._started_event(current, client_id))

    def _started_event(self, current: OpenRound, client_id: str) -> RoundStartedEvent:
        """`current`'s RoundStarted for `client_id`, with the time it has left."""
        now = self.clock()
        left = pacing.training_seconds_left(self.config, current, now)
        return round_started_event(current, now, client_id, seconds_left=left)
