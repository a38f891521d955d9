"""From a `CoordinatorConfig` (and the Python API's objects) to the built stages.

The config carries stage settings as TOML-able values (`aggregator =
"median"`, `outer_optimizer = "pkg.mod:Class"`); the Python API may also pass
ready objects (`StagePlugins`), which win over the config's names. This is
the one place both are turned into what the round engine holds, so `fedgrpc
serve`, the in-process coordinator and the tests build stages the same way
and get the same refusals (a `ConfigError` naming the settings) at start.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from fedgrpc.config import CoordinatorConfig, OuterOptimizerName
from fedgrpc.coordinator.strategy.combinations import AccumulatorName
from fedgrpc.coordinator.strategy.pipeline import RoundStages, StrategySettings
from fedgrpc.coordinator.strategy.plugins import is_plugin_spec, load_outer_optimizer
from fedgrpc.coordinator.strategy.selection import SelectionName
from fedgrpc.coordinator.strategy.trust import TrustBook
from fedgrpc.errors import ConfigError
from fedgrpc.optim import AdaptiveSettings, OuterOptimizer, build_outer_optimizer
from fedgrpc.optim.offload import DiskStateOptimizer

_RULE_PARAMS = {
    "trimmed_mean_beta": "beta",
    "krum_f": "f",
    "multi_krum_m": "m",
    "geomedian_iters": "iters",
    "geomedian_eps": "eps",
    "clipping_tau": "tau",
    "clipping_iters": "iters",
}
"""Config setting -> keyword of the built-in aggregator it is for (the config
refuses a setting given with another aggregator, so keywords never clash)."""


def bound_of(config: CoordinatorConfig) -> tuple[float | None, float | None]:
    """(norm_bound, norm_bound_multiple): the pre-step's bound, or (None, None)."""
    return config.norm_bound, config.norm_bound_multiple


@dataclass(frozen=True, slots=True)
class StagePlugins:
    """Stage objects given through the Python API instead of config names.

    Each may be a ready instance, a class or a factory (called with the
    config's `aggregator_params` / `outer_optimizer_params`); None keeps the
    config's setting.
    """

    aggregator: object | None = None
    outer_optimizer: object | None = None


NO_PLUGINS = StagePlugins()


def build_round_stages(
    config: CoordinatorConfig, plugins: StagePlugins = NO_PLUGINS
) -> RoundStages:
    """The run's `RoundStages` (plugins loaded, combinations checked).

    Raises:
        ConfigError: a bad aggregator, or an impossible combination (the
            message names both settings).
    """
    params: dict[str, Any] = dict(config.aggregator_params)
    for setting, keyword in _RULE_PARAMS.items():
        value = getattr(config, setting)
        if value is not None:
            params[keyword] = value
    is_hybrid = plugins.aggregator is None and config.aggregator == "hybrid"
    if is_hybrid:  # the hybrid rule takes the bound itself
        params["bound"], params["multiple"] = bound_of(config)
    settings = StrategySettings(
        aggregator=plugins.aggregator or config.aggregator,
        aggregator_params=params,
        norm_bound=(None, None) if is_hybrid else bound_of(config),
        accumulator=trust_accumulator(config),
        spool_dir=Path(config.spool_dir) if config.spool_dir else None,
        secure_aggregation=config.secure_aggregation,
        selection=cast(SelectionName, config.selection),
        clients_per_round=config.clients_per_round,
        min_clients=config.min_clients,
        max_updates=config.max_clients,
        staging_memory_bytes=config.staging_memory_mb << 20,
        sum_on_disk=lean_sum(config),
    )
    if config.secure_aggregation and config.selection != "all":
        raise ConfigError(
            f"selection = {config.selection!r} picks a round's clients, but "
            "secure_aggregation = true masks among every connected client; "
            "use selection = 'all' with secure aggregation"
        )
    return RoundStages(settings)


def lean_sum(config: CoordinatorConfig) -> bool:
    """True if the run's round sums may stay on disk (`rounds.disk_step`).

    The lean settings (every update staged on disk, the outer state on disk)
    and nothing that needs the whole mean in RAM: central or distributed DP
    (clip, noise), secure aggregation (its ring), trust scores, a compressed
    downlink (its residual), shards and streaming fragments (a range of the
    model), a tree leaf (it relays the mean). The aggregator is checked by
    `RoundStages` (only the plain weighted mean).
    """
    return (
        config.staging_memory_mb == 0
        and config.outer_state_on_disk
        and config.round_mode != "streaming"
        and config.privacy == "off"
        and config.trust != "on"
        and not config.secure_aggregation
        and config.downlink_codec_config is None
        and config.shard_count == 1
        and not config.upstream
    )


def build_outer(
    config: CoordinatorConfig, plugins: StagePlugins = NO_PLUGINS
) -> OuterOptimizer:
    """The outer optimizer: the API's object, a `module:Class`, or a built-in.

    A plugin is checked against the OuterOptimizer Protocol now; its
    `state_dict` is checkpointed like a built-in's.

    Raises:
        ConfigError: see `load_outer_optimizer` and `build_outer_optimizer`;
            `outer_state_on_disk` with a plugin.
    """
    params = config.outer_optimizer_params
    plugin = plugins.outer_optimizer is not None or is_plugin_spec(
        config.outer_optimizer
    )
    if plugin and config.outer_state_on_disk:
        raise ConfigError(
            "outer_state_on_disk = true needs a built-in outer_optimizer: the "
            "state is stepped 4 MiB at a time, which only an elementwise "
            "optimizer allows (a plugin may not be one)"
        )
    if plugins.outer_optimizer is not None:
        return load_outer_optimizer(plugins.outer_optimizer, params=params)
    if is_plugin_spec(config.outer_optimizer):
        return load_outer_optimizer(config.outer_optimizer, params=params)
    built = build_outer_optimizer(
        cast(OuterOptimizerName, config.outer_optimizer),
        config.resolved_outer_lr,
        config.resolved_outer_momentum,
        AdaptiveSettings(
            beta1=config.resolved_outer_beta1,
            beta2=config.resolved_outer_beta2,
            tau=config.resolved_outer_tau,
        ),
    )
    if config.outer_state_on_disk:  # one model-sized buffer less (`optim.offload`)
        return DiskStateOptimizer(built, config.spool_dir)
    return built


def build_trust(config: CoordinatorConfig) -> TrustBook | None:
    """The run's `TrustBook`, or None with trust = 'off'."""
    if config.trust != "on":
        return None
    return TrustBook(config.trust_settings())


def trust_accumulator(config: CoordinatorConfig) -> AccumulatorName:
    """The accumulator setting to build with `config.trust` (spool when on).

    Trust needs each update's own statistics, which only the spool keeps
    (the streaming sum folds them together; secure aggregation hides them).

    Raises:
        ConfigError: trust = 'on' with secure aggregation or the streaming
            sum, naming both settings.
    """
    accumulator = cast(AccumulatorName, config.accumulator)
    if config.trust != "on":
        return accumulator
    if config.secure_aggregation:
        raise ConfigError(
            "trust = 'on' scores each client's own update, but "
            "secure_aggregation = true lets the coordinator see only their sum; "
            "turn one of them off"
        )
    if accumulator == "streaming_sum":
        raise ConfigError(
            "trust = 'on' scores each client's own update, but accumulator = "
            "'streaming_sum' keeps only their running sum; set accumulator = "
            "'spool' (or 'auto')"
        )
    return "spool"
