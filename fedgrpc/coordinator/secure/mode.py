"""Secure aggregation as a round mode: rounds the coordinator only sums.

`SecureMode` is the `RoundMode` a runtime holds when `secure_aggregation` is
on (the runtime keeps Join, Session, PullModel and the round engine as they
are). Per round it starts, advances and finishes a `masked_round.SecureRound`:

1. once the round is collecting, max(3, min_clients) clients hold an open
   Session and none opened in the last SETUP_QUIET_S, those clients become
   the participants: each gets a
   SecAggRoundSetup (participants' identity keys, graph, threshold, the
   round-wide clip, the index set);
2. keys, shares, survivor list and unmasking travel on the Session stream
   (`receive` in, `SecAggEvent`s out), masked values through the
   ordinary signed PushUpdate with CODEC_SECAGG_RING;
3. at the end the exact ring sum of the survivors' codes is decoded with the
   round's scale and installed as the open round's sum with one unit weight
   per survivor, so the engine's own close applies the *plain* mean and the
   outer step. Sample weighting would need clients to pre-scale their codes
   by a weight announced before masking (sums of w_i c_i); not done, so
   num_samples only feeds status.

On a parameter shard (`shard = "I/N"`) the round covers the shard's own
range only (`engine.round_coordinates`): each shard runs this whole
protocol on its own, and since `install_sum` makes the survivors the
round's contributors, the shards' commit vote (`rounds.sharding`) compares
survivor sets: a client unmasked into one shard's sum but dropped from
another's makes the round skip on every shard.

A round that cannot finish (too few survivors for the threshold, a broken
consistency check) is voided: the engine closes it SKIPPED with the reason,
weights unchanged, and the next round starts afresh.

This module keeps the round's life (sessions, start, phases, unmasking,
abort); taking masked pushes is `pushes.MaskedPushes` (the mode's
`UpdateSink`), and what a round starts with (participants, signed setup) is
`setup`.
"""

from __future__ import annotations

import asyncio
from typing import Literal

import numpy as np

from fedgrpc.coordinator.ingest.sinks import UpdateSink
from fedgrpc.coordinator.round_mode import RoundContext
from fedgrpc.coordinator.rounds.records import OpenRound, Phase
from fedgrpc.coordinator.secure.index_planner import SharedIndexPlanner
from fedgrpc.coordinator.secure.masked_round import SecureRound, install_sum
from fedgrpc.coordinator.secure.noise import RoundNoise, round_noise_for
from fedgrpc.coordinator.secure.pushes import SECAGG_CODEC, MaskedPushes
from fedgrpc.coordinator.secure.setup import (
    SETUP_QUIET_S,
    VALUE_BITS,
    ready_identities,
    round_setup,
    signed,
)
from fedgrpc.coordinator.secure.stats import (
    PRIVACY_REASON,
    SecureRoundStats,
    SecureStats,
)
from fedgrpc.coordinator.sessions import SecAggEvent, SessionQueue
from fedgrpc.domain.requests import JoinInfo, UpdateHeaderInfo
from fedgrpc.errors import (
    ConfigError,
    FedGrpcError,
    IncompatibleClientError,
    InvalidUpdateError,
    WrongRoundError,
)
from fedgrpc.log import get_logger
from fedgrpc.secagg import (
    AggregateResult,
    FixedPointScale,
    SecAggAbortError,
    ServerPhase,
)
from fedgrpc.secagg.graph import MIN_CLIENTS
from fedgrpc.wire.secagg import ClientPayload, SecureRoundSetup, ServerPayload

log = get_logger(__name__)


class SecureMode:
    """Masked rounds, held by the runtime as its `RoundMode` (module docstring)."""

    def __init__(self, context: RoundContext) -> None:
        self.context = context
        self.config = context.config
        self.clock = context.clock
        self.engine = context.engine
        self.round: SecureRound | None = None
        """The current (or last) masked round."""
        self.last_result: AggregateResult | None = None
        """The last recovered sum of codes: all the coordinator learns."""
        self.last_recover_s = 0.0
        """Seconds the last unmasking (`ServerRound.recover`) took."""
        self._advancing = False
        self._last_session_s = float("-inf")
        self._value_bits = VALUE_BITS[self.config.codec_config.values]
        self.shared_index = SharedIndexPlanner(self.config, self.engine)
        """Sparse rounds' positions and divergence guard (`secagg_density` < 1)."""
        self.stats = SecureStats(context.metrics, self.shared_index)
        self.pushes = MaskedPushes(context, lambda: self.round)
        # The engine's Privacy stage: its budget is asked before each unmasking.
        self.noise = round_noise_for(self.config, self.engine.privacy.stage)
        """Distributed DP's noise plans (None unless privacy = "distributed")."""

    # -- Join, sessions and pushes ---------------------------------------------------

    def check_join(self, request: JoinInfo) -> None:
        """Refuse clients that cannot mask (FAILED_PRECONDITION)."""
        if SECAGG_CODEC not in request.supported_codecs:
            raise IncompatibleClientError(
                "this federation uses secure aggregation and the client does not "
                "support CODEC_SECAGG_RING; upgrade fedgrpc on the client"
            )

    def session_opened(self, client_id: str, queue: SessionQueue) -> None:
        """A (re)connecting client hears the open masked round's setup too.

        Not a participant: it then knows at once that its push this round
        would be refused. A participant that reconnected lost its round keys,
        so its new advertisement is refused and it rejoins next round.
        """
        self._last_session_s = self.clock()
        rnd = self.round
        if rnd is not None and not rnd.finished:
            queue.put_nowait(SecAggEvent(rnd.round_id, rnd.announce))

    def session_lost(self, client_id: str) -> None:
        """A lost session drops its client from the masked round too."""
        if self.round is not None:
            self.round.drop(client_id)

    def sink_for(self, header: UpdateHeaderInfo) -> UpdateSink | None:
        """Masked pushes to `pushes`; initial weights the plain way; others refused."""
        if header.codec == SECAGG_CODEC:
            return self.pushes
        if header.is_initial_weights:
            return None
        raise InvalidUpdateError(
            f"update codec {header.codec} is refused: this federation uses "
            "secure aggregation, push masked updates with CODEC_SECAGG_RING"
        )

    def send(self, client_id: str, round_id: int, payload: ServerPayload) -> None:
        """Put one secure-aggregation message on a client's Session stream."""
        self.context.sessions.send(client_id, SecAggEvent(round_id, payload))

    def receive(self, client_id: str, round_id: int, payload: ClientPayload) -> None:
        """One client message for the masked round `round_id` (errors: see proto)."""
        rnd = self.round
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

    # -- status ----------------------------------------------------------------------

    def round_record(self, round_id: int) -> SecureRoundStats | None:
        """The masked round `round_id` as status shows it, if it was one."""
        return self.stats.rounds.get(round_id)

    @property
    def guard_trips(self) -> int:
        """Sparse rounds the divergence guard voided."""
        return self.shared_index.trips

    @property
    def dense_fallback_rounds(self) -> int:
        """Sparse rounds run dense after a guard trip."""
        return self.shared_index.dense_fallbacks

    def reset_guard(self) -> int:
        """Clear the sparse rounds' guard history (ResetDivergenceGuard)."""
        return self.shared_index.guard.reset()

    # -- phases ----------------------------------------------------------------------

    async def before_close(self) -> None:
        """Advance the masked round before the engine may close it."""
        await self._advance_once()

    async def after_close(self) -> None:
        """A round closed: settle its stats and key the next one now."""
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
        rnd = self.round
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
            closing = rnd.server.phase
            outgoing = rnd.close_phase()
            if closing is ServerPhase.MASKED_INPUT and self.noise is not None:
                refused = self.noise.refuse_unmask(rnd.round_id, len(rnd.members))
                if refused is not None:
                    self._abort(current, rnd, PRIVACY_REASON, refused)
                    return
            for client_id, payload in outgoing:
                self.send(client_id, rnd.round_id, payload)
        except SecAggAbortError as exc:
            self._abort(current, rnd, exc.reason.value, str(exc))
        except Exception as exc:  # never leave the round stuck: skip it instead
            log.error("secagg_round_failed", round=rnd.round_id, exc_info=exc)
            # The reason reaches every client (RoundClosed): the exception's
            # text may hold server paths, so it stays in the log above.
            reason = f"secure aggregation failed ({type(exc).__name__}; see logs)"
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
        needed = max(MIN_CLIENTS, self.config.min_clients)
        identities = ready_identities(
            self.context.clients.connected(), self.context.sessions, needed
        )
        if identities is None:
            return
        if self.clock() - self._last_session_s < SETUP_QUIET_S:
            return  # clients are still connecting: let them in first
        ids = tuple(sorted(identities))
        positions = self.index_set(current)
        # Dense: every coordinate the round syncs (a shard's own range: masks
        # are addressed by position, so a shard masks and unmasks its range).
        count = self.engine.round_coordinates() if positions is None else positions.size
        scale = self.round_scale(current)
        noise = self._plan_noise(current, scale, count, len(ids))
        if noise is False:
            return
        ring_bits = noise.ring_bits if noise else 0
        # The chunk-norm rule's tail (secagg_density < 1, so never a shard's).
        norm = self.shared_index.norm_tail(self.engine.round_coordinates())
        run_id = self.context.run.run_id
        setup = round_setup(self.config, run_id, current, ids, self._value_bits,
                            ring_bits)  # fmt: skip
        announce = SecureRoundSetup(
            setup, identities, current.nonce, scale, count,
            positions, self.shared_index.coded(positions),
            reset_residuals=self.shared_index.take_residual_reset(current),
            noise=noise.spec if noise else None,
            norm_chunk=norm[0], norm_tail=norm[1],
        )  # fmt: skip
        identity = self.context.identity
        announce = signed(announce, identity)
        timeout = self.config.round_timeout_s
        self.round = SecureRound(announce, identity, self.clock, timeout)
        self.stats.started(announce)
        for client_id in ids:
            self.send(client_id, current.round_id, announce)
        graph = setup.graph()
        log.info("secagg_round_started", round=current.round_id,
                 n_clients=len(ids), degree=graph.degree,
                 threshold=graph.threshold, ring_bits=setup.ring().bits,
                 positions=announce.num_positions)  # fmt: skip

    def _plan_noise(
        self, current: OpenRound, scale: FixedPointScale, count: int, n: int
    ) -> RoundNoise | Literal[False] | None:
        """The round's DP noise (None: no DP); False voids a round it cannot fit."""
        if self.noise is None:
            return None
        try:
            return self.noise.plan_round(current.round_id, scale, count, n)
        except ConfigError as exc:
            current.void_reason = str(exc)
            log.error("dp_round_refused", round=current.round_id, reason=str(exc))
            return False

    def round_scale(self, current: OpenRound) -> FixedPointScale:
        """The round's clip and code width: `secagg_clip`, fixed for now.

        Hook for an adaptive clip (`fedgrpc.secagg.round_scale`), which also
        needs the clients' clip counts on the wire (not carried yet).
        """
        return FixedPointScale(self.config.secagg_clip, self._value_bits)

    def index_set(self, current: OpenRound) -> np.ndarray | None:
        """The round's sorted uint64 positions; None = dense (every coordinate).

        `secagg_density` < 1: the shared index set (`index_planner`); a hook
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
        install_sum(current, rnd, result, self.engine.round_coordinates())
        if self.noise is not None:
            self.noise.unmasked(rnd.round_id, len(result.survivors))
        self.shared_index.judge(current, rnd.announce, result)  # may void it
        current.last_commit_s = current.deadline_s = self.clock()
        current.complete_reason = "masked sum of the survivors recovered"
        self.last_result, self.last_recover_s = result, seconds
        self.stats.recovered(current, result, seconds)
        dropped = len(rnd.announce.setup.participants) - len(result.survivors)
        log.info("secagg_round_recovered", round=rnd.round_id,
                 survivors=len(result.survivors), dropped=dropped,
                 seconds=round(seconds, 3))  # fmt: skip
