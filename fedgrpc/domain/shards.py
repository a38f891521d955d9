"""Parameter sharding's map: N contiguous, block-aligned ranges of the flat vector.

With `shard = "I/N"` N coordinator processes split the model: shard k owns
the coordinates `cuts[k]..cuts[k+1]` with its own ingest, sum, outer
optimizer state and checkpoints, and a client streams each range to its
shard. Cuts are the equal split ⌊k·n/N⌋ rounded down to a multiple of the
codec's block (`Codec.block_coordinates`), so every shard's update is cut
into the same blocks an unsharded update of the same model would be (no
block straddles two shards, and a codec's per-block scale or top-k sees
the very values it would have seen on one coordinator).

A shard is a `Fragment` (`domain.fragments`) whose index is the shard's:
the coordinator already knows how to run a round over one coordinate range
(Streaming DiLoCo), so a shard is a coordinator every round of which syncs
its own range. Coordinators and clients compute the same cuts from the
spec, N and the block; Join carries them anyway (`shard_bounds`) so a
client checks rather than trusts that both sides agree.
"""

from __future__ import annotations

import itertools
import re

from fedgrpc.domain.fragments import Fragment, byte_of_coordinate
from fedgrpc.domain.model_spec import ModelSpec

MAX_SHARDS = 64
"""Largest N: each shard is a process (with its own interpreter, torch and gRPC)."""
_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(value: str) -> tuple[int, int]:
    """`"I/N"` -> (I, N) with 0 <= I < N <= MAX_SHARDS; "" -> (0, 1) (unsharded).

    Raises:
        ValueError: not "I/N", or I, N out of range (the message says which).
    """
    if not value:
        return 0, 1
    match = _SHARD.match(value)
    if match is None:
        raise ValueError(
            f"{value!r} is not I/N (this shard's index I, from 0, and the shard "
            "count N, e.g. 0/2)"
        )
    index, count = int(match[1]), int(match[2])
    if not 1 <= count <= MAX_SHARDS:
        raise ValueError(f"{value!r}: the shard count N must be 1..{MAX_SHARDS}")
    if index >= count:
        raise ValueError(
            f"{value!r}: the shard index I must be 0..{count - 1} (shards count "
            "from 0; 0 is the leader)"
        )
    return index, count


def shard_cuts(num_coordinates: int, count: int, block: int) -> tuple[int, ...]:
    """The N+1 coordinate cuts: ⌊k·n/N⌋ rounded down to a multiple of `block`.

    Raises:
        ValueError: some shard would be empty (fewer blocks than shards).
    """
    block = max(1, block)
    cuts = [(k * num_coordinates // count) // block * block for k in range(count)]
    cuts.append(num_coordinates)
    if any(lo >= hi for lo, hi in itertools.pairwise(cuts)):
        raise ValueError(
            f"cannot split a model of {num_coordinates} parameters into {count} "
            f"shards of whole {block}-coordinate blocks: every shard needs at "
            "least one block (use fewer shards or a smaller chunk_bytes)"
        )
    return tuple(cuts)


def shard_ranges(spec: ModelSpec, cuts: tuple[int, ...]) -> tuple[Fragment, ...]:
    """Each shard's coordinates and native bytes, from cuts (`shard_cuts`).

    Raises:
        ValueError: cuts that do not run from 0 to the model's size in
            increasing order (a coordinator announcing another model's map).
    """
    n = spec.num_coordinates
    increasing = all(lo < hi for lo, hi in itertools.pairwise(cuts))
    if len(cuts) < 2 or cuts[0] != 0 or cuts[-1] != n or not increasing:
        raise ValueError(
            f"shard bounds {list(cuts)} do not split this model's {n} parameters "
            "into increasing contiguous ranges from 0"
        )
    return tuple(
        Fragment(
            k,
            cuts[k],
            cuts[k + 1],
            byte_of_coordinate(spec, cuts[k]),
            byte_of_coordinate(spec, cuts[k + 1]),
        )
        for k in range(len(cuts) - 1)
    )
