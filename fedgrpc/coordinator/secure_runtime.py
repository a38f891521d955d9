"""The coordinator runtime with secure aggregation: rounds the coordinator only sums.

`SecureRuntime` is `CoordinatorRuntime` (same Join, Session, PullModel and
round engine) plus, per round, a `secure_round.SecureRound` that it starts,
advances and finishes:

1. once the round is collecting, max(3, min_clients) clients hold an open
   Session and none opened in the last SETUP_QUIET_S, those clients become
   the participants: each gets a
   SecAggRoundSetup (participants' identity keys, graph, threshold, the
   round-wide clip, the index set);
2. keys, shares, survivor list and unmasking travel on the Session stream
   (`secure_message` in, `SecAggEvent`s out), masked values through the
   ordinary signed PushUpdate with CODEC_SECAGG_RING;
3. at the end the exact ring sum of the survivors' codes is decoded with the
   round's scale and installed as the open round's sum with one unit weight
   per survivor, so the engine's own close applies the *plain* mean and the
   outer step. Sample weighting would need clients to pre-scale their codes
   by a weight announced before masking (sums of w_i c_i); not done, so
   num_samples only feeds status.

A round that cannot finish (too few survivors for the threshold, a broken
consistency check) is voided: the engine closes it SKIPPED with the reason,
weights unchanged, and the next round starts afresh.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Callable

import numpy as np

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.events import SecAggEvent, SessionEvent
from fedgrpc.coordinator.registry import ClientRecord
from fedgrpc.coordinator.rounds import ChunkValues
from fedgrpc.coordinator.runtime import CoordinatorRuntime, JoinResult
from fedgrpc.coordinator.secure_index import SharedIndexPlanner
from fedgrpc.coordinator.secure_round import SecureRound, install_sum, round_params
from fedgrpc.coordinator.secure_stats import SecureStats
from fedgrpc.coordinator.state import OpenRound, Phase, Ticket
from fedgrpc.crypto.keys import PublicKey
from fedgrpc.errors import (
    FedGrpcError,
    IncompatibleClientError,
    InvalidUpdateError,
    WrongRoundError,
)
from fedgrpc.log import get_logger
from fedgrpc.secagg import (
    AggregateResult,
    FixedPointScale,
    RoundSetup,
    SecAggAbortError,
    ServerPhase,
)
from fedgrpc.secagg.graph import GRAPH_SEED_BYTES, MIN_CLIENTS
from fedgrpc.wire.assemble import CodecChunkCheck, DenseChunkCheck
from fedgrpc.wire.convert import JoinInfo, UpdateHeaderInfo
from fedgrpc.wire.ring import RingChunkCheck
from fedgrpc.wire.secagg import (
    ClientPayload,
    SecureRoundSetup,
    ServerPayload,
    session_id,
)

log = get_logger(__name__)
SECAGG_CODEC = "secagg-ring"
SETUP_QUIET_S = 0.5
"""A round's participants are fixed only once no Session opened for this long,
so clients connecting together (a start, a restart) all take part."""
_VALUE_BITS = {"int8": 8, "int4": 4}


def make_runtime(config: CoordinatorConfig) -> CoordinatorRuntime:
    """The runtime `config` asks for: secure aggregation on or off."""
    return (
        SecureRuntime(config)
        if config.secure_aggregation
        else CoordinatorRuntime(config)
    )


class SecureRuntime(CoordinatorRuntime):
    """`CoordinatorRuntime` whose rounds are masked (see the module docstring)."""

    def __init__(
        self, config: CoordinatorConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(config, clock)
        self.secure: SecureRound | None = None
        """The current (or last) masked round."""
        self.last_result: AggregateResult | None = None
        """The last recovered sum of codes: all the coordinator learns."""
        self.last_recover_s = 0.0
        """Seconds the last unmasking (`ServerRound.recover`) took."""
        self._advancing = False
        self._last_session_s = float("-inf")
        self._value_bits = _VALUE_BITS[config.codec_config.values]
        self.shared_index = SharedIndexPlanner(config, self.engine)
        """Sparse rounds' positions and divergence guard (`secagg_density` < 1)."""
        self.stats = SecureStats(self.metrics.registry, self.shared_index)

    # -- Join and sessions ----------------------------------------------------------

    def join(self, request: JoinInfo, key: PublicKey) -> JoinResult:
        """Refuse clients that cannot mask (FAILED_PRECONDITION), then join."""
        if SECAGG_CODEC not in request.supported_codecs:
            raise IncompatibleClientError(
                "this federation uses secure aggregation and the client does not "
                "support CODEC_SECAGG_RING; upgrade fedgrpc on the client"
            )
        return super().join(request, key)

    def open_session(
        self, client_id: str, token: bytes
    ) -> tuple[ClientRecord, asyncio.Queue[SessionEvent]]:
        """A (re)connecting client hears the open masked round's setup too.

        Not a participant: it then knows at once that its push this round
        would be refused. A participant that reconnected lost its round keys,
        so its new advertisement is refused and it rejoins next round.
        """
        client, queue = super().open_session(client_id, token)
        self._last_session_s = self.clock()
        rnd = self.secure
        if rnd is not None and not rnd.finished:
            queue.put_nowait(SecAggEvent(rnd.round_id, rnd.announce))
        return client, queue

    async def close_session(
        self, client: ClientRecord, queue: asyncio.Queue[SessionEvent]
    ) -> None:
        """A lost session drops its client from the masked round too."""
        if self.secure is not None and self._sessions.get(client.client_id) is queue:
            self.secure.drop(client.client_id)
        await super().close_session(client, queue)

    def send(self, client_id: str, round_id: int, payload: ServerPayload) -> None:
        """Put one secure-aggregation message on a client's Session stream."""
        queue = self._sessions.get(client_id)
        if queue is not None:
            queue.put_nowait(SecAggEvent(round_id, payload))

    def receive_secure(
        self, client_id: str, round_id: int, payload: ClientPayload
    ) -> None:
        """One client message for the masked round `round_id` (errors: see proto)."""
        rnd = self.secure
        if rnd is None or rnd.round_id != round_id or rnd.finished:
            raise WrongRoundError(
                f"no secure round {round_id} is taking messages (current: "
                f"{rnd.round_id if rnd else 'none'}); wait for the next "
                "SecAggRoundSetup"
            )
        try:
            rnd.receive(client_id, payload)
        except FedGrpcError:
            rnd.drop(client_id)
            raise

    # -- PushUpdate ---------------------------------------------------------------

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

    # -- phases ----------------------------------------------------------------------

    async def maybe_close_round(self) -> None:
        """Advance the masked round, then let the engine close what is done."""
        await self._advance_once()
        before = self.engine.current
        await super().maybe_close_round()
        if self.engine.current is not before:  # a round closed: key the next now
            self.stats.settle(self.engine.history)
            await self._advance_once()

    async def _advance_once(self) -> None:
        if not self._advancing:
            self._advancing = True
            try:
                # Shielded: a session reader cancelled mid-unmask (its client
                # left) must not lose the recovered sum and strand the round.
                await asyncio.shield(self._advance())
            finally:
                self._advancing = False

    async def _advance(self) -> None:
        current = self.engine.current
        if self.engine.phase is not Phase.COLLECTING or current is None:
            return
        rnd = self.secure
        if rnd is None or rnd.round_id != current.round_id:
            self._maybe_start(current)
            return
        if not rnd.ready_to_close():
            return
        try:
            if rnd.server.phase is ServerPhase.UNMASK:
                started = self.clock()
                rnd.finished = True  # refuse late messages before the thread reads
                result = await asyncio.to_thread(rnd.recover)
                self._install(current, rnd, result, self.clock() - started)
                return
            for client_id, payload in rnd.close_phase():
                self.send(client_id, rnd.round_id, payload)
        except SecAggAbortError as exc:
            self._abort(current, rnd, exc.reason.value, str(exc))
        except Exception as exc:  # never leave the round stuck: skip it instead
            log.error("secagg_round_failed", round=rnd.round_id, exc_info=exc)
            reason = f"secure aggregation failed ({type(exc).__name__}: {exc})"
            self._abort(current, rnd, "internal", reason)

    def _abort(
        self, current: OpenRound, rnd: SecureRound, reason: str, detail: str
    ) -> None:
        """Void the open round: the engine skips it, weights unchanged."""
        rnd.finished = True
        current.void_reason = detail
        self.stats.aborted(rnd, reason)
        log.warning("secagg_round_aborted", round=rnd.round_id, reason=reason,
                    detail=detail)  # fmt: skip

    def _maybe_start(self, current: OpenRound) -> None:
        if not self.shared_index.ready(current):
            return  # its index set is being chosen on a worker thread
        ready = [
            c for c in self.registry.connected()
            if c.client_id in self._sessions and c.public_key is not None
        ]  # fmt: skip
        if len(ready) < max(MIN_CLIENTS, self.config.min_clients):
            return
        if self.clock() - self._last_session_s < SETUP_QUIET_S:
            return  # clients are still connecting: let them in first
        identities = {c.client_id: c.public_key for c in ready if c.public_key}
        ids = tuple(sorted(identities))
        setup = RoundSetup(
            session_id=session_id(self.run_id, current.nonce),
            round_id=current.round_id,
            participants=ids,
            graph_seed=os.urandom(GRAPH_SEED_BYTES),
            value_bits=self._value_bits,
            params=round_params(self.config, len(ids)),
        )
        spec = self.engine.model.require_spec()
        positions = self.index_set(current)
        announce = SecureRoundSetup(
            setup, identities, current.nonce, self.round_scale(current),
            spec.num_coordinates if positions is None else positions.size,
            positions, self.shared_index.coded(positions),
            reset_residuals=self.shared_index.take_residual_reset(current),
        )  # fmt: skip
        identity = self.enrollment.identity
        announce = dataclasses.replace(
            announce, signature=identity.sign(announce.statement())
        )
        timeout = self.config.round_timeout_s
        self.secure = SecureRound(announce, identity, self.clock, timeout)
        self.stats.started(announce)
        for client_id in ids:
            self.send(client_id, current.round_id, announce)
        graph = setup.graph()
        log.info("secagg_round_started", round=current.round_id,
                 n_clients=len(ids), degree=graph.degree,
                 threshold=graph.threshold, ring_bits=setup.ring().bits,
                 positions=announce.num_positions)  # fmt: skip

    def round_scale(self, current: OpenRound) -> FixedPointScale:
        """The round's clip and code width: `secagg_clip`, fixed for now.

        Hook for an adaptive clip (`fedgrpc.secagg.round_scale`), which also
        needs the clients' clip counts on the wire (not carried yet).
        """
        return FixedPointScale(self.config.secagg_clip, self._value_bits)

    def index_set(self, current: OpenRound) -> np.ndarray | None:
        """The round's sorted uint64 positions; None = dense (every coordinate).

        `secagg_density` < 1: the shared index set (`secure_index`); a hook
        tests and benches may still override.
        """
        return self.shared_index.positions(current)

    def _install(
        self,
        current: OpenRound,
        rnd: SecureRound,
        result: AggregateResult,
        seconds: float,
    ) -> None:
        """The recovered sum becomes the open round's sum; the engine closes it."""
        spec = self.engine.model.require_spec()
        install_sum(current, rnd, result, spec.num_coordinates)
        self.shared_index.judge(current, rnd.announce, result)  # may void it
        current.last_commit_s = current.deadline_s = self.clock()  # close now
        self.last_result, self.last_recover_s = result, seconds
        self.stats.recovered(current, result, seconds)
        dropped = len(rnd.announce.setup.participants) - len(result.survivors)
        log.info("secagg_round_recovered", round=rnd.round_id,
                 survivors=len(result.survivors), dropped=dropped,
                 seconds=round(seconds, 3))  # fmt: skip
