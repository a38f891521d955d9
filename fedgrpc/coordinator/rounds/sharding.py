"""A shard's round-level job (`shard = "I/N"`): its range, and its commit vote.

The range: pacing (which coordinates a round covers), the global model
(which bytes its digest covers) and Join (the map it announces) compute the
same cuts from one place, the equal split aligned to the update codec's
block (`domain.shards`).

The vote: at each round's close the engine asks its `ShardGate` (the
`coordinator.shards` link to the leader) whether every shard committed the
same clients; the gate is a plain callable so the engine needs no gRPC.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from fedgrpc.compress.codec import make_codec
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.rounds.records import OpenRound
from fedgrpc.coordinator.rounds.registry import ClientRecord, ClientRegistry
from fedgrpc.domain.fragments import Fragment
from fedgrpc.domain.model_spec import ModelSpec
from fedgrpc.domain.shards import shard_cuts, shard_ranges
from fedgrpc.errors import ConfigError


class ShardVerdict(NamedTuple):
    """The leader's answer about one round, as the engine uses it."""

    skip_reason: str | None
    """Why the round must skip on every shard; None: apply it."""
    next_round_id: int
    """The round id to open next at the earliest (shards whose ids fell
    behind catch up); 0: none given."""
    partial_clients: tuple[str, ...] = ()
    """Key fingerprints of clients that committed at some shards only: each
    counts as one of their broken uploads (`coordinator.shards.board`)."""


ShardGate = Callable[[int, int, tuple[str, ...], float, bool], ShardVerdict]
"""(round, base version, committed clients, total weight, usable) -> verdict."""


def cuts_for(config: CoordinatorConfig, spec: ModelSpec) -> tuple[int, ...]:
    """The N+1 coordinate cuts of a sharded federation (`()` unsharded).

    Raises:
        ConfigError: the model has fewer codec blocks than shards.
    """
    if config.shard_count <= 1:
        return ()
    block = make_codec(config.codec_config).block_coordinates(config.chunk_bytes)
    try:
        return shard_cuts(spec.num_coordinates, config.shard_count, block)
    except ValueError as exc:
        raise ConfigError(f"shard={config.shard!r}: {exc}") from None


def own_range(config: CoordinatorConfig, spec: ModelSpec) -> Fragment | None:
    """The range this shard owns (None unsharded)."""
    cuts = cuts_for(config, spec)
    if not cuts:
        return None
    return shard_ranges(spec, cuts)[config.shard_index]


def shard_vote(
    gate: ShardGate, closing: OpenRound, registry: ClientRegistry
) -> ShardVerdict:
    """Ask the shards' leader about `closing` (see `ShardGate`).

    Every shard votes, a round with nothing to apply too, so the leader
    never waits out its timeout for a shard that has nothing to say.
    Clients are named by their key's fingerprint: client ids are handed out
    per shard, in join order, so they differ between shards. Under secure
    aggregation the contributors are the masked round's survivors
    (`secure.masked_round.install_sum`), so the shards compare survivor sets.
    """
    total = closing.total
    usable = (
        closing.void_reason is None
        and total is not None
        and len(closing.contributors) >= closing.quorum
    )
    weight = total.held().total_weight if total is not None else 0.0
    names = []
    for client_id in closing.contributors:
        record = registry.get(client_id)
        key = None if record is None else record.public_key
        names.append(client_id if key is None else key.fingerprint)
    return gate(
        closing.round_id, closing.base_version, tuple(sorted(names)), weight, usable
    )


def strike_partial_clients(
    closing: OpenRound,
    registry: ClientRegistry,
    strike: Callable[[ClientRecord, int, str], bool],
) -> int:
    """Count `closing`'s partial clients' pushes as broken; returns how many.

    `strike` is `ingest.breakers.BrokenUploads.record`: the same rule as a
    stream cut mid-way, so a client doing it `max_broken_uploads` times is
    excluded, and since every shard hears the same names it is excluded on
    every shard.
    """
    partial = set(closing.partial_clients)
    if not partial:
        return 0
    struck = 0
    for record in registry.all():
        key = record.public_key
        if key is not None and key.fingerprint in partial:
            reason = (
                f"round {closing.round_id}: committed at some shards but not at "
                "every one (the round skipped on all of them)"
            )
            strike(record, closing.round_id, reason)
            struck += 1
    return struck
