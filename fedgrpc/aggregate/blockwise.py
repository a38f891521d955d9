"""What every Aggregator checks, and the block-by-block walk over spooled updates.

Rules that need every update see them as an n x d matrix that is never in
memory at once: `spool_blocks` yields it as n x b column blocks, reusing two
buffers, so a rule costs O(n x b) of RAM whatever d is. b is chosen from a
byte budget so that a round of many clients uses narrower blocks.

While the caller works on one block, a reader thread fills the other with
the next (double buffering): file reads and numpy both release the GIL, so
a pass costs about max(read, compute) instead of their sum on two cores.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import numpy as np
import torch

from fedgrpc.aggregate.stages import F32Array, HeldSpool, HeldSum, HeldUpdates
from fedgrpc.errors import InvalidUpdateError, WrongRoundError

DEFAULT_BLOCK_BYTES = 16 << 20
"""Budget of one n x b block: 16 MiB (two buffers: 32 MiB) keeps a 1,000-client
round at 4k coordinates per block, still wide enough for numpy's per-call
cost to vanish."""
MIN_BLOCK_COORDINATES = 1024
"""Never narrower than this, so a huge n does not degrade to column-at-a-time."""


def check_out(out: torch.Tensor, num_coordinates: int | None = None) -> F32Array:
    """The numpy view of a valid output buffer (1-D float32 CPU tensor).

    Raises:
        InvalidUpdateError: wrong dtype, shape, device or length.
    """
    if out.dim() != 1 or out.dtype != torch.float32 or out.device.type != "cpu":
        raise InvalidUpdateError(
            f"the aggregate buffer must be a 1-D float32 CPU tensor, got "
            f"{out.dtype} {tuple(out.shape)} on {out.device}"
        )
    if num_coordinates is not None and out.numel() != num_coordinates:
        raise InvalidUpdateError(
            f"the aggregate buffer has {out.numel()} coordinates but the updates "
            f"have {num_coordinates}"
        )
    return cast(F32Array, out.numpy())  # torch's numpy() is untyped


def require_committed(held: HeldUpdates, rule: str) -> None:
    """Refuse to aggregate nothing.

    Raises:
        WrongRoundError: no update was committed.
    """
    if held.count == 0:
        raise WrongRoundError(
            f"no update was committed; aggregator {rule!r} has nothing to combine"
        )


def as_sum(held: HeldUpdates) -> HeldSum:
    """`held` as a HeldSum (`holding == "sum"`); the narrowing mypy needs."""
    return cast(HeldSum, held)


def as_spool(held: HeldUpdates, rule: str) -> HeldSpool:
    """`held` as a HeldSpool, or a clear refusal.

    Raises:
        InvalidUpdateError: `held` keeps only a sum.
    """
    if held.holding != "every_update":
        raise InvalidUpdateError(
            f"aggregator {rule!r} needs every client's update, but the round "
            f"kept only {held.holding!r}; use accumulator = 'spool'"
        )
    return cast(HeldSpool, held)


def block_width(count: int, num_coordinates: int, block_bytes: int) -> int:
    """Coordinates per block so that count x width x 4 bytes ≲ `block_bytes`."""
    width = max(MIN_BLOCK_COORDINATES, block_bytes // (4 * max(count, 1)))
    return min(width, num_coordinates)


def spool_blocks(
    held: HeldSpool, block_bytes: int = DEFAULT_BLOCK_BYTES
) -> Iterator[tuple[int, F32Array]]:
    """Yield (start, u[:, start : start + b]) over the whole width of the updates.

    The yielded n x b array is one of two reused buffers: the caller may
    overwrite it (sort, partition) but must not keep it past the next
    iteration, when the reader thread refills it. The last block is
    narrower (a view of the buffer's first columns, still C-contiguous
    because it is re-shaped from the front of the buffer). A read error
    (a discarded spool, a short file) is raised here, in the caller.
    """
    n, d = held.count, held.num_coordinates
    width = block_width(n, d, block_bytes)
    starts = range(0, d, width)
    storage = [np.empty(n * width, dtype=np.float32) for _ in starts[:2]]

    def read(index: int) -> F32Array:
        start = starts[index]
        b = min(width, d - start)
        block = storage[index % 2][: n * b].reshape(n, b)  # (n, b), C-contiguous
        held.read_block(start, block)
        return block

    with ThreadPoolExecutor(1, thread_name_prefix="spool-read") as reader:
        pending = reader.submit(read, 0) if starts else None
        for index, start in enumerate(starts):
            assert pending is not None  # submitted for every index < len(starts)
            block = pending.result()
            if index + 1 < len(starts):
                pending = reader.submit(read, index + 1)
            yield start, block
