"""What one PullModel sends: a signed header, then weights or compressed steps.

Proto in, domain records out of `rounds`: the choices live here so the
servicer only streams what it is handed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from fedgrpc._proto.v1 import coordinator_pb2 as pb
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.rounds.downlink import transitions_from
from fedgrpc.coordinator.rounds.records import PublishedModel
from fedgrpc.coordinator.rounds.registry import ClientRecord
from fedgrpc.crypto.keys import PrivateKey
from fedgrpc.domain.model_spec import ModelSpec
from fedgrpc.errors import InvalidUpdateError
from fedgrpc.wire.convert import HASH_TO_PROTO
from fedgrpc.wire.signed import model_statement


async def model_header(
    published: PublishedModel,
    client: ClientRecord | None,
    spec: ModelSpec,
    run_id: str,
    identity: PrivateKey,
    config: CoordinatorConfig,
) -> pb.ModelHeader:
    """The signed header of one model version for `client` (signing: ~50 us).

    Its digest is under the hash Join agreed with `client` (SHA-256 for a
    record that names none): computed at publish, or now on a worker
    thread if this is the version's first pull that needs it (both hashes
    release the GIL, so the event loop keeps serving).
    """
    name = client.model_hash_name if client is not None else None
    name = name or config.update_hash_for(())
    digest = published.digests.get(name)
    if digest is None:
        digest = await asyncio.to_thread(published.digest, name)
    header = pb.ModelHeader(
        model_version=published.version,
        round_id=published.round_id,
        model_spec_digest=spec.digest,
        total_bytes=spec.num_bytes,
        weights_sha256=digest,
        weights_hash=HASH_TO_PROTO[name],
    )
    signed = model_statement(header, run_id).encode(identity.algorithm)
    header.signature = identity.sign(signed)
    return header


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
