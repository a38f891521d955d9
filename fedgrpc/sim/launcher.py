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
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from fedgrpc.config import ClientConfig
from fedgrpc.coordinator.inprocess import Coordinator
from fedgrpc.data import Partition
from fedgrpc.domain.status import CoordinatorStatus
from fedgrpc.log import get_logger
from fedgrpc.sim.attacks import AttackPlan
from fedgrpc.sim.config import SimulationConfig, coordinator_config
from fedgrpc.sim.fleet import Fleet
from fedgrpc.sim.monitor import monitor
from fedgrpc.sim.pace import merge_incarnations
from fedgrpc.sim.quarantine import quarantine_figures
from fedgrpc.sim.summary import (
    AttackFigures,
    Pace,
    Participant,
    PrivacyFigures,
    RoundFigures,
    SimulationSummary,
)
from fedgrpc.sim.tasks import load_task
from fedgrpc.sim.timeline import stamp_evaluations
from fedgrpc.sim.worker import Gates, WorkerArgs

log = get_logger(__name__)
LEAVE_GRACE_S = 30.0
"""After a run, how long the released clients have to leave and exit."""


def run_simulation(
    config: SimulationConfig,
    progress: bool = True,
    on_dashboard: Callable[[str], None] | None = None,
) -> SimulationSummary:
    """Run the federation to completion; raises `SimulationError` on any failure.

    `on_dashboard` receives the dashboard's URL once the coordinator serves
    it (`config.dashboard`), before any client starts.
    """
    simulation_partition(config)  # an impossible split fails before any process
    with tempfile.TemporaryDirectory(prefix="fedgrpc-sim-") as scratch:
        init_model = write_initial_model(config, Path(scratch))
        keys = write_client_keys(config.clients, Path(scratch) / "keys")
        return _run(
            config, (init_model, keys), progress, Path(scratch) / "collusion",
            on_dashboard,
        )  # fmt: skip


def simulation_partition(config: SimulationConfig) -> Partition:
    """How the run splits its task's training data: what every client computes.

    The same call each worker makes (same task, spec and seed), so what
    `fedgrpc simulate` prints and plots is what the clients train on.

    Raises:
        ConfigError: the split is impossible (say, more clients than pieces).
    """
    task = load_task(config.task_settings())
    return task.partition(config.clients, config.partition, config.seed)


def write_initial_model(config: SimulationConfig, directory: Path) -> Path:
    """The model's initial weights as safetensors, for the coordinator's `init_model`.

    The coordinator, not the first client to join, decides the weights; the
    clients build the same model from the same seed, so they match it. It
    holds exactly what the simulated clients federate under the default
    `ClientConfig` (trainable parameters, then buffers such as the digits
    CNN's BatchNorm statistics): `select_tensors` decides, as it does for them.
    """
    from safetensors.torch import save_file

    from fedgrpc.client.tensors import select_tensors

    model = load_task(config.task_settings()).build_model(config.seed)
    chosen = select_tensors(model, ClientConfig())
    tensors = zip(chosen.spec.tensors, chosen.tensors, strict=True)
    path = directory / "init.safetensors"
    save_file({t.name: x.detach().contiguous() for t, x in tensors}, str(path))
    return path


def write_client_keys(clients: int, directory: Path) -> list[str]:
    """One identity key file per client, so a restarted client is the same client.

    A throwaway key (the default) would make every restart a new client to
    the coordinator; with its own key file the restarted process re-joins
    as the record it had (`--crash-rate`).
    """
    from fedgrpc.crypto.files import save_key_pair
    from fedgrpc.crypto.keys import PrivateKey

    return [
        str(save_key_pair(PrivateKey.generate(), directory, f"client-{i}").private_key)
        for i in range(clients)
    ]


def _run(
    config: SimulationConfig,
    files: tuple[Path, list[str]],
    progress: bool,
    collusion: Path,
    on_dashboard: Callable[[str], None] | None = None,
) -> SimulationSummary:
    """Run it; `files`: the initial model and each client's identity key."""
    started = time.monotonic()
    torch.set_num_threads(1)  # the coordinator shares the two cores with clients
    init_model, keys = files
    coordinator = Coordinator(coordinator_config(config, init_model))
    coordinator.start()
    if coordinator.dashboard_url and on_dashboard is not None:
        on_dashboard(coordinator.dashboard_url)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    start, release = context.Event(), context.Event()  # see `Gates`
    plans = config.attack_plans(str(collusion))
    fleet = Fleet(
        context, results, Gates(start, release),
        [_worker_args(config, i, (coordinator.address, keys[i]), plans)
         for i in range(config.clients)],
    )  # fmt: skip
    grace_s = 0.0  # a failed run ends its workers at once
    try:
        fleet.start()
        inbox = monitor(config, coordinator, (fleet, start), started, progress)
        joined = inbox.joined
        figures = {
            i: merge_incarnations(inbox.crashes.get(i, []), done)
            for i, done in inbox.done.items()
        }
        status = coordinator.status()  # while every client is still joined
        grace_s = LEAVE_GRACE_S
    finally:
        release.set()
        fleet.stop(grace_s)
        coordinator.stop()
    # The run's rounds are 1..R: the coordinator finishes the run after
    # round R (max_rounds) and opens no round past it; the filter keeps
    # that true of the figures whatever the history holds. A round without
    # updates has no train loss (NaN, not the 0.0 of an empty mean).
    rounds = [
        RoundFigures(r.round_id, r.applied,
                     r.mean_train_loss if r.num_updates else math.nan, r.duration_s,
                     r.num_updates, r.privacy_epsilon)
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
                pace=_pace(fleet.args[i].speed, figures[i], fleet.restarts[i]),
            )
            for i in range(config.clients)
        ],
        train_wall_s=inbox.training_s(),
        attack=_attack_figures(config, plans, figures[0], (status, joined)),
        privacy=_privacy_figures(status),
        task=config.task,
        partition=str(config.partition),
        evaluations=stamp_evaluations(inbox.evaluations, inbox.marks, inbox.gate_at),
        # As each worker computed its own split (the printed table is the
        # launcher's: equal, since both follow the same seed).
        client_sizes=[int(figures[i]["train_samples"]) for i in range(config.clients)],
    )


def _privacy_figures(status: CoordinatorStatus) -> PrivacyFigures | None:
    """ε spent, the budget, S and z (None with privacy off)."""
    if status.privacy == "off":
        return None
    return PrivacyFigures(
        status.privacy, status.privacy_epsilon, status.privacy_delta,
        status.max_epsilon, status.dp_clip_norm, status.dp_noise_multiplier,
        status.privacy_exhausted,
    )  # fmt: skip


def _pace(speed: float, figures: dict[str, float], crashes: int) -> Pace:
    """A client's speed, crashes and compute figures (summed over its processes)."""
    return Pace(
        speed=speed,
        crashes=crashes,
        compute_s=figures.get("compute_s", 0.0),
        useful_s=figures.get("useful_s", 0.0),
        samples=int(figures.get("samples", 0)),
        tokens=int(figures.get("tokens", 0)),
    )


def _spec_text(plans: dict[int, AttackPlan], index: int) -> str | None:
    return str(plans[index].spec) if index in plans else None


def _attack_figures(
    config: SimulationConfig,
    plans: dict[int, AttackPlan],
    reporter: dict[str, float],
    final: tuple[CoordinatorStatus, dict[int, str]],
) -> AttackFigures | None:
    """The attack's figures; `final` is the last status and who joined as whom."""
    if not config.attacks:
        return None
    alie = [plan.alie_z for plan in plans.values() if plan.spec.kind == "alie"]
    status, joined = final
    return AttackFigures(
        specs=tuple(str(spec) for spec in config.attacks),
        alie_z=alie[0] if alie else None,
        backdoor_success=reporter.get("backdoor_success"),
        quarantine=(
            quarantine_figures(status, joined, set(plans))
            if config.trust == "on"
            else None
        ),
    )


def _worker_args(
    config: SimulationConfig,
    index: int,
    endpoints: tuple[str, str],
    plans: dict[int, AttackPlan],
) -> WorkerArgs:
    """Client `index`'s first process; `endpoints`: the address and its key file."""
    address, identity_key = endpoints
    return WorkerArgs(
        index=index,
        num_clients=config.clients,
        address=address,
        rounds=config.rounds,
        inner_steps=config.inner_steps,
        seed=config.seed,
        task=config.task_settings(),
        partition=config.partition,
        proximal_mu=config.proximal_mu,
        attack=plans.get(index),
        probe_backdoor=any(spec.kind == "backdoor" for spec in config.attacks),
        identity_key=identity_key,
        speed=config.speeds[index] if config.speeds else 1.0,
        crash_rate=config.crash_rate,
        restarts_left=config.max_restarts,
        round_mode=config.round_mode,
    )
