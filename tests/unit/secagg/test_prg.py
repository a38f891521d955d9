"""Position-addressed AES-256-CTR masks: the spec, determinism, uniformity."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedgrpc.errors import InvalidUpdateError
from fedgrpc.secagg import Ring
from fedgrpc.secagg.prg import PRG_NONCE, add_mask, check_positions, mask_at
from tests.unit.secagg._stats import chi_square_uniform

SEED = bytes(range(32))


def test_mask_is_the_ctr_keystream_block_at_each_position() -> None:
    # The spec another language implements: block p of AES-256-CTR with
    # IV = PRG_NONCE || 0^64, first 8 bytes little-endian, low m bits.
    ring = Ring(64)
    ctr = Cipher(algorithms.AES(SEED), modes.CTR(PRG_NONCE + bytes(8))).encryptor()
    keystream = ctr.update(bytes(16 * 40))
    expected = [
        int.from_bytes(keystream[16 * p : 16 * p + 8], "little") for p in range(40)
    ]

    masks = mask_at(SEED, np.arange(40, dtype=np.uint64), ring)

    assert [int(v) for v in masks] == expected


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
