"""The federation's weights: spec, float32 master copy, outer optimizer, downlink bytes.

Plain Python and torch, no gRPC or asyncio. The round engine decides *when*
the weights change; this module owns *how*: seeding, the outer step, and
publishing an immutable version for PullModel. The master copy covers the
coordinates this coordinator holds (`held_range`): the whole model, or a
parameter shard's own range.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import numpy as np
import torch

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.rounds.buffer_means import (
    apply_buffer_means,
    take_buffer_means,
)
from fedgrpc.coordinator.rounds.downlink import DownlinkCompressor, downlink_for
from fedgrpc.coordinator.rounds.held_range import (
    held_range,
    published_bytes,
    stage_seed_chunk,
)
from fedgrpc.coordinator.rounds.initial_model import InitialModel
from fedgrpc.coordinator.rounds.model_digests import ModelDigests
from fedgrpc.coordinator.rounds.norm_guard import NormGuard
from fedgrpc.coordinator.rounds.records import PublishedModel
from fedgrpc.coordinator.rounds.upstream import RootModel, Upstream
from fedgrpc.coordinator.strategy.wiring import build_outer
from fedgrpc.domain.fragments import Fragment
from fedgrpc.domain.model_spec import ModelSpec
from fedgrpc.domain.requests import HashName
from fedgrpc.errors import InvalidUpdateError, ModelMismatchError, WrongRoundError
from fedgrpc.log import get_logger
from fedgrpc.optim import OuterOptimizer
from fedgrpc.optim.fragmented import FragmentedOptimizer

log = get_logger(__name__)


class GlobalModel:
    """What every client pulls, and the state the outer optimizer keeps."""

    def __init__(
        self,
        config: CoordinatorConfig,
        clock: Callable[[], float],
        optimizer: OuterOptimizer | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.spec: ModelSpec | None = None
        self.held: Fragment | None = None
        """The coordinates `master` covers (`held_range`), known with the spec."""
        self.master: torch.Tensor | None = None
        self.published: PublishedModel | None = None
        self.version = 0
        """Applied rounds so far (0: the initial weights)."""
        self.optimizer: OuterOptimizer = optimizer or build_outer(config)
        self._seeder: tuple[str, float] | None = None
        self.initial: InitialModel | None = None
        """Weights from `init_model`, laid out at the first Join (`initial_model`)."""
        self.guard = NormGuard(config.max_update_norm_growth, config.guard_norm_floor)
        self.frozen_sha256 = b""
        """The frozen base every client must share (the first digest a joiner
        sent; b"": none seen). Checkpointed."""
        """The divergence guard of plain rounds (`norm_guard`)."""
        self.downlink: DownlinkCompressor | None = None
        """Compressed steps for pulls (`downlink_codec`), armed with the spec."""
        self.upstream: Upstream | None = None
        """A leaf's link to its root (`rounds.upstream`); None: flat or root."""
        self._from_root: RootModel | None = None
        self.digest_hashes: Callable[[], Collection[HashName]] = lambda: (
            config.update_hash,
        )
        """The hashes each new version is hashed under at publish: those the
        registry's clients use (the runtime wires `ClientRegistry.model_hashes`)."""

    def adopt_spec(self, spec: ModelSpec) -> bool:
        """Check a joiner's model; the first spec defines the federation's layout.

        With initial weights from a file, the first spec must match them by
        name, and the weights become version 0 in its layout. True if that
        just happened (the model exists now).

        Raises:
            InvalidUpdateError: the model has no elements to average.
            ModelMismatchError: the spec differs from the federation's (or
                the initial model's), naming the first differing tensor.
        """
        if spec.num_coordinates == 0:
            raise InvalidUpdateError("the model's parameters have no elements")
        if self.spec is not None:
            # A float dtype may differ: a bfloat16 client casts what it pulls.
            spec.check_same_as(self.spec, allow_casts=True)
            return False
        if self.upstream is not None:
            return self._adopt_root(spec)
        initial = self.initial
        if initial is not None:
            initial.check_matches(spec)
            spec = initial.federation_spec(spec)
        self.spec, self.held = spec, held_range(self.config, spec)
        self._arm_downlink(spec)
        if initial is None:
            return False
        self.initial = None
        self.seed(initial.coordinates(spec, self.held))  # only the held range
        return True

    def _arm_downlink(self, spec: ModelSpec) -> None:
        self.downlink = downlink_for(self.config, spec)

    def fetch_root(self, spec: ModelSpec) -> None:
        """A leaf: the root's model, reached with the first joiner's `spec`.

        The Join handler calls it before the Join itself, so `adopt_spec`
        can then lay the root's model out as this leaf's first version.
        Never blocks: until the root is reached, `Upstream.bootstrap` raises
        (UNAVAILABLE, which clients retry).
        """
        if self.upstream is not None and self.spec is None:
            self._from_root = self.upstream.bootstrap(spec)

    def _adopt_root(self, spec: ModelSpec) -> bool:
        """The root's model (`fetch_root`) becomes this leaf's, at its version."""
        root = self._from_root
        if root is None:  # fetch_root raised, or was not called
            raise WrongRoundError("this leaf has not reached its root yet; retry Join")
        spec.check_same_as(root.spec, allow_casts=True)
        self.spec, self._from_root = root.spec, None
        self.held = held_range(self.config, root.spec)
        self._adopt(root, round_id=0)
        self.version = root.version
        return True

    def _adopt(self, root: RootModel, round_id: int) -> None:
        self.master = root.weights
        self.published = self._publish(root.version, round_id)

    def relay(self, mean: torch.Tensor, weight: float, round_id: int) -> str | None:
        """A leaf's outer step: the group's mean goes to the root as one update.

        `weight` is the group's total weight (its clients' samples, or its
        count under equal weighting or secure aggregation): the root's
        sample-weighted mean of group means is then the flat weighted mean
        (`rounds.upstream`). The root's next model is published at the
        root's version (`advance` adopts it). Returns why the round must be
        skipped instead (the root skipped or was unreachable), or None.
        """
        upstream = self.upstream
        if upstream is None:
            raise WrongRoundError("relay needs an upstream (this is no leaf)")
        result = upstream.exchange(mean, round(weight), self.version)
        if isinstance(result, str):
            return result
        self._adopt(result, round_id)  # a new tensor: pulls may still read the old
        return None

    def check_frozen(self, digest: bytes) -> None:
        """Refuse a joiner whose frozen base differs from the federation's.

        Parameters that never travel (`federate="trainable"`: a LoRA base
        model) are never averaged, so clients with different ones would
        train their adapters against different weights and average
        nonsense. The federation's digest is the seeding client's
        (`adopt_frozen`): the client that decides the initial weights
        decides the base too, so a joiner that merely came first cannot
        squat it and lock every honest client out. An empty digest (nothing
        frozen, or an older client) is not checked, nor is any before a
        seeder set one (with `init_model` no client seeds: the check is off).

        Raises:
            ModelMismatchError: another frozen base.
        """
        if digest and self.frozen_sha256 and digest != self.frozen_sha256:
            raise ModelMismatchError(
                "the model's frozen parameters (those that never travel, such as "
                "a LoRA base model) differ from the federation's: every client "
                "must load the same base weights (same checkpoint, or the same "
                "seed before building the model)"
            )

    def adopt_frozen(self, digest: bytes) -> None:
        """The seeding client's frozen base becomes the federation's.

        Called for the holder of the seeding lease while the model is not
        seeded yet; a lease that passes to another joiner passes the base.
        """
        if self.master is None:
            self.frozen_sha256 = digest

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

    def check_not_seeded(self) -> None:
        """Raise `WrongRoundError` if initial weights would come too late."""
        if self.master is not None:
            raise WrongRoundError(
                "the model is already seeded (another client was first); "
                "pull the current weights instead"
            )

    def seed(self, weights: torch.Tensor) -> None:
        """Adopt initial weights (float32, the held coordinates) as version 0."""
        self.check_not_seeded()
        self.master = weights
        self.published = self._publish(version=0, round_id=0)

    def seeding_buffer(self) -> torch.Tensor:
        """Where an upload of initial weights is staged: the held range only."""
        return torch.empty(self.require_held().num_coordinates, dtype=torch.float32)

    def stage_seed(self, buffer: torch.Tensor, offset: int, chunk: np.ndarray) -> None:
        """Stage the held part of a chunk of initial weights (`stage_seed_chunk`)."""
        stage_seed_chunk(buffer, self.require_held(), offset, chunk)

    def step(
        self,
        mean: torch.Tensor,
        round_id: int,
        copy_on_write: bool,
        fragment: Fragment | None = None,
    ) -> None:
        """Outer step on the mean pseudo-gradient; publish the next version.

        `mean` may be overwritten (the optimizer computes in place). With
        `copy_on_write`, pulls may still read the published buffer: if it is
        the master itself, the step works on a copy. `advance` then makes the
        new version current. With a streaming `fragment`, `mean` covers only
        its range and only that fragment's optimizer steps (`optim.fragmented`).
        A lean round's mean on disk steps through `disk_step` instead.
        """
        previous, master = self.require_master(), self.working_master(copy_on_write)
        downlink = self.downlink if fragment is None else None
        if downlink is not None and master is previous:
            previous = master.clone()  # w, what clients hold: the step's base
        start = 0 if fragment is None else fragment.coord_start
        local = start - self.require_held().coord_start  # a shard: 0, its range
        target = master[local : local + mean.numel()]
        averaged = take_buffer_means(self.require_spec().buffer_slots, mean, start)
        if fragment is None:
            self.optimizer.step(master, mean)
        elif isinstance(self.optimizer, FragmentedOptimizer):
            self.optimizer.step_fragment(fragment.index, target, mean)
        elif self.config.shard_count > 1:  # a shard's optimizer holds its range
            self.optimizer.step(target, mean)
        else:
            raise WrongRoundError("a fragment round needs one optimizer per fragment")
        apply_buffer_means(target, averaged)
        version = self.version + 1
        if downlink is not None:
            downlink.apply(master, previous, version)
            log.info(
                "downlink_step",
                version=version,
                bytes=downlink.recent[-1].num_bytes,
                residual_norm=round(downlink.residual_norm, 6),
            )
        self.publish_step(master, round_id)

    def working_master(self, copy_on_write: bool) -> torch.Tensor:
        """The weights a step may write: the master, or a copy while pulls read it."""
        master = self.require_master()
        if copy_on_write and self._published_aliases_master():
            return master.clone()
        return master

    def publish_step(self, master: torch.Tensor, round_id: int) -> None:
        """`master` (stepped) becomes the next version's weights, published."""
        self.master = master
        self.published = self._publish(self.version + 1, round_id)

    def divergence(self, mean: torch.Tensor, round_id: int) -> str | None:
        """Why applying round `round_id`'s `mean` would blow the model up, or None.

        `NormGuard.judge` on ||mean||, floored by ||w|| (one read of each,
        no copy; ||w|| only for a round over the unfloored limit). On a
        shard both cover its own range, the only weights it holds.
        `max_update_norm_growth = 0` leaves only the NaN/Inf check.
        """
        return self.divergence_of(float(torch.linalg.vector_norm(mean)), round_id)

    def divergence_of(self, norm: float, round_id: int) -> str | None:
        """`divergence` for a mean whose norm was taken elsewhere (`disk_step`)."""
        master = self.require_master()
        return self.guard.judge(
            round_id, norm, lambda: float(torch.linalg.vector_norm(master))
        )

    def advance(self) -> None:
        """Count the version `step` (or a leaf's `relay`: the root's) published."""
        self.version = self.require_published().version

    def resume(
        self,
        spec: ModelSpec,
        master: torch.Tensor,
        version: int,
        round_id: int,
        guard_history: list[tuple[int, float]],
    ) -> None:
        """Adopt a checkpoint's weights as `version` of round `round_id`; publish.

        `master` covers the held range (`held_of_checkpoint` cuts it). The
        caller restores the optimizer's state (`optimizer.load_state_dict`).
        Republishing the same bytes gives the same digests as before the
        restart, so clients holding that version still match them.
        """
        self.spec, self.master, self.version = spec, master, version
        self.held = held_range(self.config, spec)
        if self.downlink is None:
            self._arm_downlink(spec)
        self.guard.restore(guard_history)
        self.published = self._publish(version, round_id)

    def _publish(self, version: int, round_id: int) -> PublishedModel:
        """The downlink bytes of the master copy (`held_range.published_bytes`).

        Hashed now under each hash `digest_hashes` names (the clients'),
        so the first pulls find their digest ready; any other lazily.
        """
        held = self.require_held()
        data = published_bytes(self.require_master(), self.require_spec(), held)
        digests = ModelDigests()
        digests.compute_all(self.digest_hashes(), data)
        downlink = self.downlink
        if downlink is None:
            return PublishedModel(
                version, round_id, data, digests, byte_start=held.byte_start
            )
        recent = downlink.recent
        if not recent or recent[-1].version != version:
            downlink.forget()  # seeded or resumed: no step leads here
            recent = ()
        return PublishedModel(
            version, round_id, data, digests, recent, downlink.codec_spec
        )

    def _published_aliases_master(self) -> bool:
        published, master = self.published, self.master
        return (
            published is not None
            and master is not None
            and published.data.data_ptr() == master.data_ptr()
        )

    def require_spec(self) -> ModelSpec:
        """The federation's spec, or `WrongRoundError` before anyone joined."""
        if self.spec is None:
            raise WrongRoundError("no client has joined yet; call Join first")
        return self.spec

    def require_held(self) -> Fragment:
        """The held range, or `WrongRoundError` before anyone joined."""
        if self.held is None:
            raise WrongRoundError("no client has joined yet; call Join first")
        return self.held

    def require_published(self) -> PublishedModel:
        """The published model, or `WrongRoundError` before seeding."""
        if self.published is None:
            raise WrongRoundError("the model is not seeded yet")
        return self.published

    def require_master(self) -> torch.Tensor:
        """The master weights, or `WrongRoundError` before seeding."""
        if self.master is None:
            raise WrongRoundError("the model is not seeded yet")
        return self.master
