"""`throughput` selection: the fastest, with the overdue and a few newcomers let in."""

from __future__ import annotations

import pytest

from fedgrpc.coordinator.strategy import Candidate, ThroughputSelector
from fedgrpc.errors import ConfigError


def _measured(name: str, bps: float, waited: int = 1) -> Candidate:
    return Candidate(name, 1, throughput_bps=bps, rounds_since_selected=waited)


def test_the_fastest_measured_clients_are_chosen() -> None:
    candidates = [_measured(f"c{i}", float(i)) for i in range(6)]

    assert ThroughputSelector(3).select(candidates, b"n") == ("c3", "c4", "c5")


def test_a_client_left_out_for_patience_rounds_is_forced_in() -> None:
    candidates = [_measured(f"fast{i}", 1e9) for i in range(3)]
    candidates.append(_measured("slow", 1.0, waited=5))

    picked = ThroughputSelector(3, patience_rounds=5).select(candidates, b"n")

    assert "slow" in picked
    assert len(picked) == 3


def test_newcomers_get_at_most_half_of_the_slots() -> None:
    sybils = [Candidate(f"new{i}", 1) for i in range(10)]
    measured = [_measured(f"m{i}", 100.0 + i) for i in range(4)]

    picked = ThroughputSelector(4).select([*sybils, *measured], b"n")

    assert sum(p.startswith("new") for p in picked) == 2
    assert {"m3", "m2"} <= set(picked)


def test_newcomers_fill_slots_the_measured_cannot() -> None:
    candidates = [Candidate(f"new{i}", 1) for i in range(5)] + [_measured("m", 1.0)]

    picked = ThroughputSelector(4).select(candidates, b"n")

    assert "m" in picked
    assert len(picked) == 4


def test_non_finite_or_negative_throughput_counts_as_slowest() -> None:
    candidates = [
        _measured("nan", float("nan")),
        _measured("neg", -5.0),
        _measured("ok", 10.0),
        _measured("inf", float("inf")),
    ]

    assert ThroughputSelector(1).select(candidates, b"n") == ("ok",)


def test_ties_split_reproducibly_by_the_nonce() -> None:
    candidates = [_measured(f"c{i}", 5.0) for i in range(8)]
    selector = ThroughputSelector(2)

    first = [selector.select(candidates, bytes([i])) for i in range(10)]

    assert first == [selector.select(candidates[::-1], bytes([i])) for i in range(10)]
    assert len(set(first)) > 1


def test_bad_patience_is_refused() -> None:
    with pytest.raises(ConfigError, match="selection_patience_rounds"):
        ThroughputSelector(2, patience_rounds=0)
