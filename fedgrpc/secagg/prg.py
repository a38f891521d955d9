"""Masks from seeds: an AES-256-CTR keystream, each block serving several positions.

On the data path this is the "+ secagg mask" step: a client adds masks to
its lifted codes, and the coordinator subtracts the masks it reconstructed.
DESIGN.md step 4 wants the cost O(k) per seed for the k announced positions,
never O(d) for the whole model, so the mask is *position-addressed*. Keystream
layout 2 (`KEYSTREAM_LAYOUT`) packs L = 128 / w lanes of w bits into each
16-byte block, w the ring's storage width (16, 32 or 64 bits):

    block(p) = p div L,   lane(p) = p mod L
    mask(seed, p) = lane(p) of keystream block block(p), read as a
                    little-endian w-bit word, reduced mod 2^m

where keystream block b is AES_seed(PRG_NONCE || b as 8 big-endian bytes),
i.e. block b of AES-256-CTR under key = seed, IV = PRG_NONCE || 0^64. So the
whole CTR keystream, read as little-endian w-bit words, is the mask of
positions 0, 1, 2, ... in order: any language with AES-CTR reproduces it,
and the tests pin it with fixed vectors.

Why lanes: layout 1 spent one 16-byte block per position (8x the keystream
a 13-bit ring needs at w = 16), which dense rounds paid for every
coordinate and every neighbour. With lanes a contiguous run of positions is
one CTR call over k / L blocks, written into a preallocated buffer whose
lanes *are* the masks (no gather, no copy). A sparse index set still costs
O(k) blocks per seed: the blocks its positions fall in, deduplicated, are
encrypted with one AES-ECB call over their counter blocks (ECB over counter
blocks is CTR evaluated at exactly those counters), then each position's
lane is gathered.

Why by position rather than by index in the announced list: the mask of a
coordinate then depends only on (seed, coordinate). The integration may cut
the index set into chunks in any way and both sides still agree, and two
values in one round never share keystream unless they share a coordinate
(which the callers forbid: positions must be unique). Distinct positions
map to distinct (block, lane) pairs, so their masks are independent.

A w-bit word is uniform, so its low m bits (m <= w) are uniform on Z_2^m:
no rejection sampling is needed. Masks are added in the storage dtype,
which wraps mod 2^w; since 2^m divides 2^w the caller reduces once, after
every seed (`Ring.reduce_into`), not once per seed.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedgrpc.errors import InvalidUpdateError
from fedgrpc.secagg.ring import Ring, RingArray

SEED_BYTES = 32
"""Seeds are AES-256 keys."""
PRG_NONCE = b"fgsa-prg"
"""Upper 64 bits of every counter block: a fixed domain tag (the keys are
fresh per round and pair, so the nonce need not vary)."""
KEYSTREAM_LAYOUT = 2
"""The layout above: L = 128 / w lanes per AES block, position-addressed."""
LEGACY_LAYOUT = 1
"""One AES block per position (first 8 bytes); releases before layout 2.
Its masks differ from layout 2's, so the two never sum to anything: a party
on layout 1 is refused, never mixed in."""
LAYOUTS = {
    LEGACY_LAYOUT: "layout 1 (one AES block per position)",
    KEYSTREAM_LAYOUT: "layout 2 (128 / w lanes of the ring's w-bit storage words "
    "per AES block)",
}
"""How refusals name a layout (0 on the wire is 1: it predates the field)."""
BLOCK_BYTES = 16
_NONCE_WORD = np.frombuffer(PRG_NONCE, dtype=">u8")[0]


def layout_name(layout: int) -> str:
    """A layout number as refusals name it (0, unset on the wire, is layout 1)."""
    return LAYOUTS.get(layout or LEGACY_LAYOUT, f"layout {layout} (unknown)")


def lanes_per_block(ring: Ring) -> int:
    """L = 128 / w: masks one AES block gives (8 for rings up to 16 bits)."""
    return BLOCK_BYTES // ring.dtype.itemsize


def check_positions(positions: np.ndarray) -> np.ndarray:
    """Validate an index set and return it as uint64 (1-D, unique, >= 0).

    Unique matters for privacy: two values masked at the same position share
    a mask, and their difference would be visible to the coordinator.

    Raises:
        InvalidUpdateError: not 1-D integers, negative, or repeated.
    """
    if positions.ndim != 1 or positions.dtype.kind not in "iu":
        raise InvalidUpdateError(
            f"positions must be a 1-D integer array, got {positions.dtype} "
            f"with {positions.ndim} dims"
        )
    if positions.size and int(positions.min()) < 0:
        raise InvalidUpdateError("positions must be >= 0")
    as_u64 = positions.astype(np.uint64, copy=False)
    # Strictly increasing (the usual announced order) proves uniqueness in one
    # pass; otherwise sort a copy. np.unique measured ~15x slower at 100k.
    if bool(np.all(as_u64[1:] > as_u64[:-1])):
        return as_u64
    ordered = np.sort(as_u64)
    if bool(np.any(ordered[1:] == ordered[:-1])):
        raise InvalidUpdateError("positions repeat: each coordinate may appear once")
    return as_u64


class Keystream:
    """The masks of one index set under any seed, in buffers reused across seeds.

    Built once per (positions, ring): a client adds its self-mask and every
    pairwise mask through one `Keystream`, the coordinator strips every
    leftover mask through one, so no seed allocates a model-sized array.
    `masks` returns a view into the shared buffer, valid until the next call:
    not thread-safe, one per task.
    """

    def __init__(self, positions: np.ndarray, ring: Ring) -> None:
        """Plan the AES calls for `positions` (as `check_positions` returns).

        A contiguous run p0..p0+k-1 (every dense round) is one CTR call over
        blocks p0 div L .. (p0+k-1) div L; any other set one ECB call over
        the distinct blocks it touches, then a gather of its lanes.
        """
        self.ring, self.size = ring, int(positions.size)
        lanes = lanes_per_block(ring)
        storage = ring.dtype.newbyteorder("<")  # the wire's little-endian words
        self._plaintext: bytes
        self._counter: bytes | None = None  # CTR start; None: ECB over counters
        self._gather: np.ndarray | None = None
        self._offset = 0
        if self.size == 0:
            self._plaintext = b""
        elif _is_run(positions):
            first = int(positions[0]) // lanes
            blocks = int(positions[-1]) // lanes - first + 1
            self._offset = int(positions[0]) % lanes
            self._counter = PRG_NONCE + first.to_bytes(8, "big")
            self._plaintext = bytes(blocks * BLOCK_BYTES)  # CTR of zeros = keystream
        else:
            ids, inverse = _block_ids(positions // np.uint64(lanes))
            counters = np.empty((ids.size, 2), dtype=">u8")  # (blocks, 2) big-endian
            counters[:, 0] = _NONCE_WORD
            counters[:, 1] = ids
            self._plaintext = counters.tobytes()
            lane = (positions % np.uint64(lanes)).astype(np.int64)
            self._gather = inverse * lanes + lane  # flat index into the lanes
            self._masks = np.empty(self.size, dtype=ring.dtype)
        # update_into wants room for one more block than it writes.
        self._out = bytearray(len(self._plaintext) + BLOCK_BYTES - 1)
        count = len(self._plaintext) // ring.dtype.itemsize
        self._lanes = np.frombuffer(self._out, dtype=storage, count=count)

    @property
    def blocks(self) -> int:
        """AES blocks encrypted per seed: about k / L dense, at most k sparse."""
        return len(self._plaintext) // BLOCK_BYTES

    def masks(self, seed: bytes) -> RingArray:
        """The unreduced w-bit masks (a view, overwritten by the next call).

        Their low m bits are the masks of the module docstring.
        """
        if len(seed) != SEED_BYTES:
            raise ValueError(f"a PRG seed has {SEED_BYTES} bytes, got {len(seed)}")
        mode = modes.ECB() if self._counter is None else modes.CTR(self._counter)
        encryptor = Cipher(algorithms.AES(seed), mode).encryptor()
        written = encryptor.update_into(self._plaintext, self._out)
        assert written == len(self._plaintext), "AES-CTR/ECB write whole blocks"
        if self._gather is None:
            return self._lanes[self._offset : self._offset + self.size]
        np.take(self._lanes, self._gather, out=self._masks)
        return self._masks

    def add(self, acc: RingArray, seed: bytes, sign: int) -> None:
        """Acc += sign * masks(seed), wrapping mod 2^w: reduce once after all seeds."""
        if sign > 0:
            np.add(acc, self.masks(seed), out=acc)
        else:
            np.subtract(acc, self.masks(seed), out=acc)


def _is_run(positions: np.ndarray) -> bool:
    """Positions p0, p0 + 1, ..., in order (a dense round, or a slice of one)."""
    first, last = int(positions[0]), int(positions[-1])
    if last - first + 1 != positions.size:
        return False
    return bool(np.all(positions[1:] > positions[:-1]))


def _block_ids(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct block ids, each position's index among them): O(k), k positions.

    Announced sets are increasing, so equal blocks are adjacent and one diff
    finds them; an unordered set (allowed, if unusual) falls back to np.unique.
    """
    if blocks.size > 1 and not bool(np.all(blocks[1:] >= blocks[:-1])):
        ids, inverse = np.unique(blocks, return_inverse=True)
        return ids, inverse.astype(np.int64)
    starts = np.empty(blocks.size, dtype=bool)
    starts[:1] = True
    np.not_equal(blocks[1:], blocks[:-1], out=starts[1:])
    inverse = np.cumsum(starts, dtype=np.int64) - 1
    return blocks[starts], inverse


def mask_at(seed: bytes, positions: np.ndarray, ring: Ring) -> RingArray:
    """The mask of each position (uint64, validated by `check_positions`).

    Deterministic in (seed, position): both the client and the coordinator
    compute identical masks. Returns a fresh `ring.dtype` array, len(positions).
    For many seeds over one index set use `Keystream`, which reuses buffers.
    """
    masks = Keystream(positions, ring).masks(seed).copy()
    ring.reduce_into(masks)
    return masks


def add_mask(
    acc: RingArray, seed: bytes, positions: np.ndarray, ring: Ring, sign: int
) -> None:
    """Acc += sign * mask_at(seed, positions) in the ring; sign is +1 or -1."""
    Keystream(positions, ring).add(acc, seed, sign)
    ring.reduce_into(acc)
