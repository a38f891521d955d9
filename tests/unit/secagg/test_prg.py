"""Position-addressed AES-256-CTR masks (layout 2): spec, vectors, uniformity."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedgrpc.errors import InvalidUpdateError
from fedgrpc.secagg import Ring
from fedgrpc.secagg.prg import (
    KEYSTREAM_LAYOUT,
    PRG_NONCE,
    Keystream,
    add_mask,
    check_positions,
    lanes_per_block,
    mask_at,
)
from tests.unit.secagg._stats import chi_square_uniform

SEED = bytes(range(32))


def _ctr_keystream(nbytes: int, first_block: int = 0) -> bytes:
    iv = PRG_NONCE + first_block.to_bytes(8, "big")
    return Cipher(algorithms.AES(SEED), modes.CTR(iv)).encryptor().update(bytes(nbytes))


@pytest.mark.parametrize(("bits", "word"), [(13, "<u2"), (16, "<u2"), (24, "<u4"),
                                            (33, "<u8"), (64, "<u8")])  # fmt: skip
def test_dense_masks_are_the_ctr_keystream_read_as_little_endian_ring_words(
    bits: int, word: str
) -> None:
    # The spec another language implements (layout 2): AES-256-CTR with
    # IV = PRG_NONCE || 0^64, read as w-bit little-endian words, low m bits.
    ring = Ring(bits)
    count = 1000
    keystream = _ctr_keystream(count * np.dtype(word).itemsize)
    expected = np.frombuffer(keystream, dtype=word) & np.uint64(ring.mask)

    masks = mask_at(SEED, np.arange(count, dtype=np.uint64), ring)

    assert masks.dtype == ring.dtype
    assert np.array_equal(masks, expected.astype(ring.dtype))


def test_a_sparse_position_reads_lane_p_mod_l_of_block_p_div_l() -> None:
    ring = Ring(13)  # 16-bit lanes: L = 8 per AES block
    lanes = lanes_per_block(ring)
    positions = np.array([3, 8, 17, 1_000_003, 2**40 + 5], dtype=np.uint64)
    expected = []
    for p in positions.tolist():
        block = _ctr_keystream(16, p // lanes)
        word = np.frombuffer(block, dtype="<u2")[p % lanes]
        expected.append(int(word) & ring.mask)

    masks = mask_at(SEED, positions, ring)

    assert lanes == 8
    assert [int(v) for v in masks] == expected


# Pinned vectors of layout 2: a change here is a wire break (bump KEYSTREAM_LAYOUT).
PINNED_POSITIONS = np.array([0, 1, 7, 8, 9, 1000, 123456789], dtype=np.uint64)
PINNED = {
    13: [6764, 4429, 891, 644, 737, 5922, 3581],
    24: [5085804, 7428767, 3965011, 12536505, 16731273, 8674482, 13096480],
    64: [
        12858158050892946028, 16391701692782916160, 4067306822224894933,
        16445990650778861581, 12165456095803777240, 15308968924652087728,
        10487977314368706887,
    ],
}  # fmt: skip


@pytest.mark.parametrize("bits", sorted(PINNED))
def test_fixed_seed_positions_and_ring_give_the_pinned_masks(bits: int) -> None:
    masks = mask_at(SEED, PINNED_POSITIONS, Ring(bits))

    assert KEYSTREAM_LAYOUT == 2
    assert [int(v) for v in masks] == PINNED[bits]


def test_a_run_not_starting_on_a_block_boundary_matches_the_sparse_path() -> None:
    ring = Ring(13)
    run = np.arange(5, 12, dtype=np.uint64)  # contiguous: one CTR call from block 0

    masks = mask_at(SEED, run, ring)
    one_by_one = [int(mask_at(SEED, run[i : i + 1], ring)[0]) for i in range(7)]
    pinned_at = {7: 891, 8: 644, 9: 737}

    assert [int(v) for v in masks] == one_by_one
    assert all(int(masks[p - 5]) == v for p, v in pinned_at.items())


def test_one_keystream_serves_every_seed_and_touches_each_block_once() -> None:
    ring = Ring(13)
    dense = Keystream(np.arange(1000, dtype=np.uint64), ring)
    # Sparse: 6 positions in 3 distinct blocks (8 lanes each) -> 3 AES blocks.
    sparse_pos = np.array([0, 1, 7, 80, 81, 8_000_000], dtype=np.uint64)
    sparse = Keystream(sparse_pos, ring)
    seeds = [bytes([i]) * 32 for i in range(3)]

    dense_masks = [dense.masks(s).copy() & ring.mask for s in seeds]
    sparse_masks = [sparse.masks(s).copy() & ring.mask for s in seeds]

    assert dense.blocks == 125  # 1000 positions / 8 lanes
    assert sparse.blocks == 3
    for seed, d, sp in zip(seeds, dense_masks, sparse_masks, strict=True):
        assert np.array_equal(d, mask_at(seed, np.arange(1000, dtype=np.uint64), ring))
        assert np.array_equal(sp, mask_at(seed, sparse_pos, ring))
    assert not np.array_equal(dense_masks[0], dense_masks[1])


def test_mask_depends_only_on_seed_and_position_not_on_chunking() -> None:
    ring = Ring(13)
    positions = check_positions(np.array([999_999, 5, 123_456, 0, 77]))

    whole = mask_at(SEED, positions, ring)
    pieces = np.concatenate(
        [mask_at(SEED, positions[:2], ring), mask_at(SEED, positions[2:], ring)]
    )
    reordered = mask_at(SEED, positions[::-1], ring)[::-1]

    assert np.array_equal(whole, pieces)
    assert np.array_equal(whole, reordered)
    assert not np.array_equal(whole, mask_at(bytes(32), positions, ring))
    assert int(whole.max()) <= ring.mask


def test_adding_then_subtracting_a_mask_restores_the_vector() -> None:
    ring = Ring(11)
    positions = check_positions(np.arange(1000))
    values = ring.lift(np.arange(-500, 500))
    original = values.copy()

    add_mask(values, SEED, positions, ring, 1)
    changed = not np.array_equal(values, original)
    add_mask(values, SEED, positions, ring, -1)

    assert changed
    assert np.array_equal(values, original)


@pytest.mark.parametrize("bits", [10, 13, 18, 33])
def test_masks_are_uniform_on_the_ring(bits: int) -> None:
    ring = Ring(bits)
    masks = mask_at(SEED, np.arange(1 << 16, dtype=np.uint64), ring)

    statistic, critical = chi_square_uniform(masks, bits)

    assert statistic < critical


@pytest.mark.parametrize(
    ("positions", "message"),
    [
        (np.array([1, 2, 2]), "repeat"),
        (np.array([-1, 2]), ">= 0"),
        (np.array([[1, 2]]), "1-D"),
        (np.array([1.0]), "integer"),
    ],
)
def test_index_sets_must_be_unique_nonnegative_integers(positions, message) -> None:
    with pytest.raises(InvalidUpdateError, match=message):
        check_positions(positions)
