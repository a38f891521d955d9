"""Trust in the coordinator: its pass over the spool, the engine, the settings.

The state machine on fixed numbers is in `test_trust`; here the numbers come
from real spooled updates, including a hostile client's huge floats.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from fedgrpc.aggregate import SpoolAccumulator
from fedgrpc.aggregate.agreement import measure_agreement
from fedgrpc.aggregate.passes import NUMPY_GRAM_MAX_ROWS
from fedgrpc.config import CoordinatorConfig
from fedgrpc.config.robustness import TrustSettings
from fedgrpc.coordinator.rounds.records import Outcome
from fedgrpc.coordinator.strategy.trust import (
    TrustBook,
    round_scores,
)
from fedgrpc.coordinator.strategy.wiring import build_round_stages, trust_accumulator
from fedgrpc.errors import ConfigError, ExcludedClientError
from tests.unit.coordinator.strategy.test_trust import ORDER, _record, _registry
from tests.unit.coordinator.test_engine_stages import Federation
from tests.unit.coordinator.test_round_engine import _close as close_round
from tests.unit.coordinator.test_round_engine import _commit as commit_values
from tests.unit.coordinator.test_round_engine import _header

# -- the measuring pass ---------------------------------------------------------


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[SpoolAccumulator]:
    accumulator = SpoolAccumulator(tmp_path / "round", 2500, 32)
    yield accumulator
    accumulator.discard()


@pytest.mark.parametrize("n", [5, NUMPY_GRAM_MAX_ROWS + 4])  # both BLAS paths
def test_the_pass_matches_numpy_across_several_blocks(
    n: int, spool: SpoolAccumulator
) -> None:
    rng = np.random.default_rng(7)
    updates = rng.normal(size=(n, 2500)).astype(np.float32)
    updates[1] += updates[0]  # correlated with the first: a positive peer cosine
    updates[4] = 0.0  # a zero update: cosine 0, not NaN
    updates[3] = updates[2]  # a copy: closest peer cosine 1
    for key, update in enumerate(updates):
        spool.add_values(key, 0, update, 1.0, np.empty(0, np.float32))
        spool.commit_update(key, 1.0)
    g = rng.normal(size=2500).astype(np.float32)
    got = measure_agreement(spool.held(), torch.from_numpy(g), block_bytes=1)
    u, ref = updates.astype(np.float64), g.astype(np.float64)
    norms = np.linalg.norm(u, axis=1)
    cos = (u @ ref) / np.where(norms > 0, norms * np.linalg.norm(ref), 1.0)
    np.testing.assert_allclose(got.cosine, cos, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.distance, np.linalg.norm(u - ref, axis=1), rtol=1e-5)
    np.testing.assert_allclose(got.norm, norms, rtol=1e-5)
    assert got.cosine[4] == 0.0
    outer = np.outer(norms, norms)
    pairwise = np.divide(u @ u.T, outer, out=np.zeros((n, n)), where=outer > 0)
    peers = [np.median(np.delete(pairwise[i], i)) for i in range(n)]
    np.testing.assert_allclose(got.peer_cosine, peers, rtol=1e-6, atol=1e-9)
    assert got.peer_cosine[4] == 0.0  # a zero update has no direction
    closest = [np.max(np.delete(pairwise[i], i)) for i in range(n)]
    np.testing.assert_allclose(got.closest_peer_cosine, closest, rtol=1e-6, atol=1e-9)
    assert got.closest_peer_cosine[2] == pytest.approx(1.0)
    assert got.closest_peer_cosine[3] == pytest.approx(1.0)
    assert got.closest_peer_cosine[0] < 0.9  # correlated, not a copy
    # The spool's files are untouched by the in-place differences.
    again = measure_agreement(spool.held(), torch.from_numpy(g))
    np.testing.assert_allclose(again.distance, got.distance, rtol=1e-5)


# -- settings and combinations --------------------------------------------------


def test_trust_spools_updates_under_auto() -> None:
    config = CoordinatorConfig(trust="on")
    assert trust_accumulator(config) == "spool"
    with build_round_stages(config) as stages:
        assert stages.accumulator == "spool"


def test_trust_is_refused_with_secure_aggregation_naming_both() -> None:
    config = CoordinatorConfig(
        trust="on", secure_aggregation=True, codec="dense:int8", min_clients=3
    )
    with pytest.raises(ConfigError, match=r"trust = 'on'.*secure_aggregation = true"):
        trust_accumulator(config)


def test_trust_is_refused_with_the_streaming_sum_naming_both() -> None:
    config = CoordinatorConfig(trust="on", accumulator="streaming_sum")
    with pytest.raises(
        ConfigError, match=r"trust = 'on'.*accumulator = 'streaming_sum'"
    ):
        trust_accumulator(config)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("trust", "maybe"),
        ("trust_decay", 1.0),
        ("trust_soft_threshold", 0.0),
        ("trust_hard_threshold", 0.5),  # not below the soft threshold
        ("trust_quarantine_rounds", 0),
    ],
)
def test_a_bad_trust_setting_is_refused_by_name(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        CoordinatorConfig(**{field: value})  # type: ignore[arg-type]


# -- through the round engine and against hostile values -----------------------


def test_the_engine_scores_spooled_rounds_and_excludes_the_flipper(
    tmp_path: Path,
) -> None:
    fed = Federation(tmp_path, "abcd", aggregator="median", trust="on")
    engine = fed.engine
    d = _record(fed.registry, fed.ids["d"])
    # Honest updates share a direction with a little noise of their own (no
    # two are copies); d sends its own update sign-flipped.
    rng = np.random.default_rng(5)
    for round_id in range(1, 5):
        for name in "dabc":
            values = torch.from_numpy(1.0 + rng.normal(0, 0.2, 4).astype(np.float32))
            if name == "d":
                values = -values
            commit_values(
                engine, fed.registry, fed.ids[name], values, round_id, round_id - 1,
                False,
            )  # fmt: skip
        assert close_round(engine) is Outcome.APPLIED
    assert engine.trust is not None
    assert engine.trust.standing(d.client_id).state == "quarantined"
    assert d.excluded_until_round == 10
    with pytest.raises(ExcludedClientError, match="hard quarantine"):
        engine.admit(d, _header(d.client_id, 5, 4))
    for name in "abc":
        assert engine.trust.standing(fed.ids[name]).state == "trusted"


def test_the_engine_quarantines_two_clients_sending_one_vector(tmp_path: Path) -> None:
    # c and d collude: each round they send the same update, well inside the
    # honest spread (ALIE's shape), which only the copy check can see.
    fed = Federation(tmp_path, "abcde", aggregator="median", trust="on")
    engine = fed.engine
    rng = np.random.default_rng(6)
    for round_id in range(1, 5):
        honest = [1.0 + rng.normal(0, 0.2, 4).astype(np.float32) for _ in range(3)]
        shared = np.mean(honest, axis=0)
        for name, values in zip("abcde", [*honest, shared, shared], strict=True):
            commit_values(
                engine, fed.registry, fed.ids[name], torch.from_numpy(values),
                round_id, round_id - 1, False,
            )  # fmt: skip
        assert close_round(engine) is Outcome.APPLIED
    assert engine.trust is not None
    for name in "de":
        assert engine.trust.standing(fed.ids[name]).state == "quarantined"
    for name in "abc":
        assert engine.trust.standing(fed.ids[name]).state == "trusted"


def test_an_update_of_huge_floats_scores_zero_and_keeps_the_state_strict_json(
    spool: SpoolAccumulator,
) -> None:
    rng = np.random.default_rng(3)
    base = np.full(2500, 0.1, dtype=np.float32)
    updates = [base + rng.normal(0, 0.01, 2500).astype(np.float32) for _ in range(3)]
    huge = np.full(2500, -3.4e38, dtype=np.float32)  # finite, overflows f32 squares
    for key, update in enumerate([*updates, huge]):
        spool.add_values(key, 0, update, 1.0, np.empty(0, np.float32))
        spool.commit_update(key, 1.0)
    g = torch.from_numpy(np.median(np.stack([*updates, huge]), axis=0))
    got = measure_agreement(spool.held(), g)
    assert np.isfinite(got.cosine).all()
    assert got.cosine[3] < -0.99  # against the base direction
    scores = round_scores(got.peer_cosine, got.distance)
    assert scores[3] == 0.0
    registry, book = _registry(), TrustBook(TrustSettings())
    book.observe(1, ORDER, got)
    book.round_closed(1, registry)
    json.dumps(book.state_dict(), allow_nan=False)  # raises on NaN or inf


def test_a_failed_measurement_is_skipped_and_the_round_keeps_its_update(
    spool: SpoolAccumulator,
) -> None:
    spool.add_values(0, 0, np.ones(2500, np.float32), 1.0, np.empty(0, np.float32))
    spool.commit_update(0, 1.0)
    book = TrustBook(TrustSettings())
    two_ids = ["c00001", "c00002"]  # for one spooled row
    book.measure(1, two_ids, spool.held(), torch.ones(2500))  # logs, not raises
    book.round_closed(1, _registry())
    assert book.standings == {}
