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

from fedgrpc.config import ClientConfig
from fedgrpc.coordinator.inprocess import Coordinator
from fedgrpc.data import Partition
from fedgrpc.domain.status import CoordinatorStatus
from fedgrpc.errors import FedGrpcError
from fedgrpc.log import get_logger
from fedgrpc.sim.attacks import AttackPlan
from fedgrpc.sim.config import SimulationConfig, coordinator_config
from fedgrpc.sim.quarantine import quarantine_figures
from fedgrpc.sim.summary import (
    AttackFigures,
    Participant,
    PrivacyFigures,
    RoundFigures,
    SimulationSummary,
)
from fedgrpc.sim.tasks import load_task
from fedgrpc.sim.worker import Gates, WorkerArgs, run_worker

log = get_logger(__name__)
POLL_S = 0.2
LEAVE_GRACE_S = 30.0
"""After a run, how long the released clients have to leave and exit."""


class SimulationError(FedGrpcError):
    """A simulated client failed or the run exceeded its time limit."""


def run_simulation(
    config: SimulationConfig, progress: bool = True
) -> SimulationSummary:
    """Run the federation to completion; raises `SimulationError` on any failure."""
    simulation_partition(config)  # an impossible split fails before any process
    with tempfile.TemporaryDirectory(prefix="fedgrpc-sim-") as scratch:
        init_model = write_initial_model(config, Path(scratch))
        return _run(config, init_model, progress, Path(scratch) / "collusion")


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


def _run(
    config: SimulationConfig, init_model: Path, progress: bool, collusion: Path
) -> SimulationSummary:
    started = time.monotonic()
    torch.set_num_threads(1)  # the coordinator shares the two cores with clients
    coordinator = Coordinator(coordinator_config(config, init_model))
    coordinator.start()
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    start, release = context.Event(), context.Event()  # see `Gates`
    plans = config.attack_plans(str(collusion))
    workers = [
        context.Process(
            target=run_worker,
            args=(
                _worker_args(config, i, coordinator.address, plans),
                results,
                Gates(start, release),
            ),
            name=f"fedgrpc-sim-{i}",
        )
        for i in range(config.clients)
    ]
    grace_s = 0.0  # a failed run ends its workers at once
    try:
        for worker in workers:
            worker.start()
        inbox = _monitor(
            config, coordinator, workers, (results, start), started, progress
        )
        figures, joined = inbox.done, inbox.joined
        status = coordinator.status()  # while every client is still joined
        grace_s = LEAVE_GRACE_S
    finally:
        release.set()
        _stop_workers(workers, grace_s)
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
            )
            for i in range(config.clients)
        ],
        attack=_attack_figures(config, plans, figures[0], (status, joined)),
        privacy=_privacy_figures(status),
        task=config.task,
        partition=str(config.partition),
        evaluations=inbox.evaluations,
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


def _stop_workers(workers: list[Any], grace_s: float) -> None:
    """Give released workers `grace_s` (in all) to leave and exit, then end them.

    After a failure `grace_s` is 0: whatever still runs is ended at once.
    """
    deadline = time.monotonic() + grace_s
    for worker in workers:
        worker.join(timeout=max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            worker.terminate()
        worker.join(timeout=10)


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
        task=config.task_settings(),
        partition=config.partition,
        proximal_mu=config.proximal_mu,
        attack=plans.get(index),
        probe_backdoor=any(spec.kind == "backdoor" for spec in config.attacks),
    )


@dataclass
class _Inbox:
    """What the workers reported so far (filled by `_drain`)."""

    done: dict[int, dict[str, float]] = field(default_factory=dict)
    """Each finished worker's final figures."""
    joined: dict[int, str] = field(default_factory=dict)
    """The client id each worker joined as."""
    evaluations: list[dict[str, float]] = field(default_factory=list)
    """Client 0's scores of the global model, in order (`worker._reporting`)."""


def _monitor(
    config: SimulationConfig,
    coordinator: Coordinator,
    workers: list[Any],
    channels: tuple[Any, Any],
    started: float,
    progress: bool,
) -> _Inbox:
    """Drive the progress bar until every worker reported done (bounded).

    `channels`: the workers' result queue and their start signal, set once
    all of them joined. Returns what the workers reported.
    """
    results, start = channels
    from tqdm import tqdm

    inbox = _Inbox()
    bar = tqdm(total=config.rounds, unit="round", desc="simulate", disable=not progress)
    try:
        while len(inbox.done) < len(workers):
            if time.monotonic() - started > config.time_limit_s:
                raise SimulationError(
                    f"the simulation exceeded its {config.time_limit_s:.0f} s limit"
                )
            _drain(results, inbox)
            _check_workers(workers, inbox, results)
            if len(inbox.joined) == len(workers):
                start.set()
            history = coordinator.status().rounds
            # Rounds past R are not the run's (see run_simulation).
            if min(len(history), config.rounds) > bar.n:
                bar.update(min(len(history), config.rounds) - bar.n)
                bar.set_postfix(_postfix(history[-1].mean_train_loss, inbox))
    finally:
        bar.close()
    return inbox


def _postfix(train_loss: float, inbox: _Inbox) -> dict[str, str]:
    """The bar's figures: train loss, and the latest global validation scores."""
    figures = {"train_loss": f"{train_loss:.3f}"}
    latest = inbox.evaluations[-1] if inbox.evaluations else {}
    if "val_loss" in latest:
        figures["val_loss"] = f"{latest['val_loss']:.3f}"
    if "val_accuracy" in latest:
        figures["val_acc"] = f"{latest['val_accuracy']:.1%}"
    return figures


def _drain(results: Any, inbox: _Inbox) -> None:
    try:
        kind, index, payload = results.get(timeout=POLL_S)
    except queue.Empty:
        return
    if kind == "error":
        raise SimulationError(f"client {index} failed:\n{payload}")
    if kind == "done":
        inbox.done[index] = payload
    if kind == "ready":
        inbox.joined[index] = payload
    if kind == "eval":
        inbox.evaluations.append(payload)
    log.debug("worker_event", kind=kind, client=index)


def _check_workers(workers: list[Any], inbox: _Inbox, results: Any) -> None:
    for index, worker in enumerate(workers):
        if index not in inbox.done and worker.exitcode not in (None, 0):
            _drain(results, inbox)  # its error report may still be in flight
            raise SimulationError(
                f"client {index} exited with code {worker.exitcode} before finishing"
            )
