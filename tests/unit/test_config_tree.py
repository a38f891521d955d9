"""Leaf settings (`config.tree`): what a leaf cannot honour is refused at start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedgrpc.cli import build_parser
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.tree.root_link import upstream_client_config
from fedgrpc.errors import ConfigError

ROOT = "10.0.0.1:7070"


def leaf(**overrides: Any) -> CoordinatorConfig:
    return CoordinatorConfig(listen="127.0.0.1:7071", upstream=ROOT, **overrides)


def test_a_leaf_needs_no_initial_model_of_its_own() -> None:
    config = leaf()

    assert config.upstream == ROOT
    assert not config.init_model
    assert not config.seed_from_first_client


@pytest.mark.parametrize(
    ("overrides", "named", "why"),
    [
        (
            {"privacy": "central", "dp_clip_norm": 1.0, "dp_noise_multiplier": 1.0,
             "weighting": "equal"},
            "privacy",
            "central DP belongs there",
        ),
        ({"seed_from_first_client": True}, "seed_from_first_client", "root owns"),
        ({"checkpoint_dir": "/tmp/x"}, "checkpoint_dir", "no state of its own"),
        ({"aggregator": "median", "accumulator": "spool"}, "aggregator", "'mean'"),
        ({"round_mode": "buffered_async"}, "round_mode", "sync rounds"),
    ],
)  # fmt: skip
def test_settings_a_leaf_cannot_honour_are_refused_naming_them(
    overrides: dict[str, Any], named: str, why: str
) -> None:
    with pytest.raises(ConfigError, match=f"^{named}=.*upstream = '{ROOT}'.*{why}"):
        leaf(**overrides)


def test_init_model_on_a_leaf_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"x")  # existence is all the config checks

    with pytest.raises(ConfigError, match=r"init_model=.*the root owns"):
        leaf(init_model=str(path))


def test_a_leaf_of_itself_and_a_malformed_upstream_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"upstream=.*not this coordinator's own"):
        CoordinatorConfig(listen=ROOT, upstream=ROOT)
    with pytest.raises(ConfigError, match="upstream='root' is invalid: expected host"):
        CoordinatorConfig(upstream="root")
    with pytest.raises(ConfigError, match="upstream_timeout_s=0"):
        CoordinatorConfig(upstream_timeout_s=0)


def test_serve_flags_set_the_upstream_keys() -> None:
    args = build_parser().parse_args(
        ["serve", "--upstream", ROOT, "--upstream-timeout-s", "3",
         "--upstream-round-wait-s", "60", "--upstream-tls-ca", "ca.pem"]
    )  # fmt: skip

    assert args.upstream == ROOT
    assert args.upstream_timeout_s == 3.0
    assert args.upstream_round_wait_s == 60.0
    assert args.upstream_tls_ca == "ca.pem"


def test_a_leaf_held_to_sha256_offers_its_root_sha256_only() -> None:
    fips = CoordinatorConfig(upstream=ROOT, update_hash="sha256")
    default = CoordinatorConfig(upstream=ROOT)

    assert upstream_client_config(fips).hashes == ("sha256",)
    assert upstream_client_config(default).hashes == ("blake3", "sha256")
