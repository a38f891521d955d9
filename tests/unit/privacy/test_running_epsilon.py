"""RunningEpsilon: the ledger's ε bit for bit, one event evaluation a round."""

from __future__ import annotations

import pytest

from fedgrpc.privacy import PrivacyLedger, Release
from fedgrpc.privacy.running import RunningEpsilon

DELTA = 1e-5


def _sampled(population: int) -> Release:
    return Release(1.0, 10 / population, sampling="fixed", population=population,
                   sample_size=10)  # fmt: skip


@pytest.mark.parametrize(
    ("accountant", "neighbouring", "releases"),
    [
        ("rdp", "add_or_remove_one", [Release(1.1)] * 4 + [Release(0.9)] * 2),
        ("pld", "add_or_remove_one", [Release(2.0)] * 3 + [Release(3.0), Release(2.0)]),
        ("rdp", "replace_one",
         [_sampled(200), _sampled(200), _sampled(150), _sampled(200)]),
    ],
)  # fmt: skip
def test_epsilon_after_and_record_equal_a_fresh_composition_exactly(
    accountant: str, neighbouring: str, releases: list[Release]
) -> None:
    running = RunningEpsilon(PrivacyLedger(accountant, neighbouring), DELTA)  # type: ignore[arg-type]
    for release in releases:
        fresh = PrivacyLedger(accountant, neighbouring,  # type: ignore[arg-type]
                              [*running.ledger.releases, release])  # fmt: skip
        assert running.epsilon_after(release) == fresh.epsilon(DELTA)
        assert running.record(release) == fresh.epsilon(DELTA)
    restored = RunningEpsilon(
        PrivacyLedger(accountant, neighbouring, running.ledger.releases),  # type: ignore[arg-type]
        DELTA,
    )
    assert restored.epsilon == running.epsilon > 0


def test_a_probe_of_another_release_is_not_reused() -> None:
    running = RunningEpsilon(PrivacyLedger(), DELTA)
    running.epsilon_after(Release(0.5))
    spent = running.record(Release(2.0))
    assert spent == PrivacyLedger(releases=[Release(2.0)]).epsilon(DELTA)
