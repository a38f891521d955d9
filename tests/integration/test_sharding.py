"""Parameter-sharded coordinators over real gRPC: N shards, sharded clients.

Each shard is an in-process `fedgrpc.Coordinator` server on loopback; the
clients are real `DiLoCoClient`s that join one shard, learn the map, join
the others and push each range to its shard. The same scripted clients run
against one unsharded coordinator as the reference: Nesterov is
elementwise and each coordinate's weighted sum adds the same terms in the
same order, so the sharded weights equal the flat ones.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.helpers.shards import (
    SIZE,
    assembled,
    join,
    running_shards,
    scripted,
    shard_configs,
)
from tests.helpers.tree import base_config, close_all, master_of, run_round, weights_of
from fedgrpc.coordinator.services.in_thread import serve_in_thread

ROUNDS = 4
SAMPLES = (1, 3)


def test_two_shards_match_one_coordinator_round_by_round(tmp_path: Path) -> None:
    steps = scripted(ROUNDS, len(SAMPLES), seed=3)
    configs = shard_configs(tmp_path, 2)
    flat_weights: list[torch.Tensor] = []
    with serve_in_thread(
        base_config(init_model=configs[0].init_model, min_clients=2)
    ) as flat:
        members = join(flat.address, SAMPLES, seed=10)
        try:
            initial = master_of(flat)
            for r in range(ROUNDS):
                assert run_round(members, [s[r] for s in steps]) == ["applied"] * 2
                flat_weights.append(master_of(flat))
        finally:
            close_all(members)

    with running_shards(configs) as shards:
        members = join(shards[1].address, SAMPLES, seed=10)  # any shard will do
        try:
            assert torch.equal(assembled(shards), initial)
            for r in range(ROUNDS):
                outcomes = run_round(members, [s[r] for s in steps])
                assert outcomes == ["applied"] * 2, (r, outcomes)
                torch.testing.assert_close(
                    assembled(shards), flat_weights[r], rtol=0, atol=0
                )
            clients = weights_of(members)
        finally:
            close_all(members)
        ranges = [s.running.runtime.engine.current.fragment for s in shards]
        versions = [s.running.runtime.engine.model.version for s in shards]

    assert versions == [ROUNDS, ROUNDS]
    assert [(r.coord_start, r.coord_stop) for r in ranges] == [(0, 256), (256, SIZE)]
    for weights in clients:  # what the clients loaded from both shards
        assert torch.equal(weights, flat_weights[-1])
    assert float((flat_weights[-1] - initial).abs().max()) > 0.05
