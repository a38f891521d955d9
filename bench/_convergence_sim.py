"""One in-process convergence run for bench/convergence.py: DP or DiLoCo.

Not a benchmark itself. W simulated workers train the `fedgrpc simulate`
char-LM one after another in this process (one torch thread), so a run
is deterministic given its seed: model init from `seed`, worker w's
batches from generator `seed * 1000 + w` (the simulator's own scheme),
codec rounding from `[seed, w]`. Every configuration therefore sees the
same initial weights and the same batches in the same order.

The coordinator's side is the library's: each worker's update goes
through `ErrorFeedback.encode_blocks` and the codec, the "coordinator"
decodes every payload and adds it into a float32 sum, and the mean goes
to `fedgrpc.optim`'s outer optimizer. Only gRPC is left out (see
bench/round_latency.py); bytes are counted from the real framing
(`_convergence_wire`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from _bench_codecs import bench_codec
from _convergence_wire import (
    chunk_bytes,
    payload_push_bytes,
    pull_bytes,
    push_overhead_bytes,
    step_pull_bytes,
)
from _low_rank import LowRankCodec, MatrixLayout, parse_low_rank

from fedgrpc.compress import DenseValues, ErrorFeedback, make_codec, parse_codec
from fedgrpc.coordinator.rounds.downlink import DownlinkCompressor
from fedgrpc.domain.chunks import DEFAULT_CHUNK_BYTES
from fedgrpc.domain.model_spec import ModelSpec
from fedgrpc.errors import InvalidUpdateError
from fedgrpc.optim import AdaptiveSettings, OuterOptimizer, build_outer_optimizer
from fedgrpc.sim.corpus import TextSplits, load_stdlib_corpus, sample_batch
from fedgrpc.sim.models import (
    CharTransformer,
    TrainDefaults,
    build_model,
    evaluate,
    make_inner_optimizer,
    train_step,
)
from fedgrpc.wire.tensors import flatten_fp32, load_flat_fp32, spec_from_module

EVAL_SEED = 2024
"""Validation windows are the same for every config, seed and round."""
CURVE_POINTS = 8
"""Validation losses recorded along each run (at equal token counts)."""
DEFAULTS = TrainDefaults()


@dataclass(frozen=True, slots=True, kw_only=True)
class Case:
    """One (configuration, seed) run; picklable for spawn."""

    name: str
    kind: str
    """'dp' (every step averaged) or 'diloco'."""
    codec: str = "dense:fp32"
    error_feedback: bool = True
    feedback_decay: float = 1.0
    outer: str = "nesterov"
    outer_lr: float = 0.7
    outer_momentum: float = 0.9
    outer_beta1: float = 0.9
    """β1, β2, τ: read by the adaptive optimizers only (bench/outer_optimizers.py)."""
    outer_beta2: float = 0.99
    outer_tau: float = 1e-3
    rounds: int
    """Outer rounds (for 'dp': rounds * inner_steps steps in all)."""
    inner_steps: int
    seed: int
    workers: int = 4
    eval_batches: int = 100
    curve_batches: int = 20
    corpus_bytes: int = 8_000_000
    downlink: str = "dense"
    """The coordinator's `downlink_codec`: "dense" pulls the whole model each
    round; a codec sends the step with the coordinator's error feedback
    (`coordinator.rounds.downlink`, the library's own)."""
    clients_per_round: int = 0
    """k workers chosen per round from a seeded nonce (random selection); the
    others keep training and push spanning updates later. 0: every worker."""
    outer_weight_decay: bool = False
    """Move AdamW's decoupled weight decay from the workers to the outer step:
    workers train with weight_decay 0 and the global matrices shrink by
    (1 - lr * wd)^H after each outer step (what H decay steps do alone). The
    shrink is dense and deterministic, so it costs no bytes; in the pseudo-
    gradient, top-k cannot carry it and error feedback hoards it (issue 18)."""


@dataclass
class _Data:
    splits: TextSplits
    shards: list[torch.Tensor]
    generators: list[torch.Generator]

    @classmethod
    def load(cls, case: Case) -> _Data:
        splits = TextSplits.from_bytes(load_stdlib_corpus(case.corpus_bytes))
        shards = [splits.shard(w, case.workers) for w in range(case.workers)]
        generators = [
            torch.Generator().manual_seed(case.seed * 1_000 + w)
            for w in range(case.workers)
        ]
        return cls(splits, shards, generators)

    def batch(self, worker: int) -> tuple[torch.Tensor, torch.Tensor]:
        shard, generator = self.shards[worker], self.generators[worker]
        return sample_batch(shard, DEFAULTS.batch_size, DEFAULTS.context, generator)

    def val_loss(self, model: CharTransformer, batches: int) -> float:
        data = self.splits.validation
        return evaluate(
            model, data, DEFAULTS.batch_size, DEFAULTS.context, batches, EVAL_SEED
        )


class _Curve:
    """Validation loss at CURVE_POINTS equal token counts along the run."""

    def __init__(self, case: Case, data: _Data, log: Any) -> None:
        self.case, self.data, self.log = case, data, log
        self.total = case.rounds * case.inner_steps
        self.points: list[list[float]] = []
        self._next = 1

    def record(self, model: CharTransformer, steps: int) -> None:
        """Evaluate if `steps` (per worker) crossed the next curve point."""
        if steps * CURVE_POINTS < self._next * self.total or steps >= self.total:
            return
        self._next = steps * CURVE_POINTS // self.total + 1
        loss = self.data.val_loss(model, self.case.curve_batches)
        self.points.append([steps / self.total, loss])
        self.log(f"{self.case.name} seed {self.case.seed}: {steps} steps, {loss:.4f}")


def run_case(case: Case, log: Any) -> dict[str, Any]:
    """Run `case`; the figures bench/convergence.py aggregates."""
    torch.set_num_threads(1)
    started = time.perf_counter()
    data = _Data.load(case)
    model = build_model(DEFAULTS.model, seed=case.seed)
    curve = _Curve(case, data, log)
    if case.kind == "dp":
        result = _run_dp(case, data, model, curve)
    else:
        result = _run_diloco(case, data, model, curve)
    final = data.val_loss(model, case.eval_batches)
    curve.points.append([1.0, final])
    tokens = case.rounds * case.inner_steps * case.workers * DEFAULTS.batch_size
    return {
        **result,
        "name": case.name,
        "seed": case.seed,
        "final_val_loss": final if math.isfinite(final) else None,
        "curve": curve.points,
        "tokens": tokens * DEFAULTS.context,
        "seconds": time.perf_counter() - started,
    }


def _run_dp(
    case: Case, data: _Data, model: CharTransformer, curve: _Curve
) -> dict[str, Any]:
    """Synchronous data parallel: each step averages the W workers' gradients.

    Implemented as one model on the concatenation of the W workers' batches
    (the same batches the DiLoCo workers draw): with equal batch sizes the
    mean loss over it is the mean of the W workers' losses, so its gradient
    is their averaged gradient, clipped and applied by one AdamW.
    """
    optimizer = make_inner_optimizer(model, DEFAULTS)
    steps = case.rounds * case.inner_steps
    for step in range(1, steps + 1):
        parts = [data.batch(w) for w in range(case.workers)]
        batch = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
        train_step(model, optimizer, batch, DEFAULTS.grad_clip_norm)
        curve.record(model, step)
    spec = spec_from_module(model)
    push = _dense_push_bytes(spec)
    pull_up, pull_down = pull_bytes(spec, DEFAULT_CHUNK_BYTES)
    per_step = case.workers * steps
    return {
        "bytes_up": per_step * (push[0] + pull_up),
        "bytes_down": per_step * pull_down,
        "payload_up": per_step * push[1],
    }


def _dense_push_bytes(spec: ModelSpec) -> tuple[int, int]:
    """(framed, payload) bytes of one dense fp32 push of the whole model."""
    feedback = ErrorFeedback(spec.num_coordinates)
    codec = make_codec(parse_codec("dense:fp32"))
    framed, payload = chunk_bytes(feedback.encode_blocks(codec, DEFAULT_CHUNK_BYTES))
    return framed + push_overhead_bytes(spec.num_coordinates), payload


class _Worker:
    """A DiLoCo worker: local model, its AdamW (kept across rounds), codec, e."""

    def __init__(self, case: Case, index: int, spec: ModelSpec) -> None:
        self.case, self.index, self.spec = case, index, spec
        self.model = build_model(DEFAULTS.model, seed=case.seed)
        inner = (
            replace(DEFAULTS, weight_decay=0.0) if case.outer_weight_decay else DEFAULTS
        )
        self.optimizer = make_inner_optimizer(self.model, inner)
        rng = np.random.default_rng([case.seed, index])
        low_rank = parse_low_rank(case.codec)
        self.low_rank = (
            LowRankCodec(MatrixLayout(spec, low_rank.rank), low_rank.values, rng)
            if low_rank is not None and not low_rank.shared
            else None
        )
        self.codec = bench_codec(
            "dense:fp32" if low_rank is not None else case.codec,
            rng,
            shared_seed=case.seed,
        )
        self.feedback = self._fresh_feedback()

    def _fresh_feedback(self) -> ErrorFeedback:
        n = self.spec.num_coordinates
        return ErrorFeedback(n, decay=self.case.feedback_decay)

    def train(self, global_flat: torch.Tensor, data: _Data) -> torch.Tensor:
        """Start from the global weights, take H inner steps; returns Δ = θg - θl."""
        params = list(self.model.parameters())
        load_flat_fp32(params, self.spec, global_flat)
        for _ in range(self.case.inner_steps):
            batch = data.batch(self.index)
            train_step(self.model, self.optimizer, batch, DEFAULTS.grad_clip_norm)
        return global_flat - flatten_fp32(params, self.spec)

    def push(self, delta: torch.Tensor, total: np.ndarray) -> tuple[int, int]:
        """Encode e + Δ, "send" it into the coordinator's `total`; (framed, payload)."""
        if not self.case.error_feedback:
            self.feedback = self._fresh_feedback()  # what was not sent is dropped
        self.feedback.accumulate(delta.numpy())
        if self.low_rank is not None:
            return self._push_low_rank(self.low_rank, total)
        blocks = list(self.feedback.encode_blocks(self.codec, DEFAULT_CHUNK_BYTES))
        for block in blocks:  # the coordinator decodes the payload itself
            decoded = self.codec.decode(block.encoded.payload, block.count)
            decoded.add_into(total[block.offset : block.offset + block.count])
        framed, payload = chunk_bytes(blocks)
        return framed + push_overhead_bytes(self.spec.num_coordinates), payload

    def _push_low_rank(self, codec: LowRankCodec, total: np.ndarray) -> tuple[int, int]:
        """`push` for per-worker PowerSGD: one payload for the whole update."""
        payload, sent = codec.encode(self.feedback.residual.copy())
        self.feedback.subtract(0, DenseValues(sent))
        total += codec.decode(payload)  # the coordinator decodes the payload itself
        count = self.spec.num_coordinates
        return payload_push_bytes(payload, count, DEFAULT_CHUNK_BYTES), len(payload)


def _run_diloco(
    case: Case, data: _Data, model: CharTransformer, curve: _Curve
) -> dict[str, Any]:
    """DiLoCo (arXiv 2311.08105, Alg. 1): H local steps, then one outer step."""
    if case.codec.startswith("shared:"):
        # Imported here: _convergence_shared builds on this module's _Worker.
        from _convergence_shared import run_shared

        return run_shared(case, data, model, curve)
    if case.codec.startswith("lowrank-shared:"):
        from _convergence_low_rank import run_low_rank_shared

        return run_low_rank_shared(case, data, model, curve)
    if case.clients_per_round:
        from _convergence_selection import run_selected

        return run_selected(case, data, model, curve)
    spec = spec_from_module(model)
    global_flat = flatten_fp32(list(model.parameters()), spec)
    workers = [_Worker(case, w, spec) for w in range(case.workers)]
    outer = outer_optimizer(case)
    downlink = _Downlink(case, spec)
    shrink = _outer_decay(case, model, spec) if case.outer_weight_decay else None
    framed = payload = applied = 0
    for round_index in range(1, case.rounds + 1):
        total = torch.zeros(spec.num_coordinates)
        try:  # a NaN/Inf update is refused by the codec or the outer step
            for worker in workers:
                up, sent = worker.push(worker.train(global_flat, data), total.numpy())
                framed, payload = framed + up, payload + sent
            previous = global_flat.clone()
            outer.step(global_flat, total.div_(case.workers))
            if shrink is not None:
                global_flat.mul_(shrink)
            downlink.step(global_flat, previous, round_index)
        except InvalidUpdateError:  # diverged: keep the last good global, stop
            break
        applied += 1
        load_flat_fp32(list(model.parameters()), spec, global_flat)
        curve.record(model, round_index * case.inner_steps)
    residual = [float(np.linalg.norm(w.feedback.residual)) for w in workers]
    return {
        "bytes_up": framed + case.workers * downlink.up,
        "bytes_down": case.workers * downlink.down,
        "downlink_residual_norm": downlink.residual_norm,
        "payload_up": payload,
        "rounds_applied": applied,
        "residual_norm": float(np.mean(residual)),
        "global_norm": float(global_flat.norm()),
    }


def outer_optimizer(case: Case) -> OuterOptimizer:
    """The case's outer step (Nesterov, SGD, or an adaptive one with its betas)."""
    return build_outer_optimizer(
        case.outer,  # type: ignore[arg-type]  # validated by convergence.py
        case.outer_lr,
        case.outer_momentum,
        AdaptiveSettings(
            beta1=case.outer_beta1, beta2=case.outer_beta2, tau=case.outer_tau
        ),
    )


def _outer_decay(case: Case, model: CharTransformer, spec: ModelSpec) -> torch.Tensor:
    """Per-coordinate factor of H decoupled decay steps: (1 - lr * wd)^H on
    matrices (the tensors `make_inner_optimizer` decays), 1 elsewhere."""
    factor = (1.0 - DEFAULTS.lr * DEFAULTS.weight_decay) ** case.inner_steps
    params = list(model.parameters())
    return flatten_fp32(
        [torch.full_like(p, factor if p.dim() >= 2 else 1.0) for p in params], spec
    )


class _Downlink:
    """What each worker pulls per applied round: the whole model, or the step.

    With a downlink codec the global weights become what the library's
    coordinator would publish (w + decoded step, its residual keeping the
    rest), and the bytes are those of the step's PullModel stream.
    """

    def __init__(self, case: Case, spec: ModelSpec) -> None:
        self.spec = spec
        config = parse_codec(case.downlink)
        self.compressor = (
            None
            if case.downlink in ("dense", "dense:fp32")
            else DownlinkCompressor(config, spec.num_coordinates, DEFAULT_CHUNK_BYTES)
        )
        self._whole = pull_bytes(spec, DEFAULT_CHUNK_BYTES)
        self.up = self.down = 0
        """Bytes of one worker's pulls so far (request; response)."""

    def step(
        self, proposed: torch.Tensor, previous: torch.Tensor, version: int
    ) -> None:
        """Publish version `version` (in place in `proposed`); count its pull."""
        if self.compressor is None:
            up, down = self._whole
        else:
            self.compressor.apply(proposed, previous, version)
            step = self.compressor.recent[-1]
            up, down = step_pull_bytes(self.spec, step, self.compressor.codec_spec)
        self.up, self.down = self.up + up, self.down + down

    @property
    def residual_norm(self) -> float:
        """‖e‖ of the coordinator's downlink residual (0 without a codec)."""
        return 0.0 if self.compressor is None else self.compressor.residual_norm
