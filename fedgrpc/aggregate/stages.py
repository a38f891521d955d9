"""The two aggregation stages of a round, as Protocols: Accumulator and Aggregator.

On the coordinator's data path (wire -> **aggregate** -> optim) a round's
updates pass through two stages (DESIGN.md, "The coordinator as a round
pipeline"):

- an **Accumulator** holds the updates as their checked chunks arrive: the
  staged sum (`StagedSum`, the default: each update apart until its commit,
  then one O(model) sum), a per-client spool on disk (`SpoolAccumulator`,
  for rules that need every update), or the secure ring (which only ever
  yields a sum, installed as a `StreamingSum`);
- an **Aggregator** turns what was held into the one pseudo-gradient the
  outer optimizer applies.

What an Accumulator holds decides which Aggregators can run on it: a sum
cannot give a median. Each side says what it offers or needs (`Holding`), so
an impossible pair is refused when the coordinator starts, not mid-run (see
`fedgrpc.coordinator.strategy.combinations`).

Plain data in and out: numpy/torch arrays, ints, floats. No gRPC, no asyncio,
no protobuf; the round engine calls these from its event loop (adds, commits)
and its apply thread (aggregate), never both at once.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Literal, Protocol, TypeAlias

import numpy as np
import numpy.typing as npt
import torch

from fedgrpc.errors import WrongRoundError

F32Array: TypeAlias = npt.NDArray[np.float32]
F64Array: TypeAlias = npt.NDArray[np.float64]

UpdateKey: TypeAlias = Hashable
"""Names one update in flight (the round engine's ticket id). Opaque here: it
is only compared and hashed, never used in a file name or a log line."""

Holding = Literal["sum", "every_update"]
"""What an Accumulator keeps, and what an Aggregator needs.

- `sum`: Σ wᵢ·uᵢ and Σ wᵢ only (streaming sum, secure ring). Enough for the
  weighted mean, nothing else.
- `every_update`: each committed uᵢ and its wᵢ (disk spool). Enough for any
  rule, the mean included.
"""


def check_not_committed(key: UpdateKey, committed: set[UpdateKey]) -> None:
    """Refuse values for an update already committed (it would count twice).

    Raises:
        WrongRoundError: `key` was committed.
    """
    if key in committed:
        raise WrongRoundError("this update was already committed; send a new one")


def holding_satisfies(held: Holding, needed: Holding) -> bool:
    """Whether an Accumulator keeping `held` can feed an Aggregator needing `needed`."""
    return needed == "sum" or held == "every_update"


class AddableBlock(Protocol):
    """A decoded codec block (`fedgrpc.compress.DenseValues` / `SparseValues`).

    Named structurally so this leaf package need not import `compress`.
    """

    @property
    def extent(self) -> int:
        """Coordinates from the block's start that `add_into` touches."""
        ...

    def add_into(self, target: F32Array, weight: float = 1.0) -> None:
        """Add weight x values into `target` (the block's slice), in place."""
        ...


class HeldUpdates(Protocol):
    """What an Accumulator hands its Aggregator once the round stops taking updates."""

    @property
    def holding(self) -> Holding:
        """`sum` (a `HeldSum`) or `every_update` (a `HeldSpool`)."""
        ...

    @property
    def count(self) -> int:
        """Updates committed."""
        ...

    @property
    def total_weight(self) -> float:
        """Σ wᵢ over the committed updates (> 0 once one was committed)."""
        ...


class HeldSum(HeldUpdates, Protocol):
    """Only the weighted sum survives (`holding == "sum"`)."""

    def sum_tensor(self) -> torch.Tensor:
        """Σ wᵢ·uᵢ: the live 1-D float32 buffer, not a copy.

        An Aggregator may pass it as its own `out` (zero copies); the held
        sum is then spent.
        """
        ...


class HeldSpool(HeldUpdates, Protocol):
    """Every committed update, readable a block of coordinates at a time."""

    @property
    def num_coordinates(self) -> int:
        """Length d of every update."""
        ...

    def weights(self) -> F64Array:
        """wᵢ of each committed update, in the row order of `read_block`."""
        ...

    def read_block(self, start: int, out: F32Array) -> None:
        """Fill row i of `out` (n x b, C-contiguous) with uᵢ[start : start + b].

        Memory is the caller's: O(n x b), never O(n x d).
        """
        ...

    def known_squared_norms(self) -> F64Array | None:
        """‖uᵢ‖² per update if known without reading the updates, else None.

        A spool can sum them as the chunks are written, which saves the
        norm bound a whole pass over n x d values at the round's close.
        """
        ...


class Accumulator(Protocol):
    """Holds one round's updates as their checked chunks arrive.

    Chunks reach it only after `wire` checked them (signature, range, dtype,
    finite values); it still bounds-checks every write, because a bug or a
    hostile client upstream must not corrupt memory or another client's data.
    `weight` is the update's declared sample count (the same for each of its
    chunks and its commit). Not thread-safe.
    """

    @property
    def holding(self) -> Holding:
        """What it keeps; decides which Aggregators it can feed."""
        ...

    @property
    def voids_on_abandon(self) -> bool:
        """True if a half-sent update, once abandoned, voids the round.

        The streaming sum cannot take a partial share out again exactly; a
        spool just deletes the client's file.
        """
        ...

    def add_values(
        self,
        key: UpdateKey,
        offset: int,
        values: F32Array,
        weight: float,
        scratch: F32Array,
    ) -> None:
        """Add raw float32 `values` at `offset` of update `key`.

        `scratch` is a reusable float32 array at least `values.size` long.

        Raises:
            InvalidUpdateError: out of range, or not 1-D float32.
            TooLargeError: more coordinates than one model's worth for `key`.
            WrongRoundError: the accumulator was already handed over.
        """
        ...

    def add_block(
        self, key: UpdateKey, offset: int, block: AddableBlock, weight: float
    ) -> None:
        """Add a decoded codec block whose first coordinate is `offset`.

        Raises:
            InvalidUpdateError, TooLargeError, WrongRoundError: as `add_values`.
        """
        ...

    def commit_update(self, key: UpdateKey, weight: float) -> None:
        """Count update `key` as complete, with weight `weight` (> 0, finite).

        Raises:
            InvalidUpdateError: a bad weight.
            WrongRoundError: the accumulator was already handed over.
        """
        ...

    def abandon(self, key: UpdateKey) -> bool:
        """Forget `key`'s half-sent update; True if the round is now void.

        Unknown or committed keys are ignored (the answer is then whether an
        earlier abandon already voided the round).
        """
        ...

    def held(self) -> HeldUpdates:
        """The committed updates, for the Aggregator (adds must have stopped)."""
        ...

    def discard(self) -> None:
        """Free what is held (memory, files): the round is done or discarded.

        Idempotent. Afterwards adds, commits and `held` raise
        WrongRoundError; `abandon` still answers.
        """
        ...


class Aggregator(Protocol):
    """Turns a round's held updates into the one pseudo-gradient.

    A user's own rule implements these three members and plugs in through
    the Python API or as `module:Class` in the TOML
    (`fedgrpc.coordinator.strategy.plugins`).
    """

    @property
    def name(self) -> str:
        """Config name (`mean`, `median`, ...), for logs and error messages."""
        ...

    @property
    def needs(self) -> Holding:
        """What it must be fed: `sum` (the mean) or `every_update` (robust rules)."""
        ...

    def aggregate(self, held: HeldUpdates, out: torch.Tensor) -> None:
        """Write the aggregate into `out`: a 1-D float32 CPU tensor of length d.

        `out` may be `held.sum_tensor()` itself for a `HeldSum` (the
        zero-copy path of the plain round).

        Raises:
            WrongRoundError: nothing was committed.
            InvalidUpdateError: `held` is not what `needs` asked for, or
                `out` has the wrong shape or dtype.
        """
        ...
