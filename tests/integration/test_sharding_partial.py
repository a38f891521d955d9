"""A client that pushes to only some shards cannot stall a sharded federation.

Shards apply a round only if every shard committed the same clients, so a
joined client pushing its range to shard 0 alone makes every round skip on
both. The leader names such a client in its decision (`partial_clients`);
every shard counts it as a broken upload, and after `max_broken_uploads`
of them it is excluded on both shards, so the honest clients' rounds apply
again. Real shards, real sharded clients, real signatures.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedgrpc.client.connection.push import UpdateMeta
from fedgrpc.client.connection.round_tracker import RoundStart
from fedgrpc.client.sharded import ShardedSync
from fedgrpc.errors import FedGrpcError
from tests.helpers.eventually import eventually
from tests.helpers.shards import join, running_shards, scripted, shard_configs
from tests.helpers.tree import close_all, run_round

MAX_BROKEN = 2
ROUNDS = 6
"""Enough for MAX_BROKEN skipped rounds, the exclusion, and applied rounds."""


def _push_to_shard_zero_only(sync: ShardedSync) -> str:
    """One partial push: the open round's range 0, never range 1."""
    opened = sync.links[0].wait_round_open(0, 10.0)
    assert isinstance(opened, RoundStart)
    meta = UpdateMeta(
        round_id=opened.round_id,
        base_version=0,
        kind="pseudo_gradient",
        round_nonce=opened.nonce,
        base_sha256=sync.base_shas[0],
        shard=(0, 2),
    )
    part = torch.full((sync.ranges[0].num_coordinates,), 0.01)
    try:
        sync.links[0].push(meta, part, 1024, None)
    except FedGrpcError as exc:  # excluded: FAILED_PRECONDITION, named
        return str(exc)
    return "pushed"


def test_a_client_pushing_to_one_shard_only_is_excluded_everywhere(
    tmp_path: Path,
) -> None:
    configs = shard_configs(
        tmp_path,
        2,
        round_timeout_s=1.0,
        max_broken_uploads=MAX_BROKEN,
        broken_upload_window_rounds=10,
        exclusion_rounds=100,
    )
    steps = scripted(ROUNDS, 2, seed=5)
    with running_shards(configs) as shards:
        honest = join(shards[0].address, (1, 1), seed=20)
        hostile = join(shards[0].address, (1,), seed=40)
        try:
            sync = hostile[0][0]._sync
            assert isinstance(sync, ShardedSync)
            engines = [s.running.runtime.engine for s in shards]
            eventually(lambda: all(len(e.registry.all()) == 3 for e in engines))
            outcomes: list[list[str]] = []
            answers: list[str] = []
            for r in range(ROUNDS):
                if len(answers) <= MAX_BROKEN:  # until it is refused
                    answers.append(_push_to_shard_zero_only(sync))
                outcomes.append(run_round(honest, [s[r] for s in steps]))
            versions = [e.model.version for e in engines]
            skipped = [
                res for res in engines[0].history if res.outcome.value == "skipped"
            ]
            records = [{r.client_id: r for r in e.registry.all()} for e in engines]
        finally:
            close_all(honest + hostile)

    # Its first MAX_BROKEN partial pushes each cost a round (skipped on both
    # shards, never half-applied), then it is refused everywhere.
    assert answers[:MAX_BROKEN] == ["pushed"] * MAX_BROKEN, answers
    assert "is excluded from rounds" in answers[MAX_BROKEN], answers
    assert outcomes[:MAX_BROKEN] == [["skipped", "skipped"]] * MAX_BROKEN, outcomes
    assert outcomes[-1] == ["applied", "applied"], outcomes
    assert len(skipped) == MAX_BROKEN
    assert all("not the same set" in str(res.reason) for res in skipped)
    assert versions[0] == versions[1] >= 1
    for k, by_id in enumerate(records):  # excluded on both shards, no one else
        hostile_id = sync.links[k].client_id
        for client_id, record in by_id.items():
            excluded = record.excluded_until_round > MAX_BROKEN
            assert excluded == (client_id == hostile_id), (k, client_id)
            if excluded:
                assert "committed at some shards" in record.exclusion_reason


@pytest.mark.parametrize(
    ("sets", "partial"),
    [
        ((("a", "b"), ("a", "b")), ()),
        ((("a", "b"), ("a",)), ("b",)),
        ((("a",), ("b",), ("a", "b")), ("a", "b")),
        (((), ()), ()),
    ],
)
def test_partial_clients_are_the_union_minus_the_intersection(
    sets: tuple[tuple[str, ...], ...], partial: tuple[str, ...]
) -> None:
    from fedgrpc.coordinator.shards.board import Proposal, partial_clients

    proposals = [Proposal(k, 0, s, float(len(s)), True) for k, s in enumerate(sets)]
    assert partial_clients(proposals) == partial
