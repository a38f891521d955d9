"""CoordinatorConfig's privacy section: what it refuses, naming the setting."""

from __future__ import annotations

import pytest

from fedgrpc.config import CoordinatorConfig
from fedgrpc.errors import ConfigError


def test_privacy_is_off_by_default() -> None:
    config = CoordinatorConfig()
    assert config.privacy == "off"
    assert config.max_epsilon == 0.0


def test_central_privacy_with_a_noise_multiplier_is_accepted() -> None:
    config = CoordinatorConfig(privacy="central", dp_clip_norm=1.0,
                               dp_noise_multiplier=1.1)  # fmt: skip
    assert config.dp_delta == 1e-5


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"privacy": "local"}, "privacy"),
        ({"privacy": "central", "dp_noise_multiplier": 1.0}, "dp_clip_norm"),
        ({"privacy": "central", "dp_clip_norm": 1.0}, "dp_noise_multiplier"),
        (
            {
                "privacy": "central",
                "dp_clip_norm": 1.0,
                "dp_noise_multiplier": 1.0,
                "dp_target_epsilon": 3.0,
            },
            "dp_noise_multiplier",
        ),
        ({"dp_delta": 0.0}, "dp_delta"),
        ({"max_epsilon": -1.0}, "max_epsilon"),
        ({"dp_accountant": "moments"}, "dp_accountant"),
        (
            {
                "privacy": "central",
                "dp_clip_norm": 1.0,
                "dp_noise_multiplier": 1.0,
                "trusted_coordinator": False,
            },
            "privacy",
        ),
        ({"trusted_coordinator": False}, "trusted_coordinator"),
    ],
)
def test_bad_privacy_settings_are_refused(
    kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(ConfigError, match=field):
        CoordinatorConfig(**kwargs)  # type: ignore[arg-type]
