"""The round state machine: seeding, collecting, applying, publishing.

Plain Python with an injectable clock and no gRPC or asyncio, so every
transition is unit-testable. The runtime calls it from one event loop and
runs only `apply` (mean, outer step, publish) on a worker thread, after
`begin_close` has stopped every other writer.

Cycle: WAITING_FOR_MODEL until one client seeds the initial weights, then
COLLECTING round r (base version v) until every connected client committed
(and at least `min_clients` did) or the deadline passes (`round_timeout_s`
after the first commit), then APPLYING: mean, outer step, version v+1,
publish; then round r+1 opens at once, unless r was the run's last
(`max_rounds`): then FINISHED, and no round opens again. A round with fewer
than `min_clients` updates at its deadline is SKIPPED and the weights stay
as they are.

The stages come from one seam, `RoundStages` (`strategy.pipeline`): each
round opens one Accumulator on its first chunk, and `apply` asks the
Aggregator for the round's aggregate before the OuterOptimizer steps.
By default the Accumulator is the staged sum (`aggregate.staged`): each
update streams into its own stage and reaches the float32 sum only when it
commits, so a push that breaks half-way is dropped whole and the round goes
on without it (memory: master, momentum, the sum and one stage per dense
update in flight, up to `staging_memory_mb`, then on disk; the lean
settings keep all but the master on disk, `disk_step`). An Aggregator that
needs every update (median, trimmed mean) gets the disk spool instead.
Pushes still streaming at the deadline get another `round_timeout_s` to
finish; then the round closes without them.

The rules the transitions consult live in `rules` (header refusals, when
a round closes, its quorum, its result); who takes part, and the older
bases a client that sat rounds out may push from, in `participants`;
what the round modes change (deadline's fixed deadline, buffered_async's
stale bases, their scaling and its buffer size) in `pacing`; central DP's
clip, noise and budget in `budget`.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable, Iterable

import numpy as np
import torch

from fedgrpc.compress import DecodedBlock
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.rounds import admission, disk_step, pacing, rules
from fedgrpc.coordinator.rounds.budget import PrivacyBudget
from fedgrpc.coordinator.rounds.credit import credit_applied, credit_update
from fedgrpc.coordinator.rounds.global_model import GlobalModel
from fedgrpc.coordinator.rounds.goodput import Goodput
from fedgrpc.coordinator.rounds.model_digests import ModelDigests
from fedgrpc.coordinator.rounds.participants import Participation
from fedgrpc.coordinator.rounds.records import (
    OpenRound,
    Phase,
    RoundResult,
    Ticket,
    new_round_nonce,
)
from fedgrpc.coordinator.rounds.registry import ClientRecord, ClientRegistry
from fedgrpc.coordinator.rounds.sharding import (
    ShardGate,
    shard_vote,
    strike_partial_clients,
)
from fedgrpc.coordinator.rounds.weighting import SampleWeighting
from fedgrpc.coordinator.strategy.dp_stage import build_privacy_stage
from fedgrpc.coordinator.strategy.wiring import (
    NO_PLUGINS,
    StagePlugins,
    build_round_stages,
    build_trust,
)
from fedgrpc.domain.model_spec import ModelSpec
from fedgrpc.domain.requests import UpdateHeaderInfo
from fedgrpc.errors import InvalidUpdateError, WrongRoundError

ChunkValues = np.ndarray | DecodedBlock
"""What a checked chunk carries: raw float32 values or a decoded codec block."""
HISTORY_ROUNDS = 100
"""Closed rounds kept for status; older ones are only in the logs."""


class RoundEngine:
    """Owns the global weights, the outer optimizer and the open round."""

    def __init__(
        self,
        config: CoordinatorConfig,
        registry: ClientRegistry,
        clock: Callable[[], float] = time.monotonic,
        plugins: StagePlugins = NO_PLUGINS,
    ) -> None:
        """Build the stages (refusing impossible combinations) and the model.

        Raises:
            ConfigError: a bad stage setting or combination.
        """
        self.config = config
        self.registry = registry
        self.clock = clock
        self.phase = Phase.WAITING_FOR_MODEL
        self.stages = build_round_stages(config, plugins)
        stage = build_privacy_stage(config, self.stages.accumulator)
        self.privacy = PrivacyBudget(config, stage)
        """Central DP's clip, noise and the run's ε (`budget`)."""
        self.model = GlobalModel(config, clock, pacing.outer_for(config, plugins))
        self.model.digest_hashes = lambda: registry.model_hashes(config.update_hash)
        self.current: OpenRound | None = None
        self.history: deque[RoundResult] = deque(maxlen=HISTORY_ROUNDS)
        self._next_round_id = 1
        self.seed_nonce = new_round_nonce()
        """Round 0's nonce: the initial weights sign it."""
        self.participation = Participation(self.stages.selector, registry)
        self.trust = build_trust(config)
        self.weighting = SampleWeighting(config)
        self.goodput = Goodput()
        """Client training seconds offered and applied (`goodput`)."""
        self.shard_gate: ShardGate | None = None
        """A shard's commit vote (`coordinator.shards`): None applies the round."""
        self.strike: Callable[[ClientRecord, int, str], bool] | None = None
        """Counts a broken upload (`ingest.breakers`); a shard strikes the
        clients that committed at some shards only."""

    def adopt_spec(self, spec: ModelSpec) -> bool:
        """A joiner's spec (`GlobalModel.adopt_spec`); True if the model now exists.

        When the initial weights came from a file, that happens at the first
        Join, and round 1 opens at once.
        """
        created = self.model.adopt_spec(spec)
        if created:
            self._open_round()
        return created

    # -- updates ---------------------------------------------------------------

    def admit(self, client: ClientRecord, header: UpdateHeaderInfo) -> Ticket:
        """Validate an update header, then open a ticket for its chunks."""
        self.check_header(client, header)
        return self.open_ticket(client, header)

    def check_header(self, client: ClientRecord, header: UpdateHeaderInfo) -> None:
        """Validate an update header; no effects (`admission.check_header`)."""
        admission.check_header(self, client, header)

    def open_ticket(self, client: ClientRecord, header: UpdateHeaderInfo) -> Ticket:
        """Start taking a checked header's chunks (`admission.open_ticket`)."""
        return admission.open_ticket(self, client, header)

    def add_chunk(self, ticket: Ticket, offset: int, chunk: ChunkValues) -> None:
        """Add one checked chunk: into the round's sum, or the initial weights.

        `chunk` is raw float32 values (DENSE_FP32) or a decoded block.
        """
        if ticket.staging is not None:
            self.model.check_not_seeded()
            if not isinstance(chunk, np.ndarray):
                raise InvalidUpdateError("initial weights must be dense float32")
            self.model.stage_seed(ticket.staging, ticket.seed_base + offset, chunk)
            return
        current = rules.live_round(self.phase, self.current, ticket)
        if current.total is None:
            current.total = self.stages.open_accumulator(
                current.round_id,
                self.round_coordinates(),
                self._take_sum_buffer,
                self.privacy.clip,
            )
        weight, key = ticket.weight, ticket.ticket_id
        ticket.touched_sum = True
        if ticket.value_scale != 1.0:
            chunk = pacing.scaled(chunk, ticket.value_scale)
        if isinstance(chunk, np.ndarray):
            current.total.add_values(key, offset, chunk, weight, ticket.scratch)
        else:
            current.total.add_block(key, offset, chunk, weight)

    def commit(self, ticket: Ticket, payload_bytes: int) -> int:
        """Count a complete update; returns the updates in its round.

        Raises:
            WrongRoundError: the round closed (or the model was seeded) while
                the update streamed.
        """
        client, header = ticket.client, ticket.header
        if ticket.staging is not None:
            self.model.seed(ticket.staging)
            ticket.staging = None
            self._open_round()
            in_round = 1
        else:
            current = rules.live_round(self.phase, self.current, ticket)
            if current.total is None:  # no chunk arrived: cannot happen once checked
                raise InvalidUpdateError("an update without values cannot be counted")
            current.total.commit_update(ticket.ticket_id, ticket.weight)
            current.commit_order.append(client.client_id)
            current.contributor_bases[client.client_id] = header.base_version
            self.goodput.committed(header)
            del current.streaming[ticket.ticket_id]
            credit_update(
                current,
                client,
                header,
                payload_bytes,
                weight=ticket.weight,
                now_s=self.clock(),
                opened_s=ticket.opened_s,
                round_timeout_s=self.config.round_timeout_s,
            )
            in_round = len(current.contributors)
        return in_round

    def abandon(self, ticket: Ticket, reason: str) -> bool:
        """Forget a push that failed; True if that voided its round.

        The Accumulator decides: the streaming sum cannot take a partial
        share out (void), a spool deletes the update's file (the round goes on).
        """
        current = self.current
        if current is None or current.streaming.pop(ticket.ticket_id, None) is None:
            return False
        return rules.void_if_touched(current, ticket, reason)

    # -- closing ---------------------------------------------------------------

    def close_reason(self) -> str | None:
        """Why the open round should close now, or None to keep collecting."""
        current = self.current
        if self.phase is not Phase.COLLECTING or current is None:
            return None
        return rules.close_reason(current, self.config, self.registry, self.clock)

    def begin_close(self) -> OpenRound:
        """Stop taking updates for the open round (state change; event loop)."""
        current = self.current
        if current is None:
            raise WrongRoundError("no round is open; the model is not seeded yet")
        current.quorum = rules.quorum(current, self.config, self.registry)
        self.phase = Phase.APPLYING
        return current

    def apply(self, closing: OpenRound, copy_on_write: bool) -> bool:
        """Aggregate, outer step and publish (numeric; worker thread). True if applied.

        `copy_on_write`: pulls may still be reading the published buffer.
        The aggregate is written into the sum's own buffer (the mean over
        the streaming sum: no copy) or into the reused spare buffer (a
        spool); either way the buffer goes back to the pool for a later round.
        """
        total = closing.total
        veto = None
        if self.shard_gate is not None:  # before `finish_close` opens the next
            verdict = shard_vote(self.shard_gate, closing, self.registry)
            veto, closing.partial_clients = verdict.skip_reason, verdict.partial_clients
            self._next_round_id = max(self._next_round_id, verdict.next_round_id)
        if total is None:
            return False
        try:
            usable = closing.void_reason is None and (
                len(closing.contributors) >= closing.quorum
            )
            if usable and veto is not None:
                closing.void_reason, usable = veto, False
            release = self.privacy.release_of(closing) if usable else None
            refusal = self.privacy.refusal(release, closing.round_id)
            if not usable or refusal is not None:
                closing.void_reason = closing.void_reason or refusal
                self.privacy.unapplied()  # a distributed sum unmasked still counts
                return False
            if disk_step.steps_from_disk(total, self.model):  # lean settings
                return disk_step.apply_from_disk(self.model, closing, copy_on_write)
            weight = total.held().total_weight  # a leaf's group weight (relay)
            aggregate = self.stages.aggregate(total, self._take_sum_buffer)
            self.privacy.noise(aggregate, len(closing.contributors), release)
            if self.trust is not None:
                self.trust.measure(
                    closing.round_id, closing.commit_order, total.held(), aggregate
                )
            if self.model.upstream is not None:  # a leaf: the root steps
                blown = self.model.relay(aggregate, weight, closing.round_id)
            else:
                blown = self.model.divergence(aggregate, closing.round_id)
            if blown is not None:
                closing.void_reason = blown
            elif self.model.upstream is None:
                self.model.step(
                    aggregate, closing.round_id, copy_on_write, closing.fragment
                )
            self.stages.buffers.give(aggregate)  # reused by a later round
            return blown is None
        finally:
            total.discard()

    def finish_close(
        self, closing: OpenRound, applied: bool, reason: str
    ) -> RoundResult:
        """Record the result and open the next round (state change; event loop)."""
        if applied:
            self.model.advance()
            credit_applied(closing, self.registry)
        if self.strike is not None:
            strike_partial_clients(closing, self.registry, self.strike)
        self.goodput.round_closed(closing, applied)
        self.participation.round_closed(closing)
        if self.trust is not None:
            self.trust.round_closed(closing.round_id, self.registry)
        self.weighting.round_closed(closing.claims)
        version, now = self.model.version, self.clock()
        result = rules.round_result(closing, self.config, applied, reason, version, now)
        result = self.privacy.annotate(result)  # ε so far; finished if exhausted
        if self.is_last_round(closing.round_id):
            result = dataclasses.replace(result, run_finished=True)
        self.history.append(result)
        if result.run_finished:
            self._finish()
        else:
            self._open_round()
        return result

    def is_last_round(self, round_id: int) -> bool:
        """True if closing `round_id` ends the run (`max_rounds`; 0: never)."""
        return 0 < self.config.max_rounds <= round_id

    @property
    def last_closed_round(self) -> int:
        """The newest closed round's id (0: none yet); ids are consecutive."""
        if self.current is not None:
            return self.current.round_id - 1
        return self._next_round_id - 1

    @property
    def finished(self) -> bool:
        """The run's last round closed: the published model is final."""
        return self.phase is Phase.FINISHED

    def _finish(self) -> None:
        self.current = None
        self.phase = Phase.FINISHED

    # -- helpers ---------------------------------------------------------------

    def round_nonce(self) -> bytes:
        """The nonce updates must sign now: the open round's, or round 0's."""
        return self.current.nonce if self.current is not None else self.seed_nonce

    def resume(self, last_closed: int, history: Iterable[RoundResult]) -> None:
        """Continue a checkpointed run: its history, then round `last_closed + 1`.

        The reopened round gets a fresh nonce, so an update signed for the
        round the crash interrupted cannot be replayed into it.
        """
        self.history.extend(history)
        self._next_round_id = last_closed + 1
        spent = bool(self.history) and self.history[-1].privacy_exhausted
        self.privacy.exhausted = spent and self.privacy.would_exceed_again()
        if self.is_last_round(last_closed) or self.privacy.exhausted:
            self._finish()  # restarted after the run finished
        else:
            self._open_round()

    def _open_round(self) -> None:
        published = self.model.published
        now = self.clock()
        self.current = OpenRound(
            self._next_round_id,
            self.model.version,
            now,
            base_digests=published.digests if published is not None else ModelDigests(),
            deadline_s=pacing.opening_deadline(self.config, now),
            fragment=pacing.round_fragment(
                self.config, self.model.spec, self.model.version
            ),
        )
        self._next_round_id += 1
        self.phase = Phase.COLLECTING
        self.participation.round_opened(self.current, published)

    def reselect(self, only_if_short: bool = False) -> None:
        """Choose the collecting round's clients again (`Participation.reselect`)."""
        current = self.current
        if current is not None and self.phase is Phase.COLLECTING:
            self.participation.reselect(current, only_if_short)

    def round_coordinates(self) -> int:
        """Coordinates the open round's updates carry: its fragment's, or all."""
        fragment = None if self.current is None else self.current.fragment
        if fragment is not None:
            return fragment.num_coordinates
        return self.model.require_spec().num_coordinates

    def _take_sum_buffer(self) -> torch.Tensor:
        return self.stages.buffers.take_zeroed(self.round_coordinates())
