"""The top-k codec: per group of 4,096 coordinates, the ceil(density * 4096) largest.

Blocks (one per UpdateChunk) are 65,536 coordinates
(`TOPK_BLOCK_COORDINATES`); selection runs per *group* of 4,096 inside a
block (`TOPK_GROUP`), the chunked top-k of SparseLoCo (arXiv 2508.15706)
and of this issue's pilot: k is fixed per group, so every tensor and every
region of a tensor gets its share of slots and one hot region (an
embedding row, a layer-norm gain) cannot take them all. Payload layout:

    uint32 LE  k (<= the sum of the groups' ceil(density * size); fewer
               when fewer values are non-zero)
    values     k values in the codec's format (`quantize`; int8/int4 carry a scale)
    indices    the k sorted block-relative positions (`index_coding`), to the end

The decoder does not need the grouping (positions are explicit); it only
bounds k. Selection is one `np.argpartition` along the rows of a
(groups, 4096) view of the block, exact and deterministic (numpy's
introselect breaks ties), so it never depends on the rng. Measured on this
machine (one thread, 64 blocks of |N(0,1)|): 1 % of 100M coordinates in
0.17 s, 10 % in 0.32 s; the whole-block top-k it replaced (a sampled
threshold, then `flatnonzero`) took 0.11 s and 0.29 s: grouping costs
~0.06 s per 100M at 1 %.

Runs (`TopK(block=b)`, b > 1, issue 18): the selection unit becomes a run
of b contiguous coordinates, scored by its sum of squares (its L2 norm
squared, same order), ceil(density * 4096 / b) runs per group; k then
counts runs, the values section holds k * b values (each run's b in order;
a short last run is zero-padded and its pad dropped on decode) and the
index section the k sorted run indices. At 3 % int2 the positions are
~7 of the ~9.2 payload bits a value (gaps of ~33 need ~6-7 bits, plus
headers), so one position per b values buys ~3.5x the coordinates for the
same bytes at b = 16. Bench only for now: no wire codec carries b
(`domain.requests.wire_codec` refuses it).
"""

from __future__ import annotations

import math

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
from fedgrpc.domain.codecs import ValueFormat
from fedgrpc.errors import ConfigError, InvalidUpdateError

TOPK_BLOCK_COORDINATES = 1 << 16
"""Coordinates per top-k block: ~64 Ki as DESIGN.md's chunked top-k, and
256 KB of float32 so one block's working set stays in L2."""
K_BYTES = 4
TOPK_GROUP = 4096
"""Coordinates per selection group: SparseLoCo's chunk size (64 x 64)."""


def select_topk(magnitudes: F32Array, density: float) -> I64Array:
    """Sorted positions of the `group_k` largest non-zero of every TOPK_GROUP."""
    rest = magnitudes.size % TOPK_GROUP
    k_rest = group_k(density, rest) if rest else 0
    chosen = _select_grouped(
        magnitudes, TOPK_GROUP, group_k(density, TOPK_GROUP), k_rest
    )
    return chosen[magnitudes[chosen] > 0]


def select_blocks(block: F32Array, density: float, size: int) -> I64Array:
    """Sorted indices of the runs of `size` with the largest L2 norm, per group.

    Run j covers coordinates [j * size, (j + 1) * size) of `block` (the last
    one may be short). Each TOPK_GROUP of coordinates, i.e. TOPK_GROUP / size
    runs, keeps `group_blocks` of them, by sum of squares (same order as the
    norm); runs of all zeros are never chosen, as top-k never picks a zero.
    """
    runs, short = divmod(block.size, size)
    # Squares in float64: exact for float32 inputs and no overflow to Inf.
    energy = np.square(block[: runs * size], dtype=np.float64)
    energy = energy.reshape(runs, size).sum(axis=1)
    if short:
        tail = np.square(block[runs * size :], dtype=np.float64).sum()
        energy = np.append(energy, tail)
    rest = block.size % TOPK_GROUP
    k_rest = group_blocks(density, rest, size) if rest else 0
    per_group = TOPK_GROUP // size
    chosen = _select_grouped(
        energy, per_group, group_blocks(density, TOPK_GROUP, size), k_rest
    )
    return chosen[energy[chosen] > 0]


def _select_grouped(
    scores: np.ndarray, group: int, k_full: int, k_rest: int
) -> I64Array:
    """Sorted positions of the k_full largest `scores` of every `group`.

    A last, shorter group keeps its k_rest largest.
    """
    full, rest = divmod(scores.size, group)
    parts: list[I64Array] = [np.empty(0, dtype=np.int64)]
    if full:
        rows = scores[: full * group].reshape(full, group)
        if k_full < group:
            top = np.argpartition(rows, group - k_full, axis=1)[:, -k_full:]
            top.sort(axis=1)
        else:
            top = np.broadcast_to(np.arange(group), rows.shape).copy()
        top += np.arange(0, full * group, group)[:, None]
        parts.append(top.ravel())
    if rest:
        tail = _largest(scores[full * group :], k_rest)
        parts.append(tail + full * group)
    return np.concatenate(parts)


def group_k(density: float, size: int) -> int:
    """Values kept of `size`: ceil(density * size), >= 1."""
    # The epsilon keeps 0.07 * 100 = 7.000000000000001 at 7, not 8.
    return min(size, max(1, math.ceil(density * size - 1e-9)))


def group_blocks(density: float, size: int, block: int) -> int:
    """Runs of `block` kept of `size` coordinates: ceil(density * size / block).

    At least 1, at most the ceil(size / block) runs there are; block = 1 is
    `group_k`.
    """
    runs = -(-size // block)
    return min(runs, max(1, math.ceil(density * size / block - 1e-9)))


def _largest(magnitudes: F32Array, k: int) -> I64Array:
    """Sorted positions of the k largest `magnitudes` (all if fewer)."""
    if magnitudes.size <= k:
        return np.arange(magnitudes.size)
    keep = np.argpartition(magnitudes, magnitudes.size - k)[magnitudes.size - k :]
    keep.sort()
    return keep


class TopKCodec:
    """`BlockCodec` for `TopK(density=..., bits=..., block=...)`.

    With `block` = b > 1, k counts runs of b coordinates (`select_blocks`):
    the values section holds the b values of each chosen run in order (k * b
    values; a short last run is padded with zeros, whose decoded values are
    dropped) and the index section the k sorted run indices j, each standing
    for positions j * b .. j * b + b - 1. b = 1 is the per-coordinate codec,
    byte for byte.

    `encode` is not thread-safe (a reused magnitude buffer, the rng for
    stochastic rounding); `decode` is.
    """

    def __init__(
        self,
        density: float,
        values: ValueFormat,
        rng: np.random.Generator,
        block: int = 1,
    ) -> None:
        if block < 1 or TOPK_GROUP % block:
            raise ConfigError(f"block={block} is invalid: expected a divisor of 4096")
        self.density = density
        self.values: ValueFormat = values
        self.block = block
        self._rng = rng
        self._magnitudes = np.empty(TOPK_BLOCK_COORDINATES, dtype=np.float32)

    def k_for(self, count: int) -> int:
        """Most runs (values if block = 1) a block of `count` sends.

        Per group: ceil(density * size / block).
        """
        full, rest = divmod(count, TOPK_GROUP)
        k = full * group_blocks(self.density, TOPK_GROUP, self.block)
        return k + (group_blocks(self.density, rest, self.block) if rest else 0)

    def block_coordinates(self, chunk_bytes: int) -> int:
        """TOPK_BLOCK_COORDINATES, halved until the worst-case payload fits.

        Raises:
            ConfigError: `chunk_bytes` cannot hold even a one-coordinate block.
        """
        count = TOPK_BLOCK_COORDINATES
        while count > 1 and self._max_payload(count) > chunk_bytes:
            count //= 2  # at most 16 halvings
        if self._max_payload(count) > chunk_bytes:
            raise ConfigError(
                f"chunk_bytes={chunk_bytes} is invalid: too small for one top-k block"
            )
        return count

    def encode(self, block: F32Array) -> EncodedBlock:
        """Select, quantise and index-code `block` (1-D float32, finite).

        Raises:
            InvalidUpdateError: `block` holds NaN or Inf.
        """
        check_block(block)
        if block.size > self._magnitudes.size:
            self._magnitudes = np.empty(block.size, dtype=np.float32)
        magnitudes = np.abs(block, out=self._magnitudes[: block.size])
        if block.size and not np.isfinite(magnitudes.max()):
            raise InvalidUpdateError("block values contain NaN or Inf: expected finite")
        if self.block == 1:
            chosen = select_topk(magnitudes, self.density)
            sent = block[chosen]
        else:
            chosen = select_blocks(block, self.density, self.block)
            positions = run_positions(chosen, self.block)
            sent = np.zeros(positions.size, dtype=np.float32)  # short run: 0 pad
            inside = positions.size - np.count_nonzero(positions >= block.size)
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
        """The block's sent values and their sorted block-relative indices.

        Raises:
            InvalidUpdateError: k above the round's density, a short payload,
                or invalid values or indices (a run index past the block's
                runs included).
        """
        check_count(count)
        view = memoryview(payload).cast("B")
        if len(view) < K_BYTES:
            raise InvalidUpdateError(
                f"top-k payload has {len(view)} bytes: expected {K_BYTES} bytes of k "
                "first"
            )
        k = int.from_bytes(view[:K_BYTES], "little")
        if k > self.k_for(count):
            unit = "" if self.block == 1 else f" runs of {self.block}"
            raise InvalidUpdateError(
                f"top-k block claims k={k}{unit} of {count} coordinates: expected "
                f"at most {self.k_for(count)} at density {self.density}"
            )
        n = k * self.block
        end = K_BYTES + value_bytes(self.values, n)
        if len(view) <= end:
            raise InvalidUpdateError(
                f"top-k payload has {len(view)} bytes, too short for {n} "
                f"{self.values} values and an index section"
            )
        values = decode_values(view[K_BYTES:end], self.values, n)
        if self.block == 1:
            return SparseValues(decode_indices(view[end:], k, count), values)
        runs = -(-count // self.block)
        positions = run_positions(decode_indices(view[end:], k, runs), self.block)
        inside = positions.size - np.count_nonzero(positions >= count)
        return SparseValues(positions[:inside], values[:inside])

    def estimated_bytes(self, num_coordinates: int) -> int:
        """Typical payload bytes of one block of `num_coordinates` (for planning)."""
        k = self.k_for(num_coordinates)
        return (
            K_BYTES
            + value_bytes(self.values, k * self.block)
            + estimated_index_bytes(k, -(-num_coordinates // self.block))
        )

    def _max_payload(self, count: int) -> int:
        k = self.k_for(count)
        runs = -(-count // self.block)
        return (
            K_BYTES
            + value_bytes(self.values, k * self.block)
            + max_index_bytes(k, runs)
        )


def run_positions(runs: I64Array, size: int) -> I64Array:
    """Coordinates j * size .. j * size + size - 1 of each of the sorted `runs`."""
    positions: I64Array = (runs[:, None] * size + np.arange(size)).ravel()
    return positions
