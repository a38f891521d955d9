"""Parameter sharding's settings, map and commit decision (no network)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from fedgrpc.cli import build_parser, main, serve_config
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.shards.board import CommitBoard, Proposal, decide
from fedgrpc.domain.model_spec import DType, ModelSpec, TensorSpec
from fedgrpc.domain.shards import parse_shard, shard_cuts, shard_ranges
from fedgrpc.errors import ConfigError

PEERS = ("127.0.0.1:7001", "127.0.0.1:7002")


def shard(**overrides: Any) -> CoordinatorConfig:
    settings: dict[str, Any] = {
        "shard": "1/2",
        "shard_peers": PEERS,
        "shard_token_file": "token",
        **overrides,
    }
    return CoordinatorConfig(**settings)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("3/2", "the shard index I must be 0..1"),
        ("2/2", "the shard index I must be 0..1"),
        ("0/0", "the shard count N must be 1..64"),
        ("1", "is not I/N"),
        ("a/b", "is not I/N"),
        ("0/65", "the shard count N must be 1..64"),
    ],
)
def test_malformed_shard_values_are_refused_clearly(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_shard(value)
    with pytest.raises(ConfigError, match=f"shard='{value}' is invalid: .*{message}"):
        shard(shard=value)


def test_the_cli_refuses_bad_shard_values_with_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for argv, message in [
        (["--shard", "3/2"], "the shard index I must be 0..1"),
        (["--shard", "0/0"], "the shard count N must be 1..64"),
        (["--shard", "0/2", "--shard-peers", "a:1"], "expected 2 host:port"),
        (["--shard", "0/2", "--shard-peers", "a:1,b:2"], "shard_token_file"),
    ]:
        assert main(["serve", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("fedgrpc serve: error: "), err
        assert message in err, err


def test_serve_flags_and_toml_set_the_shard_keys(tmp_path: Path) -> None:
    args = build_parser().parse_args([
        "serve", "--shard", "1/2", "--shard-peers", " 127.0.0.1:7001, 127.0.0.1:7002",
        "--shard-token-file", "token", "--shard-commit-timeout-s", "7",
    ])  # fmt: skip
    config = serve_config(args)
    assert (config.shard_index, config.shard_count) == (1, 2)
    assert config.shard_peers == PEERS
    assert config.shard_commit_timeout_s == 7.0
    toml = tmp_path / "c.toml"
    toml.write_text(
        '[coordinator]\nshard = "0/2"\nshard_token_file = "t"\n'
        'shard_peers = ["127.0.0.1:7001", "127.0.0.1:7002"]\n'
    )
    loaded = CoordinatorConfig.from_toml(toml)
    assert loaded.shard_peers == PEERS  # a TOML array becomes a tuple
    assert (loaded.shard_index, loaded.shard_count) == (0, 2)


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        ({"shard_peers": PEERS[:1]}, "shard_peers"),
        ({"shard_peers": (*PEERS, "127.0.0.1:7003")}, "shard_peers"),
        ({"shard_peers": ("nohost", "127.0.0.1:7002")}, "shard_peers"),
        ({"shard_token_file": ""}, "shard_token_file"),
        ({"shard_commit_timeout_s": 0.0}, "shard_commit_timeout_s"),
        ({"round_mode": "buffered_async"}, "round_mode"),
        ({"downlink_codec": "dense:int8"}, "downlink_codec"),
        ({"aggregator": "median"}, "aggregator"),
        ({"upstream": "127.0.0.1:9999"}, "upstream"),
        ({"selection": "random", "clients_per_round": 2}, "selection"),
        ({"secure_aggregation": True, "codec": "dense:int8", "min_clients": 3,
          "secagg_density": 0.5}, "secagg_density"),
    ],
)  # fmt: skip
def test_settings_a_shard_cannot_honour_are_refused_naming_them(
    overrides: dict[str, Any], name: str
) -> None:
    with pytest.raises(ConfigError, match=f"^{name}="):
        shard(**overrides)


def test_a_shard_takes_dense_secure_aggregation_over_its_own_range() -> None:
    config = shard(secure_aggregation=True, codec="dense:int8", min_clients=3)
    assert config.secure_aggregation
    assert (config.shard_index, config.shard_count) == (1, 2)


def test_unsharded_coordinators_take_no_peers() -> None:
    assert CoordinatorConfig().shard_count == 1
    with pytest.raises(ConfigError, match="shard_peers"):
        CoordinatorConfig(shard_peers=PEERS)


def _spec(*sizes: int) -> ModelSpec:
    return ModelSpec(
        tuple(TensorSpec(f"t{i}", (n,), DType.FLOAT32) for i, n in enumerate(sizes))
    )


def test_cuts_are_block_aligned_contiguous_and_cover_everything() -> None:
    cuts = shard_cuts(10_000, 3, block=256)
    assert all(c % 256 == 0 for c in cuts[:-1])
    assert cuts == (0, 3328, 6656, 10_000)  # floor(k n / N) down to a block
    with pytest.raises(ValueError, match="every shard needs at least one block"):
        shard_cuts(300, 2, block=256)
    ranges = shard_ranges(_spec(100, 200, 10), (0, 256, 310))
    assert [(r.coord_start, r.coord_stop) for r in ranges] == [(0, 256), (256, 310)]
    assert [(r.byte_start, r.byte_stop) for r in ranges] == [(0, 1024), (1024, 1240)]
    with pytest.raises(ValueError, match="do not split this model's 310"):
        shard_ranges(_spec(100, 200, 10), (0, 256, 300))


def _proposal(index: int, clients: tuple[str, ...] = ("a", "b"), **kw: Any) -> Proposal:
    values: dict[str, Any] = {"base_version": 4, "total_weight": 3.0, "usable": True}
    values.update(kw)
    return Proposal(index, clients=clients, **values)


def test_a_round_applies_only_when_every_shard_committed_the_same() -> None:
    assert decide([_proposal(0), _proposal(1)]) == (True, "")
    for other in (
        _proposal(1, ("a",)),
        _proposal(1, total_weight=2.0),
        _proposal(1, base_version=3),
        _proposal(1, usable=False),
    ):
        apply, reason = decide([_proposal(0), other])
        assert not apply
        assert "shard 1" in reason


def test_the_board_waits_for_all_then_times_out_to_skip() -> None:
    async def scenario() -> None:
        board = CommitBoard(2, timeout_s=0.2)
        both = await asyncio.gather(
            board.propose(1, _proposal(0)), board.propose(1, _proposal(1))
        )
        assert list(both) == [(True, ""), (True, "")]
        alone = await board.propose(2, _proposal(1))
        assert not alone[0]
        assert "shard(s) 0 did not propose round 2" in alone[1]
        late = await board.propose(2, _proposal(0))  # the decision stands
        assert late == alone
        assert board.rounds_seen == (1, 2)

    asyncio.run(scenario())
