"""Raw protobuf calls against a coordinator, for tests that need exact control.

Uses the synchronous grpc API and the generated stubs directly: no fedgrpc
client code, so these tests check the coordinator against the contract.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np

from fedgrpc._proto.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc
from fedgrpc.compress import CodecConfig, make_codec
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
    codecs: tuple[int, ...] = (common_pb2.CODEC_DENSE_FP32,),
    requested: common_pb2.CodecParams | None = None,
) -> coordinator_pb2.JoinResponse:
    return service.Join(
        PB.JoinRequest(
            client_name=name,
            model_spec=spec_to_proto(spec),
            supported_codecs=list(codecs),  # type: ignore[arg-type]
            inner_steps=inner_steps,
            requested_codec=requested,
        ),
        timeout=10,
    )


def coded_update_messages(
    joined: coordinator_pb2.JoinResponse,
    values: np.ndarray,
    codec: CodecConfig,
    *,
    round_id: int,
    base_version: int,
    num_samples: int = 1,
) -> tuple[list[coordinator_pb2.PushUpdateRequest], np.ndarray]:
    """An update encoded block by block with `codec`, and what it decodes to."""
    coder = make_codec(codec, rng=np.random.default_rng(0))
    block = joined.round_config.codec_params.block_coordinates
    messages = [
        _header(
            joined,
            values.size,
            round_id,
            base_version,
            num_samples,
            joined.round_config.update_codec,
        )
    ]
    sent = np.zeros(values.size, dtype=np.float32)
    for seq, start in enumerate(range(0, values.size, block)):
        part = values[start : start + block].astype(np.float32)
        encoded = coder.encode(part)
        encoded.sent.add_into(sent[start : start + part.size])
        messages.append(
            PB.PushUpdateRequest(
                chunk=PB.UpdateChunk(
                    seq=seq, offset=start, count=part.size, payload=encoded.payload
                )
            )
        )
    messages.append(PB.PushUpdateRequest(commit=PB.UpdateCommit(num_chunks=seq + 1)))
    return messages, sent


def _header(
    joined: coordinator_pb2.JoinResponse,
    size: int,
    round_id: int,
    base_version: int,
    num_samples: int,
    codec: int,
) -> coordinator_pb2.PushUpdateRequest:
    return PB.PushUpdateRequest(
        header=PB.UpdateHeader(
            client_id=joined.client_id,
            session_token=joined.session_token,
            round_id=round_id,
            base_version=base_version,
            kind=PB.UPDATE_KIND_PSEUDO_GRADIENT,
            codec=codec,  # type: ignore[arg-type]
            num_coordinates=size,
            num_samples=num_samples,
        )
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
