"""One in-process run for bench/heterogeneity.py: a method on a partition of digits.

Not a benchmark itself. W simulated clients train `fedgrpc simulate`'s
digits task (`fedgrpc.sim.tasks.digits`: the BatchNorm CNN, Adam, batch
32) one after another in this process (one torch thread), so a run is
deterministic given its seed: model init from `seed`, the partition from
`seed` (`fedgrpc.data`), client w's batches from generator
`seed * 1000 + w` (the simulator's scheme). Every method therefore sees
the same initial weights, the same split and the same batches.

The library does the federated parts: each round's mean pseudo-gradient
(equal weights: every client takes H steps of 32 images, as the
coordinator's sample weighting would give) goes to `fedgrpc.optim`'s outer
optimizer, and FedProx is `fedgrpc.client.proximal.ProximalTerm`, the
client's own pre-step hook. Only gRPC is left out (`fedgrpc simulate
--task digits` runs the same task over it).

BatchNorm buffers (running mean and variance, batches seen) are averaged
each round like the parameters (`buffers="average"`, what the client does
by default once buffers are federated), or kept per client
(`buffers="local"`: the global model is then scored with client 0's
statistics, as `fedgrpc simulate` does while only parameters travel).

Centralized training is one model on the pooled training images, R * H * W
steps of batch 32: the same number of optimizer steps and of samples as
the federation's clients take together.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedgrpc.client.proximal import ProximalTerm
from fedgrpc.config.outer import resolve_lr, resolve_momentum
from fedgrpc.data import parse_partition
from fedgrpc.errors import InvalidUpdateError
from fedgrpc.optim import AdaptiveSettings, build_outer_optimizer
from fedgrpc.sim.tasks.digits import DigitsTask
from fedgrpc.wire.tensors import flatten_fp32, load_flat_fp32, spec_from_module

OUTER = {"fedavg": "fedavg", "diloco": "nesterov", "fedprox": "fedavg",
         "fedyogi": "fedyogi"}  # fmt: skip
"""Method -> the outer optimizer it runs (library defaults for lr, momentum,
beta1, beta2, tau: `fedgrpc.config.outer`)."""
METHODS = ("centralized", *OUTER)


@dataclass(frozen=True, slots=True, kw_only=True)
class Case:
    """One (method, partition, seed) run; picklable, its repr is the cache key."""

    name: str
    method: str
    partition: str
    """`--partition` grammar; ignored by centralized (pooled data)."""
    seed: int
    rounds: int
    inner_steps: int
    workers: int = 10
    proximal_mu: float = 0.01
    """FedProx's mu (read by fedprox only)."""
    buffers: str = "average"


def run_case(case: Case, log: Any) -> dict[str, Any]:
    """Run `case`; the figures bench/heterogeneity.py aggregates."""
    torch.set_num_threads(1)
    started = time.perf_counter()
    task = DigitsTask()
    if case.method == "centralized":
        curve, applied = _centralized(case, task), case.rounds
    else:
        curve, applied = _federated(case, task)
    final = curve[-1]
    log(f"{case.name} seed {case.seed}: accuracy {final['val_accuracy']:.4f}")
    return {
        "name": case.name,
        "method": case.method,
        "partition": case.partition,
        "seed": case.seed,
        "final_val_accuracy": final["val_accuracy"],
        "final_val_loss": final["val_loss"]
        if math.isfinite(final["val_loss"])
        else None,
        "accuracy_per_round": [point["val_accuracy"] for point in curve],
        "rounds_applied": applied,
        "seconds": time.perf_counter() - started,
    }


def _centralized(case: Case, task: DigitsTask) -> list[dict[str, float]]:
    """R * H * W Adam steps on the pooled images; scored every H * W steps."""
    model = task.build_model(case.seed)
    optimizer = task.make_optimizer(model)
    pooled = task.partition(1, parse_partition("iid"), case.seed)
    sample = task.sampler(pooled, 0)
    generator = torch.Generator().manual_seed(case.seed * 1_000)
    curve = []
    for _ in range(case.rounds):
        for _ in range(case.inner_steps * case.workers):
            task.train_step(model, optimizer, sample(generator))
        curve.append(task.evaluate(model, case.seed))
    return curve


class _Client:
    """A client: its model, its Adam (kept across rounds), its data, FedProx."""

    def __init__(self, case: Case, task: DigitsTask, index: int, split: Any) -> None:
        self.case, self.task = case, task
        self.model = task.build_model(case.seed)
        self.optimizer = task.make_optimizer(self.model)
        self.sample = task.sampler(split, index)
        self.generator = torch.Generator().manual_seed(case.seed * 1_000 + index)
        self.params = list(self.model.parameters())
        self.spec = spec_from_module(self.model)
        self.prox = (
            ProximalTerm(self.params, case.proximal_mu)
            if case.method == "fedprox"
            else None
        )

    def train(
        self, global_flat: torch.Tensor, buffers: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Load the global weights, take H steps; returns Δ = θ_global - θ_local."""
        load_flat_fp32(self.params, self.spec, global_flat)
        if self.case.buffers == "average":
            _load_buffers(self.model, buffers)
        if self.prox is not None:  # w^t: views of the global vector, as LocalRun's
            self.prox.anchor_to([
                global_flat[s.coord_offset : s.coord_offset + s.spec.numel]
                for s in self.spec.slots
            ])  # fmt: skip
        for _ in range(self.case.inner_steps):
            self.task.train_step(
                self.model, self.optimizer, self.sample(self.generator)
            )
        return global_flat - flatten_fp32(self.params, self.spec)

    def close(self) -> None:
        """Remove the process-wide FedProx hook."""
        if self.prox is not None:
            self.prox.close()


def _federated(case: Case, task: DigitsTask) -> tuple[list[dict[str, float]], int]:
    """R rounds: every client trains H steps, then one outer step on the mean Δ."""
    split = task.partition(case.workers, parse_partition(case.partition), case.seed)
    model = task.build_model(case.seed)  # the global model, scored each round
    spec = spec_from_module(model)
    global_flat = flatten_fp32(list(model.parameters()), spec)
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    clients = [_Client(case, task, w, split) for w in range(case.workers)]
    name = OUTER[case.method]
    outer = build_outer_optimizer(
        name,  # type: ignore[arg-type]  # one of OUTER's values
        resolve_lr(name, None), resolve_momentum(name, None), AdaptiveSettings(),
    )  # fmt: skip
    curve, applied = [], 0
    try:
        for _ in range(case.rounds):
            # Mean pseudo-gradient, equal weights (same steps x batch per client).
            total = torch.stack([c.train(global_flat, buffers) for c in clients]).mean(
                0
            )
            try:
                outer.step(global_flat, total)
            except InvalidUpdateError:  # diverged: keep the last good global, stop
                break
            applied += 1
            buffers = _mean_buffers([c.model for c in clients])
            load_flat_fp32(list(model.parameters()), spec, global_flat)
            _load_buffers(model, buffers if case.buffers == "average"
                          else dict(clients[0].model.named_buffers()))  # fmt: skip
            curve.append(task.evaluate(model, case.seed))
    finally:
        for client in clients:
            client.close()
    return curve or [task.evaluate(model, case.seed)], applied


def _mean_buffers(models: list[nn.Module]) -> dict[str, torch.Tensor]:
    """Each buffer averaged over the clients; integer ones (batches seen) rounded."""
    named = [dict(m.named_buffers()) for m in models]
    out = {}
    for name, first in named[0].items():
        mean = torch.stack([n[name].double() for n in named]).mean(0)
        out[name] = (mean if first.is_floating_point() else mean.round()).to(
            first.dtype
        )
    return out


def _load_buffers(model: nn.Module, buffers: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])
