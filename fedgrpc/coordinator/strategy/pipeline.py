"""A coordinator's round stages, built and checked once at start.

The seam between the config and the round engine: `RoundStages` takes the
stage settings as plain values, resolves the Aggregator (built-in name,
`module:Class` or object), refuses impossible combinations
(`combinations.check_strategy`), builds the Selector and, when the rule
needs every update, the run's spool directory. The round engine then asks it
for one Accumulator per round and for the round's aggregate:

    stages = RoundStages(settings)                         # at start
    chosen = stages.selector.select(candidates, nonce)     # round opens
    acc = stages.open_accumulator(round_id, d, take_buffer)  # first chunk
    acc.add_values(ticket_id, offset, values, weight, scratch)  # per chunk
    acc.commit_update(ticket_id, weight)                   # per commit
    void = acc.abandon(ticket_id)                          # per failed push
    aggregate = stages.aggregate(acc, take_buffer)         # apply thread
    optimizer.step(params, aggregate); acc.discard()       # then reuse buffer
    stages.close()                                         # at shutdown

Under secure aggregation the secure round mode holds its own ring and
installs a `StreamingSum` of the recovered sum; `aggregate` works on it the
same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from fedgrpc.aggregate import (
    Accumulator,
    Aggregator,
    NormBounded,
    SpoolDirectory,
    WeightedMean,
)
from fedgrpc.aggregate.blockwise import as_sum
from fedgrpc.aggregate.buffers import BufferPool
from fedgrpc.aggregate.spool_dir import prepare_spool_root
from fedgrpc.aggregate.staged import StagedSum, UpdateClip
from fedgrpc.coordinator.strategy.combinations import (
    AccumulatorKind,
    AccumulatorName,
    StrategyChoice,
    check_strategy,
)
from fedgrpc.coordinator.strategy.plugins import load_aggregator
from fedgrpc.coordinator.strategy.power_of_choice import DEFAULT_MAX_SAMPLE_RATIO
from fedgrpc.coordinator.strategy.selection import SelectionName, Selector
from fedgrpc.coordinator.strategy.selectors import build_selector
from fedgrpc.coordinator.strategy.throughput import DEFAULT_PATIENCE_ROUNDS
from fedgrpc.errors import ConfigError, WrongRoundError


@dataclass(frozen=True, slots=True, kw_only=True)
class StrategySettings:
    """The stage settings, as the coordinator config will carry them."""

    aggregator: object = "mean"
    """`mean`, `median`, `trimmed_mean`, `package.module:Class`, or an object."""
    aggregator_params: Mapping[str, Any] = field(default_factory=dict)
    """Keyword arguments for the aggregator's constructor (`beta` = 0.1, ...)."""
    accumulator: AccumulatorName = "auto"
    spool_dir: Path | None = None
    """Where the spool lives; None means `<tmp>/fedgrpc-spool-<uid>`."""
    secure_aggregation: bool = False
    selection: SelectionName = "all"
    clients_per_round: int | None = None
    selection_candidates: int | None = None
    """Power-of-choice's d; None means 2 x clients_per_round."""
    max_sample_ratio: float = DEFAULT_MAX_SAMPLE_RATIO
    patience_rounds: int = DEFAULT_PATIENCE_ROUNDS
    min_clients: int = 1
    max_updates: int = 1024
    """Files one spooled round may hold: the coordinator's max_clients."""
    staging_memory_bytes: int = 1 << 30
    """RAM for the updates in flight of a summed round (`StagedSum`); past it
    they are staged on disk in `spool_dir`."""
    norm_bound: tuple[float | None, float | None] = (None, None)
    """(fixed B, multiple of the median norm): clip every update before the
    aggregator (`aggregate.NormBounded`); (None, None) leaves them alone."""
    sum_on_disk: bool = False
    """Keep a summed round's sum in a file in `spool_dir` (`DiskSum`), for an
    outer step that reads the mean block by block (`rounds.disk_step`); taken
    only with the plain weighted mean over the staged sum."""


class RoundStages:
    """Selector, Aggregator and the Accumulator kind of one coordinator run."""

    def __init__(self, settings: StrategySettings) -> None:
        """Resolve and check every stage; create the spool directory if needed.

        Raises:
            ConfigError: a bad stage setting or an impossible combination.
        """
        self.aggregator: Aggregator = load_aggregator(
            settings.aggregator, params=settings.aggregator_params
        )
        bound, multiple = settings.norm_bound
        if bound is not None or multiple is not None:
            inner = self.aggregator
            if inner.needs == "sum" and not isinstance(inner, WeightedMean):
                raise ConfigError(
                    f"norm_bound / norm_bound_multiple clip each update, but "
                    f"aggregator = {inner.name!r} reads only their sum (needs = "
                    "'sum'); give it needs = 'every_update' or unset the bound"
                )
            self.aggregator = NormBounded(inner, bound, multiple)
        self.accumulator: AccumulatorKind = check_strategy(
            StrategyChoice(
                aggregator=self.aggregator,
                norm_bound=bound is not None or multiple is not None,
                accumulator=settings.accumulator,
                secure_aggregation=settings.secure_aggregation,
                selection=settings.selection,
                clients_per_round=settings.clients_per_round,
                min_clients=settings.min_clients,
            )
        )
        self.selector: Selector = build_selector(
            settings.selection,
            settings.clients_per_round,
            candidate_set_size=settings.selection_candidates,
            max_sample_ratio=settings.max_sample_ratio,
            patience_rounds=settings.patience_rounds,
        )
        self.max_updates = settings.max_updates
        self.staging_memory_bytes = settings.staging_memory_bytes
        self.staging_dir = settings.spool_dir
        self.sum_on_disk = (
            settings.sum_on_disk
            and self.accumulator == "streaming_sum"
            and type(self.aggregator) is WeightedMean  # not a subclass: its own rule
        )
        """Summed rounds keep their sum on disk (`StagedSum(sum_on_disk=...)`)."""
        self.buffers = BufferPool(keep_bytes=settings.staging_memory_bytes)
        """Model-sized buffers reused across rounds: stages, sums, aggregates."""
        self.spool: SpoolDirectory | None = (
            SpoolDirectory(settings.spool_dir) if self.accumulator == "spool" else None
        )
        if self.spool is None and settings.spool_dir is not None:
            prepare_spool_root(settings.spool_dir)  # stages and sums spill there

    def open_accumulator(
        self,
        round_id: int,
        num_coordinates: int,
        take_buffer: Callable[[], torch.Tensor],
        clip: UpdateClip | None = None,
    ) -> Accumulator:
        """The Accumulator for round `round_id` (call on its first chunk).

        `clip` (central DP) scales each update as it commits into the sum.
        With `sum_on_disk` the sum is kept in a file (`DiskSum`).

        The summed round stages each update apart until it commits
        (`StagedSum`), so a broken push costs the round nothing; its buffers
        come from `self.buffers`. `take_buffer` is kept for custom stages.

        Raises:
            WrongRoundError: secure aggregation, whose ring the secure round
                mode holds itself.
        """
        if self.accumulator == "streaming_sum":
            return StagedSum(
                num_coordinates,
                self.buffers,
                self.staging_memory_bytes,
                self.staging_dir,
                clip,
                self.sum_on_disk,
            )
        if self.spool is not None:
            return self.spool.open_round(round_id, num_coordinates, self.max_updates)
        raise WrongRoundError(
            "secure rounds hold their own ring; the secure round mode installs "
            "the recovered sum as a StreamingSum"
        )

    def aggregate(
        self, accumulator: Accumulator, take_buffer: Callable[[], torch.Tensor]
    ) -> torch.Tensor:
        """The round's aggregate, written in place where possible.

        A held sum is divided in its own buffer (no copy, as today); a spool
        is aggregated into a buffer from `take_buffer`.

        Raises:
            WrongRoundError: nothing was committed.
        """
        held = accumulator.held()
        out = as_sum(held).sum_tensor() if held.holding == "sum" else take_buffer()
        self.aggregator.aggregate(held, out)
        return out

    def close(self) -> None:
        """Remove the run's spool directory, if any (idempotent)."""
        if self.spool is not None:
            self.spool.close()

    def __enter__(self) -> RoundStages:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
