"""The round modes' rules: which bases a round takes, when it closes, what it scales.

Plain functions beside `rules` (the refusals and close rules every mode
shares), consulted by `engine.RoundEngine`; `config.rounds` explains the
modes. What differs per mode:

* `deadline`: a round's deadline is fixed when it opens, at
  `round_duration_s` of training plus `round_timeout_s` for the pushes
  (sync starts it at the first commit); RoundStarted tells each client
  the training seconds left.
* `buffered_async`: an update may come from a base up to `max_staleness`
  versions behind the round's; its values are scaled by s(τ) and the round
  closes once `buffer_size` updates are in.
* `streaming`: the round of base version v syncs fragment v mod P only
  (`domain.fragments`): its updates carry that range, and one outer
  optimizer per fragment steps it (`optim.fragmented`).

A client's successive updates must come from strictly newer bases once
one of them was applied (`ClientRecord.last_applied_base`): an honest
client pulls after an applied round, so an older base means the same
progress sent twice.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedgrpc.compress import DecodedBlock, DenseValues, SparseValues
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.rounds.records import OpenRound
from fedgrpc.coordinator.rounds.registry import ClientRecord
from fedgrpc.coordinator.rounds.sharding import own_range
from fedgrpc.coordinator.strategy.wiring import NO_PLUGINS, StagePlugins, build_outer
from fedgrpc.domain.fragments import Fragment, fragment_of_version, split_fragments
from fedgrpc.domain.model_spec import ModelSpec
from fedgrpc.domain.requests import UpdateHeaderInfo
from fedgrpc.errors import WrongRoundError
from fedgrpc.optim import OuterOptimizer
from fedgrpc.optim.fragmented import FragmentedOptimizer


def round_fragment(
    config: CoordinatorConfig, spec: ModelSpec | None, version: int
) -> Fragment | None:
    """The range the round based on `version` syncs (None: the whole vector).

    streaming: fragment v mod P; a shard: its own range, every round.
    """
    if spec is not None and config.shard_count > 1:
        return own_range(config, spec)
    if config.round_mode != "streaming" or spec is None:
        return None
    fragments = split_fragments(spec, config.fragments)
    return fragments[fragment_of_version(version, config.fragments)]


def outer_for(
    config: CoordinatorConfig, plugins: StagePlugins = NO_PLUGINS
) -> OuterOptimizer:
    """The outer optimizer; in streaming mode one per fragment (`optim.fragmented`)."""
    if config.round_mode != "streaming":
        return build_outer(config, plugins)
    return FragmentedOptimizer(lambda: build_outer(config, plugins), config.fragments)


def opening_deadline(config: CoordinatorConfig, opened_s: float) -> float | None:
    """A new round's deadline on the engine clock: fixed at open in deadline mode.

    None (sync, buffered_async): the first commit starts it (`credit`).
    """
    if config.round_mode != "deadline":
        return None
    return opened_s + config.round_duration_s + config.round_timeout_s


def training_seconds_left(
    config: CoordinatorConfig, current: OpenRound, now_s: float
) -> float:
    """Deadline mode: training seconds `current` has left at `now_s` (0 otherwise)."""
    if config.round_mode != "deadline":
        return 0.0
    return max(0.0, current.opened_s + config.round_duration_s - now_s)


def accepts_lag(
    config: CoordinatorConfig,
    current: OpenRound,
    client: ClientRecord,
    base_version: int,
    known_bases: Mapping[int, object],
) -> bool:
    """buffered_async: True if an update from the older `base_version` is taken.

    False outside buffered_async and for the round's own base (or a newer
    one, which `rules.check_slot` refuses).

    Raises:
        WrongRoundError: the base is more than `max_staleness` versions old,
            no longer known, or not newer than an applied update's base of
            the same client (FAILED_PRECONDITION: pull the newest model).
    """
    if config.round_mode != "buffered_async" or base_version >= current.base_version:
        return False
    staleness = current.base_version - base_version
    if staleness <= config.max_staleness and base_version not in known_bases:
        raise WrongRoundError(
            f"update was computed from model version {base_version}, whose digest "
            "this coordinator does not hold (it resumed from an older checkpoint "
            "than that version): pull the newest model and train from it"
        )
    if staleness > config.max_staleness:
        raise WrongRoundError(
            f"update was computed from model version {base_version}, "
            f"{staleness} versions behind round {current.round_id}'s base "
            f"{current.base_version}; this coordinator takes updates at most "
            f"max_staleness={config.max_staleness} versions stale: pull the "
            "newest model and train from it"
        )
    applied = client.last_applied_base
    if applied is not None and base_version <= applied:
        raise WrongRoundError(
            f"client {client.client_id} already had an update from model "
            f"version {applied} applied; an update from version {base_version} "
            "would count that progress twice: pull the newest model"
        )
    return True


def value_scale(
    config: CoordinatorConfig, current: OpenRound, header: UpdateHeaderInfo
) -> float:
    """s(τ) for an update admitted into `current` (1 outside buffered_async)."""
    if config.round_mode != "buffered_async":
        return 1.0
    return config.staleness_scale(current.base_version - header.base_version)


def buffer_full(config: CoordinatorConfig, current: OpenRound) -> bool:
    """buffered_async: `buffer_size` updates are in and none is still streaming.

    Never for the run's last round (`max_rounds`): it closes as a sync round
    does, once every connected client committed (or at its deadline), so
    the work slow clients have in flight when the run ends is applied
    rather than cut off. Measured: a slow client's goodput went from 58 %
    to ~100 % in an 18-round run (README, Round modes).
    """
    last = 0 < config.max_rounds <= current.round_id
    return (
        config.round_mode == "buffered_async"
        and not last
        and not current.streaming
        and len(current.contributors) >= config.resolved_buffer_size
    )


def scaled(
    values: np.ndarray | DecodedBlock, factor: float
) -> np.ndarray | DecodedBlock:
    """`values` times s(τ) = `factor`, as a new array or block (input is shared).

    Scaling the values, not the update's weight in the denominator: a round
    whose updates are all stale then takes a shorter step instead of the
    same one (FedBuff, Nguyen et al. 2022, Algorithm 1, line 10: Δ̄ += s(τ)Δ).
    """
    f = np.float32(factor)
    if isinstance(values, np.ndarray):
        return values * f
    if isinstance(values, DenseValues):
        return DenseValues(values.values * f)
    return SparseValues(values.indices, values.values * f)
