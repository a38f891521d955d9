"""What shards refuse, through real stubs: misplaced ranges, unauthenticated votes.

A shard takes only its own range from a sharded client (INVALID_ARGUMENT
otherwise, naming both shards), and ShardService answers only callers
holding the shards' shared secret (UNAUTHENTICATED), and only on the
leader (FAILED_PRECONDITION elsewhere).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import grpc
import pytest
import torch

from fedgrpc._proto.v1 import shard_pb2, shard_pb2_grpc
from fedgrpc.client.connection.push import UpdateMeta
from fedgrpc.client.connection.round_tracker import RoundStart
from fedgrpc.client.sharded import ShardedSync
from fedgrpc.coordinator.services.in_thread import CoordinatorThread
from fedgrpc.coordinator.shards import SHARD_TOKEN_HEADER
from fedgrpc.errors import InvalidUpdateError
from tests.helpers.shards import TOKEN, join, running_shards, shard_configs
from tests.helpers.tree import close_all


@pytest.fixture(scope="module")
def shards(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[CoordinatorThread]]:
    tmp_path = tmp_path_factory.mktemp("shards")
    with running_shards(shard_configs(tmp_path, 2)) as running:
        yield running


def _open_round(sync: ShardedSync, shard: int) -> RoundStart:
    opened = sync.links[shard].wait_round_open(0, 10.0)
    assert isinstance(opened, RoundStart)
    return opened


@pytest.mark.parametrize(
    ("sent_as", "expected"),
    [
        ((0, 2), "update is for shard 0 of 2, but this coordinator is shard 1 of 2"),
        ((0, 0), "sent a whole-model update"),
        ((1, 3), "update is for shard 1 of 3"),
    ],
)
def test_a_range_pushed_to_the_wrong_shard_is_invalid_argument(
    shards: list[CoordinatorThread], sent_as: tuple[int, int], expected: str
) -> None:
    members = join(shards[0].address, (1,), seed=3)
    try:
        client = members[0][0]
        sync = client._sync
        assert isinstance(sync, ShardedSync)
        opened = _open_round(sync, 1)
        meta = UpdateMeta(
            round_id=opened.round_id,
            base_version=0,
            kind="pseudo_gradient",
            round_nonce=opened.nonce,
            base_sha256=sync.base_shas[1],
            shard=sent_as,
        )
        part = torch.zeros(sync.ranges[1].num_coordinates)  # shard 1's length
        with pytest.raises(InvalidUpdateError, match=expected):
            sync.links[1].push(meta, part, 1024, None)
        right = dataclasses.replace(meta, shard=(1, 2))  # the same, addressed right
        with pytest.raises(InvalidUpdateError, match="a shard takes only its own"):
            sync.links[1].push(right, part[:256], 1024, None)  # shard 0's length
        assert sync.links[1].push(right, part, 1024, None).round_id == opened.round_id
    finally:
        close_all(members)


def _propose(
    address: str, token: str | None, count: int = 2
) -> shard_pb2.ProposeCommitResponse:
    with grpc.insecure_channel(address) as channel:
        stub = shard_pb2_grpc.ShardServiceStub(channel)
        metadata = () if token is None else ((SHARD_TOKEN_HEADER, token),)
        request = shard_pb2.ProposeCommitRequest(
            round_id=999, base_version=0, shard_index=1, shard_count=count
        )
        return stub.ProposeCommit(request, metadata=metadata, timeout=10)


@pytest.mark.parametrize("token", [None, "", "s" * 39, "t" * 40])
def test_shard_service_without_the_shared_secret_is_unauthenticated(
    shards: list[CoordinatorThread], token: str | None
) -> None:
    for shard in shards:
        with pytest.raises(grpc.RpcError) as refused:
            _propose(shard.address, token)
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "shard_token_file" in (refused.value.details() or "")


def test_shard_service_answers_only_on_the_leader_and_checks_the_count(
    shards: list[CoordinatorThread],
) -> None:
    with pytest.raises(grpc.RpcError) as follower:
        _propose(shards[1].address, TOKEN)
    assert follower.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "proposals go to the leader, shard 0" in (follower.value.details() or "")
    with pytest.raises(grpc.RpcError) as miscounted:
        _propose(shards[0].address, TOKEN, count=3)
    assert miscounted.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "this federation has 2 shards" in (miscounted.value.details() or "")


def test_a_lone_proposal_is_skipped_after_the_commit_timeout(
    shards: list[CoordinatorThread],
) -> None:
    answer = _propose(shards[0].address, TOKEN)  # shard 0 never proposes round 999
    assert answer.decision == shard_pb2.ProposeCommitResponse.DECISION_SKIP
    assert "shard(s) 0 did not propose round 999" in answer.reason
    assert answer.next_round_id == 1000
