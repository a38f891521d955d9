"""The coordinator of a simulated federation: SimulationConfig -> CoordinatorConfig.

Apart from the launcher because the choices here (the quorum, the codec,
open enrollment) are the simulation's policy, not its process plumbing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from fedgrpc.config import CoordinatorConfig

if TYPE_CHECKING:
    from fedgrpc.sim.launcher import SimulationConfig


def coordinator_config(config: SimulationConfig, init_model: Path) -> CoordinatorConfig:
    """A loopback coordinator that waits for every simulated client each round."""
    trust_overrides = {
        name: getattr(config, name)
        for name in ("trust_decay", "trust_soft_threshold", "trust_hard_threshold",
                     "trust_quarantine_rounds")
        if getattr(config, name) is not None
    }  # fmt: skip
    return CoordinatorConfig(
        listen="127.0.0.1:0",
        init_model=str(init_model),
        min_clients=_quorum(config),
        max_clients=config.clients,
        max_rounds=config.rounds,  # the coordinator ends the run; clients see it
        inner_steps=config.inner_steps,
        round_timeout_s=config.round_timeout_s,
        outer_optimizer=config.outer_optimizer,
        outer_lr=config.outer_lr,
        outer_momentum=config.outer_momentum,
        outer_beta1=config.outer_beta1,
        outer_beta2=config.outer_beta2,
        outer_tau=config.outer_tau,
        outer_optimizer_params=config.outer_optimizer_params,
        aggregator=config.aggregator,
        trimmed_mean_beta=config.trimmed_mean_beta,
        krum_f=config.krum_f,
        multi_krum_m=config.multi_krum_m,
        geomedian_iters=config.geomedian_iters,
        geomedian_eps=config.geomedian_eps,
        clipping_tau=config.clipping_tau,
        clipping_iters=config.clipping_iters,
        norm_bound=config.norm_bound,
        norm_bound_multiple=config.norm_bound_multiple,
        trust=config.trust,
        **trust_overrides,
        accumulator=config.accumulator,
        spool_dir=config.spool_dir,
        selection=config.selection,
        clients_per_round=config.clients_per_round,
        codec=_codec(config),
        secure_aggregation=config.secure_aggregation,
        heartbeat_interval_s=2.0,
        session_timeout_s=60.0,
        # Throwaway client keys on one machine: nobody to enrol. Still signed.
        open_enrollment=True,
    )


def _quorum(config: SimulationConfig) -> int:
    """`min_clients`: every client (or every selected one), unless trust is on.

    A round closes once every connected client it waits for has pushed and
    at least `min_clients` did. A hard-quarantined client is excluded and
    not waited for (`rules._expected`), so with `min_clients = clients` a
    run with a quarantined attacker could never meet its quorum again: each
    round would wait `round_timeout_s` and be skipped. With trust on the
    quorum is ceil(clients / 2), the honest majority that trust scores and
    the robust aggregators assume: quarantining up to a minority leaves
    rounds that still apply; quarantining more (which trust can do only if
    attackers are the majority, or honest clients are false positives)
    leaves fewer than half, and skipped rounds then show it. It does not
    use the simulator's knowledge of who attacks. Rounds still wait for
    every client that is not excluded (all have joined before any trains:
    see `_run`), so a lower floor never closes a round early.
    """
    everyone = config.clients_per_round or config.clients
    if config.trust != "on":
        return everyone
    return min(everyone, math.ceil(config.clients / 2))


def _codec(config: SimulationConfig) -> str:
    """The codec; secure aggregation needs integer codes (int8 unless chosen)."""
    if config.secure_aggregation and config.compression == "dense:fp32":
        return "dense:int8"
    return config.compression
