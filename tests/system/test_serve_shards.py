"""Two `fedgrpc serve --shard` processes; one is SIGKILLed mid-run.

Real processes, real signals: the follower shard dies after round 1, so
round 2 (which both clients pushed to the leader) can never be confirmed:
the leader skips it after `--shard-commit-timeout-s`, keeping its weights
and version (never half-applied). The follower restarts from its own
checkpoint on its address, the shards' round ids line up again, and the
next rounds apply on both at the same version.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from fedgrpc._proto.v1 import coordinator_pb2
from fedgrpc.crypto.files import save_key_pair
from fedgrpc.crypto.keys import PrivateKey
from tests.conftest import Spawn
from tests.helpers import eventually
from tests.helpers.serve import start_serve, status_at
from tests.helpers.shards import (
    PATIENT,
    free_port,
    init_file,
    join,
    scripted,
    token_file,
)
from tests.helpers.tree import close_all, run_round

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]
SKIPPED = coordinator_pb2.ROUND_OUTCOME_SKIPPED


def test_a_killed_shard_skips_the_round_everywhere_and_the_run_resumes(
    spawn: Spawn, tmp_path: Path
) -> None:
    peers = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    init, token = init_file(tmp_path), token_file(tmp_path)

    def flags(k: int) -> list[str]:
        save_key_pair(PrivateKey.generate(), tmp_path / "keys", f"shard{k}")
        return ["--shard", f"{k}/2", "--shard-peers", ",".join(peers),
                "--shard-token-file", str(token), "--shard-commit-timeout-s", "3",
                "--init-model", str(init), "--checkpoint-dir", str(tmp_path / f"c{k}"),
                "--identity-key", str(tmp_path / "keys" / f"shard{k}.key"),
                "--open-enrollment", "--inner-steps", "1", "--min-clients", "2",
                "--chunk-bytes", "1024", "--weighting", "samples",
                "--max-update-norm-growth", "0"]  # fmt: skip

    shard_flags = [flags(0), flags(1)]
    start_serve(spawn, tmp_path / "s0.log", *shard_flags[0], listen=peers[0])
    follower, _ = start_serve(
        spawn, tmp_path / "s1.log", *shard_flags[1], listen=peers[1]
    )
    steps = scripted(8, 2, seed=6)
    members = join(peers[0], (1, 2), seed=30, config=PATIENT)
    try:
        assert run_round(members, [s[0] for s in steps]) == ["applied"] * 2
        follower.send_signal(signal.SIGKILL)
        assert follower.wait(timeout=30) == -signal.SIGKILL

        outcomes = run_round(members, [s[1] for s in steps])
        assert "applied" not in outcomes, outcomes
        eventually(lambda: status_at(peers[0]).recent_rounds[-1].round_id >= 2, 60)
        leader = status_at(peers[0])
        last = leader.recent_rounds[-1]
        assert last.outcome == SKIPPED
        assert "shard(s) 1 did not propose" in last.reason
        assert leader.model_version == 1  # nothing half-applied

        start_serve(spawn, tmp_path / "s1b.log", *shard_flags[1], listen=peers[1])
        assert status_at(peers[1]).model_version == 1  # from its own checkpoint
        for r in range(2, 8):
            outcomes = run_round(members, [s[r] for s in steps])
            if outcomes == ["applied"] * 2:
                break
            assert "applied" not in outcomes, outcomes
        versions = [status_at(p).model_version for p in peers]
        assert versions == [2, 2]
    finally:
        close_all(members)
