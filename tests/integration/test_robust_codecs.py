"""Robust rules aggregate what compressed updates decode to, for every plain codec.

A real coordinator on 127.0.0.1 port 0 with `aggregator = multi_krum`
(f = 1, m = n - f = 4) and raw stubs (`tests.helpers.raw`): four honest
clients and one hostile one push validly signed updates in the federation's
codec. The spool holds each update decoded to dense float32, so the applied
step must be the plain mean of the four honest *decoded* updates, the
hostile one dropped (outer step fedavg, lr 1).
"""

from __future__ import annotations

import numpy as np
import pytest

from fedgrpc._proto.v1 import common_pb2
from fedgrpc.compress import parse_codec
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import serve_in_thread
from tests.helpers.raw import (
    coded_update_messages,
    join,
    pull,
    stub,
    tiny_spec,
    update_messages,
)

N = 100_000  # two 65,536-coordinate blocks, the last one short
CODECS = (common_pb2.CODEC_DENSE_FP32, common_pb2.CODEC_DENSE, common_pb2.CODEC_TOPK)


@pytest.mark.parametrize("codec", ["dense:bf16", "dense:int8", "topk:0.1:int8"])
def test_multi_krum_drops_a_hostile_update_in_every_codec(codec: str) -> None:
    config = CoordinatorConfig(seed_from_first_client=True,
        listen="127.0.0.1:0", open_enrollment=True, min_clients=5, inner_steps=1,
        codec=codec, aggregator="multi_krum", krum_f=1, outer_optimizer="fedavg",
        outer_lr=1.0, max_update_norm_growth=0.0,
    )  # fmt: skip
    with serve_in_thread(config) as coordinator:
        channel, service = stub(coordinator.address)
        with channel:
            clients = [
                join(service, tiny_spec(N), f"c{i}", codecs=CODECS) for i in range(5)
            ]
            service.PushUpdate(
                update_messages(
                    clients[0], np.zeros(N, np.float32), round_id=0, base_version=0,
                    initial=True, chunk_coords=65_536,
                ),
                timeout=10,
            )  # fmt: skip
            rng = np.random.default_rng(5)
            shared = rng.standard_normal(N)
            honest = []
            for index, joined in enumerate(clients):
                values = shared + 0.05 * rng.standard_normal(N)
                if index == 4:  # hostile: far off, claiming many samples
                    values = -50.0 * np.ones(N)
                messages, decoded = coded_update_messages(
                    joined, values, parse_codec(codec), round_id=1, base_version=0,
                    num_samples=10**6 if index == 4 else 1,
                )  # fmt: skip
                service.PushUpdate(iter(messages), timeout=10)
                if index < 4:
                    honest.append(decoded.astype(np.float64))
            version, weights = pull(service, clients[0], min_version=1)

    assert version == 1
    want = -np.mean(honest, axis=0)  # w = 0 - 1.0 x aggregate
    np.testing.assert_allclose(weights, want, rtol=1e-5, atol=1e-5)
