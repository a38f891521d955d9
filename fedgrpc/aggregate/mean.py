"""A round's weighted sum, built chunk by chunk while updates stream in.

On the coordinator's data path this sits after `wire` has checked a chunk
and before `optim` applies the outer step. Each chunk is added into one
float32 running sum the moment it arrives, so a round costs one model-sized
buffer however many clients push at once (DESIGN.md, "memory O(model), not
O(model x clients)"). The price: a push that fails half-way has already
touched the sum, and its share cannot be taken out again exactly, so a
round that uses it must be voided. Plain rounds therefore use
`staged.StagedSum` (each update apart until its commit); this one holds
the secure ring's recovered sum, which arrives whole.

Not thread-safe: the coordinator adds from its event loop only.
"""

from __future__ import annotations

import numpy as np
import torch

from fedgrpc.aggregate.stages import (
    AddableBlock,
    F32Array,
    Holding,
    UpdateKey,
    check_not_committed,
)
from fedgrpc.errors import (
    ConfigError,
    InvalidUpdateError,
    TooLargeError,
    WrongRoundError,
)


class StreamingSum:
    """Running Σ wᵢ·uᵢ over a round's updates, and Σ wᵢ over the committed ones.

    The weight is usually the client's sample count, so the mean is the
    sample-weighted average FedAvg prescribes. Life cycle: `add_chunk` /
    `commit` any number of times, then `mean` once: it divides in place and
    hands the buffer over, after which the object is spent.
    """

    def __init__(self, buffer: torch.Tensor) -> None:
        """Take ownership of `buffer`: a zero-filled 1-D float32 CPU tensor."""
        if buffer.dim() != 1 or buffer.dtype != torch.float32 or buffer.numel() == 0:
            raise ConfigError(
                "the sum buffer must be a non-empty 1-D float32 tensor, got "
                f"{buffer.dtype} {tuple(buffer.shape)}"
            )
        self._buffer: torch.Tensor | None = buffer
        self._values = buffer.numpy()
        self._count = 0
        self._total_weight = 0.0
        self._written: dict[UpdateKey, int] = {}
        """Coordinates added so far per update still streaming."""
        self._void = False
        self._committed_keys: set[UpdateKey] = set()

    @property
    def count(self) -> int:
        """Updates committed so far."""
        return self._count

    @property
    def total_weight(self) -> float:
        """Σ wᵢ over committed updates."""
        return self._total_weight

    @property
    def holding(self) -> Holding:
        """Only the sum is kept: `sum`."""
        return "sum"

    @property
    def voids_on_abandon(self) -> bool:
        """True: an abandoned update's partial share stays in the sum."""
        return True

    def add_values(
        self,
        key: UpdateKey,
        offset: int,
        values: F32Array,
        weight: float,
        scratch: F32Array,
    ) -> None:
        """`add_chunk` for update `key` (see `Accumulator.add_values`).

        Raises:
            InvalidUpdateError: the slice is out of range or not float32.
            TooLargeError: `key` sent more than one model's worth of values.
            WrongRoundError: the sum was already handed over.
        """
        written = self._check_written(key, values.size)
        self.add_chunk(offset, values, weight, scratch)
        self._written[key] = written

    def add_block(
        self, key: UpdateKey, offset: int, block: AddableBlock, weight: float
    ) -> None:
        """Add a decoded codec block in place (see `Accumulator.add_block`)."""
        extent = block.extent
        target = self.target(offset, offset + extent)
        written = self._check_written(key, extent)
        block.add_into(target, weight)
        self._written[key] = written

    def commit_update(self, key: UpdateKey, weight: float) -> None:
        """`commit` for update `key`: it no longer counts as streaming.

        Raises:
            InvalidUpdateError: a bad weight, or `key` added no values.
            WrongRoundError: `key` was committed already, or the sum is spent.
        """
        check_not_committed(key, self._committed_keys)
        if key not in self._written:
            raise InvalidUpdateError("an update without values cannot be counted")
        self.commit(weight)
        del self._written[key]
        self._committed_keys.add(key)

    def abandon(self, key: UpdateKey) -> bool:
        """Forget `key`; the round is void once any abandoned update touched the sum."""
        if self._written.pop(key, None) is not None:
            self._void = True
        return self._void

    def held(self) -> StreamingSum:
        """Itself: the sum is what is held."""
        self._require_buffer()
        return self

    def sum_tensor(self) -> torch.Tensor:
        """Σ wᵢ·uᵢ: the live buffer (see `HeldSum.sum_tensor`)."""
        return self._require_buffer()

    def discard(self) -> None:
        """Drop the buffer (the round engine keeps its own reference to reuse it)."""
        self._buffer = None

    def add_chunk(
        self, offset: int, values: np.ndarray, weight: float, scratch: np.ndarray
    ) -> None:
        """sum[offset : offset + len(values)] += weight * values, in place.

        `scratch` is a float32 array at least as long as `values`, reused
        across chunks so the weighted product allocates nothing.

        Raises:
            InvalidUpdateError: the slice is out of range or not float32.
            WrongRoundError: the sum was already handed over by `mean`.
        """
        buffer = self._require_buffer()
        end = offset + values.size
        if values.dtype != np.float32 or values.ndim != 1:
            raise InvalidUpdateError(
                f"chunk values must be 1-D float32: {values.dtype}"
            )
        if offset < 0 or end > buffer.numel():
            raise InvalidUpdateError(
                f"chunk [{offset}, {end}) is outside the {buffer.numel()}-long sum"
            )
        target = self._values[offset:end]
        if weight == 1.0:
            np.add(target, values, out=target)
            return
        product = scratch[: values.size]
        np.multiply(values, np.float32(weight), out=product)
        np.add(target, product, out=target)

    def target(self, offset: int, end: int) -> np.ndarray:
        """A writable view of sum[offset:end], for codecs that add in place.

        Raises:
            InvalidUpdateError: the range is outside the sum.
            WrongRoundError: the sum was already handed over by `mean`.
        """
        buffer = self._require_buffer()
        if not 0 <= offset <= end <= buffer.numel():
            raise InvalidUpdateError(
                f"block [{offset}, {end}) is outside the {buffer.numel()}-long sum"
            )
        return self._values[offset:end]

    def commit(self, weight: float) -> None:
        """Count a fully added update with its weight.

        Raises:
            InvalidUpdateError: `weight` is not a positive finite number.
        """
        if not np.isfinite(weight) or weight <= 0:
            raise InvalidUpdateError(f"update weight must be > 0, got {weight}")
        self._require_buffer()
        self._count += 1
        self._total_weight += weight

    def mean(self) -> torch.Tensor:
        """Σ wᵢ·uᵢ / Σ wᵢ, computed in the sum buffer and handed to the caller.

        Raises:
            WrongRoundError: nothing was committed, or the sum is already spent.
        """
        buffer = self._require_buffer()
        if self._count == 0:
            raise WrongRoundError("no update was committed; there is no mean to take")
        self._buffer = None
        return buffer.div_(self._total_weight)

    def release(self) -> torch.Tensor:
        """Hand the buffer back without a mean (a discarded round)."""
        buffer = self._require_buffer()
        self._buffer = None
        return buffer

    def _check_written(self, key: UpdateKey, size: int) -> int:
        """`key`'s coordinates after adding `size` more; refuses past one model.

        The wire's chunk chain should already stop such a client; this keeps
        the sum safe on its own. Checked before the add, recorded after it:
        a refused chunk touches nothing and does not void the round.
        """
        if key not in self._written:
            check_not_committed(key, self._committed_keys)
        written = self._written.get(key, 0) + size
        limit = len(self._values)
        if written > limit:
            raise TooLargeError(
                f"an update sent {written} coordinates, more than the model's "
                f"{limit}; it is refused"
            )
        return written

    def _require_buffer(self) -> torch.Tensor:
        if self._buffer is None:
            raise WrongRoundError("this round's sum was already handed over")
        return self._buffer
