"""Settings of one simulated federation, and the coordinator they give it.

`SimulationConfig` holds the `simulate` flags; `coordinator_config` turns it
into the loopback coordinator's `CoordinatorConfig`. The choices made there
(the quorum, the codec, open enrollment) are the simulation's policy; the
launcher (`fedgrpc.sim.launcher`) only runs processes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedgrpc.config import CoordinatorConfig, OuterOptimizerName
from fedgrpc.data import PartitionSpec
from fedgrpc.errors import FedGrpcError
from fedgrpc.sim import DEFAULT_CORPUS_BYTES
from fedgrpc.sim.attack_spec import AttackSpec, assign_attackers
from fedgrpc.sim.attacks import AttackPlan
from fedgrpc.sim.churn import DEFAULT_MAX_RESTARTS, check_crash_rate, check_speeds
from fedgrpc.sim.models import TrainDefaults
from fedgrpc.sim.tasks import TaskSettings

POISONING_ATTACKS = ("labelflip", "backdoor")
"""Attacks that poison char-LM batches (`fedgrpc.sim.poison`): char-LM only."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulationConfig:
    """Settings of one simulated federation (the `simulate` flags)."""

    clients: int = 4
    rounds: int = 20
    inner_steps: int = 50
    seed: int = 0
    task: str = "charlm"
    """What the clients train (`fedgrpc.sim.tasks`): charlm or digits."""
    partition: PartitionSpec = field(default_factory=PartitionSpec)
    """How the task's training data splits across clients (`--partition`),
    drawn from `seed`."""
    outer_optimizer: OuterOptimizerName | str = "nesterov"
    outer_optimizer_params: dict[str, Any] = field(default_factory=dict)
    aggregator: str = "mean"
    """The round's aggregator (`CoordinatorConfig.aggregator`), e.g. median."""
    trimmed_mean_beta: float | None = None
    krum_f: int | None = None
    multi_krum_m: int | None = None
    geomedian_iters: int | None = None
    geomedian_eps: float | None = None
    clipping_tau: float | None = None
    clipping_iters: int | None = None
    norm_bound: float | None = None
    norm_bound_multiple: float | None = None
    trust: str = "off"
    """Trust scores and hard quarantine (`--trust on`); see `_quorum`."""
    trust_decay: float | None = None
    trust_soft_threshold: float | None = None
    trust_hard_threshold: float | None = None
    trust_quarantine_rounds: int | None = None
    accumulator: str = "auto"
    spool_dir: str = ""
    selection: str = "all"
    clients_per_round: int | None = None
    round_mode: str = "sync"
    """How the coordinator paces rounds (`CoordinatorConfig.round_mode`)."""
    round_duration_s: float | None = None
    buffer_size: int | None = None
    max_staleness: int | None = None
    staleness_exponent: float | None = None
    fragments: int | None = None
    streaming_overlap_steps: int | None = None
    streaming_mix: float | None = None
    outer_lr: float | None = None
    outer_momentum: float | None = None
    outer_beta1: float | None = None
    outer_beta2: float | None = None
    outer_tau: float | None = None
    compression: str = "dense:fp32"
    """The coordinator's codec (`fedgrpc.compress.parse_codec` grammar)."""
    secure_aggregation: bool = False
    """Mask every round (SecAgg+); the codec then defaults to dense:int8."""
    proximal_mu: float = 0.0
    """FedProx strength of every client (`ClientConfig.proximal_mu`; 0: off)."""
    corpus_bytes: int = DEFAULT_CORPUS_BYTES
    eval_batches: int = 8
    round_timeout_s: float = 120.0
    time_limit_s: float = 1800.0
    defaults: TrainDefaults = field(default_factory=TrainDefaults)
    attacks: tuple[AttackSpec, ...] = ()
    """Byzantine clients (`--attack`); which ones follows from `seed`."""
    speeds: tuple[float, ...] = ()
    """Per-client slowdown factors (`--speeds`, one per client, each >= 1);
    empty: all at full speed (`fedgrpc.sim.pace`)."""
    crash_rate: float = 0.0
    """P of a crash per client and sync point (`--crash-rate`, `sim.churn`)."""
    max_restarts: int = DEFAULT_MAX_RESTARTS
    """Restarts per client; after that it no longer crashes."""
    privacy: dict[str, Any] = field(default_factory=dict)
    """Client-level DP settings for the coordinator, by `CoordinatorConfig`
    field (`privacy`, `dp_clip_norm`, `max_epsilon`, ...: the serve flags of
    `cli_serve_flags.PRIVACY_FLAGS`); empty: privacy off."""
    dashboard: bool = False
    """Serve the coordinator's live dashboard on 127.0.0.1 (a free port),
    open to this host only (`admin_access = "loopback"`, set explicitly)."""

    def __post_init__(self) -> None:
        for name in ("clients", "rounds", "inner_steps", "eval_batches"):
            if getattr(self, name) < 1:
                raise FedGrpcError(f"{name}={getattr(self, name)!r} must be >= 1")
        check_speeds(self.speeds, self.clients)
        check_crash_rate(self.crash_rate, self.max_restarts)
        for plan in self.attack_plans().values():  # fail before any process starts
            if plan.spec.kind == "alie":
                _ = plan.alie_z
        settings = self.task_settings()  # validates the task's name
        poisoning = [a for a in self.attacks if a.kind in POISONING_ATTACKS]
        if poisoning and settings.name != "charlm":
            raise FedGrpcError(
                f"--attack {poisoning[0]} poisons char-LM batches; the {self.task} "
                f"task supports only the update attacks (not {POISONING_ATTACKS})"
            )

    def task_settings(self) -> TaskSettings:
        """What every process builds the task from (`fedgrpc.sim.tasks.load_task`)."""
        return TaskSettings(
            name=self.task,
            corpus_bytes=self.corpus_bytes,
            eval_batches=self.eval_batches,
            defaults=self.defaults,
        )

    def attack_plans(self, collusion_dir: str = "") -> dict[int, AttackPlan]:
        """Client index -> its attack orders, for every attacking client."""
        chosen = assign_attackers(self.attacks, self.clients, self.seed)
        return {
            index: AttackPlan(
                spec=spec,
                index=index,
                clients=self.clients,
                members=tuple(sorted(i for i, s in chosen.items() if s is spec)),
                seed=self.seed,
                collusion_dir=f"{collusion_dir}/attack-{_group(self.attacks, spec)}",
            )
            for index, spec in chosen.items()
        }


def _group(attacks: tuple[AttackSpec, ...], spec: AttackSpec) -> int:
    """Which `--attack` `spec` is (by identity: two equal flags are two groups)."""
    return next(k for k, attack in enumerate(attacks) if attack is spec)


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
        **_pacing(config),
        codec=_codec(config),
        secure_aggregation=config.secure_aggregation,
        heartbeat_interval_s=2.0,
        session_timeout_s=60.0,
        # Throwaway client keys on one machine: nobody to enrol. Still signed.
        open_enrollment=True,
        **_privacy(config),
        **_dashboard(config),
    )


def _dashboard(config: SimulationConfig) -> dict[str, Any]:
    """The HTTP server on loopback, readable from this host without a token."""
    if not config.dashboard:
        return {}
    return {"http_listen": "127.0.0.1:0", "admin_access": "loopback"}


def _pacing(config: SimulationConfig) -> dict[str, Any]:
    """The round mode and the settings given for it (the rest keep defaults)."""
    settings: dict[str, Any] = {"round_mode": config.round_mode}
    for name in ("round_duration_s", "buffer_size", "max_staleness",
                 "staleness_exponent", "fragments", "streaming_overlap_steps",
                 "streaming_mix"):  # fmt: skip
        value = getattr(config, name)
        if value is not None:
            settings[name] = value
    return settings


def _privacy(config: SimulationConfig) -> dict[str, Any]:
    """The privacy settings; with DP on, equal weights (what central DP needs).

    Every simulated client trains on the same number of samples, so equal
    weights change nothing but let `privacy = central` start.
    """
    settings = dict(config.privacy)
    if settings.get("privacy", "off") != "off":
        settings.setdefault("weighting", "equal")
    return settings


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

    buffered_async: the buffer (`buffer_size`, else half the clients, at
    least 2), so the fast clients close rounds without the slow ones.
    """
    everyone = config.clients_per_round or config.clients
    if config.round_mode == "buffered_async":
        return config.buffer_size or max(2, min(everyone, config.clients // 2))
    if config.trust != "on":
        return everyone
    return min(everyone, math.ceil(config.clients / 2))


def _codec(config: SimulationConfig) -> str:
    """The codec; secure aggregation needs integer codes (int8 unless chosen)."""
    if config.secure_aggregation and config.compression == "dense:fp32":
        return "dense:int8"
    return config.compression
