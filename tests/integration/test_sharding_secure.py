"""Secure aggregation over parameter shards: a masked round per shard, one vote.

Each shard is an in-process coordinator on loopback with
`secure_aggregation = true`; the clients are real `DiLoCoClient`s holding
one secure participant per shard (same identity key) and one masked-push
encoder per range. Masks are addressed by position, so every shard masks
and unmasks its own range, and the shards' commit vote compares the
survivor sets: a client unmasked into one shard's sum but not another's
skips the round everywhere.

Model: `tests.helpers.secure_shards` (two unequal ranges, 2,040 and 2,820).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from fedgrpc._proto.v1 import common_pb2
from fedgrpc._proto.v1 import coordinator_pb2 as pb
from fedgrpc.client import DiLoCoClient
from fedgrpc.client.connection.channel import Credentials
from fedgrpc.client.connection.push import (
    Signing,
    UpdateMeta,
    end_of_update,
    update_header,
)
from fedgrpc.client.connection.round_tracker import RoundStart
from fedgrpc.client.secure import SecureUpdates
from fedgrpc.client.sharded import ShardedSync
from fedgrpc.coordinator.secure.mode import SecureMode
from fedgrpc.coordinator.services.in_thread import CoordinatorThread, serve_in_thread
from fedgrpc.errors import InvalidUpdateError, WrongRoundError
from fedgrpc.secagg import ServerPhase
from tests.helpers.eventually import eventually
from tests.helpers.secure_shards import (
    CUT,
    SECURE,
    SIZE,
    STEP,
    init_model,
    join,
    scripted,
)
from tests.helpers.shards import assembled, running_shards, shard_configs
from tests.helpers.tree import base_config, close_all, master_of, run_round


def mode_of(shard: CoordinatorThread) -> SecureMode:
    mode = shard.running.runtime.mode
    assert isinstance(mode, SecureMode)
    return mode


def sharded(client: DiLoCoClient) -> ShardedSync:
    sync = client._sync  # the client's own sync point
    assert isinstance(sync, ShardedSync)
    return sync


def codes_of(client: DiLoCoClient, k: int) -> np.ndarray:
    """The codes `client` masked for shard k in its last round there (its own)."""
    encoder = sharded(client).encoders[k]
    assert isinstance(encoder, SecureUpdates)
    assert encoder.last_round is not None
    assert encoder.last_round.codes is not None
    return encoder.last_round.codes.astype(np.int64)


def versions(shards: Sequence[CoordinatorThread]) -> list[int]:
    return [s.running.runtime.engine.model.version for s in shards]


def wait_masked_input(shards: Sequence[CoordinatorThread], round_id: int) -> None:
    """Every shard's masked round `round_id` shared its keys (bounded wait)."""

    def reached() -> bool:
        for shard in shards:
            rnd = mode_of(shard).round
            assert rnd is not None
            assert rnd.round_id == round_id
            assert rnd.server.phase is ServerPhase.MASKED_INPUT
        return True

    eventually(reached, timeout_s=20)


def test_two_secure_shards_match_one_secure_coordinator_within_one_code_step(
    tmp_path: Path,
) -> None:
    # Arrange: the same three scripted clients against one secure
    # coordinator, then against two secure shards.
    rounds, init = 3, init_model(tmp_path)
    steps = scripted(rounds, 3, seed=3)
    reference: list[torch.Tensor] = []
    with serve_in_thread(
        base_config(init_model=str(init), min_clients=3, **SECURE)
    ) as flat:
        members = join(flat.address, 3, seed=10)
        try:
            initial = master_of(flat)
            for r in range(rounds):
                assert run_round(members, [s[r] for s in steps]) == ["applied"] * 3
                reference.append(master_of(flat))
        finally:
            close_all(members)
    configs = shard_configs(tmp_path, 2, init_model=str(init), min_clients=3,
                            **SECURE)  # fmt: skip

    with running_shards(configs) as shards:
        members = join(shards[1].address, 3, seed=10)
        try:
            assert torch.equal(assembled(shards), initial)
            for r in range(rounds):
                # Act
                outcomes = run_round(members, [s[r] for s in steps])

                # Assert: every shard unmasked exactly the sum of the codes
                # the clients masked for its range, and the sharded weights
                # stay within 2 code steps of the flat ones. Not bit-exact:
                # rounding is stochastic (unseeded), but e keeps each
                # client's rounding error (|e| < one step per coordinate),
                # so sum(applied) = sum(deltas) - mean(e) differs between the
                # runs by < 2 steps, at every round, however many.
                assert outcomes == ["applied"] * 3, (r, outcomes)
                for k, shard in enumerate(shards):
                    result = mode_of(shard).last_result
                    assert result is not None
                    assert len(result.survivors) == 3
                    masked = [codes_of(c, k) for c, _, _ in members]
                    np.testing.assert_array_equal(result.total, np.sum(masked, axis=0))
                    assert result.total.size == (CUT if k == 0 else SIZE - CUT)
                torch.testing.assert_close(
                    assembled(shards), reference[r], rtol=0, atol=2 * STEP + 1e-6
                )
            weights = [torch.cat([p.detach().flatten() for p in m.parameters()])
                       for _, m, _ in members]  # fmt: skip
        finally:
            close_all(members)
        assert versions(shards) == [rounds, rounds]
        final = assembled(shards)
    for loaded in weights:  # what the clients pulled from both shards
        assert torch.equal(loaded, final)
    moved = float((final - initial).abs().max())
    assert moved > 20 * STEP, "the rounds must move the weights beyond the tolerance"


def test_a_client_leaving_one_shards_masked_round_after_its_keys_skips_everywhere(
    tmp_path: Path,
) -> None:
    # Arrange: four clients (t = 3 of 4); round 1 applies on both shards,
    # then round 2's keys are shared on both.
    configs = shard_configs(tmp_path, 2, init_model=str(init_model(tmp_path)),
                            min_clients=3, **SECURE)  # fmt: skip
    steps = scripted(3, 4, seed=5)
    with running_shards(configs) as shards:
        members = join(shards[0].address, 4, seed=20)
        try:
            assert run_round(members, [s[0] for s in steps]) == ["applied"] * 4
            wait_masked_input(shards, 2)
            before = assembled(shards)
            leaver = members[3][0]
            participant = leaver._secure.participants[1] if leaver._secure else None
            assert participant is not None
            eventually(lambda: participant.rounds[2].ready, timeout_s=20)

            # Act: client 3 leaves shard 1's round 2 after sharing its keys
            # there (its shard-1 push then says "not taking part"), and
            # takes part in shard 0's round in full.
            participant.rounds[2].error = "left the round (test)"
            outcomes = run_round(members, [s[1] for s in steps])

            # Assert: shard 1 recovered its survivors' sum exactly without
            # client 3 (dropout recovery), shard 0 with it; the survivor sets
            # differ, so round 2 skipped on both shards, nothing applied.
            assert outcomes == ["skipped"] * 3 + ["missed"]
            results = [mode_of(s).last_result for s in shards]
            assert results[0] is not None
            assert results[1] is not None
            assert len(results[0].survivors) == 4
            assert len(results[1].survivors) == 3
            honest = [codes_of(c, 1) for c, _, _ in members[:3]]
            np.testing.assert_array_equal(results[1].total, np.sum(honest, axis=0))
            for shard in shards:
                closed = shard.running.runtime.engine.history[-1]
                assert (closed.round_id, closed.outcome.value) == (2, "skipped")
                assert "not the same set" in str(closed.reason)
            assert versions(shards) == [1, 1]
            assert torch.equal(assembled(shards), before)

            # The next round applies everywhere with all four again.
            assert run_round(members, [s[2] for s in steps]) == ["applied"] * 4
            assert versions(shards) == [2, 2]
        finally:
            close_all(members)


@dataclasses.dataclass
class WrongRange:
    """A hostile masked push: a signed header claiming `count` ring values.

    Borrows a real encoder's codec binding; sends no chunks (the header is
    refused first).
    """

    real: SecureUpdates
    count: int
    payload_bytes: int = 0

    def __post_init__(self) -> None:
        self.config = self.real.config
        self.feedback = self.real.feedback
        self.chunk_bytes = self.real.chunk_bytes

    async def requests(
        self,
        credentials: Credentials,
        meta: UpdateMeta,
        delta: torch.Tensor,
        signing: Signing | None = None,
    ) -> AsyncIterator[pb.PushUpdateRequest | bytes]:
        codec = common_pb2.CODEC_SECAGG_RING
        header = update_header(credentials, meta, self.count, codec)
        signer = signing.sign_header(header) if signing is not None else None
        yield header
        yield end_of_update(signer, 0)

    def settle(self, applied: bool) -> bool:
        return False


def _meta(sync: ShardedSync, k: int, start: RoundStart, shard: int) -> UpdateMeta:
    meta = sync.update_meta(start.round_id, start.nonce, 0.0)
    return dataclasses.replace(meta, base_sha256=sync.base_shas[k], shard=(shard, 2))


def test_masked_input_to_one_shard_only_skips_and_wrong_ranges_are_refused(
    tmp_path: Path,
) -> None:
    # Arrange: four clients; round 1 applies; round 2's keys are shared.
    configs = shard_configs(tmp_path, 2, init_model=str(init_model(tmp_path)),
                            min_clients=3, round_timeout_s=4.0,
                            **SECURE)  # fmt: skip
    steps = scripted(3, 4, seed=6)
    with running_shards(configs) as shards:
        members = join(shards[0].address, 4, seed=30)
        try:
            assert run_round(members, [s[0] for s in steps]) == ["applied"] * 4
            wait_masked_input(shards, 2)
            before = assembled(shards)
            hostile = sharded(members[3][0])
            base = members[3][0]._local.base_version  # the client's own record
            opened = [hostile.links[k].wait_round_open(base, 10) for k in range(2)]
            assert all(isinstance(o, RoundStart) for o in opened)
            starts = [o for o in opened if isinstance(o, RoundStart)]
            real = [e for e in hostile.encoders if isinstance(e, SecureUpdates)]
            assert len(real) == 2

            with ThreadPoolExecutor(1) as pool:  # the honest three sync
                honest = pool.submit(run_round, members[:3], [s[1] for s in steps])

                # Act: client 3 sends shard 1 shard 0's range (by length, then
                # by name), and its real masked range to shard 0 only.
                link = hostile.links[1]
                zeros = torch.zeros(CUT)
                too_short = "2040 values but round 2 announced 2820 positions"
                with pytest.raises(WrongRoundError, match=too_short):
                    link.push(_meta(hostile, 1, starts[1], 1), zeros, 1024,
                              WrongRange(real[1], CUT))  # fmt: skip
                misnamed = "update is for shard 0 of 2, but this coordinator is shard 1"
                with pytest.raises(InvalidUpdateError, match=misnamed):
                    link.push(_meta(hostile, 1, starts[1], 0), zeros, 1024,
                              WrongRange(real[1], CUT))  # fmt: skip
                part = 0.01 * torch.ones(CUT)
                pushed = hostile.links[0].push(
                    _meta(hostile, 0, starts[0], 0), part, 1024, real[0]
                )
                outcomes = honest.result(timeout=60)

            # Assert: shard 0 unmasked four inputs, shard 1 three (client 3's
            # keys shared, its input never in): the round skipped everywhere.
            assert pushed.bytes_sent > 0
            assert outcomes == ["skipped"] * 3
            results = [mode_of(s).last_result for s in shards]
            survivors = [None if r is None else len(r.survivors) for r in results]
            assert survivors == [4, 3]
            for shard in shards:
                closed = shard.running.runtime.engine.history[-1]
                assert (closed.round_id, closed.outcome.value) == (2, "skipped")
            assert versions(shards) == [1, 1]
            assert torch.equal(assembled(shards), before)
            real[0].settle(False)  # its books, as its sync point would

            # The shards go on: round 3 applies with the honest three.
            assert run_round(members[:3], [s[2] for s in steps]) == ["applied"] * 3
            assert versions(shards) == [2, 2]
        finally:
            close_all(members)
