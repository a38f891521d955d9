"""Masks from seeds: an AES-256-CTR keystream read at chosen positions only.

On the data path this is the "+ secagg mask" step: a client adds masks to
its lifted codes, and the coordinator subtracts the masks it reconstructed.
DESIGN.md step 4 wants the cost O(k) per seed for the k announced positions,
never O(d) for the whole model, so the mask is *position-addressed*:

    mask(seed, p) = first 8 bytes (little-endian uint64) of keystream block p
                    of AES-256-CTR under key = seed, IV = PRG_NONCE || 0^64,
                    reduced mod 2^m

Block p of that keystream is AES_seed(PRG_NONCE || p as 8 big-endian bytes),
so a vector of positions is masked with one AES-ECB call over the k counter
blocks, which is exactly CTR mode evaluated at those counters. Any language
with AES can reproduce it (a plain CTR keystream started at block p gives
the same bytes), and the test pins that equivalence.

Why by position rather than by index in the announced list: the mask of a
coordinate then depends only on (seed, coordinate). The integration may cut
the index set into chunks in any way and both sides still agree, and two
different vectors in one round can never reuse keystream unless they share
a coordinate (which the callers forbid: positions must be unique).

A 64-bit word is uniform, so its low m bits are uniform on Z_2^m: no
rejection sampling is needed for any m <= 64. A 16-byte block per position
costs 2x the AES work of packing words densely, which is negligible next to
the numpy passes (measured: ~1.8 ms per 100k positions per seed).
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
_NONCE_WORD = np.frombuffer(PRG_NONCE, dtype=">u8")[0]


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
    as_u64 = positions.astype(np.uint64)
    # Strictly increasing (the usual announced order) proves uniqueness in one
    # pass; otherwise sort a copy. np.unique measured ~15x slower at 100k.
    ordered = as_u64 if bool(np.all(as_u64[1:] > as_u64[:-1])) else np.sort(as_u64)
    if bool(np.any(ordered[1:] == ordered[:-1])):
        raise InvalidUpdateError("positions repeat: each coordinate may appear once")
    return as_u64


def mask_at(seed: bytes, positions: np.ndarray, ring: Ring) -> RingArray:
    """The mask for each position (uint64, validated by `check_positions`).

    Deterministic in (seed, position): both the client and the coordinator
    compute identical masks. Returns a fresh `ring.dtype` array, len(positions).
    """
    if len(seed) != SEED_BYTES:
        raise ValueError(f"a PRG seed has {SEED_BYTES} bytes, got {len(seed)}")
    counters = np.empty((positions.size, 2), dtype=">u8")  # (k, 2) big-endian
    counters[:, 0] = _NONCE_WORD
    counters[:, 1] = positions
    # ECB over counter blocks is CTR mode at exactly these counters (see above).
    encryptor = Cipher(algorithms.AES(seed), modes.ECB()).encryptor()
    keystream = encryptor.update(counters.tobytes()) + encryptor.finalize()
    words = np.frombuffer(keystream, dtype="<u8")[0::2]  # first 8 bytes per block
    return (words & np.uint64(ring.mask)).astype(ring.dtype)


def add_mask(
    acc: RingArray, seed: bytes, positions: np.ndarray, ring: Ring, sign: int
) -> None:
    """Acc += sign * mask_at(seed, positions) in the ring; sign is +1 or -1."""
    mask = mask_at(seed, positions, ring)
    if sign > 0:
        ring.add_into(acc, mask)
    else:
        ring.sub_into(acc, mask)
