"""Round modes in the engine and their rules: deadlines, staleness, goodput.

Plain Python with a fake clock; the wire-level behaviour is tested through
real stubs in tests/integration/test_buffered_async.py and
test_round_modes_clients.py.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from fedgrpc.compress import DenseValues, SparseValues
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.rounds import pacing
from fedgrpc.coordinator.rounds.engine import RoundEngine
from fedgrpc.coordinator.rounds.goodput import MAX_PENDING, Goodput
from fedgrpc.coordinator.rounds.records import OpenRound
from fedgrpc.coordinator.rounds.registry import ClientRegistry
from fedgrpc.errors import ConfigError, InvalidUpdateError
from tests.unit.coordinator.test_round_engine import SPEC, Clock, _header


def _config(**settings: object) -> CoordinatorConfig:
    return CoordinatorConfig(round_timeout_s=10.0, **settings)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"round_mode": "async"}, "sync | deadline | buffered_async"),
        ({"round_mode": "deadline"}, "round_duration_s"),
        ({"round_mode": "buffered_async", "buffer_size": 1}, ">= min_clients"),
        ({"max_staleness": 257}, "0..256"),
        ({"staleness_exponent": float("nan")}, "staleness_exponent"),
        ({"round_duration_s": -1.0}, ">= 0"),
        ({"round_mode": "buffered_async", "secure_aggregation": True,
          "codec": "dense:int8", "min_clients": 3}, "sync with secure_aggregation"),
        ({"round_mode": "deadline", "round_duration_s": 5.0,
          "secure_aggregation": True, "codec": "dense:int8", "min_clients": 3},
         "sync with secure_aggregation"),
    ],
)  # fmt: skip
def test_bad_round_mode_settings_are_refused_naming_the_setting(
    settings: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _config(**settings)
    assert fragment in str(info.value)


def test_staleness_scale_is_the_polynomial_of_fedasync() -> None:
    config = _config(round_mode="buffered_async", staleness_exponent=0.5)
    assert config.staleness_scale(0) == 1.0
    assert config.staleness_scale(3) == pytest.approx(0.5)
    assert _config(staleness_exponent=0.0).staleness_scale(9) == 1.0
    assert _config(staleness_exponent=1.0).staleness_scale(4) == pytest.approx(0.2)


def test_scaled_multiplies_arrays_and_blocks_without_touching_the_input() -> None:
    values = np.arange(4, dtype=np.float32)
    out = pacing.scaled(values, 0.5)
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, values / 2)
    np.testing.assert_array_equal(values, np.arange(4))
    dense = pacing.scaled(DenseValues(values), 0.25)
    assert isinstance(dense, DenseValues)
    np.testing.assert_array_equal(dense.values, values / 4)
    sparse = pacing.scaled(SparseValues(np.array([1, 3]), values[:2]), 2.0)
    assert isinstance(sparse, SparseValues)
    np.testing.assert_array_equal(sparse.indices, [1, 3])
    np.testing.assert_array_equal(sparse.values, [0.0, 2.0])


def test_a_deadline_round_fixes_its_deadline_at_open_and_counts_down() -> None:
    clock = Clock()
    config = _config(round_mode="deadline", round_duration_s=30.0, min_clients=1)
    engine = RoundEngine(config, ClientRegistry(max_clients=4), clock)
    engine.model.adopt_spec(SPEC)
    engine.model.seed(torch.zeros(4))
    engine._open_round()
    current = engine.current
    assert current is not None
    assert current.deadline_s == pytest.approx(clock.now + 30.0 + 10.0)
    clock.now += 12.5
    assert pacing.training_seconds_left(config, current, clock.now) == 17.5
    clock.now += 100
    assert pacing.training_seconds_left(config, current, clock.now) == 0.0
    sync = OpenRound(1, 0, 0.0)
    assert pacing.training_seconds_left(_config(), sync, 0.0) == 0.0
    assert pacing.opening_deadline(_config(), 0.0) is None


def test_buffer_full_needs_k_commits_and_nothing_streaming() -> None:
    config = _config(round_mode="buffered_async", buffer_size=3, min_clients=2)
    current = OpenRound(1, 0, 0.0, contributors={"a", "b"})
    assert not pacing.buffer_full(config, current)
    current.contributors.add("c")
    assert pacing.buffer_full(config, current)
    current.streaming[1] = None  # type: ignore[assignment]  # one still streaming
    assert not pacing.buffer_full(config, current)
    assert not pacing.buffer_full(_config(), OpenRound(1, 0, 0.0, contributors={"a"}))


def test_the_runs_last_round_waits_for_every_client_instead_of_k() -> None:
    # The work slow clients have in flight at the end lands in the last round.
    config = _config(round_mode="buffered_async", buffer_size=2, max_rounds=5)
    full = {"a", "b", "c"}
    assert pacing.buffer_full(config, OpenRound(4, 3, 0.0, contributors=full))
    assert not pacing.buffer_full(config, OpenRound(5, 4, 0.0, contributors=full))


def test_a_compute_claim_no_honest_client_sends_is_refused() -> None:
    from fedgrpc.coordinator.rounds.weighting import check_claims

    config = _config()
    for bad in (math.nan, math.inf, -1.0, 1e12):
        header = dataclasses.replace(_header("a", 1, 0), compute_s=bad)
        with pytest.raises(InvalidUpdateError, match="compute_s"):
            check_claims(config, header)
    check_claims(config, dataclasses.replace(_header("a", 1, 0), compute_s=3.5))
    for bad in (math.nan, -math.inf, 1e10):
        header = dataclasses.replace(_header("a", 1, 0), eval_loss=bad)
        with pytest.raises(InvalidUpdateError, match="eval_loss"):
            check_claims(config, header)
    check_claims(config, dataclasses.replace(_header("a", 1, 0), eval_loss=2.5))


def test_goodput_counts_a_retried_refusal_once_and_a_lost_one_as_offered() -> None:
    goodput = Goodput()
    first = dataclasses.replace(_header("a", 1, base=4), compute_s=10.0)
    goodput.refused(first)  # round full: pending
    assert goodput.offered_s == 10.0
    assert goodput.ratio == 0.0
    goodput.committed(first)  # the same base next round: a retry
    closing = OpenRound(2, 5, 0.0, compute_s=10.0)
    goodput.round_closed(closing, applied=True)
    assert (goodput.offered_s, goodput.applied_s, goodput.ratio) == (10.0, 10.0, 1.0)

    lost = dataclasses.replace(_header("b", 3, base=2), compute_s=5.0)
    goodput.refused(lost)  # too stale: b pulls and trains from a new base
    goodput.committed(dataclasses.replace(lost, base_version=6, compute_s=5.0))
    goodput.round_closed(OpenRound(3, 6, 0.0, compute_s=5.0), applied=False)
    assert goodput.offered_s == 20.0
    assert goodput.applied_s == 10.0


def test_goodput_pending_table_is_bounded() -> None:
    goodput = Goodput()
    for i in range(MAX_PENDING + 10):
        goodput.refused(dataclasses.replace(_header(f"c{i}", 1, 0), compute_s=1.0))
    assert len(goodput.pending) == MAX_PENDING
    assert goodput.offered_s == MAX_PENDING + 10


def test_a_stale_base_the_coordinator_no_longer_knows_is_refused_as_such() -> None:
    from fedgrpc.coordinator.rounds.registry import ClientRecord
    from fedgrpc.errors import WrongRoundError

    config = _config(round_mode="buffered_async", max_staleness=4)
    current = OpenRound(9, 7, 0.0)
    client = ClientRecord("c1", "c1", b"")
    assert pacing.accepts_lag(config, current, client, 5, {5: b"x"})
    with pytest.raises(WrongRoundError, match="does not hold"):
        pacing.accepts_lag(config, current, client, 5, {})  # a restart lost it
    with pytest.raises(WrongRoundError, match="max_staleness=4"):
        pacing.accepts_lag(config, current, client, 2, {2: b"x"})
    client.last_applied_base = 5
    with pytest.raises(WrongRoundError, match="twice"):
        pacing.accepts_lag(config, current, client, 5, {5: b"x"})
    assert not pacing.accepts_lag(config, current, client, 7, {})  # its own base
    assert not pacing.accepts_lag(_config(), current, client, 5, {5: b"x"})  # sync
