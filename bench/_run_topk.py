"""Top-k over runs of b contiguous coordinates: issue 18's measured, unbuilt codec.

At top-k 3 % int2 most of a payload is positions (~7 of the ~9.2 bits a
value; gaps of ~33 need ~6-7 bits), so selecting whole *runs* of b
coordinates, one position per run, buys ~3.5x the coordinates for the same
bytes at b = 16. Issue 18 asked whether that buys loss at H = 50: it does
not (README, "Compression": worse than per-coordinate top-k at every b and
outer lr tried, the worse the longer the run). So the codec lives here, for
the bench's registry (`_convergence_h50`, specs `topk:D:V:bR`, built by
`_bench_codecs.bench_codec`), and not in
`fedgrpc.compress`: no wire codec carries a run length, and a library
setting every peer would refuse is not worth its API.

Selection, per group of 4,096 coordinates (`TOPK_GROUP`): the
ceil(density * 4096 / b) runs with the largest sum of squares (the L2 norm
squared, same order), by `fedgrpc.compress.topk.select_grouped`; runs of
all zeros are never sent. Payload, as CODEC_TOPK's with runs for values:

    uint32 LE  k, the number of runs (<= the groups' bound)
    values     k * b values in the codec's format (each run's b in order;
               a short last run is zero-padded, the pad dropped on decode)
    indices    the k sorted run indices (`index_coding`), to the end
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from fedgrpc.compress.blocks import (
    EncodedBlock,
    F32Array,
    I64Array,
    SparseValues,
    check_block,
    check_count,
)
from fedgrpc.compress.index_coding import (
    decode_indices,
    encode_indices,
    estimated_index_bytes,
    max_index_bytes,
)
from fedgrpc.compress.quantize import decode_values, encode_values, value_bytes
from fedgrpc.compress.topk import (
    K_BYTES,
    TOPK_BLOCK_COORDINATES,
    TOPK_GROUP,
    select_grouped,
)
from fedgrpc.domain.codecs import ValueFormat
from fedgrpc.errors import ConfigError, InvalidUpdateError


def fitting_block(payload_bytes: Callable[[int], int], chunk_bytes: int) -> int:
    """TOPK_BLOCK_COORDINATES, halved until `payload_bytes(count)` fits a chunk.

    Raises:
        ConfigError: not even a one-coordinate block fits.
    """
    count = TOPK_BLOCK_COORDINATES
    while count > 1 and payload_bytes(count) > chunk_bytes:
        count //= 2  # at most 16 halvings
    if payload_bytes(count) > chunk_bytes:
        raise ConfigError(f"chunk_bytes={chunk_bytes} is too small for one block")
    return count


def group_runs(density: float, size: int, run: int) -> int:
    """Runs of `run` kept of `size` coordinates: ceil(density * size / run).

    At least 1, at most the ceil(size / run) runs there are.
    """
    runs = -(-size // run)
    # The epsilon keeps 0.07 * 100 = 7.000000000000001 at 7, not 8.
    return min(runs, max(1, math.ceil(density * size / run - 1e-9)))


def run_positions(runs: I64Array, run: int) -> I64Array:
    """Coordinates j * run .. j * run + run - 1 of each of the sorted `runs`."""
    positions: I64Array = (runs[:, None] * run + np.arange(run)).ravel()
    return positions


class RunTopKCodec:
    """A `BlockCodec` sending the largest-norm runs of `run` coordinates whole.

    `encode` is not thread-safe (the rng for stochastic rounding); `decode` is.
    """

    def __init__(
        self, density: float, values: ValueFormat, rng: np.random.Generator, run: int
    ) -> None:
        if run < 2 or TOPK_GROUP % run:
            raise ConfigError(
                f"run={run} is invalid: expected a divisor of 4096 above 1 "
                "(run 1 is the library's top-k)"
            )
        self.density = density
        self.values: ValueFormat = values
        self.run = run
        self._rng = rng

    def k_for(self, count: int) -> int:
        """Most runs a block of `count` sends: per group ceil(density * size / run)."""
        full, rest = divmod(count, TOPK_GROUP)
        k = full * group_runs(self.density, TOPK_GROUP, self.run)
        return k + (group_runs(self.density, rest, self.run) if rest else 0)

    def block_coordinates(self, chunk_bytes: int) -> int:
        """TOPK_BLOCK_COORDINATES, halved until the worst-case payload fits."""
        return fitting_block(self._max_payload, chunk_bytes)

    def encode(self, block: F32Array) -> EncodedBlock:
        """Select the runs, quantise their values and index-code the run numbers.

        Raises:
            InvalidUpdateError: `block` holds NaN or Inf.
        """
        check_block(block)
        runs, short = divmod(block.size, self.run)
        # Squares in float64: exact for float32 inputs, no overflow to Inf.
        energy = np.square(block[: runs * self.run], dtype=np.float64)
        energy = energy.reshape(runs, self.run).sum(axis=1)
        if short:
            energy = np.append(energy, np.square(block[runs * self.run :]).sum())
        if block.size and not np.isfinite(energy.sum()):
            raise InvalidUpdateError("block values contain NaN or Inf: expected finite")
        rest = block.size % TOPK_GROUP
        k_rest = group_runs(self.density, rest, self.run) if rest else 0
        full_k = group_runs(self.density, TOPK_GROUP, self.run)
        chosen = select_grouped(energy, TOPK_GROUP // self.run, full_k, k_rest)
        chosen = chosen[energy[chosen] > 0]
        positions = run_positions(chosen, self.run)
        inside = positions.size - np.count_nonzero(positions >= block.size)
        sent = np.zeros(positions.size, dtype=np.float32)  # a short run: 0 pad
        sent[:inside] = block[positions[:inside]]
        payload = b"".join(
            (
                chosen.size.to_bytes(K_BYTES, "little"),
                encode_values(sent, self.values, self._rng),
                encode_indices(chosen),
            )
        )
        return EncodedBlock(payload, self.decode(payload, block.size))

    def decode(self, payload: bytes | memoryview, count: int) -> SparseValues:
        """The sent values and their sorted block-relative positions.

        Raises:
            InvalidUpdateError: too many runs, a short payload, a run past
                the block, or invalid values or indices.
        """
        check_count(count)
        view = memoryview(payload).cast("B")
        if len(view) < K_BYTES:
            raise InvalidUpdateError(f"run payload has {len(view)} bytes: no k")
        k = int.from_bytes(view[:K_BYTES], "little")
        if k > self.k_for(count):
            raise InvalidUpdateError(
                f"run block claims k={k} runs of {self.run} of {count} "
                f"coordinates: expected at most {self.k_for(count)}"
            )
        n = k * self.run
        end = K_BYTES + value_bytes(self.values, n)
        if len(view) <= end:
            raise InvalidUpdateError(
                f"run payload has {len(view)} bytes, too short for {n} "
                f"{self.values} values and an index section"
            )
        values = decode_values(view[K_BYTES:end], self.values, n)
        runs = decode_indices(view[end:], k, -(-count // self.run))
        positions = run_positions(runs, self.run)
        inside = positions.size - np.count_nonzero(positions >= count)
        return SparseValues(positions[:inside], values[:inside])

    def estimated_bytes(self, num_coordinates: int) -> int:
        """Typical payload bytes of one block of `num_coordinates`."""
        k = self.k_for(num_coordinates)
        runs = -(-num_coordinates // self.run)
        return (
            K_BYTES
            + value_bytes(self.values, k * self.run)
            + estimated_index_bytes(k, runs)
        )

    def _max_payload(self, count: int) -> int:
        k = self.k_for(count)
        runs = -(-count // self.run)
        return (
            K_BYTES + value_bytes(self.values, k * self.run) + max_index_bytes(k, runs)
        )
