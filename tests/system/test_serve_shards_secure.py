"""Two `fedgrpc serve --shard ... --secure-aggregation` processes, four clients.

Real processes configured from the command line: each shard runs its own
masked round over its range, and both apply the same rounds. Then one
client leaves shard 1's round 3 after its keys were shared there (its
push to shard 1 says "not taking part", and it answers nothing more
there), so shard 1 recovers its sum without it while shard 0 has its
masked input: the survivor sets differ and round 3 skips on both shards
(status shows it, versions stay), never half-applied.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fedgrpc._proto.v1 import coordinator_pb2
from fedgrpc.client.sharded import ShardedSync
from tests.conftest import Spawn
from tests.helpers import eventually
from tests.helpers.secure_shards import init_model, join, scripted
from tests.helpers.serve import start_serve, status_at
from tests.helpers.shards import PATIENT, free_port, token_file
from tests.helpers.tree import close_all, run_round

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]
APPLIED = coordinator_pb2.ROUND_OUTCOME_APPLIED
SKIPPED = coordinator_pb2.ROUND_OUTCOME_SKIPPED


def test_secure_shard_processes_apply_together_and_skip_on_differing_survivors(
    spawn: Spawn, tmp_path: Path
) -> None:
    # Arrange: two secure shard processes (dense:int8, fedavg), four clients
    # (min_clients 3: one leaving a shard's round keeps it above quorum).
    peers = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    init, token = init_model(tmp_path), token_file(tmp_path)
    for k in range(2):
        start_serve(
            spawn, tmp_path / f"s{k}.log",
            "--shard", f"{k}/2", "--shard-peers", ",".join(peers),
            "--shard-token-file", str(token), "--shard-commit-timeout-s", "5",
            "--init-model", str(init), "--open-enrollment", "--inner-steps", "1",
            "--min-clients", "3", "--chunk-bytes", "1024",
            "--secure-aggregation", "--codec", "dense:int8", "--secagg-clip", "0.5",
            "--outer-optimizer", "fedavg", "--outer-lr", "1", "--outer-momentum", "0",
            "--round-timeout-s", "10", "--max-update-norm-growth", "0",
            listen=peers[k],
        )  # fmt: skip
    steps = scripted(3, 4, seed=9)
    members = join(peers[1], 4, seed=40, config=PATIENT)
    try:
        # Act 1: two rounds with everyone.
        for r in range(2):
            assert run_round(members, [s[r] for s in steps]) == ["applied"] * 4

        # Assert 1: both shards applied both rounds as masked rounds of 4.
        for peer in peers:
            status = status_at(peer)
            assert status.secure_aggregation
            assert status.model_version == 2
            last = status.recent_rounds[-1]
            assert (last.round_id, last.outcome) == (2, APPLIED)
            assert (last.secure, last.survivors, last.positions) == (True, 4, 0)

        # Act 2: client 3 leaves shard 1's round 3 once its keys are
        # shared there; it takes part in shard 0's round in full.
        leaver = members[3][0]
        assert isinstance(leaver._sync, ShardedSync)  # the client's own state
        secure = leaver._secure
        assert secure is not None
        participant = secure.participants[1]
        assert participant is not None
        eventually(lambda: 3 in participant.rounds and participant.rounds[3].ready, 30)
        participant.rounds[3].error = "left (test)"
        outcomes = run_round(members, [s[2] for s in steps])
        assert outcomes == ["skipped"] * 3 + ["missed"]

        # Assert 2: round 3 skipped on both shards for differing sets.
        for peer in peers:
            status = status_at(peer)
            last = status.recent_rounds[-1]
            assert (last.round_id, last.outcome) == (3, SKIPPED)
            assert status.model_version == 2
            assert "not the same set" in last.reason
            assert last.survivors == (4 if peer == peers[0] else 3)
    finally:
        close_all(members)
