"""Compressed updates end to end through raw stubs: negotiation, decoding, rejection."""

from __future__ import annotations

import math
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import torch

from fedgrpc._proto.v1 import common_pb2
from fedgrpc.compress import Dense, TopK
from fedgrpc.compress.topk import TOPK_GROUP
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import CoordinatorThread, serve_in_thread
from fedgrpc.wire.codec_params import codec_binding, codec_params_to_proto
from tests.helpers.raw import (
    coded_update_messages,
    join,
    pull,
    resigned_first_chunk,
    stub,
    tiny_spec,
    update_messages,
)

N = 200_000  # four 65,536-coordinate top-k blocks, the last one short
CODECS = (common_pb2.CODEC_DENSE_FP32, common_pb2.CODEC_TOPK)
TOPK = TopK(density=0.1, bits=8)
TOPK_SIGNED = codec_binding(TOPK)


@pytest.fixture
def coordinator() -> Iterator[CoordinatorThread]:
    config = CoordinatorConfig(
        seed_from_first_client=True,
        listen="127.0.0.1:0",
        open_enrollment=True,
        min_clients=2,
        inner_steps=5,
        codec="topk:0.1:int8",
        weighting="samples",  # plain FedAvg: a 1-sample and a 3-sample client
    )
    with serve_in_thread(config) as running:
        yield running


def test_topk_updates_are_decoded_into_the_sum(coordinator: CoordinatorThread) -> None:
    channel, service = stub(coordinator.address)
    with channel:
        a = join(service, tiny_spec(N), "a", codecs=CODECS)
        b = join(service, tiny_spec(N), "b", codecs=CODECS)
        params = a.round_config.codec_params
        assert params.codec == common_pb2.CODEC_TOPK
        assert params.values == common_pb2.VALUE_FORMAT_INT8
        assert params.density == pytest.approx(0.1)
        assert params.block_coordinates == 65_536
        initial = np.zeros(N, dtype=np.float32)
        service.PushUpdate(
            update_messages(
                a,
                initial,
                round_id=0,
                base_version=0,
                initial=True,
                chunk_coords=65_536,
            )
        )
        rng = np.random.default_rng(3)
        sent = []
        for joined, weight in ((a, 1), (b, 3)):
            messages, decoded = coded_update_messages(
                joined,
                rng.standard_normal(N),
                TOPK,
                round_id=1,
                base_version=0,
                num_samples=weight,
            )
            service.PushUpdate(iter(messages), timeout=10)
            sent.append(decoded * weight)
            # ceil(0.1 * 4096) of every full group of 4,096, then of the rest.
            full, rest = divmod(N, TOPK_GROUP)
            k_max = full * math.ceil(0.1 * TOPK_GROUP) + math.ceil(0.1 * rest)
            assert 0.1 * N <= np.count_nonzero(decoded) <= k_max
        version, weights = pull(service, a, min_version=1)
        assert version == 1
        mean = (sent[0] + sent[1]) / 4
        param = torch.nn.Parameter(torch.zeros(N))
        optimizer = torch.optim.SGD([param], lr=0.7, momentum=0.9, nesterov=True)
        param.grad = torch.from_numpy(mean)
        optimizer.step()
        np.testing.assert_allclose(
            weights, param.detach().numpy(), rtol=1e-5, atol=1e-6
        )


def _code(call) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details() or ""


def test_codec_rejections(coordinator: CoordinatorThread) -> None:
    channel, service = stub(coordinator.address)
    with channel:
        code, details = _code(lambda: join(service, tiny_spec(N), "old"))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert "supports only dense-fp32" in details
        dense = codec_params_to_proto(Dense(values="bf16"), 1 << 20)
        code, details = _code(
            lambda: join(service, tiny_spec(N), "x", codecs=CODECS, requested=dense)
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert "dense:bf16" in details
        assert "topk:0.1:int8" in details
        a = join(service, tiny_spec(N), "a", codecs=CODECS)
        service.PushUpdate(
            update_messages(
                a,
                np.zeros(N, np.float32),
                round_id=0,
                base_version=0,
                initial=True,
                chunk_coords=65_536,
            )
        )
        messages, _ = coded_update_messages(
            a, np.ones(N), TOPK, round_id=1, base_version=0
        )
        truncated = messages[1].chunk.payload[:-3]  # truncated indices, signed
        bad_chunk = resigned_first_chunk(
            a, messages[0], messages[1], truncated, TOPK_SIGNED
        )
        code, details = _code(
            lambda: service.PushUpdate(iter([messages[0], bad_chunk]), timeout=10)
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "chunk 0 (coordinates 0..65536, tensor 'w')" in details
        dense_header = update_messages(
            a, np.ones(N, np.float32), round_id=1, base_version=0, chunk_coords=65_536
        )
        code, details = _code(lambda: service.PushUpdate(dense_header, timeout=10))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "not topk" in details
        # Nothing above reached the sum: a good update still counts.
        reply = service.PushUpdate(iter(messages), timeout=10)
        assert reply.updates_in_round == 1


def _truncate(payload: bytes) -> bytes:
    return payload[:-3]


def _huge_k(payload: bytes) -> bytes:
    return (10**9).to_bytes(4, "little") + payload[4:]


def _nan_scale(payload: bytes) -> bytes:
    return payload[:4] + np.array([np.nan], "<f4").tobytes() + payload[8:]


def _bad_index_header(payload: bytes) -> bytes:
    k = int.from_bytes(payload[:4], "little")
    header_at = 4 + 4 * -(-k // 4096) + k  # after k, the scales and the int8 codes
    return payload[:header_at] + b"\x3f" + payload[header_at + 1 :]  # width 63


@pytest.mark.parametrize(
    ("corrupt", "fragment"),
    [
        (_truncate, ""),
        (_huge_k, "k"),
        (_nan_scale, "scale"),
        (_bad_index_header, ""),
    ],
)
def test_corrupt_topk_blocks_are_refused_and_the_round_survives(
    coordinator: CoordinatorThread, corrupt, fragment: str
) -> None:
    channel, service = stub(coordinator.address)
    with channel:
        a = join(service, tiny_spec(N), "a", codecs=CODECS)
        service.PushUpdate(
            update_messages(a, np.zeros(N, np.float32), round_id=0, base_version=0,
                            initial=True, chunk_coords=65_536)
        )  # fmt: skip
        messages, _ = coded_update_messages(
            a, np.random.default_rng(1).standard_normal(N), TOPK, round_id=1,
            base_version=0,
        )  # fmt: skip
        payload = corrupt(messages[1].chunk.payload)  # authentic, but corrupt
        bad = resigned_first_chunk(a, messages[0], messages[1], payload, TOPK_SIGNED)
        code, details = _code(
            lambda: service.PushUpdate(iter([messages[0], bad]), timeout=10)
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "chunk 0 (coordinates 0..65536, tensor 'w')" in details
        assert fragment in details
        assert service.PushUpdate(iter(messages), timeout=10).updates_in_round == 1
