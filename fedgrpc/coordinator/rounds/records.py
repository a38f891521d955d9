"""The coordinator's records: plain data shared by the engine, ingest and status.

`Run` is the run as a whole (identity, traffic, stopping); `OpenRound`,
`Ticket` and `RoundResult` are one round, one update and one closed round.
"""

from __future__ import annotations

import enum
import itertools
import secrets
from dataclasses import dataclass, field

import numpy as np
import torch

from fedgrpc.aggregate import Accumulator
from fedgrpc.coordinator.rounds.downlink import Transition
from fedgrpc.coordinator.rounds.model_digests import ModelDigests
from fedgrpc.coordinator.rounds.registry import ClientRecord
from fedgrpc.crypto.signing import UpdateVerifier
from fedgrpc.domain.fragments import Fragment
from fedgrpc.domain.requests import HashName, UpdateHeaderInfo
from fedgrpc.errors import ShuttingDownError

_TICKET_IDS = itertools.count(1)
ROUND_NONCE_BYTES = 16
"""Random bytes naming one round of one run; updates sign it (replay guard)."""


def new_round_nonce() -> bytes:
    """A fresh round nonce from the OS CSPRNG."""
    return secrets.token_bytes(ROUND_NONCE_BYTES)


@dataclass(slots=True)
class Run:
    """One run of the coordinator: its id, start, traffic and whether it is stopping.

    Handed to whoever counts traffic or must refuse work while shutting down
    (ingest, PullModel, metrics, checkpoints), instead of the whole runtime.
    """

    run_id: str
    """Names the run across restarts (a resumed checkpoint keeps it)."""
    started_s: float
    """The coordinator clock when this process started serving it."""
    bytes_received: int = 0
    """Update payload bytes committed (bytes in)."""
    bytes_sent: int = 0
    """Model bytes sent by PullModel (bytes out)."""
    stopping: bool = False

    def check_running(self) -> None:
        """Raise `ShuttingDownError` once the coordinator is stopping."""
        if self.stopping:
            raise ShuttingDownError("the coordinator is shutting down; retry later")


class Phase(enum.Enum):
    """Where the coordinator is in its cycle."""

    WAITING_FOR_MODEL = "waiting_for_model"
    COLLECTING = "collecting"
    APPLYING = "applying"
    STOPPING = "stopping"
    FINISHED = "finished"
    """Round `max_rounds` closed: no round opens again; the model is final."""


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
    """uint8, the model's native bytes from `byte_start` (all `spec.num_bytes`
    of them, or a parameter shard's own range); never written after publishing."""
    digests: ModelDigests = field(default_factory=ModelDigests)
    """Digests of `data` by hash (ModelHeader.weights_sha256; updates sign the
    one under their hash as base): computed at publish for the hashes the
    registry's clients use, lazily for any other (`digest`)."""
    transitions: tuple[Transition, ...] = ()
    """With `downlink_codec`: the compressed steps kept, ending at `version`
    (`downlink.transitions_from` picks those a pull needs)."""
    delta_codec: str = ""
    """The codec of `transitions` (ModelHeader.delta_codec); "": no downlink codec."""
    byte_start: int = 0
    """Where `data` starts in the model's native bytes (a shard's range; 0: all)."""

    def digest(self, name: HashName) -> bytes:
        """`data`'s digest under `name`: cached, or computed now (once)."""
        return self.digests.compute(name, self.data)


@dataclass(slots=True, eq=False)
class Ticket:
    """One admitted update while it streams in."""

    client: ClientRecord
    header: UpdateHeaderInfo
    round_id: int
    scratch: np.ndarray
    """Chunk-sized float32 buffer for weighting values before they are added."""
    staging: torch.Tensor | None = None
    """Initial weights only: they become the master copy once complete."""
    seed_base: int = 0
    """Initial weights only: the model coordinate of chunk offset 0 (a
    sharded client seeds each shard with its range only)."""
    touched_sum: bool = False
    """True once a chunk was added to the round's sum (it cannot be undone)."""
    verifier: UpdateVerifier | None = None
    """Checks the chain of chunks; None when the coordinator runs unsigned."""
    opened_s: float = 0.0
    """Engine clock when it was admitted (the client's measured throughput)."""
    weight: float = 1.0
    """Its weight in the round's mean, fixed at admission (`SampleWeighting`)."""
    value_scale: float = 1.0
    """s(τ) its values are multiplied by (buffered_async's staleness; 1 otherwise)."""
    ticket_id: int = field(default_factory=lambda: next(_TICKET_IDS))


@dataclass(slots=True)
class OpenRound:
    """The round collecting updates now."""

    round_id: int
    base_version: int
    opened_s: float
    nonce: bytes = field(default_factory=new_round_nonce)
    """RoundStarted.round_nonce: updates of this round must sign it."""
    base_digests: ModelDigests = field(default_factory=ModelDigests)
    """Digests of the base version's bytes (the published model's, shared):
    an update must sign the one under its hash."""
    deadline_s: float | None = None
    """Set by the first commit: stragglers get `round_timeout_s` from then."""
    fragment: Fragment | None = None
    """streaming: the parameter range this round syncs (None: the whole model)."""
    contributors: set[str] = field(default_factory=set)
    commit_order: list[str] = field(default_factory=list)
    """Contributors in commit order: the rows of a spooled round (trust scores)."""
    streaming: dict[int, Ticket] = field(default_factory=dict)
    """Admitted pushes not yet committed or abandoned, by ticket id."""
    selected: tuple[str, ...] | None = None
    """Client ids the Selector chose when it opened; None: every client."""
    population: int = 0
    """Candidates the Selector chose `selected` from (the sampling's N)."""
    total: Accumulator | None = None
    """The round's Accumulator, opened on its first chunk (`RoundStages`)."""
    void_reason: str | None = None
    """Set when a push failed after touching the sum: the round must be skipped."""
    partial_clients: tuple[str, ...] = ()
    """A shard's round: key fingerprints the shards' leader named as having
    committed at some shards only (`rounds.sharding.strike_partial_clients`)."""
    complete_reason: str | None = None
    """Set when the round is complete for a reason the engine cannot see (a
    secure round's sum was recovered): it closes now, with this reason."""
    quorum: int = 0
    """Updates it needs to be applied; fixed when it starts closing."""
    loss_weighted_sum: float = 0.0
    loss_weight: float = 0.0
    """Sum of the weights `loss_weighted_sum` was taken with (the updates')."""
    samples: int = 0
    """Samples the committed updates claimed (saturating, for status)."""
    claims: list[int] = field(default_factory=list)
    """Each committed update's `num_samples`: the next reference of
    `weighting = capped` (`SampleWeighting.round_closed`)."""
    bytes_received: int = 0
    contributor_bases: dict[str, int] = field(default_factory=dict)
    """Each contributor's base version (older than `base_version` when stale)."""
    compute_s: float = 0.0
    """Training seconds the committed updates reported (goodput)."""
    eval_loss_sum: float = 0.0
    eval_reports: int = 0
    """Updates that reported a validation loss of `base_version` (their sum above)."""
    first_header_s: float | None = None
    last_commit_s: float | None = None
    first_header_cpu_s: float = 0.0
    last_commit_cpu_s: float = 0.0
    """Process CPU clock (all threads) at those two moments, for ingest_cpu_s."""

    def ids_in_use(self) -> set[str]:
        """Clients it counts, waits for or is receiving from: kept in the registry."""
        streaming = {t.client.client_id for t in self.streaming.values()}
        return self.contributors | set(self.selected or ()) | streaming


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
    ingest_cpu_s: float = 0.0
    """CPU seconds the coordinator process (every thread) spent in that window.

    Wall-clock ingest on a shared machine says how fast; this says what it
    cost, which is what tells a hashing pool that cannot overlap (no free
    core) from one that is slow.
    """
    selected: tuple[str, ...] = ()
    """Clients the Selector chose (empty with selection `all`)."""
    run_finished: bool = False
    """This was the run's last round (`max_rounds`, or its privacy budget);
    clients stop after it."""
    privacy_epsilon: float = 0.0
    """ε(δ) the run has spent after this round (0: privacy off)."""
    privacy_delta: float = 0.0
    max_epsilon: float = 0.0
    """The run's budget (0: none)."""
    dp_clip_norm: float = 0.0
    """S this round's updates were clipped to."""
    dp_noise_multiplier: float = 0.0
    """z the ledger accounts per round."""
    privacy_exhausted: bool = False
    """Not applied: it would have taken ε past `max_epsilon` (the run finished)."""
    max_staleness: int = 0
    """Versions the stalest update in it lagged the round's base (0: none)."""
    mean_eval_loss: float = 0.0
    """Mean validation loss clients reported of the version it started from."""
    eval_reports: int = 0
