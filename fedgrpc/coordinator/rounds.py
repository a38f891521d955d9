"""The round state machine: seeding, collecting, applying, publishing.

Plain Python with an injectable clock and no gRPC or asyncio, so every
transition is unit-testable. The runtime calls it from one event loop and
runs only the numeric steps (`accumulate`, `apply`) on a worker thread, under
a lock that keeps them from overlapping each other or a state change.

Cycle: WAITING_FOR_MODEL until one client seeds the initial weights, then
COLLECTING round r (base version v) until every connected client committed
(and at least `min_clients` did) or the deadline passes (`round_timeout_s`
after the first commit), then APPLYING: mean, outer step, version v+1,
publish; then round r+1 opens at once. A round with fewer than `min_clients`
updates at its deadline is SKIPPED and the weights stay as they are.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from fedgrpc.aggregate import WeightedSum
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.registry import ClientRecord, ClientRegistry
from fedgrpc.errors import InvalidUpdateError, WrongRoundError
from fedgrpc.optim import OuterOptimizer, build_outer_optimizer
from fedgrpc.wire.convert import UpdateHeaderInfo
from fedgrpc.wire.spec import DType, ModelSpec
from fedgrpc.wire.tensors import pack_native

HISTORY_ROUNDS = 100
"""Closed rounds kept for status; older ones are only in the logs."""


class Phase(enum.Enum):
    """Where the coordinator is in its cycle."""

    WAITING_FOR_MODEL = "waiting_for_model"
    COLLECTING = "collecting"
    APPLYING = "applying"
    STOPPING = "stopping"


class Outcome(enum.Enum):
    """How a round ended."""

    APPLIED = "applied"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class PublishedModel:
    """One immutable model version as served by PullModel (native byte layout)."""

    version: int
    round_id: int
    data: torch.Tensor
    """uint8, `spec.num_bytes` long; never written after publishing."""


@dataclass(slots=True)
class OpenRound:
    """The round collecting updates now."""

    round_id: int
    base_version: int
    opened_s: float
    deadline_s: float | None = None
    """Set by the first commit: stragglers get `round_timeout_s` from then."""
    contributors: set[str] = field(default_factory=set)
    total: WeightedSum | None = None
    loss_weighted_sum: float = 0.0
    samples: int = 0
    bytes_received: int = 0
    first_header_s: float | None = None
    last_commit_s: float | None = None


@dataclass(frozen=True, slots=True)
class RoundResult:
    """A closed round, as announced to clients and kept for status."""

    round_id: int
    outcome: Outcome
    model_version: int
    num_updates: int
    reason: str
    duration_s: float
    mean_train_loss: float
    bytes_received: int
    ingest_s: float
    """First update header to last commit: the window updates streamed in."""


@dataclass(frozen=True, slots=True)
class Ticket:
    """An update admitted by its header; checked again at commit."""

    client: ClientRecord
    header: UpdateHeaderInfo
    round_id: int


class RoundEngine:
    """Owns the global weights, the outer optimizer and the open round."""

    def __init__(
        self,
        config: CoordinatorConfig,
        registry: ClientRegistry,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.registry = registry
        self.clock = clock
        self.phase = Phase.WAITING_FOR_MODEL
        self.spec: ModelSpec | None = None
        self.model_version = 0
        self.master: torch.Tensor | None = None
        self.published: PublishedModel | None = None
        self.current: OpenRound | None = None
        self.history: deque[RoundResult] = deque(maxlen=HISTORY_ROUNDS)
        self.optimizer: OuterOptimizer = build_outer_optimizer(
            config.outer_optimizer,
            config.resolved_outer_lr,
            config.resolved_outer_momentum,
        )
        self._next_round_id = 1
        self._seeder: tuple[str, float] | None = None
        self._spare: list[torch.Tensor] = []

    # -- joining ---------------------------------------------------------------

    def adopt_spec(self, spec: ModelSpec) -> None:
        """Check a joiner's model; the first spec defines the federation.

        Raises:
            ModelMismatchError: the spec differs from the federation's.
        """
        if self.spec is None:
            self.spec = spec
        else:
            spec.check_same_as(self.spec)

    def claim_seeding(self, client_id: str) -> bool:
        """True if `client_id` must upload the initial weights.

        One joiner at a time holds a seeding lease, so clients that join
        together do not all upload the model only for all but one to be
        refused. If the seeder has not delivered within `session_timeout_s`
        (it died or stalled), the next joiner gets the lease.
        """
        if self.master is not None:
            return False
        now = self.clock()
        lease = self._seeder
        if lease is None or now - lease[1] > self.config.session_timeout_s:
            self._seeder = (client_id, now)
            return True
        return lease[0] == client_id

    # -- updates ---------------------------------------------------------------

    def admit(self, client: ClientRecord, header: UpdateHeaderInfo) -> Ticket:
        """Validate an update header against the model and the round state.

        Raises:
            InvalidUpdateError: wrong codec or coordinate count.
            WrongRoundError: wrong round or base version, a second update in
                the round, or initial weights for a model already seeded.
        """
        spec = self._require_spec()
        if header.codec != self.config.codec:
            raise InvalidUpdateError(
                f"update codec {header.codec} is not the federation's codec "
                f"{self.config.codec}"
            )
        if header.num_coordinates != spec.num_coordinates:
            raise InvalidUpdateError(
                f"update has {header.num_coordinates} coordinates but the model has "
                f"{spec.num_coordinates} parameters"
            )
        if header.is_initial_weights:
            if self.master is not None:
                raise WrongRoundError(
                    "the model is already seeded (another client was first); "
                    "pull the current weights instead"
                )
            return Ticket(client, header, 0)
        current = self._check_round(client, header)
        if current.first_header_s is None:
            current.first_header_s = self.clock()
        return Ticket(client, header, current.round_id)

    def _check_round(self, client: ClientRecord, header: UpdateHeaderInfo) -> OpenRound:
        current = self.current
        if self.phase is not Phase.COLLECTING or current is None:
            raise WrongRoundError(
                f"no round is collecting updates (phase {self.phase.value}); "
                "wait for the next RoundStarted event"
            )
        if header.round_id != current.round_id:
            raise WrongRoundError(
                f"update is for round {header.round_id} but round {current.round_id} "
                "is collecting; pull the latest model and join the current round"
            )
        if header.base_version != current.base_version:
            raise WrongRoundError(
                f"update was computed from model version {header.base_version} but "
                f"round {current.round_id} starts from version {current.base_version}; "
                "pull the latest model"
            )
        if client.client_id in current.contributors:
            raise WrongRoundError(
                f"client {client.client_id} already sent an update for round "
                f"{current.round_id}"
            )
        return current

    def check_commit(self, ticket: Ticket) -> None:
        """Re-check, at commit time, that the ticket's round still takes updates.

        Raises:
            WrongRoundError: the round closed (or the model was seeded) while
                the update streamed.
        """
        if ticket.header.is_initial_weights:
            self.admit(ticket.client, ticket.header)
        else:
            self._check_round(ticket.client, ticket.header)

    def accumulate(self, ticket: Ticket, staging: torch.Tensor) -> bool:
        """Add a fully received update into the round (numeric; worker thread).

        Returns True if `staging` was kept: the first update of a round
        becomes the sum buffer and the initial weights become the master
        copy. Otherwise the caller may reuse it (`recycle`).
        """
        if ticket.header.is_initial_weights:
            self.master = staging
            return True
        current = self._require_round()
        if current.total is None:
            current.total = WeightedSum(staging.numel())
        kept = current.total.count == 0
        current.total.add(staging, float(ticket.header.num_samples), consume=True)
        return kept

    def staging_buffer(self, num_coordinates: int) -> torch.Tensor:
        """A float32 buffer to receive one update into, reused when possible.

        Reuse matters for speed, not just memory: writing into a fresh
        model-sized allocation page-faults on every 4 KiB, which cost about
        as much as the copy itself.
        """
        if self._spare and self._spare[-1].numel() == num_coordinates:
            return self._spare.pop()
        return torch.empty(num_coordinates, dtype=torch.float32)

    def recycle(self, buffer: torch.Tensor) -> None:
        """Keep a spent model-sized buffer for the next update (bounded)."""
        if len(self._spare) < self.config.max_concurrent_pushes:
            self._spare.append(buffer)

    def record_commit(self, ticket: Ticket, payload_bytes: int) -> int:
        """Book-keeping after `accumulate`; returns the updates in the round."""
        client, header = ticket.client, ticket.header
        client.updates_accepted += 1
        client.samples_contributed += header.num_samples
        client.last_train_loss = header.train_loss
        if header.is_initial_weights:
            self.published = self._publish(version=0, round_id=0)
            self._open_round()
            return 1
        current = self._require_round()
        client.last_round = current.round_id
        current.contributors.add(client.client_id)
        current.loss_weighted_sum += header.train_loss * header.num_samples
        current.samples += header.num_samples
        current.bytes_received += payload_bytes
        current.last_commit_s = self.clock()
        if current.deadline_s is None:
            current.deadline_s = current.last_commit_s + self.config.round_timeout_s
        return len(current.contributors)

    # -- closing ---------------------------------------------------------------

    def close_reason(self) -> str | None:
        """Why the open round should close now, or None to keep collecting."""
        current = self.current
        if self.phase is not Phase.COLLECTING or current is None:
            return None
        done = len(current.contributors)
        if current.deadline_s is not None and self.clock() >= current.deadline_s:
            return "deadline"
        connected = {c.client_id for c in self.registry.connected()}
        if done >= self.config.min_clients and connected <= current.contributors:
            return "all connected clients committed"
        return None

    def begin_close(self) -> OpenRound:
        """Stop taking updates for the open round (state change; event loop)."""
        current = self._require_round()
        self.phase = Phase.APPLYING
        return current

    def apply(self, closing: OpenRound, copy_on_write: bool) -> bool:
        """Mean, outer step and publish (numeric; worker thread). True if applied.

        `copy_on_write` is set when pulls may still read the published
        buffer: if it aliases the master, the step must not write into it.
        """
        if len(closing.contributors) < self.config.min_clients or closing.total is None:
            if closing.total is not None and closing.total.count:
                self.recycle(closing.total.mean())
            return False
        master = self._require_master()
        if copy_on_write and self._published_aliases_master():
            master = master.clone()
        mean = closing.total.mean()
        self.optimizer.step(master, mean)
        self.recycle(mean)
        self.master = master
        self.published = self._publish(self.model_version + 1, closing.round_id)
        return True

    def finish_close(
        self, closing: OpenRound, applied: bool, reason: str
    ) -> RoundResult:
        """Record the result and open the next round (state change; event loop)."""
        if applied:
            self.model_version += 1
        result = RoundResult(
            round_id=closing.round_id,
            outcome=Outcome.APPLIED if applied else Outcome.SKIPPED,
            model_version=self.model_version,
            num_updates=len(closing.contributors),
            reason=reason
            if applied
            else f"{len(closing.contributors)} update(s) by the {reason}, "
            f"min_clients is {self.config.min_clients}",
            duration_s=self.clock() - closing.opened_s,
            mean_train_loss=closing.loss_weighted_sum / max(1, closing.samples),
            bytes_received=closing.bytes_received,
            ingest_s=(closing.last_commit_s or 0.0) - (closing.first_header_s or 0.0),
        )
        self.history.append(result)
        self._open_round()
        return result

    # -- helpers ---------------------------------------------------------------

    def _open_round(self) -> None:
        self.current = OpenRound(self._next_round_id, self.model_version, self.clock())
        self._next_round_id += 1
        self.phase = Phase.COLLECTING

    def _publish(self, version: int, round_id: int) -> PublishedModel:
        """The downlink bytes of the master copy.

        For an all-float32 model the native layout equals the coordinate
        layout, so the master itself is served (no model-sized copy); `apply`
        then copies on write while pulls are running.
        """
        spec, master = self._require_spec(), self._require_master()
        if all(t.dtype is DType.FLOAT32 for t in spec.tensors):
            data = master.view(torch.uint8)
        else:
            data = pack_native(master, spec)
        return PublishedModel(version, round_id, data)

    def _published_aliases_master(self) -> bool:
        published, master = self.published, self.master
        return (
            published is not None
            and master is not None
            and published.data.data_ptr() == master.data_ptr()
        )

    def _require_spec(self) -> ModelSpec:
        if self.spec is None:
            raise WrongRoundError("no client has joined yet; call Join first")
        return self.spec

    def _require_master(self) -> torch.Tensor:
        if self.master is None:
            raise WrongRoundError("the model is not seeded yet")
        return self.master

    def _require_round(self) -> OpenRound:
        if self.current is None:
            raise WrongRoundError("no round is open; the model is not seeded yet")
        return self.current
