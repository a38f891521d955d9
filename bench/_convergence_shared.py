"""Shared-index DiLoCo rounds for bench/convergence.py: what secure aggregation forces.

Not a benchmark itself. Codec strings
`shared:DENSITY:EPSILON[:noguard][:age][:cap][:bitsB][:chunkC]` select it
(B value bits, default 8; cap: clip never above H · lr). Every round the
coordinator announces one index set (`compress.shared_index.choose_index_set`:
top-(1-ε)k of |outer momentum|, or with `age` of
`compress.residual_age.ResidualAge.scores()` (the coordinator's
"residual_age" rule), or with `chunkC` whole chunks of C coordinates by
the workers' summed residual RMS codes, `compress.chunk_norms`, each
push then carrying ceil(d / C) more ring values, plus ε·k positions from
the round seed) and
one fixed-point clip
(`secagg.round_scale`); each worker gathers its residual at those positions,
quantises with the round's `FixedPointScale` (int8, stochastic rounding,
clip counted) and keeps what was not sent in its error-feedback residual.
The coordinator sums the *codes*, which is what unmasking yields (the masks
cancel exactly in the ring; tests/unit/secagg checks that), so the masks
themselves are left out. `optim.divergence.DivergenceGuard` runs every round
unless `:noguard`; a trip drops the round, zeroes the momentum and the
workers' residuals, and announces every position (dense int8) for the
guard's fallback rounds.

Measured (seed 0, 40 rounds, W = 4; validation loss, uplink MB):

    H = 50   topk10 1.634, 3.58   shared10 1.863, 9.25 (1 trip, 5 dense
             rounds; 2.750, 4.36 before a guard that trips)
             randk10-shared 1.595, 16.1 (3 trips, 12 dense rounds; 3.037,
             4.36 without trips)   topk1 2.273, 0.51   shared1 2.276, 5.83
             (1 trip, 5 dense rounds; 3.9 before it)
    H = 10   topk10 2.048   shared10 2.479   randk10-shared 2.693 (no trips)

so a shared set's sparse rounds stay far behind per-client top-k, and
what closes the gap is the guard's dense rounds (and their bytes).

Issue 18, chunk-norm ranking (3 seeds, a later run on the shared machine):

    H = 50   topk10 1.618 ± 0.024, 3.6   shared10-chunk 1.694 ± 0.021,
             11.5 (+4.7 % ± 2.7 paired; 3 loss trips and 13-14 dense
             rounds in every seed; 2.106 at round 35 of seed 0)
             shared10-chunk16 1.657 ± 0.012, 12.4 (+2.5 % ± 2.2; 3 trips,
             13 dense rounds; 1.921 at round 35 of seed 0)
             seed 0 only: shared10 (momentum) 1.862, 5.8 (1 trip);
             shared10-chunk-noguard diverged (7.48 at step 500)
             topk1 2.188, 0.51   shared1-chunk (C 256) 2.177, 7.1 (2 trips,
             10 dense rounds)

so chunk norms end the freeze (sparse stretches at 1.9-2.3 instead of
momentum's 2.55-2.8) but flush stale residuals that Nesterov amplifies:
the guard's dense rounds are still what holds the run together.
With SparseLoCo instead (shared10-chunk16-sloco-noguard, seed 0): no
divergence without the guard, but 2.468 after 40 rounds (2.78 at round
5) against 1.575 for per-client SparseLoCo top-k 10 %: the outer step was
not what held the sparse rounds back. With the random set's best step
(EF decay 0.6, lr 2.5, no guard; 3 seeds): a random set through the ring
1.734 ± 0.005 (the bench codec `randk-shared`'s figure: the ring's clip
costs nothing), chunk norms C = 16 2.244 ± 0.022 (still stalled).

Issue 18, residual-age ranking (`age`, the coordinator's "residual_age"
rule), SparseLoCo lr 2.5, decay 0.6, no guard, 3 seeds:

    H = 50   eps 0.1 1.711 ± 0.016   eps 0.3 1.692 ± 0.014 (+4.6 % ± 2.4
             vs topk10 paired, -2.4 % vs the random set)   eps 0.5 1.699
             ± 0.008   agedecay 2.009 ± 0.135   decay 0.8 1.934 ± 0.011
             eps 0.3 at decay 0.5 1.675 ± 0.011 (+3.5 % ± 2.2 vs topk10),
             at decay 0.4 1.675 ± 0.013
             seed 0 only: eps 0.3 at lr 2 1.695, lr 3 1.706 (lr 2.5: 1.677),
             at decay 0.7 1.733

Bytes: uplink is the lifted codes, `Ring.for_sum(B, W).dtype` per position
(no index bytes go up), framed as update chunks; downlink adds the encoded
index set to each worker's model pull.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from _convergence_estimate import DecayAwareAge
from _convergence_sim import DEFAULTS, Case, _Curve, _Data, _Worker
from _convergence_wire import GRPC_PREFIX_BYTES, pull_bytes, push_overhead_bytes

from fedgrpc.compress import SparseValues
from fedgrpc.compress.bitpack import packed_size
from fedgrpc.compress.chunk_norms import (
    choose_chunk_set,
    chunk_rms,
    chunk_scores,
    num_chunks,
)
from fedgrpc.compress.residual_age import ResidualAge
from fedgrpc.compress.shared_index import (
    choose_index_set,
    encode_index_set,
    shared_index_k,
)
from fedgrpc.domain.chunks import DEFAULT_CHUNK_BYTES, iter_chunks
from fedgrpc.domain.model_spec import ModelSpec
from fedgrpc.errors import InvalidUpdateError
from fedgrpc.optim import build_outer_optimizer
from fedgrpc.optim.divergence import DivergenceGuard, GuardVerdict
from fedgrpc.secagg import Ring
from fedgrpc.secagg.round_scale import (
    ClipRule,
    initial_round_scale,
    next_round_scale,
)
from fedgrpc.sim.models import CharTransformer, train_step
from fedgrpc.wire.frames import encode_update_chunk
from fedgrpc.wire.tensors import flatten_fp32, load_flat_fp32, spec_from_module

VALUE_BITS = 8


def _parse(codec: str) -> tuple[float, float, set[str]]:
    """`shared:DENSITY:EPSILON[:noguard][:age]` -> (density, epsilon, flags)."""
    parts = codec.split(":")
    return float(parts[1]), float(parts[2]), set(parts[3:])


def _push_bytes(values: int, ring_bits: int, num_coordinates: int) -> tuple[int, int]:
    """(framed, payload) of one masked push of `values` lifted codes.

    Ring elements travel bit-packed at the ring's width (CODEC_SECAGG_RING).
    """
    payload = memoryview(bytes(packed_size(values, ring_bits)))
    framed = push_overhead_bytes(num_coordinates)
    for seq, (offset, data) in enumerate(iter_chunks(payload, DEFAULT_CHUNK_BYTES)):
        message = encode_update_chunk(seq, offset, len(data), data)
        framed += len(message) + GRPC_PREFIX_BYTES
    return framed, len(payload)


class _Round:
    """The coordinator's per-run state: outer step, guard, clip, counters."""

    def __init__(self, case: Case, spec: ModelSpec) -> None:
        density, self.epsilon, flags = _parse(case.codec)
        self.case, self.d = case, spec.num_coordinates
        self.k = shared_index_k(density, self.d)
        self.outer = build_outer_optimizer(
            case.outer,  # type: ignore[arg-type]  # validated by convergence.py
            case.outer_lr,
            case.outer_momentum,
        )
        self.guard = None if "noguard" in flags else DivergenceGuard()
        # "age": the library's residual_age rule; "agedecay": the same knowing
        # the clients' residual decay (an ablation, `_convergence_estimate`).
        self.estimate: ResidualAge | None = None
        if "agedecay" in flags:
            self.estimate = DecayAwareAge(self.d, case.feedback_decay)
        elif "age" in flags:
            self.estimate = ResidualAge(self.d)
        bits = [int(f.removeprefix("bits")) for f in flags if f.startswith("bits")]
        value_bits = bits[0] if bits else VALUE_BITS
        self.scale = initial_round_scale(case.inner_steps, DEFAULTS.lr, value_bits)
        self.ring_bits = Ring.for_sum(value_bits, case.workers).bits
        self.clipped = self.quantised = self.dense_rounds = self.round_clipped = 0
        # "cap": C never above round 0's H · lr (ClipRule.max_clip).
        cap = self.scale.clip if "cap" in flags else None
        self.rule = ClipRule(max_clip=cap)
        chunks = [int(f.removeprefix("chunk")) for f in flags if f.startswith("chunk")]
        self.chunk = chunks[0] if chunks else 0
        """C of the chunk-norm rule (`compress.chunk_norms`), 0: momentum ranking."""
        self.tail = num_chunks(self.d, self.chunk) if self.chunk else 0
        self.scores: np.ndarray | None = None
        """Last round's clamped tail sum: next round's chunk ranking."""
        self.tail_sum = np.zeros(self.tail, dtype=np.int64)
        """This round's unmasked tail: Σ over workers of their chunk RMS codes."""
        self.trace: list[list[Any]] = []
        """Per round: [||mean||, clip used, share clipped, guard reason, loss]."""

    def positions(self, round_index: int) -> torch.Tensor:
        """This round's announced set (every position during a fallback)."""
        if self.guard is not None and self.guard.dense_now:
            self.dense_rounds += 1
            return torch.arange(self.d)
        buf = self.outer.state_dict().get("momentum_buffer")
        momentum = buf if isinstance(buf, torch.Tensor) else torch.zeros(self.d)
        if self.estimate is not None:
            momentum = self.estimate.scores()
        seed = self.case.seed.to_bytes(8, "little") + round_index.to_bytes(8, "little")
        if self.chunk:
            scores = self.scores if self.scores is not None else np.zeros(self.tail)
            return choose_chunk_set(
                scores, self.chunk, self.d, self.k, self.epsilon, seed
            )
        return choose_index_set(momentum, self.k, self.epsilon, seed)

    def end_round(
        self, mean: torch.Tensor, positions: torch.Tensor, train_loss: float
    ) -> GuardVerdict:
        """Next round's clip from this round's counts; the guard's verdict."""
        values = positions.numel()
        if self.chunk:
            self.scores = chunk_scores(
                self.tail_sum, self.case.workers, self.scale.qmax
            )
            self.tail_sum = np.zeros(self.tail, dtype=np.int64)
        if self.estimate is not None:
            self.estimate.record(positions, mean[positions])
        clip, clipped = self.scale.clip, self.round_clipped
        self.scale = next_round_scale(
            self.scale,
            clipped=clipped,
            quantised=self.case.workers * values,
            aggregate_abs_max=float(mean.abs().max()),
            rule=self.rule,
        )
        self.round_clipped = 0
        verdict = self._judge(mean, train_loss)
        share = clipped / (self.case.workers * max(values, 1))
        row = [float(mean.norm()), clip, share, verdict.reason, train_loss]
        self.trace.append(row)
        return verdict

    def _judge(self, mean: torch.Tensor, train_loss: float) -> GuardVerdict:
        """The guard's verdict, or without one: apply anything finite."""
        norm = float(mean.norm())
        if self.guard is None:
            return GuardVerdict(math.isfinite(norm), False, False, False, "no_guard")
        verdict = self.guard.observe(norm, train_loss)
        if verdict.reset_momentum and self.outer.name == "nesterov":
            self.outer.load_state_dict({"steps": self.outer.state_dict()["steps"]})
        return verdict


def _train(
    worker: _Worker, global_flat: torch.Tensor, data: _Data
) -> tuple[torch.Tensor, float]:
    """`_Worker.train` (same batches, same order), plus its first step's loss.

    The first step's loss is the global weights' loss on the worker's batch:
    what the guard needs. The mean over H steps (the UpdateHeader's
    train_loss today) hides a broken global model, as local steps repair it:
    randk10-shared's stayed at 2.4-2.5 while validation loss sat at 3.0.
    """
    params = list(worker.model.parameters())
    load_flat_fp32(params, worker.spec, global_flat)
    losses = [
        train_step(worker.model, worker.optimizer, data.batch(worker.index), clip)
        for clip in [DEFAULTS.grad_clip_norm] * worker.case.inner_steps
    ]
    delta = global_flat - flatten_fp32(params, worker.spec)
    return delta, float(losses[0])


def _push(
    worker: _Worker,
    delta: torch.Tensor,
    positions: np.ndarray,
    state: _Round,
    rng: np.random.Generator,
) -> np.ndarray:
    """One worker's masked input before masking: its codes at `positions`."""
    feedback = worker.feedback
    feedback.accumulate(delta.numpy())
    codes = state.scale.quantise(feedback.residual[positions], rng)
    # What the aggregate counts for this worker leaves e; clip and rounding stay.
    feedback.subtract(0, SparseValues(positions, state.scale.dequantise(codes.codes)))
    state.clipped += codes.clipped
    state.round_clipped += codes.clipped
    state.quantised += positions.size
    if state.chunk:  # after the send: what is left, per chunk, summed masked
        norms = chunk_rms(feedback.residual, state.chunk)
        state.tail_sum += state.scale.quantise(norms, rng).codes
    return codes.codes


def run_shared(
    case: Case, data: _Data, model: CharTransformer, curve: _Curve
) -> dict[str, Any]:
    """DiLoCo with a coordinator-chosen shared set; `_run_diloco`'s figures."""
    spec = spec_from_module(model)
    global_flat = flatten_fp32(list(model.parameters()), spec)
    # The worker's own codec is unused: quantisation is the round's fixed point.
    worker_case = dataclasses.replace(case, codec="dense:int8")
    workers = [_Worker(worker_case, w, spec) for w in range(case.workers)]
    rngs = [np.random.default_rng([case.seed, w, 1]) for w in range(case.workers)]
    state = _Round(case, spec)
    framed = payload = down = applied = dropped = 0
    for round_index in range(1, case.rounds + 1):
        positions = state.positions(round_index)
        pos = positions.numpy()
        total = np.zeros(pos.size, dtype=np.int64)
        losses = []
        try:  # NaN/Inf in a residual is refused by the quantiser
            for worker, rng in zip(workers, rngs, strict=True):
                delta, loss = _train(worker, global_flat, data)
                total += _push(worker, delta, pos, state, rng)
                losses.append(loss)
        except InvalidUpdateError:
            break
        up, sent = _push_bytes(
            pos.size + state.tail, state.ring_bits, spec.num_coordinates
        )
        framed, payload = framed + case.workers * up, payload + case.workers * sent
        down += case.workers * len(encode_index_set(positions))
        mean = torch.zeros(spec.num_coordinates)
        mean[positions] = torch.from_numpy(state.scale.dequantise(total))
        mean.div_(case.workers)
        verdict = state.end_round(mean, positions, float(np.mean(losses)))
        if verdict.reset_residuals:  # announced in the next round start
            for worker in workers:
                worker.feedback = worker._fresh_feedback()
            state.scores = None
        if not verdict.apply:
            dropped += 1
            if state.guard is None:
                break
            continue
        try:
            state.outer.step(global_flat, mean)
        except InvalidUpdateError:
            break
        applied += 1
        load_flat_fp32(list(model.parameters()), spec, global_flat)
        curve.record(model, round_index * case.inner_steps)
    pull_up, pull_down = pull_bytes(spec, DEFAULT_CHUNK_BYTES)
    residual = [float(np.linalg.norm(w.feedback.residual)) for w in workers]
    return {
        "bytes_up": framed + applied * case.workers * pull_up,
        "bytes_down": down + applied * case.workers * pull_down,
        "payload_up": payload,
        "rounds_applied": applied + dropped,
        "rounds_dropped": dropped,
        "dense_rounds": state.dense_rounds,
        "guard_trips": state.guard.trips if state.guard is not None else None,
        "clipped_pct": 100 * state.clipped / max(state.quantised, 1),
        "final_clip": state.scale.clip,
        "residual_norm": float(np.mean(residual)),
        "trace": state.trace,
        "global_norm": float(global_flat.norm()),
    }
