"""privacy.distributed: a client's noisy share, the stage, its config, its wire form."""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import pytest
import torch

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.secure.noise import round_noise_for
from fedgrpc.crypto.keys import PrivateKey
from fedgrpc.errors import ConfigError, InvalidUpdateError
from fedgrpc.privacy import PrivacyLedger
from fedgrpc.privacy.distributed import (
    DistributedGaussian,
    build_distributed_stage,
    encode_noisy_share,
    noised_sum,
)
from fedgrpc.privacy.stage import PrivacyStage
from fedgrpc.secagg import FixedPointScale, NoiseShareSpec, RoundSetup
from fedgrpc.wire.secagg import SecureRoundSetup, setup_from_proto, setup_to_proto


def dp_config(**overrides: object) -> CoordinatorConfig:
    settings: dict[str, object] = {
        "secure_aggregation": True,
        "codec": "dense:int8",
        "min_clients": 3,
        "privacy": "distributed",
        "dp_clip_norm": 1.0,
        "dp_noise_multiplier": 1.0,
        "secagg_clip": 0.5,
    }
    settings.update(overrides)
    return CoordinatorConfig(**settings)  # type: ignore[arg-type]


def stage(**overrides: object) -> DistributedGaussian:
    return build_distributed_stage(dp_config(**overrides))


def test_a_clients_share_is_clipped_rounded_within_the_bound_and_noised() -> None:
    rng = np.random.default_rng(0)
    scale = FixedPointScale(0.5, 8)
    plan = stage().plan_round(dimension=20_000, step=scale.scale, value_bits=8,
                              participants=4)  # fmt: skip
    x = rng.normal(size=20_000) * 0.05  # norm ~7: seven times S

    share = encode_noisy_share(
        x, clip_norm=1.0, step=scale.scale, qmax=scale.qmax,
        norm_bound=plan.norm_bound, client_std=plan.client_std, rng=rng,
    )  # fmt: skip

    assert share.norm == pytest.approx(float(np.linalg.norm(x)))
    assert float(np.linalg.norm(share.codes)) <= plan.norm_bound
    # Dequantised, the codes are the clipped update (to rounding).
    sent = share.codes * scale.scale
    clipped = x * (1.0 / np.linalg.norm(x))
    assert float(np.linalg.norm(sent - clipped)) < 0.6 * scale.scale * math.sqrt(x.size)
    assert np.abs(share.codes).max() <= scale.qmax
    # Noise of the announced variance (std of the estimate: 1 %).
    assert share.noise.var() / plan.client_std**2 == pytest.approx(1.0, abs=0.05)
    assert share.noise.dtype == np.int64


def test_the_noise_is_sized_for_min_survivors_and_the_ring_widened() -> None:
    plan = stage(min_clients=4).plan_round(dimension=5000, step=0.5 / 127,
                                           value_bits=8, participants=6)  # fmt: skip

    assert plan.min_survivors == 4
    assert plan.noise_multiplier(4) == pytest.approx(1.0, rel=1e-9)
    assert plan.noise_multiplier(6) == pytest.approx(math.sqrt(6 / 4), rel=1e-9)
    assert plan.ring_bits > 8 + 3
    # The sensitivity is the rounded bound, not S / step: rounding costs noise.
    assert plan.norm_bound > 1.0 / (0.5 / 127)


def test_the_release_is_taken_once_after_an_unmasked_sum() -> None:
    dp = stage()
    plan = dp.plan_round(dimension=100, step=0.01, value_bits=8, participants=5)

    assert isinstance(dp, PrivacyStage)
    assert dp.round_release(5, 5) is None  # nothing unmasked yet
    dp.unmasked(plan, 5)
    release = dp.round_release(5, 10)
    assert dp.round_release(5, 10) is None

    assert release is not None
    assert release.noise_multiplier == pytest.approx(math.sqrt(5 / 3), rel=1e-9)
    assert release.sampling_rate == 1.0  # never amplified: the coordinator knows who
    total = torch.ones(4)
    dp.finish_aggregate(total, 5, torch.Generator())
    assert torch.equal(total, torch.ones(4))
    assert "dp_min_survivors = 3" in (dp.refuse_unmask(plan, 2) or "")
    assert dp.refuse_unmask(plan, 3) is None
    dp.budget = lambda r: f"z {r.noise_multiplier:.3g} spends too much"
    assert dp.refuse_unmask(plan, 5) == "z 1.29 spends too much"


def test_a_target_epsilon_is_calibrated_over_max_rounds() -> None:
    dp = stage(dp_noise_multiplier=0.0, dp_target_epsilon=8.0, max_rounds=20)

    ledger = PrivacyLedger("rdp")
    plan = dp.plan_round(dimension=1000, step=0.01, value_bits=8, participants=3)
    for _ in range(20):
        ledger.record(plan.release(3))
    assert ledger.epsilon(1e-5) == pytest.approx(8.0, rel=0.01)
    assert ledger.epsilon(1e-5) <= 8.0 + 1e-6


def test_noise_that_no_ring_holds_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match=r"cannot work.*64 bits"):
        stage(dp_noise_multiplier=1e16, secagg_clip=1e-6)


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"secure_aggregation": False, "min_clients": 1}, "secure_aggregation"),
        ({"dp_accountant": "pld"}, "dp_accountant"),
        ({"dp_min_survivors": 2}, "dp_min_survivors"),
        ({"dp_min_survivors": 9, "max_clients": 8}, "dp_min_survivors"),
        ({"dp_rounding_beta": 1.0}, "dp_rounding_beta"),
    ],
)
def test_distributed_settings_that_cannot_work_are_refused(
    overrides: dict[str, object], names: str
) -> None:
    with pytest.raises(ConfigError, match=names):
        dp_config(**overrides)


def announce(noise: NoiseShareSpec | None, ring_bits: int) -> SecureRoundSetup:
    ids = ("a", "b", "c")
    keys = {c: PrivateKey.generate().public_key for c in ids}
    setup = RoundSetup(session_id=b"run" + bytes(16), round_id=4, participants=ids,
                       graph_seed=os.urandom(32), value_bits=8,
                       ring_bits=ring_bits)  # fmt: skip
    return SecureRoundSetup(setup, keys, bytes(16), FixedPointScale(0.5, 8), 10,
                            noise=noise)  # fmt: skip


def test_the_noise_share_travels_in_the_setup_and_is_signed() -> None:
    noise = NoiseShareSpec(1.0, 148.5, 257.1)
    sent = announce(noise, 13)

    message = setup_to_proto(sent)
    received = setup_from_proto(message, "run", 10)

    assert message.ring_bits == 13
    assert message.dp_noise_std == 148.5
    assert received.noise == noise
    assert received.setup.ring().bits == 13
    assert received.statement() == sent.statement()
    louder = dataclasses.replace(sent, noise=NoiseShareSpec(1.0, 1.0, 257.1))
    assert louder.statement() != sent.statement()
    plain = announce(None, 0)
    assert setup_to_proto(plain).ring_bits == 0
    assert setup_from_proto(setup_to_proto(plain), "run", 10).noise is None


def test_a_setup_with_noise_but_no_wider_ring_is_refused_by_the_client() -> None:
    message = setup_to_proto(announce(NoiseShareSpec(1.0, 2.0, 3.0), 13))
    message.ring_bits = 0
    with pytest.raises(InvalidUpdateError, match="ring_bits"):
        setup_from_proto(message, "run", 10)
    message.ring_bits = 13
    message.dp_noise_std = -1.0
    with pytest.raises(InvalidUpdateError, match="client_std"):
        setup_from_proto(message, "run", 10)


def test_a_target_epsilon_out_of_reach_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match="out of reach"):
        stage(dp_noise_multiplier=0.0, dp_target_epsilon=1e-4, max_rounds=10_000)


def test_distributed_noise_costs_about_what_central_noise_does_at_the_same_z() -> None:
    # 100 clients' clipped updates: the distributed sum's error against the
    # exact clipped sum, vs the central Gaussian's std z*S per coordinate.
    rng = np.random.default_rng(5)
    n, d, z = 100, 2_000, 1.0
    dp = stage(min_clients=n, dp_noise_multiplier=z, secagg_clip=0.1)
    scale = FixedPointScale(0.1, 8)
    plan = dp.plan_round(dimension=d, step=scale.scale, value_bits=8, participants=n)
    updates = rng.normal(size=(n, d)) * 0.02  # norm ~0.9 < S = 1: no clipping

    noised = noised_sum(updates, plan, scale.qmax, rng)

    error = (noised - updates.sum(axis=0)).std()
    central = z * 1.0
    # Extra: rounding inflates the sensitivity (Δ2 * step / S) and adds
    # at most n step^2 / 4 of rounding variance per coordinate; both small here.
    assert plan.norm_bound * scale.scale / 1.0 < 1.05
    assert error / central == pytest.approx(plan.norm_bound * scale.scale, rel=0.05)
    assert plan.release(n).noise_multiplier == pytest.approx(z, rel=1e-9)


def test_masked_rounds_arm_the_engines_own_stage() -> None:
    settings = dp_config()
    engine_stage = build_distributed_stage(settings)

    held = round_noise_for(settings, engine_stage)
    built = round_noise_for(settings, None)

    assert held is not None
    assert held.stage is engine_stage  # its round_release sees what was unmasked
    assert built is not None
    assert built.stage is not engine_stage
    assert round_noise_for(dp_config(privacy="off"), engine_stage) is None
