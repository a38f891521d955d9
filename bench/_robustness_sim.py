"""One in-process DiLoCo run with Byzantine workers, for bench/robustness.py.

Not a benchmark itself. W workers train the `fedgrpc simulate` char-LM one
after another in this process (one torch thread), so a run is a function
of its `RobustCase`: model init from `seed`, worker w's batches from
generator `seed * 1000 + w` (the simulator's scheme, as
`_convergence_sim._Data`), attackers from `assign_attackers(seed)`.

What the workers send, honest or not, is `_robustness_workers`'s.

What the coordinator does is the library's, built from a `CoordinatorConfig`
the way `fedgrpc serve` builds it (`strategy.wiring`): each update goes into
the round's Accumulator (`RoundStages.open_accumulator`: the streaming sum
for the mean, the disk spool for the robust rules and for trust) in 1 MiB
chunks with its `SampleWeighting` weight (times the trust weight factor),
`RoundStages.aggregate` runs the aggregator (behind the norm bound for
hybrid), `TrustBook.measure` / `round_closed` score the round and
quarantine through `ClientRecord.excluded_until_round` (an excluded worker
sits the round out, as the coordinator refuses its push), the divergence
guard (`NormGuard`, `max_update_norm_growth`) may void the round, and the
configured outer optimizer (nesterov, the library default lr and momentum)
steps the global weights. Only gRPC, compression and signing are left out:
updates are dense float32, as the spool holds them decoded anyway.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from _convergence_sim import DEFAULTS, _Data
from _robustness_workers import Worker, apply_attacks, attack_plans

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.rounds.norm_guard import NormGuard
from fedgrpc.coordinator.rounds.registry import ClientRecord
from fedgrpc.coordinator.rounds.weighting import SampleWeighting
from fedgrpc.coordinator.strategy.wiring import (
    build_outer,
    build_round_stages,
    build_trust,
)
from fedgrpc.sim.models import build_model
from fedgrpc.sim.poison import backdoor_success
from fedgrpc.wire.tensors import flatten_fp32, load_flat_fp32, spec_from_module

CHUNK = (1 << 20) // 4
"""Coordinates per 1 MiB chunk, as the wire sends them."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RobustCase:
    """One (rule, attack, config, seed) run; picklable for spawn."""

    name: str
    rule: str
    """A built-in aggregator name (`aggregator = ...`)."""
    attack: str
    """An attack kind of `fedgrpc.sim.attack_spec`, or 'none'."""
    workers: int
    attackers: int
    seed: int
    rounds: int
    inner_steps: int
    eval_batches: int
    trust: bool = False
    corpus_bytes: int = 8_000_000

    @property
    def kind(self) -> str:
        """`_convergence_sim`'s Case field (`_Data.load` reads the others)."""
        return "diloco"


class _Records:
    """Clients by id: the `Records` the TrustBook writes quarantines into."""

    def __init__(self, ids: list[str]) -> None:
        self.by_id = {
            c: ClientRecord(client_id=c, name=c, session_token=b"") for c in ids
        }

    def get(self, client_id: str) -> ClientRecord | None:
        return self.by_id.get(client_id)


def run_case(case: RobustCase, log: Callable[[str], None]) -> dict[str, Any]:
    """Run `case`; the figures bench/robustness.py aggregates."""
    torch.set_num_threads(1)
    started, cpu = time.perf_counter(), time.process_time()
    data = _Data.load(case)  # type: ignore[arg-type]  # duck-typed Case
    model = build_model(DEFAULTS.model, seed=case.seed)
    with tempfile.TemporaryDirectory(prefix="fedgrpc-robustness-") as spool_dir:
        result = _run(case, data, model, spool_dir, log)
    final = data.val_loss(model, case.eval_batches)
    success = backdoor_success(model, data.splits.validation, seed=case.seed)
    return {
        **result,
        "name": case.name,
        "seed": case.seed,
        "final_val_loss": final if math.isfinite(final) else None,
        "backdoor_success": success,
        "seconds": time.perf_counter() - started,
        # CPU time of this one-thread run: about its wall time on a quiet core.
        "cpu_seconds": time.process_time() - cpu,
    }


def _config(case: RobustCase, spool_dir: str) -> CoordinatorConfig:
    """What `fedgrpc serve --aggregator RULE [--trust on]` would run with."""
    return CoordinatorConfig(
        aggregator=case.rule,
        trust="on" if case.trust else "off",
        min_clients=case.workers,
        spool_dir=spool_dir,
    )


class _Coordinator:
    """The coordinator's stages for one run, built as `fedgrpc serve` builds them."""

    def __init__(
        self, case: RobustCase, d: int, spool_dir: str, samples: list[int]
    ) -> None:
        config = _config(case, spool_dir)
        self.d, self.samples = d, samples
        self.ids = [f"c{w}" for w in range(case.workers)]
        self.records = _Records(self.ids)
        self.stages = build_round_stages(config)
        self.outer, self.trust = build_outer(config), build_trust(config)
        self.guard = NormGuard(config.max_update_norm_growth, config.guard_norm_floor)
        self.weighting = SampleWeighting(config)
        self.quarantined: dict[str, int] = {}
        """Client -> the round it was first hard-quarantined."""
        self.applied = self.voided = 0
        self.aggregate_s = 0.0
        self.scratch = np.empty(CHUNK, dtype=np.float32)

    def excluded(self, worker: int, round_id: int) -> bool:
        """Excluded from `round_id` (`check_not_excluded` would refuse its push)."""
        return self.records.by_id[self.ids[worker]].excluded_from(round_id)

    def _take(self) -> torch.Tensor:
        return torch.zeros(self.d)  # the engine's zeroed d-long buffer

    def close_round(
        self, round_id: int, deltas: dict[int, torch.Tensor], weights: torch.Tensor
    ) -> str | None:
        """Ingest, aggregate, score, guard, step `weights`; why voided, or None."""
        acc = self.stages.open_accumulator(round_id, self.d, self._take)
        claims = []
        try:
            for w, delta in deltas.items():
                samples = self.samples[w]
                weight = self.weighting.weight(self.records.by_id[self.ids[w]], samples)
                values = delta.numpy()
                for start in range(0, self.d, CHUNK):  # chunks, not coordinates
                    chunk = values[start : start + CHUNK]
                    acc.add_values(w, start, chunk, weight, self.scratch)
                acc.commit_update(w, weight)
                claims.append(samples)
            begun = time.perf_counter()
            aggregate = self.stages.aggregate(acc, self._take)
            self.aggregate_s += time.perf_counter() - begun
            if self.trust is not None:
                order = [self.ids[w] for w in deltas]
                self.trust.measure(round_id, order, acc.held(), aggregate)
            blown = self.guard.judge(
                round_id,
                float(torch.linalg.vector_norm(aggregate)),
                lambda: float(torch.linalg.vector_norm(weights)),
            )
            if blown is None:
                self.outer.step(weights, aggregate)
            self.applied += blown is None
            self.voided += blown is not None
        finally:
            acc.discard()
        self._closed(round_id, claims)
        return blown

    def _closed(self, round_id: int, claims: list[int]) -> None:
        if self.trust is not None:
            self.trust.round_closed(round_id, self.records)
            for client_id, standing in self.trust.standings.items():
                if standing.state == "quarantined":
                    self.quarantined.setdefault(client_id, round_id)
        self.weighting.round_closed(claims)


def _run(
    case: RobustCase,
    data: _Data,
    model: Any,
    spool_dir: str,
    log: Callable[[str], None],
) -> dict[str, Any]:
    spec = spec_from_module(model)
    global_flat = flatten_fp32(list(model.parameters()), spec)
    plans = attack_plans(case)
    workers = [Worker(case, w, plans.get(w)) for w in range(case.workers)]
    samples = [worker.samples for worker in workers]
    coord = _Coordinator(case, spec.num_coordinates, spool_dir, samples)
    round_s = 0.0
    try:
        for round_id in range(1, case.rounds + 1):
            begun = time.perf_counter()
            present = [
                w for w in range(case.workers) if not coord.excluded(w, round_id)
            ]
            deltas = {w: workers[w].train(global_flat, data, spec) for w in present}
            apply_attacks(plans, workers, deltas, coord.ids, round_id)
            blown = coord.close_round(round_id, deltas, global_flat)
            if blown is not None:
                log(f"{case.name} seed {case.seed} round {round_id}: {blown}")
            load_flat_fp32(list(model.parameters()), spec, global_flat)
            round_s += time.perf_counter() - begun
    finally:
        coord.stages.close()
    trust = coord.trust
    return {
        "rounds_applied": coord.applied,
        "rounds_voided_by_guard": coord.voided,
        "attackers": sorted(coord.ids[w] for w in plans),
        "clients": coord.ids,
        "first_quarantine_round": coord.quarantined,
        "trust_scores": {c: s.score for c, s in trust.standings.items()}
        if trust
        else None,
        "aggregate_s": coord.aggregate_s,
        "round_s": round_s,
        "params": spec.num_coordinates,
        "global_norm": float(global_flat.norm()),
    }
