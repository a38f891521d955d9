"""Repeat breakers sit rounds out, through the one exclusion mechanism."""

from __future__ import annotations

import asyncio
from pathlib import Path

import torch

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.ingest.breakers import BrokenUploads
from fedgrpc.coordinator.rounds.registry import ClientRegistry
from fedgrpc.crypto.keys import PrivateKey
from tests.unit.coordinator.test_snapshot import N, _runtime, _seed


def _tracker(**settings: int) -> BrokenUploads:
    return BrokenUploads(CoordinatorConfig(**settings))  # type: ignore[arg-type]


def test_the_third_break_within_the_window_excludes_for_exclusion_rounds() -> None:
    breaks = _tracker(max_broken_uploads=3, broken_upload_window_rounds=10,
                      exclusion_rounds=5)  # fmt: skip
    client = ClientRegistry(4).add("x", 0.0)
    assert breaks.record(client, 2, "cut") is False
    assert breaks.record(client, 4, "cut") is False
    assert not client.excluded_from(5)
    assert breaks.record(client, 5, "stream ended without a commit") is True
    # Excluded from its own round (no retry at once) through round 5 + 5.
    assert [client.excluded_from(r) for r in (5, 10, 11)] == [True, True, False]
    assert client.excluded_until_round == 11
    assert "max_broken_uploads" in client.exclusion_reason
    assert "stream ended without a commit" in client.exclusion_reason
    assert breaks.exclusions == 1


def test_breaks_spread_wider_than_the_window_never_exclude() -> None:
    breaks = _tracker(max_broken_uploads=2, broken_upload_window_rounds=3)
    client = ClientRegistry(4).add("x", 0.0)
    for round_id in (1, 4, 7, 10):
        assert breaks.record(client, round_id, "cut") is False
    assert client.excluded_until_round == 0


def test_zero_max_broken_uploads_never_excludes() -> None:
    breaks = _tracker(max_broken_uploads=0)
    client = ClientRegistry(4).add("x", 0.0)
    for round_id in range(1, 20):
        assert breaks.record(client, round_id, "cut") is False
    assert client.excluded_until_round == 0


def test_an_exclusion_never_shortens_a_longer_one() -> None:
    breaks = _tracker(max_broken_uploads=1, exclusion_rounds=2)
    client = ClientRegistry(4).add("x", 0.0)
    client.excluded_until_round = 50  # e.g. hard quarantine
    assert breaks.record(client, 3, "cut") is True
    assert client.excluded_until_round == 50


def test_an_exclusion_survives_a_restart_from_the_checkpoint(tmp_path: Path) -> None:
    first = _runtime(tmp_path)
    _seed(first, torch.zeros(N))
    breaker = first.registry.add("breaker", 0.0, PrivateKey.generate().public_key)
    assert BrokenUploads(first.config).record(breaker, 1, "cut") is False
    breaker.excluded_until_round, breaker.exclusion_reason = 7, "3 broken uploads"
    asyncio.run(first.save_checkpoint())
    first.checkpoints.close()

    second = _runtime(tmp_path)

    restored = second.registry.get(breaker.client_id)
    assert restored is not None
    assert (restored.excluded_until_round, restored.exclusion_reason) == (
        7,
        "3 broken uploads",
    )
    assert restored.excluded_from(second.engine.current.round_id)  # type: ignore[union-attr]
    second.checkpoints.close()
