"""The coordinates a coordinator holds: the whole model, or a shard's own range.

A parameter shard (`shard = "I/N"`) keeps its master weights, outer
optimizer state, sums, stages, checkpoints and published bytes for its own
range only (`sharding.own_range`), so its memory is O(range), not O(model):
with 100.7M parameters over 4 shards each process holds 25M float32
weights. The federation's spec stays whole (Join, admission and the shard
map need it); only the values are cut. Every place that turns held
coordinates into a model-wide position goes through here, so the offset is
applied in one place: held coordinate i is model coordinate
`held.coord_start + i`, held byte j is model byte `held.byte_start + j`.

Plain torch and numpy, no gRPC.
"""

from __future__ import annotations

import numpy as np
import torch

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.rounds.sharding import own_range
from fedgrpc.domain.fragments import Fragment
from fedgrpc.domain.model_spec import DType, ModelSpec
from fedgrpc.errors import CheckpointError, InvalidUpdateError
from fedgrpc.wire.tensors import pack_native


def held_range(config: CoordinatorConfig, spec: ModelSpec) -> Fragment:
    """This coordinator's range of `spec`: a shard's own, else the whole model."""
    own = own_range(config, spec)
    if own is not None:
        return own
    return Fragment(0, 0, spec.num_coordinates, 0, spec.num_bytes)


def stage_seed_chunk(
    buffer: torch.Tensor, held: Fragment, offset: int, chunk: np.ndarray
) -> None:
    """Keep the held part of a chunk of initial weights at model coordinate `offset`.

    A sharded client seeds each shard with its range only (chunk offsets
    from the range's start: the ticket's `seed_base`); an unsharded client
    uploads the whole model, each chunk signed and chained so the shard
    checks them all, and a shard stores only the coordinates it holds, so
    seeding never costs it the whole model.
    """
    lo = max(offset, held.coord_start)
    hi = min(offset + chunk.size, held.coord_stop)
    if lo < hi:
        start = held.coord_start
        buffer.numpy()[lo - start : hi - start] = chunk[lo - offset : hi - offset]


def held_of_checkpoint(
    master: torch.Tensor, saved: list[int] | None, held: Fragment, where: str
) -> torch.Tensor:
    """A checkpoint's master weights as the coordinates `held` covers.

    `saved`: the [start, stop) the checkpoint holds (None: written before
    shards held only their range, so the whole model). A whole master is
    cut to the range (a shard's older checkpoint); a range must be this one.

    Raises:
        CheckpointError: the checkpoint holds another range (another shard's,
            or one of another shard count) or the wrong number of weights.
    """
    start, stop = saved if saved is not None else (0, master.numel())
    if master.numel() != stop - start:
        raise CheckpointError(
            f"{where}: {master.numel()} master weights for the range {start}..{stop}"
        )
    if (start, stop) == (held.coord_start, held.coord_stop):
        return master
    if start <= held.coord_start and held.coord_stop <= stop:
        cut = master[held.coord_start - start : held.coord_stop - start].clone()
        return cut  # the whole master goes with the checkpoint that held it
    raise CheckpointError(
        f"{where} holds the weights of coordinates {start}..{stop}, but this "
        f"coordinator holds {held.coord_start}..{held.coord_stop}: give each "
        "shard its own checkpoint_dir, and restart it with the same shard = "
        '"I/N" and model it was written with'
    )


def published_bytes(
    master: torch.Tensor, spec: ModelSpec, held: Fragment
) -> torch.Tensor:
    """The held range's downlink bytes (uint8).

    For an all-float32 model the native layout equals the coordinate
    layout, so the master itself is served (no copy). Their digests, which
    clients check the bytes against and sign as their base, are taken once
    per version and hash (`model_digests`). A shard's cover its own range
    only, which is all it holds current (`client.sharded` checks each range
    alone).
    """
    if master.numel() != held.num_coordinates:
        raise InvalidUpdateError(
            f"{master.numel()} weights for a range of {held.num_coordinates}"
        )
    if all(t.dtype is DType.FLOAT32 for t in spec.tensors):
        return master.view(torch.uint8)
    return pack_native(master, spec, held.coord_start)
