"""Raw protobuf calls against a coordinator, for tests that need exact control.

Uses the synchronous grpc API and the generated stubs directly: no fedgrpc
client code, so these tests check the coordinator against the contract.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np

from fedgrpc._proto.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc
from fedgrpc.wire.convert import spec_to_proto
from fedgrpc.wire.spec import DType, ModelSpec, TensorSpec

PB = coordinator_pb2


def tiny_spec(n: int = 10) -> ModelSpec:
    return ModelSpec((TensorSpec("w", (n,), DType.FLOAT32),))


def stub(
    address: str,
) -> tuple[grpc.Channel, coordinator_pb2_grpc.CoordinatorServiceStub]:
    channel = grpc.insecure_channel(
        address,
        options=[
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.max_receive_message_length", 64 << 20),
        ],
    )
    return channel, coordinator_pb2_grpc.CoordinatorServiceStub(channel)


def join(
    service: coordinator_pb2_grpc.CoordinatorServiceStub,
    spec: ModelSpec,
    name: str = "raw",
    inner_steps: int = 0,
) -> coordinator_pb2.JoinResponse:
    return service.Join(
        PB.JoinRequest(
            client_name=name,
            model_spec=spec_to_proto(spec),
            supported_codecs=[common_pb2.CODEC_DENSE_FP32],
            inner_steps=inner_steps,
        ),
        timeout=10,
    )


def update_messages(
    joined: coordinator_pb2.JoinResponse,
    values: np.ndarray,
    *,
    round_id: int,
    base_version: int,
    initial: bool = False,
    chunk_coords: int = 4,
    num_samples: int = 1,
    commit: bool = True,
) -> Iterator[coordinator_pb2.PushUpdateRequest]:
    kind = PB.UPDATE_KIND_INITIAL_WEIGHTS if initial else PB.UPDATE_KIND_PSEUDO_GRADIENT
    yield PB.PushUpdateRequest(
        header=PB.UpdateHeader(
            client_id=joined.client_id,
            session_token=joined.session_token,
            round_id=round_id,
            base_version=base_version,
            kind=kind,
            codec=common_pb2.CODEC_DENSE_FP32,
            num_coordinates=values.size,
            num_samples=num_samples,
            train_loss=1.0,
        )
    )
    flat = values.astype("<f4")
    seq = 0
    for start in range(0, flat.size, chunk_coords):
        part = flat[start : start + chunk_coords]
        yield PB.PushUpdateRequest(
            chunk=PB.UpdateChunk(
                seq=seq, offset=start, count=part.size, payload=part.tobytes()
            )
        )
        seq += 1
    if commit:
        yield PB.PushUpdateRequest(commit=PB.UpdateCommit(num_chunks=seq))


def pull(
    service: coordinator_pb2_grpc.CoordinatorServiceStub,
    joined: coordinator_pb2.JoinResponse,
    min_version: int = 0,
    timeout: float = 10,
) -> tuple[int, np.ndarray]:
    """(version, float32 values) of an all-float32 model."""
    header, data = None, bytearray()
    for message in service.PullModel(
        PB.PullModelRequest(
            client_id=joined.client_id,
            session_token=joined.session_token,
            min_version=min_version,
        ),
        timeout=timeout,
    ):
        if message.WhichOneof("part") == "header":
            header = message.header
        else:
            assert message.chunk.offset == len(data)
            data += message.chunk.data
    assert header is not None
    return header.model_version, np.frombuffer(bytes(data), dtype="<f4")
