"""Admitting an update: check its header against the round, open its ticket.

Apart from `engine` so the state machine keeps to its transitions; the
engine's `check_header` and `open_ticket` delegate here. Plain Python, no
gRPC: the ingest layer calls these through the engine before any chunk.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.rounds import pacing, rules
from fedgrpc.coordinator.rounds.global_model import GlobalModel
from fedgrpc.coordinator.rounds.goodput import Goodput
from fedgrpc.coordinator.rounds.participants import Participation
from fedgrpc.coordinator.rounds.records import OpenRound, Phase, Ticket
from fedgrpc.coordinator.rounds.registry import ClientRecord
from fedgrpc.coordinator.rounds.sharding import own_range
from fedgrpc.coordinator.rounds.weighting import SampleWeighting, check_claims
from fedgrpc.domain.requests import UpdateHeaderInfo
from fedgrpc.errors import InvalidUpdateError, WrongRoundError


class RoundEngine(Protocol):
    """What admission reads of `engine.RoundEngine` (a Protocol: no import cycle)."""

    config: CoordinatorConfig
    model: GlobalModel
    current: OpenRound | None
    phase: Phase
    participation: Participation
    clock: Callable[[], float]
    goodput: Goodput
    weighting: SampleWeighting


def check_header(
    engine: RoundEngine, client: ClientRecord, header: UpdateHeaderInfo
) -> None:
    """Validate an update header against the model and the round; no effects.

    Raises:
        InvalidUpdateError: wrong codec or coordinate count (in streaming
            mode: not the open round's fragment).
        WrongRoundError: wrong round or base version, a second update in
            the round, a round past its deadline, or initial weights for
            a model already seeded.
    """
    spec = engine.model.require_spec()
    if header.is_initial_weights:
        held = own_range(engine.config, spec) if header.shard != (0, 0) else None
        if held is not None:  # a sharded client seeds each shard with its range
            check_shard(engine.config, header)
        count = spec.num_coordinates if held is None else held.num_coordinates
        rules.check_shape(engine.config, count, header)
        check_claims(engine.config, header)
        engine.model.check_not_seeded()
        return
    if engine.config.shard_count > 1:
        check_shard(engine.config, header)
    current = engine.current
    fragment = None if current is None else current.fragment
    if fragment is None:
        rules.check_shape(engine.config, spec.num_coordinates, header)
    elif header.num_coordinates != fragment.num_coordinates:
        raise InvalidUpdateError(
            f"update has {header.num_coordinates} coordinates but round "
            f"{current.round_id if current else 0} syncs fragment {fragment.index} "
            f"(coordinates {fragment.coord_start}..{fragment.coord_stop}, "
            f"{fragment.num_coordinates} of them): "
            + (
                "a shard takes only its own range"
                if engine.config.shard_count > 1
                else "in round_mode = 'streaming' an update carries only its "
                "round's fragment"
            )
        )
    else:
        rules.check_shape(engine.config, header.num_coordinates, header)
    check_claims(engine.config, header)
    try:
        current = rules.collecting_round(engine.phase, engine.current)
        rules.check_not_excluded(current, client)
        base, known = header.base_version, engine.participation.base_digests
        spans = engine.participation.check(current, client, base)
        lags = pacing.accepts_lag(engine.config, current, client, base, known)
        rules.check_slot(current, client, header, engine.clock, spans=spans or lags)
    except WrongRoundError:
        engine.goodput.refused(header)  # its training is lost
        raise


def check_shard(config: CoordinatorConfig, header: UpdateHeaderInfo) -> None:
    """A shard takes only updates of its own range, from sharded clients.

    Equal-sized shards would take each other's ranges by length alone, so
    the header names the shard it is for (`domain.shards`).

    Raises:
        InvalidUpdateError: another shard's range, or an unsharded client.
    """
    index, count = header.shard
    mine = (config.shard_index, config.shard_count)
    if count == 0:
        raise InvalidUpdateError(
            f"this coordinator is shard {mine[0]} of {mine[1]} (parameter "
            "sharding): it takes only its own range, from a client that joined "
            "every shard; this client sent a whole-model update (upgrade it)"
        )
    if (index, count) != mine:
        raise InvalidUpdateError(
            f"update is for shard {index} of {count}, but this coordinator is "
            f"shard {mine[0]} of {mine[1]}: push each range to its own shard "
            "(JoinResponse.shard_peers)"
        )


def open_ticket(
    engine: RoundEngine, client: ClientRecord, header: UpdateHeaderInfo
) -> Ticket:
    """Start taking a checked header's chunks (call `check_header` first)."""
    spec = engine.model.require_spec()
    scratch = np.empty(
        min(spec.num_coordinates, engine.config.chunk_bytes // 4), dtype=np.float32
    )
    if header.is_initial_weights:
        staging = engine.model.seeding_buffer()  # a shard: its range only
        held = own_range(engine.config, spec) if header.shard != (0, 0) else None
        base = 0 if held is None else held.coord_start  # a range's chunk offsets
        return Ticket(client, header, 0, scratch, staging=staging, seed_base=base)
    current = rules.collecting_round(engine.phase, engine.current)
    if current.first_header_s is None:
        current.first_header_s = engine.clock()
        current.first_header_cpu_s = time.process_time()
    ticket = Ticket(client, header, current.round_id, scratch)
    ticket.opened_s = engine.clock()
    ticket.weight = engine.weighting.weight(client, header.num_samples)
    ticket.value_scale = pacing.value_scale(engine.config, current, header)
    current.streaming[ticket.ticket_id] = ticket
    return ticket
