"""Parameter-sharded coordinators over real gRPC: N shards, sharded clients.

Each shard is an in-process `fedgrpc.Coordinator` server on loopback; the
clients are real `DiLoCoClient`s that join one shard, learn the map, join
the others and push each range to its shard. The same scripted clients run
against one unsharded coordinator as the reference: Nesterov is
elementwise and each coordinate's weighted sum adds the same terms in the
same order, so the sharded weights equal the flat ones.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from fedgrpc.coordinator.rounds.sharding import own_range
from fedgrpc.coordinator.services.in_thread import CoordinatorThread, serve_in_thread
from fedgrpc.crypto.files import save_key_pair
from fedgrpc.crypto.keys import PrivateKey
from tests.helpers.eventually import eventually
from tests.helpers.scripted import flat
from tests.helpers.shards import (
    IN,
    OUT,
    PATIENT,
    SIZE,
    assembled,
    join,
    running_shards,
    scripted,
    shard_configs,
)
from tests.helpers.tree import base_config, close_all, master_of, run_round, weights_of

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
        ranges = [
            own_range(s.config, s.running.runtime.engine.model.require_spec())
            for s in shards
        ]
        versions = [s.running.runtime.engine.model.version for s in shards]
        status = shards[1].status()  # AdminService says which shard, which range

    assert versions == [ROUNDS, ROUNDS]
    assert (status.shard_index, status.shard_count) == (1, 2)
    assert (status.shard_range_start, status.shard_range_length) == (256, SIZE - 256)
    assert [(r.coord_start, r.coord_stop) for r in ranges if r] == [
        (0, 256),
        (256, SIZE),
    ]
    for weights in clients:  # what the clients loaded from both shards
        assert torch.equal(weights, flat_weights[-1])
    assert float((flat_weights[-1] - initial).abs().max()) > 0.05


def test_a_shard_that_stops_mid_round_makes_the_round_skip_everywhere(
    tmp_path: Path,
) -> None:
    for k in range(2):  # a restarted shard must be the same coordinator
        save_key_pair(PrivateKey.generate(), tmp_path / "keys", f"shard{k}")
    configs = [
        config.replace(
            checkpoint_dir=str(tmp_path / f"ckpt{k}"),
            identity_key=str(tmp_path / "keys" / f"shard{k}.key"),
        )
        for k, config in enumerate(shard_configs(tmp_path, 2))
    ]
    steps = scripted(8, len(SAMPLES), seed=4)
    with serve_in_thread(configs[0]) as leader:
        follower = CoordinatorThread(configs[1]).start()
        members = join(leader.address, SAMPLES, seed=10, config=PATIENT)
        try:
            assert run_round(members, [s[0] for s in steps]) == ["applied"] * 2
            before = assembled([leader, follower])
            follower.stop()  # mid-run: round 2 is open on both shards

            outcomes = run_round(members, [s[1] for s in steps])
            assert set(outcomes) <= {"offline", "skipped", "missed"}, outcomes
            engine = leader.running.runtime.engine
            eventually(lambda: engine.last_closed_round >= 2)
            skipped = engine.history[-1]
            assert skipped.outcome.value == "skipped"
            assert "shard(s) 1 did not propose" in str(skipped.reason)
            assert engine.model.version == 1  # nothing half-applied
            with serve_in_thread(configs[1]) as back:  # from its checkpoint
                assert back.running.runtime.engine.model.version == 1
                torch.testing.assert_close(
                    assembled([leader, back]), before, rtol=0, atol=0
                )
                applied_at = None
                for r in range(2, 8):
                    outcomes = run_round(members, [s[r] for s in steps])
                    if outcomes == ["applied"] * 2:
                        applied_at = r
                        break
                    assert "applied" not in outcomes, outcomes
                assert applied_at is not None, "the run never resumed"
                versions = [
                    s.running.runtime.engine.model.version for s in (leader, back)
                ]
                assert versions == [2, 2]
                assert not torch.equal(assembled([leader, back]), before)
        finally:
            close_all(members)


def test_without_an_initial_model_the_first_client_seeds_every_shard(
    tmp_path: Path,
) -> None:
    configs = [  # `replace` ignores "": unset init_model with dataclasses
        dataclasses.replace(c, init_model="", seed_from_first_client=True)
        for c in shard_configs(tmp_path, 2)
    ]
    steps = scripted(2, len(SAMPLES), seed=5)
    with running_shards(configs) as shards:
        members = join(shards[0].address, SAMPLES, seed=20)
        try:
            torch.manual_seed(20)  # client 0's own weights: it joined first
            first = flat(nn.Linear(IN, OUT))
            assert torch.equal(assembled(shards), first)  # both ranges seeded
            # Each shard received only its own range of the seed, not the model.
            seeded = [s.status().bytes_received for s in shards]
            assert seeded[0] < 256 * 4 * 2 < seeded[1] < SIZE * 4 + 2048
            for r in range(2):
                assert run_round(members, [s[r] for s in steps]) == ["applied"] * 2
            versions = [s.running.runtime.engine.model.version for s in shards]
            assert versions == [2, 2]
            for weights in weights_of(members):
                assert torch.equal(weights, assembled(shards))
        finally:
            close_all(members)
