"""One simulated client process: a plain PyTorch loop with `DiLoCoClient` embedded.

This is the same embedding a user writes (see client/torch_loop.py): the
loop owns the model, the data and the inner optimizer; the client only sees
`step()`. What is trained comes from the run's task (`fedgrpc.sim.tasks`);
this client's data is its part of the task's partition. Progress goes back
to the launcher as small tuples on a queue; client 0 (the reporter) also
sends the global model's validation metrics after every round, and every
client sends a token mark at each sync point (`ComputeLedger.mark`), so the
launcher can put each evaluation on a time and a token axis.

`--speeds` and `--crash-rate` act here too: the worker sleeps after each
inner step to run at its slowdown factor and keeps a `ComputeLedger` for
goodput (`fedgrpc.sim.pace`), and at each sync point it may die on purpose
(`fedgrpc.sim.churn`), leaving the launcher to start it again.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from fedgrpc.config import ClientConfig
from fedgrpc.data import PartitionSpec
from fedgrpc.sim.attacks import AttackPlan, build_transform
from fedgrpc.sim.churn import CRASH_EXIT_CODE, CrashSchedule
from fedgrpc.sim.models import CharTransformer
from fedgrpc.sim.pace import ComputeLedger
from fedgrpc.sim.poison import backdoor_success, flip_labels, plant_backdoor
from fedgrpc.sim.tasks import Batch, Task, TaskSettings, load_task
from fedgrpc.sim.tasks.charlm import CharLMTask


class ResultQueue(Protocol):
    """The slice of `multiprocessing.Queue` a worker uses."""

    def put(self, obj: Any) -> None:
        """Send one message to the launcher."""

    def close(self) -> None:
        """No more messages from this process."""

    def join_thread(self) -> None:
        """Block until every message put is in the pipe (before a crash)."""


@dataclass(frozen=True, slots=True)
class WorkerArgs:
    """Everything a client process needs (picklable for `spawn`)."""

    index: int
    num_clients: int
    address: str
    rounds: int
    inner_steps: int
    seed: int
    task: TaskSettings
    partition: PartitionSpec
    """How the task's training data splits across the clients (by `seed`)."""
    proximal_mu: float = 0.0
    attack: AttackPlan | None = None
    """This client's attack (`fedgrpc.sim.attacks`); None: an honest client."""
    probe_backdoor: bool = False
    """The reporter also scores backdoor success on the final global model."""
    identity_key: str = ""
    """This client's key file: every restart signs as the same client, so the
    coordinator keeps its record (standing, credit). "": a throwaway key."""
    speed: float = 1.0
    """Slowdown factor f: each inner step takes f times its compute time."""
    crash_rate: float = 0.0
    """P: chance of a crash at each sync point (`fedgrpc.sim.churn`)."""
    restarts_left: int = 0
    """Crashes this client may still have (the launcher's bound)."""
    first_attempt: int = 0
    """Sync points reached by earlier incarnations: where the crash draws resume."""
    incarnation: int = 0
    """0 for the first process, k after k restarts (new batches after each)."""
    round_mode: str = "sync"
    """The coordinator's round mode: deadline rounds have no step budget."""


class Signal(Protocol):
    """The slice of `multiprocessing.Event` a worker waits on."""

    def wait(self, timeout: float | None = None) -> bool:
        """True once the launcher set it; False after `timeout` seconds."""
        ...


DEADLINE_STEPS = 10**9
"""Step bound under round_mode deadline (the launcher's time limit ends first)."""
START_WAIT_S = 900.0
"""Bound on waiting for a gate (`Gates`) (the launcher's time limit ends a
run sooner; this only keeps an orphaned process from waiting forever)."""


@dataclass(frozen=True, slots=True)
class Gates:
    """The launcher's two signals to every worker (`multiprocessing.Event`s)."""

    start: Signal
    """Set once every client joined: only then does any train, so round 1
    holds everyone's update even when the quorum is below the client count
    (`config._quorum`)."""
    release: Signal
    """Set once the launcher read the final status: until then the finished
    clients stay joined, so the status still lists them (a client that left
    for good is forgotten) with their final trust standing."""


def run_worker(
    args: WorkerArgs, results: ResultQueue, gates: Gates | None = None
) -> None:
    """Process entry point: report `done` with figures, or `error` with a traceback."""
    try:
        _train(args, results, gates)
    except BaseException:  # the launcher must hear about every failure
        results.put(("error", args.index, traceback.format_exc()))
        raise


def _train(args: WorkerArgs, results: ResultQueue, gates: Gates | None) -> None:
    # Simulated clients share two cores; more threads per process only thrash.
    torch.set_num_threads(1)
    from fedgrpc.client import DiLoCoClient

    task = load_task(args.task)
    split = task.partition(args.num_clients, args.partition, args.seed)
    sample = task.sampler(split, args.index)
    model = task.build_model(args.seed)
    optimizer = task.make_optimizer(model)
    batches = torch.Generator().manual_seed(_batch_seed(args))
    config = ClientConfig(
        name=f"sim-{args.index}",
        identity_key=args.identity_key,
        heartbeat_interval_s=2.0,
        proximal_mu=args.proximal_mu,
    )
    poison = _poisoner(args)
    transform = None if args.attack is None else build_transform(args.attack)
    is_reporter = args.index == 0
    figures: dict[str, float] = {}
    outcomes: dict[str, float] = {}
    with DiLoCoClient(
        args.address,
        model,
        inner_steps=args.inner_steps,
        config=config,
        update_transform=transform,
        evaluate=_reporting(task, args, results) if is_reporter else None,
    ) as client:
        if is_reporter:  # the callback already scored the initial weights
            initial = client.eval_history[0].metrics
            figures |= {f"initial_{name}": value for name, value in initial.items()}
        results.put(("ready", args.index, client.client_id))
        if gates is not None and not gates.start.wait(START_WAIT_S):
            raise RuntimeError(f"the other clients did not join in {START_WAIT_S} s")
        ledger = ComputeLedger(speed=args.speed)
        crashes = CrashSchedule(args.seed, args.index, args.crash_rate,
                                args.restarts_left, args.first_attempt)  # fmt: skip
        # The coordinator ends the run after `rounds` (max_rounds); the
        # step budget only bounds a run whose coordinator never says so. A
        # deadline round takes as many steps as fit, so there the launcher's
        # time limit is the bound.
        for _ in range(_step_budget(args)):
            if client.finished:
                break
            started = time.perf_counter()
            batch = poison(sample(batches))
            loss = task.train_step(model, optimizer, batch)
            ledger.timed_step(started, task.batch_size, batch[1].numel())
            if crashes.crash_now(client.syncs_next):
                state = figures | outcomes | ledger.figures()
                results.put(("mark", args.index, ledger.mark(time.time())))
                _crash(results, args.index, crashes.attempt, state)
            reached = time.time()  # before a sync point's push and wait
            if not client.step(loss=loss, num_samples=task.batch_size):
                continue
            results.put(("mark", args.index, ledger.mark(reached)))
            ledger.settle(client.last_round_outcome)
            outcome = f"outcome_{client.last_round_outcome}"
            outcomes[outcome] = outcomes.get(outcome, 0.0) + 1
        if is_reporter:
            figures |= _final(task, model, args)
        figures["train_samples"] = float(split.sizes[args.index])
        figures["bytes_sent"] = float(client.bytes_sent)
        figures["bytes_received"] = float(client.bytes_received)
        figures["model_version"] = float(client.model_version)
        results.put(("mark", args.index, ledger.mark(time.time())))  # any rest
        results.put(("done", args.index, figures | outcomes | ledger.figures()))
        # Stay joined for the final status only when the run ended: a client
        # whose step budget ran out first (say, seldom selected) leaves now,
        # so no round waits for a client that no longer trains.
        if gates is not None and client.finished:
            gates.release.wait(START_WAIT_S)  # then leave (the `with` block's end)


def _step_budget(args: WorkerArgs) -> int:
    """Inner steps a process may take: twice the run's, or unbounded (deadline)."""
    if args.round_mode == "deadline":
        return DEADLINE_STEPS
    return 2 * args.rounds * args.inner_steps


def _batch_seed(args: WorkerArgs) -> int:
    """The batch stream's seed, new for each restarted process.

    A restarted process must not replay the batches its previous incarnation
    already trained on; the first keeps the seed it always had, so runs
    without crashes are unchanged.
    """
    if args.incarnation == 0:
        return args.seed * 1_000 + args.index
    stream = np.random.SeedSequence((args.seed, args.index, args.incarnation))
    return int(stream.generate_state(1)[0])


def _crash(
    results: ResultQueue, index: int, attempt: int, figures: dict[str, float]
) -> None:
    """Die as a killed machine would: no Leave, no close, sockets dropped by the OS.

    The launcher first gets this incarnation's figures (its compute, the
    open round's included, so goodput counts that round as wasted) and the
    attempt it died at; `join_thread` makes sure they are in the pipe
    before `os._exit` ends the process without any cleanup.
    """
    results.put(("crash", index, figures | {"attempt": float(attempt)}))
    results.close()
    results.join_thread()
    os._exit(CRASH_EXIT_CODE)


def _reporting(
    task: Task, args: WorkerArgs, results: ResultQueue
) -> Callable[[torch.nn.Module, int], dict[str, float]]:
    """The reporter's `evaluate` callback: score the global model, send the scores.

    `DiLoCoClient` calls it with the model holding each new global version
    (after Join, then after every sync point that brought one), so the
    launcher hears the *federated* model's validation metrics per round,
    stamped with the wall-clock time (`at`) the version was loaded: the
    launcher turns it into seconds since the start gate and the tokens all
    clients had processed by then (`fedgrpc.sim.timeline`).
    """

    def report(model: torch.nn.Module, version: int) -> dict[str, float]:
        at = time.time()  # when the version arrived, not when scoring ended
        metrics = task.evaluate(model, args.seed)
        payload = {"model_version": float(version), **metrics, "at": at}
        results.put(("eval", args.index, payload))
        return metrics

    return report


def _final(task: Task, model: torch.nn.Module, args: WorkerArgs) -> dict[str, float]:
    """The final global model's metrics (and backdoor success, if probed)."""
    figures = {f"final_{k}": v for k, v in task.evaluate(model, args.seed).items()}
    if args.probe_backdoor:
        # SimulationConfig allows a backdoor only on the char-LM.
        assert isinstance(task, CharLMTask)
        assert isinstance(model, CharTransformer)
        figures["backdoor_success"] = backdoor_success(
            model, task.splits.validation, seed=args.seed
        )
    return figures


def _poisoner(args: WorkerArgs) -> Callable[[Batch], Batch]:
    """What the attacker does to each training batch (honest: nothing).

    The reported loss is the loss on the poisoned batch: the attacker
    reports what it trained on, as an honest-looking client would.
    """
    kind = None if args.attack is None else args.attack.spec.kind
    if kind == "labelflip":
        return flip_labels
    if kind == "backdoor":
        generator = torch.Generator().manual_seed(args.seed * 1_000 + args.index + 7)
        return lambda batch: plant_backdoor(batch, generator)
    return lambda batch: batch
