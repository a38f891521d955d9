"""A real round engine under `SharedIndexPlanner`, and setups as announced, no gRPC.

Shared by the planner's unit tests (momentum rule and chunk-norm rule):
a seeded zero model of d float32 weights, the secure-aggregation settings
both rules start from, polling as the runtime's ticker does, and a signed-
looking round setup naming the announced positions.
"""

from __future__ import annotations

import asyncio
import os

import numpy as np
import torch

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.rounds.engine import RoundEngine
from fedgrpc.coordinator.rounds.records import OpenRound
from fedgrpc.coordinator.rounds.registry import ClientRegistry
from fedgrpc.coordinator.secure.index_planner import SharedIndexPlanner
from fedgrpc.crypto.keys import PrivateKey
from fedgrpc.domain.model_spec import DType, ModelSpec, TensorSpec
from fedgrpc.secagg import FixedPointScale, RoundSetup, SecAggParams
from fedgrpc.wire.secagg import SecureRoundSetup

IDS = ("a", "b", "c")


def planner_engine(d: int, **overrides: object) -> RoundEngine:
    """An engine seeded with d zeros; density 0.05, epsilon 0.2 unless overridden."""
    settings: dict[str, object] = {
        "secure_aggregation": True, "codec": "dense:int8", "min_clients": 3,
        "secagg_density": 0.05, "secagg_random_fraction": 0.2,
    }  # fmt: skip
    settings.update(overrides)
    config = CoordinatorConfig(**settings)  # type: ignore[arg-type]
    engine = RoundEngine(config, ClientRegistry(max_clients=8))
    engine.model.adopt_spec(ModelSpec((TensorSpec("w", (d,), DType.FLOAT32),)))
    engine.model.seed(torch.zeros(d))
    return engine


async def positions_when_ready(
    planner: SharedIndexPlanner, current: OpenRound
) -> np.ndarray:
    """The set for `current`, polled as the runtime's ticker does (threaded choice)."""
    while not planner.ready(current):  # noqa: ASYNC110
        await asyncio.sleep(0.001)
    positions = planner.positions(current)
    assert positions is not None
    return positions


def announce(
    positions: np.ndarray | None, count: int, norm_chunk: int = 0, norm_tail: int = 0
) -> SecureRoundSetup:
    """Round 1's setup for IDS announcing `positions` (`count` values; norm_chunk
    and norm_tail for the chunk-norm rule)."""
    setup = RoundSetup(
        session_id=b"s" * 24, round_id=1, participants=IDS,
        graph_seed=os.urandom(32), value_bits=8,
        params=SecAggParams(degree=2, threshold=2),
    )  # fmt: skip
    identities = {c: PrivateKey.generate().public_key for c in IDS}
    return SecureRoundSetup(setup, identities, b"n" * 16, FixedPointScale(0.5),
                            count, positions, norm_chunk=norm_chunk,
                            norm_tail=norm_tail)  # fmt: skip
