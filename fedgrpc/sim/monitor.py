"""Watching a simulation run: worker messages, the progress bar, restarts.

`monitor` is the launcher's loop while clients train: it reads what the
workers report (`ready`, `eval`, `mark`, `crash`, `done`, `error`), opens the start
gate once every client joined, restarts a client whose process crashed on
purpose (`--crash-rate`) and fails the run on any other exit or on the time
limit. Every wait is bounded.
"""

from __future__ import annotations

import queue
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from fedgrpc.coordinator.inprocess import Coordinator
from fedgrpc.errors import FedGrpcError
from fedgrpc.log import get_logger
from fedgrpc.sim.config import SimulationConfig
from fedgrpc.sim.fleet import Fleet

log = get_logger(__name__)
POLL_S = 0.2
DRAIN_MAX = 256
"""Messages filed per `_drain` call at most (the loop's other checks wait)."""
CRASH_REPORT_WAIT_S = 10.0
"""How long a crashed worker's report may trail its exit (it flushed it first)."""


class SimulationError(FedGrpcError):
    """A simulated client failed or the run exceeded its time limit."""


@dataclass
class Inbox:
    """What the workers reported so far (filled by `_drain`)."""

    done: dict[int, dict[str, float]] = field(default_factory=dict)
    """Each finished worker's final figures."""
    joined: dict[int, str] = field(default_factory=dict)
    """The client id each worker joined as."""
    evaluations: list[dict[str, float]] = field(default_factory=list)
    """Client 0's scores of the global model, in order (`worker._reporting`)."""
    crashes: dict[int, list[dict[str, float]]] = field(default_factory=dict)
    """Each crashed process's figures, by client, in order (`worker._crash`)."""
    training: list[float] = field(default_factory=list)
    """When training started (the start gate) and, once all are done, ended."""
    gate_at: float = 0.0
    """The start gate on the workers' clock (`time.time()`; 0 until opened)."""
    marks: list[dict[str, float]] = field(default_factory=list)
    """Every client's token marks (`ComputeLedger.mark`), as they arrived."""

    def training_s(self) -> float:
        """Wall time from the start gate to the last client's `done`."""
        return self.training[-1] - self.training[0] if self.training else 0.0


def monitor(
    config: SimulationConfig,
    coordinator: Coordinator,
    clients: tuple[Fleet, Any],
    started: float,
    progress: bool,
) -> Inbox:
    """Drive the progress bar until every worker reported done (bounded).

    `clients`: the processes and their start signal (`Gates.start`), set
    once all of them joined. Restarts crashed clients
    (each crash is a line above the bar). Returns what the workers reported.
    """
    from tqdm import tqdm

    fleet, start = clients
    inbox = Inbox()
    bar = tqdm(total=config.rounds, unit="round", desc="simulate", disable=not progress)
    try:
        while len(inbox.done) < len(fleet.args):
            if time.monotonic() - started > config.time_limit_s:
                raise SimulationError(
                    f"the simulation exceeded its {config.time_limit_s:.0f} s limit"
                )
            _drain(fleet.results, inbox)
            for index in _check_workers(fleet, inbox):
                crash = inbox.crashes[index][-1]
                fleet.restart(index, crash)
                if progress:
                    bar.write(
                        f"client {index} crashed at sync point "
                        f"{int(crash['attempt']) + 1}: restarted "
                        f"({fleet.restarts[index]} of at most {config.max_restarts})",
                        file=sys.stderr,  # stdout is --json's
                    )
            if len(inbox.joined) == len(fleet.args) and not inbox.training:
                inbox.gate_at = time.time()
                start.set()
                inbox.training.append(time.monotonic())
            history = coordinator.status().rounds
            # Rounds past R are not the run's (see run_simulation).
            if min(len(history), config.rounds) > bar.n:
                bar.update(min(len(history), config.rounds) - bar.n)
                bar.set_postfix(_postfix(history[-1].mean_train_loss, inbox, fleet))
        inbox.training.append(time.monotonic())
    finally:
        bar.close()
    return inbox


def _postfix(train_loss: float, inbox: Inbox, fleet: Fleet) -> dict[str, str]:
    """The bar's figures: train loss, the latest global validation scores, crashes."""
    figures = {"train_loss": f"{train_loss:.3f}"}
    if sum(fleet.restarts):
        figures["crashes"] = str(sum(fleet.restarts))
    latest = inbox.evaluations[-1] if inbox.evaluations else {}
    if "val_loss" in latest:
        figures["val_loss"] = f"{latest['val_loss']:.3f}"
    if "val_accuracy" in latest:
        figures["val_acc"] = f"{latest['val_accuracy']:.1%}"
    return figures


def _drain(results: Any, inbox: Inbox) -> None:
    """File what the workers sent, waiting up to POLL_S for the first message.

    Then it takes what else is queued (at most DRAIN_MAX), so the token
    marks every sync point sends never pile up behind the loop's polls.
    """
    timeout = POLL_S
    for _ in range(DRAIN_MAX):
        try:
            kind, index, payload = results.get(timeout=timeout)
        except queue.Empty:
            return
        _file(inbox, kind, index, payload)
        timeout = 0.0


def _file(inbox: Inbox, kind: str, index: int, payload: Any) -> None:
    """One worker message into the inbox (an `error` fails the run)."""
    if kind == "error":
        raise SimulationError(f"client {index} failed:\n{payload}")
    if kind == "done":
        inbox.done[index] = payload
    if kind == "ready":
        _check_same_client(inbox, index, payload)
        inbox.joined[index] = payload
    if kind == "crash":
        inbox.crashes.setdefault(index, []).append(payload)
        log.info("client_crashed", client=index, attempt=int(payload["attempt"]))
    if kind == "eval" and _new_version(inbox, payload):
        inbox.evaluations.append(payload)
    if kind == "mark":
        inbox.marks.append(payload)
    log.debug("worker_event", kind=kind, client=index)


def _check_same_client(inbox: Inbox, index: int, client_id: str) -> None:
    """A restarted client must re-join as itself (same key, same record).

    Raises:
        SimulationError: the coordinator gave it another id, so the run's
            per-client figures and the coordinator's would disagree.
    """
    before = inbox.joined.get(index, client_id)
    if before != client_id:
        raise SimulationError(
            f"client {index} re-joined as {client_id} after a restart, not as "
            f"{before}: the coordinator did not recognise its identity key"
        )


def _new_version(inbox: Inbox, payload: dict[str, float]) -> bool:
    """False for a restarted reporter's score of a version it already scored."""
    seen = inbox.evaluations[-1]["model_version"] if inbox.evaluations else -1.0
    return payload["model_version"] > seen


def _check_workers(fleet: Fleet, inbox: Inbox) -> list[int]:
    """The clients whose process crashed on purpose and must be restarted.

    Raises:
        SimulationError: a process exited any other way before `done`.
    """
    crashed = []
    for index, worker in enumerate(fleet.processes):
        if index in inbox.done or worker.exitcode in (None, 0):
            continue
        if fleet.crashed(index) and _crash_reported(fleet, inbox, index):
            crashed.append(index)
            continue
        _drain(fleet.results, inbox)  # its error report may still be in flight
        raise SimulationError(
            f"client {index} exited with code {worker.exitcode} before finishing"
        )
    return crashed


def _crash_reported(fleet: Fleet, inbox: Inbox, index: int) -> bool:
    """Wait (bounded) for the report of the crash that ended `index`'s process.

    Reports outnumber restarts by one exactly when this crash was reported.
    """
    deadline = time.monotonic() + CRASH_REPORT_WAIT_S
    while len(inbox.crashes.get(index, [])) <= fleet.restarts[index]:
        if time.monotonic() > deadline:
            return False
        _drain(fleet.results, inbox)
    return True
