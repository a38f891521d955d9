"""DiLoCo with client selection, in process: k of W workers push each round.

Mirrors the coordinator's `selection = "random"`: each round the k workers
with the smallest nonce draws (`fedgrpc.coordinator.strategy.RandomSelector`,
the nonce here derived from the seed and the round so runs are repeatable)
push Δ = base - local, where base is the global model they last pulled;
the others keep training on their local weights and pull nothing, so their
next update spans the rounds they sat out. Every worker takes H inner steps
every round (equal compute); the mean is weighted by the steps each update
covers, as the coordinator weights by declared samples.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from _convergence_sim import DEFAULTS, Case, _Curve, _Data, _Worker, outer_optimizer
from _convergence_wire import pull_bytes

from fedgrpc.coordinator.strategy import Candidate, RandomSelector
from fedgrpc.domain.chunks import DEFAULT_CHUNK_BYTES
from fedgrpc.errors import InvalidUpdateError
from fedgrpc.sim.models import CharTransformer, train_step
from fedgrpc.wire.tensors import flatten_fp32, load_flat_fp32, spec_from_module


def run_selected(
    case: Case, data: _Data, model: CharTransformer, curve: _Curve
) -> dict[str, Any]:
    """`case.clients_per_round` of `case.workers` per round (module docstring)."""
    spec = spec_from_module(model)
    global_flat = flatten_fp32(list(model.parameters()), spec)
    workers = [_Worker(case, w, spec) for w in range(case.workers)]
    for worker in workers:
        load_flat_fp32(list(worker.model.parameters()), spec, global_flat)
    bases = [global_flat.clone() for _ in workers]
    steps = [0] * len(workers)
    outer = outer_optimizer(case)
    selector = RandomSelector(case.clients_per_round)
    candidates = [Candidate(client_id=f"w{w}") for w in range(case.workers)]
    framed = payload = applied = pulls = 0
    for round_index in range(1, case.rounds + 1):
        nonce = hashlib.sha256(f"{case.seed}:{round_index}".encode()).digest()[:16]
        chosen = [int(c[1:]) for c in selector.select(candidates, nonce)]
        for w, worker in enumerate(workers):  # everyone trains H steps
            for _ in range(case.inner_steps):
                train_step(worker.model, worker.optimizer, data.batch(w),
                           DEFAULTS.grad_clip_norm)  # fmt: skip
            steps[w] += case.inner_steps
        total = torch.zeros(spec.num_coordinates)
        weight = sum(steps[w] for w in chosen)
        try:
            for w in chosen:
                local = flatten_fp32(list(workers[w].model.parameters()), spec)
                delta = (bases[w] - local).mul_(steps[w] / weight)
                up, sent = workers[w].push(delta, total.numpy())
                framed, payload = framed + up, payload + sent
            outer.step(global_flat, total)
        except InvalidUpdateError:
            break
        applied += 1
        for w in chosen:  # they pull the new model; the others keep going
            load_flat_fp32(list(workers[w].model.parameters()), spec, global_flat)
            bases[w], steps[w] = global_flat.clone(), 0
            pulls += 1
        load_flat_fp32(list(model.parameters()), spec, global_flat)
        curve.record(model, round_index * case.inner_steps)
    pull_up, pull_down = pull_bytes(spec, DEFAULT_CHUNK_BYTES)
    return {
        "bytes_up": framed + pulls * pull_up,
        "bytes_down": pulls * pull_down,
        "payload_up": payload,
        "rounds_applied": applied,
        "residual_norm": 0.0,
        "global_norm": float(global_flat.norm()),
    }
