"""One simulated client process: a plain PyTorch loop with `DiLoCoClient` embedded.

This is the same embedding a user writes (see client/torch_loop.py): the
loop owns the model, the data and the inner optimizer; the client only sees
`step()`. Progress goes back to the launcher as small tuples on a queue.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from fedgrpc.config import ClientConfig
from fedgrpc.sim.attacks import AttackPlan, build_transform
from fedgrpc.sim.corpus import TextSplits, load_stdlib_corpus, sample_batch
from fedgrpc.sim.models import (
    CharTransformer,
    TrainDefaults,
    build_model,
    evaluate,
    make_inner_optimizer,
    train_step,
)
from fedgrpc.sim.poison import backdoor_success, flip_labels, plant_backdoor

Batch = tuple[torch.Tensor, torch.Tensor]


class ResultQueue(Protocol):
    """The slice of `multiprocessing.Queue` a worker uses."""

    def put(self, obj: Any) -> None:
        """Send one message to the launcher."""


@dataclass(frozen=True, slots=True)
class WorkerArgs:
    """Everything a client process needs (picklable for `spawn`)."""

    index: int
    num_clients: int
    address: str
    rounds: int
    inner_steps: int
    seed: int
    corpus_bytes: int
    eval_batches: int
    defaults: TrainDefaults
    proximal_mu: float = 0.0
    attack: AttackPlan | None = None
    """This client's attack (`fedgrpc.sim.attacks`); None: an honest client."""
    probe_backdoor: bool = False
    """The reporter also scores backdoor success on the final global model."""


class Signal(Protocol):
    """The slice of `multiprocessing.Event` a worker waits on."""

    def wait(self, timeout: float | None = None) -> bool:
        """True once the launcher set it; False after `timeout` seconds."""
        ...


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

    defaults = args.defaults
    splits = TextSplits.from_bytes(load_stdlib_corpus(args.corpus_bytes))
    shard = splits.shard(args.index, args.num_clients)
    model = build_model(defaults.model, seed=args.seed)
    optimizer = make_inner_optimizer(model, defaults)
    batches = torch.Generator().manual_seed(args.seed * 1_000 + args.index)
    figures: dict[str, float] = {}
    config = ClientConfig(
        name=f"sim-{args.index}",
        heartbeat_interval_s=2.0,
        proximal_mu=args.proximal_mu,
    )
    poison = _poisoner(args)
    transform = None if args.attack is None else build_transform(args.attack)
    outcomes: dict[str, float] = {}
    with DiLoCoClient(
        args.address,
        model,
        inner_steps=args.inner_steps,
        config=config,
        update_transform=transform,
    ) as client:
        is_reporter = args.index == 0
        if is_reporter:
            figures["initial_val_loss"] = _validate(model, splits, args)
        results.put(("ready", args.index, client.client_id))
        if gates is not None and not gates.start.wait(START_WAIT_S):
            raise RuntimeError(f"the other clients did not join in {START_WAIT_S} s")
        # The coordinator ends the run after `rounds` (max_rounds); the
        # step budget only bounds a run whose coordinator never says so.
        for _ in range(2 * args.rounds * args.inner_steps):
            if client.finished:
                break
            batch = sample_batch(shard, defaults.batch_size, defaults.context, batches)
            loss = train_step(model, optimizer, poison(batch), defaults.grad_clip_norm)
            if client.step(loss=loss, num_samples=defaults.batch_size):
                outcome = f"outcome_{client.last_round_outcome}"
                outcomes[outcome] = outcomes.get(outcome, 0.0) + 1
        if is_reporter:
            figures["final_val_loss"] = _validate(model, splits, args)
            if args.probe_backdoor:
                figures["backdoor_success"] = backdoor_success(
                    model, splits.validation, seed=args.seed
                )
        figures["bytes_sent"] = float(client.bytes_sent)
        figures["bytes_received"] = float(client.bytes_received)
        figures["model_version"] = float(client.model_version)
        results.put(("done", args.index, figures | outcomes))
        # Stay joined for the final status only when the run ended: a client
        # whose step budget ran out first (say, seldom selected) leaves now,
        # so no round waits for a client that no longer trains.
        if gates is not None and client.finished:
            gates.release.wait(START_WAIT_S)  # then leave (the `with` block's end)


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


def _validate(model: CharTransformer, splits: TextSplits, args: WorkerArgs) -> float:
    defaults = args.defaults
    return evaluate(
        model,
        splits.validation,
        defaults.batch_size,
        defaults.context,
        args.eval_batches,
        seed=args.seed,
    )
