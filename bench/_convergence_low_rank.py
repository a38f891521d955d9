"""Shared low-rank DiLoCo rounds for bench/convergence.py (`lowrank-shared:R[:V]`).

Not a benchmark itself. Each round every worker trains, folds Delta into
its error-feedback residual, and the workers run `_low_rank.SharedLowRank`:
two pushes each (P_w with the non-matrix tensors, then Q_w), summed by the
"coordinator", which announces the orthonormalised sum P^ in between. The
mean of the workers' P^ Q_w^T goes to the outer optimizer, as
`_convergence_sim._run_diloco` does with one push. Bytes: both pushes
framed as update chunks with a stream header and commit each; downlink
adds P^ (fp32) to each worker's model pull.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from _convergence_sim import Case, _Curve, _Data, _Downlink, _Worker, outer_optimizer
from _convergence_wire import payload_push_bytes
from _low_rank import MatrixLayout, SharedLowRank, parse_low_rank

from fedgrpc.compress import DenseValues
from fedgrpc.domain.chunks import DEFAULT_CHUNK_BYTES
from fedgrpc.errors import InvalidUpdateError
from fedgrpc.sim.models import CharTransformer
from fedgrpc.wire.tensors import flatten_fp32, load_flat_fp32, spec_from_module


def run_low_rank_shared(
    case: Case, data: _Data, model: CharTransformer, curve: _Curve
) -> dict[str, Any]:
    """DiLoCo with shared PowerSGD rounds; `_run_diloco`'s figures."""
    low_rank = parse_low_rank(case.codec)
    assert low_rank is not None
    assert low_rank.shared
    spec = spec_from_module(model)
    global_flat = flatten_fp32(list(model.parameters()), spec)
    workers = [_Worker(case, w, spec) for w in range(case.workers)]
    rngs = [np.random.default_rng([case.seed, w, 2]) for w in range(case.workers)]
    rounds = SharedLowRank(
        MatrixLayout(spec, low_rank.rank), low_rank.values, seed=case.seed
    )
    outer = outer_optimizer(case)
    downlink = _Downlink(case, spec)
    count = spec.num_coordinates
    framed = payload = announced = applied = 0
    for round_index in range(1, case.rounds + 1):
        for worker in workers:
            delta = worker.train(global_flat, data)
            if not case.error_feedback:
                worker.feedback = worker._fresh_feedback()
            worker.feedback.accumulate(delta.numpy())
        try:  # a NaN/Inf residual is refused by the quantiser
            pushes = rounds.round([w.feedback.residual.copy() for w in workers], rngs)
        except InvalidUpdateError:
            break
        total = torch.zeros(count)
        for worker, push in zip(workers, pushes, strict=True):
            worker.feedback.subtract(0, DenseValues(push.sent))
            total += torch.from_numpy(push.sent)
            for data_bytes in (push.first, push.second):
                framed += payload_push_bytes(data_bytes, count, DEFAULT_CHUNK_BYTES)
                payload += len(data_bytes)
        announced += case.workers * rounds.announce_bytes()
        previous = global_flat.clone()
        try:
            outer.step(global_flat, total.div_(case.workers))
        except InvalidUpdateError:
            break
        downlink.step(global_flat, previous, round_index)
        applied += 1
        load_flat_fp32(list(model.parameters()), spec, global_flat)
        curve.record(model, round_index * case.inner_steps)
    residual = [float(np.linalg.norm(w.feedback.residual)) for w in workers]
    return {
        "bytes_up": framed + case.workers * downlink.up,
        "bytes_down": case.workers * downlink.down + announced,
        "payload_up": payload,
        "rounds_applied": applied,
        "residual_norm": float(np.mean(residual)),
        "global_norm": float(global_flat.norm()),
    }
