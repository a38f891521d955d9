"""A round through the stages, as the engine will drive them: real codec blocks,
real outer optimizer, checked against today's path and against numpy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedgrpc.aggregate import StreamingSum
from fedgrpc.aggregate.staged import StagedSum
from fedgrpc.compress import TopK, make_codec
from fedgrpc.coordinator.strategy import (
    Candidate,
    RoundStages,
    StrategySettings,
)
from fedgrpc.errors import ConfigError, WrongRoundError
from fedgrpc.optim import NesterovOuterOptimizer

D = 5000
BLOCK = 1000
N = 5


def _client_blocks(seed: int) -> list[tuple[int, Any]]:
    """One client's update as decoded top-k int8 blocks (offset, DecodedBlock)."""
    codec = make_codec(TopK(density=0.1, bits=8), rng=np.random.default_rng(seed))
    update = np.random.default_rng(100 + seed).standard_normal(D).astype(np.float32)
    blocks = []
    for start in range(0, D, BLOCK):
        encoded = codec.encode(update[start : start + BLOCK])
        blocks.append((start, codec.decode(encoded.payload, BLOCK)))
    return blocks


def _dense(blocks: list[tuple[int, Any]]) -> np.ndarray:
    dense = np.zeros(D, np.float32)
    for start, block in blocks:
        block.add_into(dense[start : start + BLOCK])
    return dense


@pytest.fixture
def clients() -> list[list[tuple[int, Any]]]:
    return [_client_blocks(seed) for seed in range(N)]


@pytest.fixture
def stages_factory(tmp_path: Path) -> Iterator[object]:
    made: list[RoundStages] = []

    def build(**settings: object) -> RoundStages:
        stages = RoundStages(StrategySettings(spool_dir=tmp_path / "spool", **settings))  # type: ignore[arg-type]
        made.append(stages)
        return stages

    yield build
    for stages in made:
        stages.close()


def _run_round(
    stages: RoundStages, clients: list[list[tuple[int, Any]]], weights: list[float]
) -> torch.Tensor:
    accumulator = stages.open_accumulator(1, D, lambda: torch.zeros(D))
    for key, (blocks, weight) in enumerate(zip(clients, weights, strict=True)):
        for start, block in blocks:
            accumulator.add_block(key, start, block, weight)
        accumulator.commit_update(key, weight)
    aggregate = stages.aggregate(accumulator, lambda: torch.empty(D))
    return aggregate


def test_the_default_stages_reproduce_todays_round_bit_for_bit(
    stages_factory, clients
) -> None:
    weights = [10.0, 20.0, 30.0, 40.0, 50.0]
    stages = stages_factory()
    old = StreamingSum(torch.zeros(D))
    for blocks, weight in zip(clients, weights, strict=True):
        for start, block in blocks:
            block.add_into(old.target(start, start + BLOCK), weight)
        old.commit(weight)
    expected = old.mean()

    aggregate = _run_round(stages, clients, weights)

    assert stages.accumulator == "streaming_sum"
    assert torch.equal(aggregate, expected)
    params_new, params_old = torch.ones(D), torch.ones(D)
    NesterovOuterOptimizer().step(params_new, aggregate)
    NesterovOuterOptimizer().step(params_old, expected.clone())
    assert torch.equal(params_new, params_old)


def test_a_median_round_spools_every_update_and_matches_numpy(
    stages_factory, clients
) -> None:
    stages = stages_factory(aggregator="median")

    aggregate = _run_round(stages, clients, [1.0] * N)

    assert stages.accumulator == "spool"
    expected = np.median(np.stack([_dense(c) for c in clients]), axis=0)
    np.testing.assert_array_equal(aggregate.numpy(), expected)


def test_a_trimmed_mean_round_survives_a_push_that_broke_half_way(
    stages_factory, clients
) -> None:
    stages = stages_factory(aggregator="trimmed_mean", aggregator_params={"beta": 0.25})
    accumulator = stages.open_accumulator(3, D, lambda: torch.zeros(D))
    for key, blocks in enumerate(clients[:4]):
        for start, block in blocks:
            accumulator.add_block(key, start, block, 1.0)
        accumulator.commit_update(key, 1.0)
    start, block = clients[4][0]
    accumulator.add_block("broken", start, block, 1.0)

    voided = accumulator.abandon("broken")
    aggregate = stages.aggregate(accumulator, lambda: torch.empty(D))

    assert voided is False
    # ⌊0.25 x 4⌋ = 1 dropped from each side: the middle two of four survivors.
    kept = np.sort(np.stack([_dense(c) for c in clients[:4]]), axis=0)[1:3]
    np.testing.assert_allclose(
        aggregate.numpy(), kept.mean(axis=0), rtol=1e-6, atol=1e-7
    )
    accumulator.discard()
    assert stages.spool is not None
    assert list(stages.spool.path.iterdir()) == [stages.spool.path / ".lock"]


def test_the_selector_runs_from_the_stage_settings(stages_factory) -> None:
    stages = stages_factory(selection="random", clients_per_round=2)
    candidates = [Candidate(f"c{i}") for i in range(6)]

    chosen = stages.selector.select(candidates, b"nonce")

    assert len(chosen) == 2
    assert chosen == stages.selector.select(candidates[::-1], b"nonce")


def test_impossible_settings_fail_before_anything_is_created(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="secure_aggregation = true"):
        RoundStages(
            StrategySettings(
                aggregator="median", secure_aggregation=True, spool_dir=tmp_path / "s"
            )
        )

    assert not (tmp_path / "s").exists()


def test_secure_rounds_do_not_open_a_plain_accumulator(stages_factory) -> None:
    stages = stages_factory(secure_aggregation=True, min_clients=3)

    assert stages.accumulator == "secure_ring"
    assert stages.spool is None
    with pytest.raises(WrongRoundError, match="own ring"):
        stages.open_accumulator(1, D, lambda: torch.zeros(D))


def test_a_summed_round_creates_its_spool_dir_and_spills_stages_there(
    tmp_path: Path,
) -> None:
    """Staged and on-disk sums spill into `spool_dir` too, not only the spool:
    a missing directory is made at start (0700), not found missing mid-round."""
    root = tmp_path / "not" / "yet"
    stages = RoundStages(StrategySettings(spool_dir=root, staging_memory_bytes=0))
    with stages:
        assert stages.accumulator == "streaming_sum"
        assert root.is_dir()
        assert (root.stat().st_mode & 0o777) == 0o700
        accumulator = stages.open_accumulator(1, D, lambda: torch.zeros(D))
        assert isinstance(accumulator, StagedSum)
        values = np.ones(D, np.float32)
        accumulator.add_values(0, 0, values, 1.0, np.empty(D, np.float32))
        assert accumulator.staged_bytes == 0  # on disk, in the new directory
        accumulator.commit_update(0, 1.0)
        assert accumulator.count == 1


def test_a_spool_dir_that_is_a_file_stops_a_summed_run_at_start(
    tmp_path: Path,
) -> None:
    taken = tmp_path / "file"
    taken.write_text("not a directory")
    with pytest.raises(ConfigError, match="spool_dir"):
        RoundStages(StrategySettings(spool_dir=taken, staging_memory_bytes=0))
