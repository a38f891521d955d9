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

This module keeps the round's life (sessions, start, phases, unmasking,
abort); taking masked pushes is `secure_push.MaskedPushRuntime`, its base
class, and what a round starts with (participants, signed setup) is
`secure_setup`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.events import SecAggEvent, SessionEvent
from fedgrpc.coordinator.registry import ClientRecord
from fedgrpc.coordinator.runtime import CoordinatorRuntime, JoinResult
from fedgrpc.coordinator.secure_index import SharedIndexPlanner
from fedgrpc.coordinator.secure_push import SECAGG_CODEC, MaskedPushRuntime
from fedgrpc.coordinator.secure_round import SecureRound, install_sum
from fedgrpc.coordinator.secure_setup import (
    SETUP_QUIET_S,
    VALUE_BITS,
    ready_identities,
    round_setup,
    signed,
)
from fedgrpc.coordinator.secure_stats import SecureStats
from fedgrpc.coordinator.state import OpenRound, Phase
from fedgrpc.crypto.keys import PublicKey
from fedgrpc.errors import FedGrpcError, IncompatibleClientError, WrongRoundError
from fedgrpc.log import get_logger
from fedgrpc.secagg import (
    AggregateResult,
    FixedPointScale,
    SecAggAbortError,
    ServerPhase,
)
from fedgrpc.secagg.graph import MIN_CLIENTS
from fedgrpc.wire.convert import JoinInfo
from fedgrpc.wire.secagg import ClientPayload, SecureRoundSetup, ServerPayload

log = get_logger(__name__)


def make_runtime(config: CoordinatorConfig) -> CoordinatorRuntime:
    """The runtime `config` asks for: secure aggregation on or off."""
    return (
        SecureRuntime(config)
        if config.secure_aggregation
        else CoordinatorRuntime(config)
    )


class SecureRuntime(MaskedPushRuntime):
    """`CoordinatorRuntime` whose rounds are masked (see the module docstring)."""

    def __init__(
        self, config: CoordinatorConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(config, clock)
        self.last_result: AggregateResult | None = None
        """The last recovered sum of codes: all the coordinator learns."""
        self.last_recover_s = 0.0
        """Seconds the last unmasking (`ServerRound.recover`) took."""
        self._advancing = False
        self._last_session_s = float("-inf")
        self._value_bits = VALUE_BITS[config.codec_config.values]
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
        needed = max(MIN_CLIENTS, self.config.min_clients)
        identities = ready_identities(self.registry.connected(), self._sessions, needed)
        if identities is None:
            return
        if self.clock() - self._last_session_s < SETUP_QUIET_S:
            return  # clients are still connecting: let them in first
        ids = tuple(sorted(identities))
        setup = round_setup(self.config, self.run_id, current, ids, self._value_bits)
        spec = self.engine.model.require_spec()
        positions = self.index_set(current)
        announce = SecureRoundSetup(
            setup, identities, current.nonce, self.round_scale(current),
            spec.num_coordinates if positions is None else positions.size,
            positions, self.shared_index.coded(positions),
            reset_residuals=self.shared_index.take_residual_reset(current),
        )  # fmt: skip
        identity = self.enrollment.identity
        announce = signed(announce, identity)
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
        current.last_commit_s = current.deadline_s = self.clock()
        current.complete_reason = "masked sum of the survivors recovered"
        self.last_result, self.last_recover_s = result, seconds
        self.stats.recovered(current, result, seconds)
        dropped = len(rnd.announce.setup.participants) - len(result.survivors)
        log.info("secagg_round_recovered", round=rnd.round_id,
                 survivors=len(result.survivors), dropped=dropped,
                 seconds=round(seconds, 3))  # fmt: skip
