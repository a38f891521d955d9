"""Order statistics of short columns by a pruned sorting network of row-wise min/max.

The coordinate-wise median and trimmed mean need, per coordinate j, some
middle order statistics of the n client values u_1j..u_nj. `np.sort(axis=0)`
on an (n, b) block sorts b separate columns of n strided values: per column
it pays a gather, a tiny sort and a scatter, ~80 ms per 32 MiB block at
n = 8 on this machine. A sorting network does the same with whole rows:
each comparator (i, j) is `lo = minimum(row_i, row_j)`, `hi = maximum(...)`,
two vector ops over b contiguous values, and the network's comparators do
not depend on the data, so no Python loop runs over coordinates.

Network: Batcher's odd-even merge sort (Knuth, TAOCP vol. 3, 5.3.4,
exercise 37; any n, by padding to a power of two and dropping comparators
that touch a padding wire, which is +inf and never moves). It is then
pruned backwards for the rows the caller needs: a comparator whose outputs
feed no needed row is dropped, one of whose outputs only `lo` (or only
`hi`) is needed computes just that side. For the median of 8 this leaves
15 min/max pairs plus a few single sides instead of 19 pairs.

The comparator count grows as n log² n, so past `NETWORK_MAX_ROWS` the
column sort is cheaper again and the callers fall back to it (`order_rows`).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from fedgrpc.aggregate.stages import F32Array

NETWORK_MAX_ROWS = 64
"""Up to this many clients a pruned network beats `np.sort(axis=0)` (measured
on 32 MiB blocks, 2 loaded cores: n = 8: 13 ms vs 64 ms; n = 32: 23 vs 150;
n = 64: 52-69 vs 113-137; n = 100: 88-161 vs 55)."""

Step = tuple[int, int, bool, bool]
"""A comparator (lo wire, hi wire, write lo?, write hi?)."""


def _batcher(size: int) -> list[tuple[int, int]]:
    """Comparators (i < j: i gets the min) of odd-even merge sort on `size` = 2^k."""
    pairs: list[tuple[int, int]] = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                pairs.extend(
                    (i + j, i + j + k)
                    for i in range(min(k, size - j - k))
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p)
                )
            k //= 2
        p *= 2
    return pairs


@lru_cache(maxsize=64)
def network(n: int, wanted: tuple[int, ...]) -> tuple[Step, ...]:
    """Pruned comparators after which rows `wanted` hold those order statistics."""
    size = 1 << max(0, (n - 1).bit_length())
    pairs = [(i, j) for i, j in _batcher(size) if j < n]  # j >= n: a +inf pad wire
    needed = set(wanted)
    steps: list[Step] = []
    for i, j in reversed(pairs):
        lo, hi = i in needed, j in needed
        if lo or hi:
            steps.append((i, j, lo, hi))
            needed |= {i, j}
    return tuple(reversed(steps))


def select_rows(
    block: F32Array, wanted: tuple[int, ...], spare: F32Array
) -> list[F32Array]:
    """The `wanted` order statistics (0 = smallest) of each column, as rows.

    `block` is (n, b) and is overwritten (its rows end in no particular
    order); `spare` is a scratch row of at least b float32 values, and a
    returned row may be a view of it. Each comparator writes its min into
    the free row and its max over its second input, then the free row and
    the first input's row swap roles: two vector ops, no copy. NaN follows
    np.minimum/np.maximum (it propagates); ingest admits only finite values.
    """
    rows = [block[i] for i in range(block.shape[0])]
    free = spare[: block.shape[1]]
    for i, j, lo, hi in network(block.shape[0], wanted):
        a, b = rows[i], rows[j]
        if lo and hi:
            np.minimum(a, b, out=free)
            np.maximum(a, b, out=b)
            rows[i], free = free, a
        elif lo:
            np.minimum(a, b, out=a)
        else:
            np.maximum(a, b, out=b)
    return [rows[w] for w in wanted]


def order_rows(
    block: F32Array, wanted: tuple[int, ...], spare: F32Array
) -> list[F32Array]:
    """`select_rows` for short columns, an in-place column sort for long ones."""
    if block.shape[0] <= NETWORK_MAX_ROWS:
        return select_rows(block, wanted, spare)
    block.sort(axis=0)
    return [block[w] for w in wanted]
