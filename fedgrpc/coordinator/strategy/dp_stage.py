"""From the config's privacy section to the run's Privacy stage, checked at start.

One function per job: `build_privacy_stage` picks the mechanism (one branch
per `privacy` mode, so `distributed` plugs in as one more), and
`resolve_noise` decides the noise multiplier z: the configured one, or the
least that keeps `max_rounds` rounds within `dp_target_epsilon`
(`privacy.noise_for_budget`, i.e. dp-accounting's calibration). Settings
under which the promised ε cannot hold are refused here, before the first
client joins, with a message naming the settings.
"""

from __future__ import annotations

from typing import cast

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.strategy.combinations import (
    AccumulatorKind,
    PrivacyChoice,
    check_central_privacy,
)
from fedgrpc.coordinator.strategy.selection import SelectionName
from fedgrpc.errors import ConfigError
from fedgrpc.privacy import Neighbouring, PrivacyLedger, Release, noise_for_budget
from fedgrpc.privacy.central import AdaptiveClipping, CentralGaussian, ClientSampling
from fedgrpc.privacy.distributed import build_distributed_stage
from fedgrpc.privacy.stage import NoPrivacy, PrivacyStage


def build_privacy_stage(
    config: CoordinatorConfig, accumulator: AccumulatorKind
) -> PrivacyStage:
    """The run's Privacy stage, by `privacy` (one branch per mode).

    Raises:
        ConfigError: a combination the mode cannot hold under (naming both
            settings), a mode this build lacks, or noise that cannot reach
            the target.
    """
    if config.privacy == "off":
        return NoPrivacy()
    if config.privacy == "central":
        return central_stage(config, accumulator)
    if config.privacy == "distributed":  # the config requires secure aggregation
        return build_distributed_stage(config)
    raise ConfigError(
        f"privacy = {config.privacy!r} is not available in this build of fedgrpc "
        "(only 'off', 'central' and 'distributed')"
    )


def central_stage(
    config: CoordinatorConfig, accumulator: AccumulatorKind
) -> CentralGaussian:
    """`CentralGaussian` after its combinations are checked and z is resolved.

    Raises:
        ConfigError: see `check_central_privacy`, `resolve_noise` and
            `check_first_round`.
    """
    bounded = (config.norm_bound, config.norm_bound_multiple) != (None, None)
    check_central_privacy(
        PrivacyChoice(
            accumulator=accumulator,
            accumulator_setting=config.accumulator,
            norm_bound=bounded,
            aggregator=config.aggregator,
            weighting=config.weighting,
            secure_aggregation=config.secure_aggregation,
            trust=config.trust,
            selection=cast(SelectionName, config.selection),
            accountant=config.dp_accountant,
        )
    )
    sampling: ClientSampling = "fixed" if config.selection == "random" else "all"
    adaptive = None
    if config.dp_adaptive_clip_quantile > 0:
        adaptive = AdaptiveClipping(
            config.dp_adaptive_clip_quantile,
            config.dp_clip_learning_rate,
            config.dp_clip_count_noise,
        )
    replace_one = sampling == "fixed"  # one client moves the sum by 2S
    z = resolve_noise(config, sensitivity_factor=2.0 if replace_one else 1.0)
    check_first_round(config, z, replace_one=replace_one)
    return CentralGaussian(config.dp_clip_norm, z, sampling=sampling, adaptive=adaptive)


def resolve_noise(config: CoordinatorConfig, sensitivity_factor: float = 1.0) -> float:
    """z: `dp_noise_multiplier`, or calibrated to `dp_target_epsilon`.

    Calibration covers `max_rounds` rounds at q = 1 (the population a
    `selection = random` round samples from is not known at start, and
    sampling only lowers ε, so the target is an upper bound then).
    `sensitivity_factor` is 2 under replace-one adjacency (one client moves
    the sum by 2S), where the accountant's multiplier is z / 2.

    Raises:
        ConfigError: a target without `max_rounds`, a target above
            `max_epsilon`, or one no noise up to 1000 x S reaches.
    """
    if config.dp_noise_multiplier > 0:
        return config.dp_noise_multiplier
    target, rounds = config.dp_target_epsilon, config.max_rounds
    if rounds <= 0:
        raise ConfigError(
            f"dp_target_epsilon = {target:g} calibrates the noise for the run's "
            "rounds, but max_rounds = 0 (no limit); set max_rounds, or set "
            "dp_noise_multiplier (and max_epsilon to bound the run)"
        )
    if 0 < config.max_epsilon < target:
        raise ConfigError(
            f"dp_target_epsilon = {target:g} is above max_epsilon = "
            f"{config.max_epsilon:g}: the run would stop before max_rounds; lower "
            "the target or raise max_epsilon"
        )
    neighbouring: Neighbouring = (
        "replace_one" if sensitivity_factor > 1 else "add_or_remove_one"
    )
    multiplier = noise_for_budget(
        target,
        config.dp_delta,
        Release(1.0, 1.0, count=rounds),
        config.dp_accountant,
        neighbouring,
    )
    return multiplier * sensitivity_factor


def check_first_round(config: CoordinatorConfig, z: float, replace_one: bool) -> None:
    """Refuse a `max_epsilon` that not even one round (at q = 1) fits in.

    Only for `selection = all`: a sampled round may fit where a full one
    does not, so it is left to the per-round check.

    Raises:
        ConfigError: naming max_epsilon and the noise.
    """
    if config.max_epsilon <= 0 or replace_one:
        return
    ledger = PrivacyLedger(config.dp_accountant)
    first = ledger.epsilon_after(Release(z), config.dp_delta)
    if first > config.max_epsilon:
        raise ConfigError(
            f"max_epsilon = {config.max_epsilon:g} is below what one round spends "
            f"at noise multiplier {z:g} (epsilon {first:.3g} at delta "
            f"{config.dp_delta:g}): no round could be applied; raise "
            "dp_noise_multiplier or max_epsilon"
        )
