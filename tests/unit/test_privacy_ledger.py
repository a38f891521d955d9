"""The privacy ledger: dp-accounting's ε, merged releases, restore, calibration."""

from __future__ import annotations

import json
import math

import pytest

from fedgrpc.errors import ConfigError
from fedgrpc.privacy import LedgerState, PrivacyLedger, Release, noise_for_budget
from fedgrpc.privacy.ledger import make_accountant


def test_empty_ledger_spends_nothing() -> None:
    ledger = PrivacyLedger()
    assert ledger.epsilon(1e-5) == 0.0
    assert not ledger.spent_anything


def test_identical_releases_merge_and_match_one_composition() -> None:
    ledger = PrivacyLedger("rdp")
    for _ in range(50):
        ledger.record(Release(1.2, 0.05))
    assert len(ledger.releases) == 1
    assert ledger.releases[0].count == 50
    direct = make_accountant("rdp", "add_or_remove_one")
    direct.compose(Release(1.2, 0.05).dp_event(), 50)
    assert ledger.epsilon(1e-5) == pytest.approx(direct.get_epsilon(1e-5), rel=1e-12)


def test_epsilon_grows_with_releases_and_after_leaves_the_ledger_alone() -> None:
    ledger = PrivacyLedger()
    ledger.record(Release(1.0, 1.0, count=10))
    now = ledger.epsilon(1e-5)
    after = ledger.epsilon_after(Release(1.0, 1.0), 1e-5)
    assert after > now > 0
    assert ledger.epsilon(1e-5) == now


def test_pld_is_tighter_than_rdp_on_the_same_releases() -> None:
    release = Release(1.1, 256 / 60_000, count=60 * 60_000 // 256)
    rdp = PrivacyLedger("rdp", releases=[release]).epsilon(1e-5)
    pld = PrivacyLedger("pld", releases=[release]).epsilon(1e-5)
    assert pld < rdp
    assert 2.0 < pld < rdp < 3.0


def test_state_round_trips_through_json_to_the_same_epsilon() -> None:
    ledger = PrivacyLedger("pld")
    ledger.record(Release(2.0, 0.1, count=7))
    ledger.record(Release(1.5, 1.0, count=3, sampling="fixed", population=10,
                          sample_size=10))  # fmt: skip
    raw = json.loads(json.dumps(ledger.state().to_json()))
    restored = PrivacyLedger.restore(LedgerState.from_json(raw))
    assert restored.releases == ledger.releases
    assert restored.epsilon(1e-6) == ledger.epsilon(1e-6)


def test_calibrated_noise_meets_the_target_tightly() -> None:
    shape = Release(1.0, 0.01, count=1000)
    z = noise_for_budget(1.0, 1e-5, shape)
    spent = PrivacyLedger(releases=[Release(z, 0.01, 1000)]).epsilon(1e-5)
    assert spent <= 1.0 + 1e-6
    assert spent > 0.95  # not wastefully noisy
    assert noise_for_budget(1.0, 1e-5, shape, accountant="pld") < z


def test_unreachable_target_is_refused_with_a_reason() -> None:
    with pytest.raises(ConfigError, match="out of reach"):
        noise_for_budget(1e-6, 1e-5, Release(1.0, 1.0, count=1_000_000))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"noise_multiplier": 0.0}, "noise_multiplier"),
        ({"noise_multiplier": math.inf}, "noise_multiplier"),
        ({"noise_multiplier": 1.0, "sampling_rate": 0.0}, "sampling_rate"),
        ({"noise_multiplier": 1.0, "count": 0}, "count"),
        (
            {
                "noise_multiplier": 1.0,
                "sampling": "fixed",
                "population": 3,
                "sample_size": 4,
            },
            "sample_size",
        ),
    ],
)
def test_bad_releases_are_refused(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        Release(**kwargs)  # type: ignore[arg-type]


def test_unknown_accountant_is_refused() -> None:
    with pytest.raises(ConfigError, match="dp_accountant"):
        PrivacyLedger("moments")  # type: ignore[arg-type]
