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
