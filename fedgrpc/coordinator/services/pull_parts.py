"""What one PullModel sends: a byte range of the weights, or compressed steps.

Proto in, domain records out of `rounds`: the choice between the two lives
here so the servicer only streams what it is handed.
"""

from __future__ import annotations

from collections.abc import Iterator

from fedgrpc._proto.v1 import coordinator_pb2 as pb
from fedgrpc.coordinator.rounds.downlink import transitions_from
from fedgrpc.coordinator.rounds.records import PublishedModel
from fedgrpc.errors import InvalidUpdateError


def steps_for(
    request: pb.PullModelRequest, published: PublishedModel
) -> Iterator[pb.PullModelResponse] | None:
    """The ModelDelta messages taking the client's held version to `published`.

    None (send the whole model) unless the coordinator compresses its
    downlink, the client named the version it holds, asked for no range,
    and every step from there is still kept.
    """
    if (
        not published.delta_codec
        or not request.HasField("held_version")
        or request.range_length
    ):
        return None
    steps = transitions_from(
        request.held_version, published.version, published.transitions
    )
    if steps is None:
        return None
    return (
        pb.PullModelResponse(
            delta=pb.ModelDelta(
                version=step.version,
                offset=block.offset,
                count=block.count,
                payload=block.payload,
            )
        )
        for step in steps
        for block in step.blocks
    )


def pull_range(
    request: pb.PullModelRequest, published: PublishedModel, num_bytes: int
) -> tuple[int, int]:
    """The byte range a PullModel asked for: [start, stop) of the model's bytes.

    `num_bytes`: the whole model's. A parameter shard holds only its own
    range (`published.byte_start` on), so a pull must stay inside it.

    Raises:
        InvalidUpdateError: a range past the model's end, or beyond the
            bytes this coordinator holds (INVALID_ARGUMENT).
    """
    if request.range_length == 0:
        if request.range_start:
            raise InvalidUpdateError(
                f"PullModel range_start={request.range_start} without a "
                "range_length: give both, or neither for the whole model"
            )
        start, stop = 0, num_bytes
    else:
        start = request.range_start
        stop = start + request.range_length
        if stop > num_bytes:
            raise InvalidUpdateError(
                f"PullModel asked for bytes {start}..{stop} of a model "
                f"of {num_bytes} bytes"
            )
    held_start = published.byte_start
    held_stop = held_start + published.data.numel()
    if start < held_start or stop > held_stop:
        raise InvalidUpdateError(
            f"PullModel asked for model bytes {start}..{stop}, but this "
            f"coordinator is a parameter shard holding bytes {held_start}.."
            f"{held_stop} only: pull each shard's range from that shard "
            "(JoinResponse.shard_peers and shard_bounds)"
        )
    return start, stop
