"""`fedgrpc simulate`: a coordinator thread plus N client processes on loopback.

The coordinator runs in this process (its own thread and event loop); the
clients are real processes started with `spawn`, talking real gRPC over
127.0.0.1, so a simulation exercises exactly the code a deployment runs.
Every wait here is bounded: a stuck or crashed client ends the run with
its traceback instead of hanging it.
"""

from __future__ import annotations

import math
import multiprocessing
import queue
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedgrpc.config import CoordinatorConfig, OuterOptimizerName
from fedgrpc.coordinator.inprocess import Coordinator
from fedgrpc.errors import FedGrpcError
from fedgrpc.log import get_logger
from fedgrpc.sim import DEFAULT_CORPUS_BYTES
from fedgrpc.sim.attack_spec import AttackSpec, assign_attackers
from fedgrpc.sim.attacks import AttackPlan
from fedgrpc.sim.models import TrainDefaults, build_model
from fedgrpc.sim.summary import (
    AttackFigures,
    Participant,
    RoundFigures,
    SimulationSummary,
)
from fedgrpc.sim.worker import WorkerArgs, run_worker

log = get_logger(__name__)
POLL_S = 0.2


class SimulationError(FedGrpcError):
    """A simulated client failed or the run exceeded its time limit."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulationConfig:
    """Settings of one simulated federation (the `simulate` flags)."""

    clients: int = 4
    rounds: int = 20
    inner_steps: int = 50
    seed: int = 0
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
    accumulator: str = "auto"
    spool_dir: str = ""
    selection: str = "all"
    clients_per_round: int | None = None
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

    def __post_init__(self) -> None:
        for name in ("clients", "rounds", "inner_steps", "eval_batches"):
            if getattr(self, name) < 1:
                raise FedGrpcError(f"{name}={getattr(self, name)!r} must be >= 1")
        for plan in self.attack_plans().values():  # fail before any process starts
            if plan.spec.kind == "alie":
                _ = plan.alie_z

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


def run_simulation(
    config: SimulationConfig, progress: bool = True
) -> SimulationSummary:
    """Run the federation to completion; raises `SimulationError` on any failure."""
    with tempfile.TemporaryDirectory(prefix="fedgrpc-sim-") as scratch:
        init_model = write_initial_model(config, Path(scratch))
        return _run(config, init_model, progress, Path(scratch) / "collusion")


def write_initial_model(config: SimulationConfig, directory: Path) -> Path:
    """The model's initial weights as safetensors, for the coordinator's `init_model`.

    The coordinator, not the first client to join, decides the weights; the
    clients build the same model from the same seed, so they match it.
    """
    from safetensors.torch import save_file

    model = build_model(config.defaults.model, seed=config.seed)
    path = directory / "init.safetensors"
    save_file({n: p.detach() for n, p in model.named_parameters()}, str(path))
    return path


def _run(
    config: SimulationConfig, init_model: Path, progress: bool, collusion: Path
) -> SimulationSummary:
    started = time.monotonic()
    torch.set_num_threads(1)  # the coordinator shares the two cores with clients
    coordinator = Coordinator(_coordinator_config(config, init_model))
    coordinator.start()
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    plans = config.attack_plans(str(collusion))
    workers = [
        context.Process(
            target=run_worker,
            args=(_worker_args(config, i, coordinator.address, plans), results),
            name=f"fedgrpc-sim-{i}",
        )
        for i in range(config.clients)
    ]
    try:
        for worker in workers:
            worker.start()
        figures, joined = _monitor(
            config, coordinator, workers, results, started, progress
        )
        status = coordinator.status()
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
            worker.join(timeout=10)
        coordinator.stop()
    # The run's rounds are 1..R: the coordinator finishes the run after
    # round R (max_rounds) and opens no round past it; the filter keeps
    # that true of the figures whatever the history holds. A round without
    # updates has no train loss (NaN, not the 0.0 of an empty mean).
    rounds = [
        RoundFigures(r.round_id, r.applied,
                     r.mean_train_loss if r.num_updates else math.nan, r.duration_s,
                     r.num_updates)
        for r in status.rounds
        if r.round_id <= config.rounds
    ]  # fmt: skip
    return SimulationSummary(
        clients=config.clients,
        num_parameters=status.num_parameters,
        rounds=rounds,
        initial_val_loss=figures[0]["initial_val_loss"],
        final_val_loss=figures[0]["final_val_loss"],
        bytes_up=status.bytes_received,
        bytes_down=status.bytes_sent,
        wall_s=time.monotonic() - started,
        participants=[
            Participant(
                i,
                joined.get(i, ""),
                _spec_text(plans, i),
                int(figures[i].get("outcome_applied", 0)),
            )
            for i in range(config.clients)
        ],
        attack=_attack_figures(config, plans, figures[0]),
    )


def _spec_text(plans: dict[int, AttackPlan], index: int) -> str | None:
    return str(plans[index].spec) if index in plans else None


def _attack_figures(
    config: SimulationConfig,
    plans: dict[int, AttackPlan],
    reporter: dict[str, float],
) -> AttackFigures | None:
    if not config.attacks:
        return None
    alie = [plan.alie_z for plan in plans.values() if plan.spec.kind == "alie"]
    return AttackFigures(
        specs=tuple(str(spec) for spec in config.attacks),
        alie_z=alie[0] if alie else None,
        backdoor_success=reporter.get("backdoor_success"),
    )


def _coordinator_config(
    config: SimulationConfig, init_model: Path
) -> CoordinatorConfig:
    """A loopback coordinator that waits for every simulated client each round."""
    return CoordinatorConfig(
        listen="127.0.0.1:0",
        init_model=str(init_model),
        min_clients=config.clients_per_round or config.clients,
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


def _codec(config: SimulationConfig) -> str:
    """The codec; secure aggregation needs integer codes (int8 unless chosen)."""
    if config.secure_aggregation and config.compression == "dense:fp32":
        return "dense:int8"
    return config.compression


def _worker_args(
    config: SimulationConfig,
    index: int,
    address: str,
    plans: dict[int, AttackPlan],
) -> WorkerArgs:
    return WorkerArgs(
        index=index,
        num_clients=config.clients,
        address=address,
        rounds=config.rounds,
        inner_steps=config.inner_steps,
        seed=config.seed,
        corpus_bytes=config.corpus_bytes,
        eval_batches=config.eval_batches,
        defaults=config.defaults,
        proximal_mu=config.proximal_mu,
        attack=plans.get(index),
        probe_backdoor=any(spec.kind == "backdoor" for spec in config.attacks),
    )


def _monitor(
    config: SimulationConfig,
    coordinator: Coordinator,
    workers: list[Any],
    results: Any,
    started: float,
    progress: bool,
) -> tuple[dict[int, dict[str, float]], dict[int, str]]:
    """Drive the progress bar until every worker reported done (bounded).

    Returns each worker's final figures and the client id it joined as.
    """
    from tqdm import tqdm

    done: dict[int, dict[str, float]] = {}
    joined: dict[int, str] = {}
    bar = tqdm(total=config.rounds, unit="round", desc="simulate", disable=not progress)
    try:
        while len(done) < len(workers):
            if time.monotonic() - started > config.time_limit_s:
                raise SimulationError(
                    f"the simulation exceeded its {config.time_limit_s:.0f} s limit"
                )
            _drain(results, done, joined)
            _check_workers(workers, done, results, joined)
            history = coordinator.status().rounds
            # Rounds past R are not the run's (see run_simulation).
            if min(len(history), config.rounds) > bar.n:
                bar.update(min(len(history), config.rounds) - bar.n)
                bar.set_postfix(train_loss=f"{history[-1].mean_train_loss:.3f}")
    finally:
        bar.close()
    return done, joined


def _drain(
    results: Any, done: dict[int, dict[str, float]], joined: dict[int, str]
) -> None:
    try:
        kind, index, payload = results.get(timeout=POLL_S)
    except queue.Empty:
        return
    if kind == "error":
        raise SimulationError(f"client {index} failed:\n{payload}")
    if kind == "done":
        done[index] = payload
    if kind == "ready":
        joined[index] = payload
    log.debug("worker_event", kind=kind, client=index)


def _check_workers(
    workers: list[Any],
    done: dict[int, dict[str, float]],
    results: Any,
    joined: dict[int, str],
) -> None:
    for index, worker in enumerate(workers):
        if index not in done and worker.exitcode not in (None, 0):
            _drain(results, done, joined)  # its error report may still be in flight
            raise SimulationError(
                f"client {index} exited with code {worker.exitcode} before finishing"
            )
