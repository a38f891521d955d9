"""The default Accumulator: a weighted sum that a broken update cannot touch.

The plain streaming sum (`mean.StreamingSum`) added every chunk into the
round's one float32 buffer as it arrived. A push that broke after its first
chunk had then already changed the sum, and its share could not be taken
out again: float32 addition is not invertible, (a + b) - b != a in general
(a = 1e8, b = 1.5: a + b rounds to 1e8 + 2, minus b gives 1e8 + 0.5), so
the round had to be voided, and one client cutting every upload kept the
model at version 0 forever.

Here each update in flight is *staged* apart (`stage`): dense values in
their own buffer as fl(wᵢ·uᵢ), coded blocks as decoded. Only a commit
folds a stage into the sum; an abandoned update is dropped whole, and the
sum holds exactly the committed updates:

    sum = Σ_{i committed} fl(wᵢ·uᵢ)      (added in commit order)

The first committed dense stage *becomes* the sum (no copy, no add), so a
round of n dense updates costs n - 1 adds of d floats, as before.

Central differential privacy clips each update here (`clip`): a commit is
the first moment the whole update is known and the last before it merges
into the sum. The stage is clipped in place (a coded or spilled one is
first laid out in a pooled buffer), so the sum holds Σ clip(wᵢ·uᵢ).

Memory (d coordinates, k dense updates in flight at once):
    sum + min(k, B / 4d) stages in RAM = (1 + min(k, B / 4d)) x 4d bytes,
B = `staging_memory_mb`; stages beyond B go to an unlinked temporary file
in `spool_dir` (4 MiB of RAM to fold one back). With `sum_on_disk` (the
lean settings, chosen by the round engine) the sum is a file too
(`disk_sum`): the first committed spilled stage becomes it. Measured at 10.5M
coordinates (42 MB) in README "Broken uploads". Coded stages (top-k) hold
only their indices and values. Freed buffers are kept for the next round
(`buffers.BufferPool`), so after the first round no page is faulted in.

Not thread-safe, except `discard` against `abandon` (the apply thread
discards while the event loop may abandon a late push): each stage is
popped from the dict exactly once, an atomic step under the GIL.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fedgrpc.aggregate.buffers import BufferPool
from fedgrpc.aggregate.disk_sum import DiskSum
from fedgrpc.aggregate.stage import BlockStage, DenseStage
from fedgrpc.aggregate.stages import (
    AddableBlock,
    F32Array,
    Holding,
    UpdateKey,
    check_not_committed,
)
from fedgrpc.errors import InvalidUpdateError, WrongRoundError

Stage = DenseStage | BlockStage
UpdateClip = Callable[[torch.Tensor], float]
"""Scales one whole update in place (to an L2 norm bound); returns its norm."""


class StagedSum:
    """Σ wᵢ·uᵢ over committed updates only; in-flight ones wait in stages."""

    def __init__(
        self,
        num_coordinates: int,
        pool: BufferPool,
        budget_bytes: int,
        spill_dir: Path | None = None,
        clip: UpdateClip | None = None,
        sum_on_disk: bool = False,
    ) -> None:
        """A round's sum over d = `num_coordinates`.

        `budget_bytes` bounds the RAM of stages in flight; past it, dense
        stages spill to `spill_dir` (None: the system temporary directory).
        `clip` (central DP) scales each committed update before it is summed.
        `sum_on_disk` keeps the sum in `spill_dir` too (`disk_sum`; not
        with `clip`, which needs each update whole in RAM).
        """
        self._clip = clip
        self._sum_on_disk = sum_on_disk and clip is None
        self._disk: DiskSum | None = None
        self._d = num_coordinates
        self._pool = pool
        self._budget = budget_bytes
        self._spill_dir = spill_dir
        self._sum: torch.Tensor | None = None
        self._count = 0
        self._total_weight = 0.0
        self._stages: dict[UpdateKey, Stage] = {}
        self._committed: set[UpdateKey] = set()
        self._spent = False
        self.spilled = 0
        """Stages this round put on disk (for logs and tests)."""

    @property
    def holding(self) -> Holding:
        """Only the sum is handed on: `sum`."""
        return "sum"

    @property
    def voids_on_abandon(self) -> bool:
        """False: an abandoned update never reached the sum."""
        return False

    @property
    def count(self) -> int:
        """Updates committed."""
        return self._count

    @property
    def total_weight(self) -> float:
        """Σ wᵢ over committed updates."""
        return self._total_weight

    @property
    def staged_bytes(self) -> int:
        """RAM the stages in flight hold now."""
        return sum(s.in_memory_bytes for s in list(self._stages.values()))

    def add_values(
        self,
        key: UpdateKey,
        offset: int,
        values: F32Array,
        weight: float,
        scratch: F32Array,
    ) -> None:
        """Stage raw values of update `key` (see `Accumulator.add_values`)."""
        if values.dtype != np.float32 or values.ndim != 1:
            raise InvalidUpdateError(
                f"chunk values must be 1-D float32: {values.dtype}"
            )
        stage = self._stage(key, dense=True)
        if not isinstance(stage, DenseStage):
            raise InvalidUpdateError("an update cannot mix raw values and codec blocks")
        stage.write(offset, values, weight, scratch)

    def add_block(
        self, key: UpdateKey, offset: int, block: AddableBlock, weight: float
    ) -> None:
        """Stage a decoded codec block (see `Accumulator.add_block`)."""
        stage = self._stage(key, dense=False)
        if not isinstance(stage, BlockStage):
            raise InvalidUpdateError("an update cannot mix raw values and codec blocks")
        stage.add(offset, block, weight)

    def commit_update(self, key: UpdateKey, weight: float) -> None:
        """Fold `key`'s stage into the sum and count it with weight `weight`.

        Raises:
            InvalidUpdateError: a bad weight, no values, or a dense update
                that did not cover every coordinate.
            WrongRoundError: `key` was committed already, or the sum is spent.
        """
        self._require_open()
        check_not_committed(key, self._committed)
        if not np.isfinite(weight) or weight <= 0:
            raise InvalidUpdateError(f"update weight must be > 0, got {weight}")
        stage = self._stages.get(key)
        if stage is None:
            raise InvalidUpdateError("an update without values cannot be counted")
        if not stage.complete:
            assert isinstance(stage, DenseStage)
            raise InvalidUpdateError(
                f"the update covers {stage.next_offset} of {self._d} coordinates; "
                "commit once every chunk is sent"
            )
        del self._stages[key]
        try:
            self._fold(stage)
        finally:
            stage.release()
        self._count += 1
        self._total_weight += weight
        self._committed.add(key)

    def abandon(self, key: UpdateKey) -> bool:
        """Drop `key`'s stage; the sum never saw it, so the round goes on."""
        stage = self._stages.pop(key, None)
        if stage is not None:
            stage.release()
        return False

    def held(self) -> StagedSum:
        """Itself: the sum is what is held."""
        self._require_open()
        return self

    def sum_tensor(self) -> torch.Tensor:
        """Σ wᵢ·uᵢ: the live buffer (see `HeldSum.sum_tensor`).

        A sum on disk is read back into a pooled buffer first (a consumer
        that needs it whole, such as central noise, gets it as before).

        Raises:
            WrongRoundError: nothing was committed, or the sum is spent.
        """
        self._require_open()
        disk, self._disk = self._disk, None
        if disk is not None:
            try:
                self._sum = disk.read_all(self._pool.take(self._d))
            finally:
                disk.close()
        if self._sum is None:
            raise WrongRoundError("no update was committed; there is no sum")
        return self._sum

    @property
    def disk_sum(self) -> DiskSum | None:
        """The sum, if it is on disk (None: in RAM, or nothing committed)."""
        self._require_open()
        return self._disk

    def discard(self) -> None:
        """Give the sum and every stage back (idempotent; see module docstring)."""
        self._spent = True
        while self._stages:
            try:
                _, stage = self._stages.popitem()
            except KeyError:  # emptied by an abandon meanwhile
                break
            stage.release()
        total, self._sum = self._sum, None
        if total is not None:
            self._pool.give(total)
        disk, self._disk = self._disk, None
        if disk is not None:
            disk.close()

    def _stage(self, key: UpdateKey, dense: bool) -> Stage:
        """`key`'s stage, created on its first chunk (in RAM while under budget)."""
        self._require_open()
        stage = self._stages.get(key)
        if stage is not None:
            return stage
        check_not_committed(key, self._committed)
        if not dense:
            stage = BlockStage(self._d)
        elif self.staged_bytes + 4 * self._d <= self._budget:
            stage = DenseStage(self._d, self._pool, spill_dir=None)
        else:
            stage = DenseStage(self._d, self._pool, self._spill_dir or _tmp())
            self.spilled += 1
        self._stages[key] = stage
        return stage

    def _fold(self, stage: Stage) -> None:
        """Sum += stage; the round's first in-memory dense stage becomes the sum."""
        if self._clip is not None:
            self._fold_clipped(stage, self._clip)
            return
        if self._sum_on_disk:
            self._fold_on_disk(stage)
            return
        if self._sum is None and isinstance(stage, DenseStage):
            self._sum = stage.take_tensor()
            if self._sum is not None:
                return
        if self._sum is None:
            self._sum = self._pool.take_zeroed(self._d)
        stage.fold_into(self._sum.numpy())

    def _fold_on_disk(self, stage: Stage) -> None:
        """Sum += stage, in a file: the first committed spilled stage's file is it."""
        if self._disk is None:
            fd = stage.take_file() if isinstance(stage, DenseStage) else None
            self._disk = DiskSum(self._d, self._spill_dir or _tmp(), fd)
            if fd is not None:
                return
        self._disk.fold(stage)

    def _fold_clipped(self, stage: Stage, clip: UpdateClip) -> None:
        """Sum += clip(stage): the update laid out whole, clipped, then added."""
        tensor = stage.take_tensor() if isinstance(stage, DenseStage) else None
        if tensor is None:  # coded or on disk: lay it out in a pooled buffer
            tensor = self._pool.take_zeroed(self._d)
            stage.fold_into(tensor.numpy())
        clip(tensor)
        if self._sum is None:
            self._sum = tensor
            return
        np.add(self._sum.numpy(), tensor.numpy(), out=self._sum.numpy())
        self._pool.give(tensor)

    def _require_open(self) -> None:
        if self._spent:
            raise WrongRoundError("this round's sum was already handed over")


def _tmp() -> Path:
    return Path(tempfile.gettempdir())
