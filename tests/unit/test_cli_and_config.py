"""The CLI documents every flag; the example TOML states the real defaults."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from fedgrpc.cli import build_parser
from fedgrpc.config import CoordinatorConfig
from fedgrpc.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_every_flag_has_help_text() -> None:
    parser = build_parser()
    commands = _subparsers(parser)
    assert {"serve", "simulate"} <= set(commands)
    for name, sub in commands.items():
        text = sub.format_help()
        for action in sub._actions:
            for flag in action.option_strings:
                assert flag in text, (name, flag)
            assert action.help, f"{name} {action.option_strings} has no help"


def test_serve_flags_cover_every_config_field() -> None:
    serve = _subparsers(build_parser())["serve"]
    dests = {a.dest for a in serve._actions}
    fields = {f.name for f in dataclasses.fields(CoordinatorConfig)}
    assert fields <= dests, f"no flag for {fields - dests}"


def test_example_toml_matches_the_defaults() -> None:
    example = CoordinatorConfig.from_toml(REPO / "server/coordinator.example.toml")
    assert example == CoordinatorConfig()


def test_toml_errors_name_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[coordinator]\nouter_optimizer = 'adam'\n")
    with pytest.raises(ConfigError, match="outer_optimizer='adam' is invalid"):
        CoordinatorConfig.from_toml(path)
    path.write_text("[coordinator\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        CoordinatorConfig.from_toml(path)
    with pytest.raises(ConfigError, match="does not exist"):
        CoordinatorConfig.from_toml(tmp_path / "missing.toml")
    path.write_text("[coordinator]\nmin_clients = 2\n")
    assert CoordinatorConfig.from_toml(path, min_clients=5).min_clients == 5


def test_outer_optimizer_defaults_follow_the_choice() -> None:
    assert CoordinatorConfig().resolved_outer_lr == 0.7
    assert CoordinatorConfig().resolved_outer_momentum == 0.9
    fedavg = CoordinatorConfig(outer_optimizer="fedavg")
    assert (fedavg.resolved_outer_lr, fedavg.resolved_outer_momentum) == (1.0, 0.0)


def test_sparseloco_announces_plain_sgd_and_a_decaying_residual() -> None:
    from fedgrpc._proto.v1 import common_pb2
    from fedgrpc.wire.convert import round_config_to_proto

    config = CoordinatorConfig(outer_optimizer="sparseloco", codec="topk:0.01:int8")
    assert (config.resolved_outer_lr, config.resolved_outer_momentum) == (1.0, 0.0)
    assert config.resolved_feedback_decay == 0.95
    announced = round_config_to_proto(config)
    assert announced.outer_optimizer == common_pb2.OUTER_OPTIMIZER_SPARSELOCO
    assert announced.codec_params.feedback_decay == 0.95
    assert round_config_to_proto(CoordinatorConfig()).codec_params.feedback_decay == 1
    with pytest.raises(ConfigError, match="feedback_decay"):
        CoordinatorConfig(feedback_decay=1.5)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"update_signatures": "off"}, "required unless open_enrollment"),
        ({"update_signatures": "maybe", "open_enrollment": True}, "required or off"),
        ({"update_hash": "md5"}, "blake3 | sha256"),
        ({"allowed_client_keys": ".", "open_enrollment": True}, "choose one"),
        ({"allowed_client_keys": "."}, "identity_key=''"),
        (
            {"identity_key": "/nonexistent.key", "open_enrollment": True},
            "cannot be read",
        ),
    ],
)
def test_identity_settings_are_checked_at_construction(
    settings: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        CoordinatorConfig(**settings)  # type: ignore[arg-type]


def test_identity_flags_override_the_toml(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[coordinator]\nopen_enrollment = true\n")
    args = build_parser().parse_args(
        ["serve", "--config", str(path), "--update-signatures", "off"]
    )
    overrides = {"update_signatures": args.update_signatures, "open_enrollment": None}
    config = CoordinatorConfig.from_toml(path, **overrides)
    assert config.open_enrollment
    assert config.update_signatures == "off"
    assert build_parser().parse_args(["serve"]).open_enrollment is None  # no override
    assert build_parser().parse_args(["serve", "--open-enrollment"]).open_enrollment


def test_update_hash_from_toml_and_flag_and_per_client(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[coordinator]\nupdate_hash = "sha256"\n')
    assert CoordinatorConfig().update_hash == "blake3"  # the default
    assert CoordinatorConfig.from_toml(path).update_hash == "sha256"
    args = build_parser().parse_args(["serve", "--update-hash", "sha256"])
    assert args.update_hash == "sha256"
    # Negotiated per client: BLAKE3 only if the run allows it and it offered it.
    blake3_run, fips_run = CoordinatorConfig(), CoordinatorConfig(update_hash="sha256")
    assert blake3_run.update_hash_for(("sha256", "blake3")) == "blake3"
    assert blake3_run.update_hash_for(("sha256",)) == "sha256"  # older clients
    assert fips_run.update_hash_for(("sha256", "blake3")) == "sha256"


def test_client_identity_settings(tmp_path: Path) -> None:
    from fedgrpc.config import ClientConfig

    assert ClientConfig(coordinator_key="AB" * 32).coordinator_key == "AB" * 32
    with pytest.raises(ConfigError, match=r"coordinator_key='pin\.pub' cannot be read"):
        ClientConfig(coordinator_key="pin.pub")
    with pytest.raises(ConfigError, match="identity_key="):
        ClientConfig(identity_key=str(tmp_path / "missing.key"))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "dense:int8 or dense:int4"),
        ({"codec": "topk:0.01:int8"}, "top-k supports cannot be summed"),
        ({"codec": "dense:int8", "min_clients": 2}, "with two, the sum"),
        ({"codec": "dense:int8", "min_clients": 3, "secagg_threshold": 1.5},
         "whole count >= 2"),
    ],
)  # fmt: skip
def test_secure_aggregation_refuses_what_cannot_be_summed(
    settings: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        CoordinatorConfig(secure_aggregation=True, **settings)  # type: ignore[arg-type]


def test_secure_aggregation_flags_reach_the_config() -> None:
    args = build_parser().parse_args(
        ["serve", "--secure-aggregation", "--codec", "dense:int8",
         "--min-clients", "3", "--secagg-threshold", "0.7", "--secagg-clip", "0.1"]
    )  # fmt: skip
    config = CoordinatorConfig().replace(
        secure_aggregation=args.secure_aggregation, codec=args.codec,
        min_clients=args.min_clients, secagg_threshold=args.secagg_threshold,
        secagg_clip=args.secagg_clip,
    )  # fmt: skip
    assert config.secure_aggregation
    assert config.secagg_threshold == pytest.approx(0.7)
    assert config.secagg_clip == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"secagg_density": 0.0},
         r"secagg_density=0\.0 is invalid: expected a fraction in \(0, 1\]"),
        ({"secagg_density": 1.5}, "secagg_density=1.5 is invalid"),
        ({"secagg_density": float("nan")}, "secagg_density=nan is invalid"),
        ({"secagg_random_fraction": -0.1},
         r"secagg_random_fraction=-0\.1 is invalid: expected a fraction in \[0, 1\]"),
        ({"secagg_random_fraction": 1.01}, "secagg_random_fraction=1.01 is invalid"),
        ({"secagg_index_rule": "magnitude"},
         r"secagg_index_rule=.?magnitude.? is invalid: expected \"momentum\""),
        ({"secagg_index_chunk": 0}, "secagg_index_chunk=0 is invalid"),
        ({"secagg_index_rule": "chunk_norm", "privacy": "distributed",
          "dp_clip_norm": 1.0, "dp_noise_multiplier": 1.0,
          "secure_aggregation": True, "codec": "dense:int8", "min_clients": 3},
         "chunk norms would need noise too"),
    ],
)  # fmt: skip
def test_shared_index_settings_are_checked_at_construction(
    settings: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        CoordinatorConfig(**settings)  # type: ignore[arg-type]


def test_shared_index_flags_reach_the_config_and_default_to_dense() -> None:
    args = build_parser().parse_args(
        ["serve", "--secagg-density", "0.01", "--secagg-random-fraction", "0.2"]
    )
    config = CoordinatorConfig().replace(
        secagg_density=args.secagg_density,
        secagg_random_fraction=args.secagg_random_fraction,
    )
    assert config.secagg_density == pytest.approx(0.01)
    assert config.secagg_random_fraction == pytest.approx(0.2)
    assert CoordinatorConfig().secagg_density == 1.0  # dense: the safe default
    rule = build_parser().parse_args(
        ["serve", "--secagg-index-rule", "chunk_norm", "--secagg-index-chunk", "32"]
    )
    assert (rule.secagg_index_rule, rule.secagg_index_chunk) == ("chunk_norm", 32)
    aged = build_parser().parse_args(["serve", "--secagg-index-rule", "residual_age"])
    assert aged.secagg_index_rule == "residual_age"


def test_the_residual_age_rule_loads_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.toml"
    path.write_text(
        "[coordinator]\nsecagg_density = 0.1\nsecagg_random_fraction = 0.3\n"
        'secagg_index_rule = "residual_age"\nouter_optimizer = "sparseloco"\n'
    )
    config = CoordinatorConfig.from_toml(path)
    assert (config.secagg_index_rule, config.secagg_random_fraction) == (
        "residual_age", 0.3,
    )  # fmt: skip
    path.write_text('[coordinator]\nsecagg_index_rule = "residual-age"\n')
    with pytest.raises(ConfigError, match=r"secagg_index_rule=.?residual-age.? is"):
        CoordinatorConfig.from_toml(path)


def test_the_residual_age_rule_runs_under_distributed_privacy() -> None:
    """It ranks by the (noised) unmasked mean only: post-processing, no tail."""
    config = CoordinatorConfig(
        secagg_index_rule="residual_age", privacy="distributed", dp_clip_norm=1.0,
        dp_noise_multiplier=1.0, secure_aggregation=True, codec="dense:int8",
        min_clients=3, secagg_density=0.1,
    )  # fmt: skip
    assert config.secagg_index_rule == "residual_age"
