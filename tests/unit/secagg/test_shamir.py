"""Shamir t-of-n over GF(2^256 + 297): the field, reconstruction, rejection."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedgrpc.secagg import InconsistentSharesError
from fedgrpc.secagg.shamir import (
    PRIME,
    Share,
    lagrange_weights,
    reconstruct_secret,
    split_secret,
)
from tests.unit.secagg._federation import seeded_bytes


def _is_probable_prime(n: int, rounds: int = 40) -> bool:
    """Miller-Rabin with fixed bases (deterministic run)."""
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    rng = random.Random(0)
    for _ in range(rounds):
        x = pow(rng.randrange(2, n - 2), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def test_field_is_the_smallest_prime_above_2_to_256() -> None:
    assert PRIME == 2**256 + 297
    assert _is_probable_prime(PRIME)
    assert not any(_is_probable_prime(2**256 + j) for j in range(1, 297, 2))


@settings(max_examples=30)
@given(
    secret=st.binary(min_size=32, max_size=32),
    n=st.integers(2, 12),
    data=st.data(),
)
def test_any_t_shares_rebuild_the_secret(secret: bytes, n: int, data) -> None:
    t = data.draw(st.integers(1, n))
    xs = data.draw(st.lists(st.integers(1, 1000), min_size=n, max_size=n, unique=True))
    shares = split_secret(secret, xs, t, seeded_bytes(n))
    chosen = data.draw(st.lists(st.sampled_from(shares), min_size=t, unique=True))

    assert reconstruct_secret(chosen, t) == secret


@settings(max_examples=20)
@given(
    secret=st.binary(min_size=32, max_size=32),
    other=st.binary(min_size=32, max_size=32),
    t=st.integers(2, 8),
)
def test_t_minus_1_shares_are_consistent_with_every_secret(secret, other, t) -> None:
    # Fewer than t shares pin nothing down: for any candidate secret there is
    # a polynomial of degree < t through them and (0, candidate).
    shares = split_secret(secret, list(range(1, t + 1)), t, seeded_bytes(t))
    partial = shares[: t - 1]
    points = (0, *(s.x for s in partial))
    ys = (int.from_bytes(other, "big"), *(s.y for s in partial))

    weights = lagrange_weights(points, t + 7)
    fake = Share(t + 7, sum(w * y for w, y in zip(weights, ys, strict=True)) % PRIME)

    assert reconstruct_secret([*partial, fake], t) == other
    with pytest.raises(InconsistentSharesError, match="cannot rebuild"):
        reconstruct_secret(partial, t)


def test_extra_shares_are_checked_against_the_polynomial() -> None:
    secret = bytes(range(32))
    shares = split_secret(secret, [1, 2, 3, 4, 5], 3, seeded_bytes(1))
    wrong = Share(5, (shares[4].y + 1) % PRIME)

    assert reconstruct_secret(shares, 3) == secret
    with pytest.raises(InconsistentSharesError, match="share 5 does not lie"):
        reconstruct_secret([*shares[:4], wrong], 3)


def test_duplicate_and_out_of_field_shares_are_rejected() -> None:
    shares = split_secret(bytes(32), [1, 2, 3], 2, seeded_bytes(2))

    with pytest.raises(InconsistentSharesError, match="repeat"):
        reconstruct_secret([shares[0], shares[0]], 2)
    with pytest.raises(InconsistentSharesError, match="outside the field"):
        reconstruct_secret([shares[0], Share(2, PRIME)], 2)


def test_split_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        split_secret(b"short", [1, 2], 2, seeded_bytes(3))
    with pytest.raises(ValueError, match="threshold"):
        split_secret(bytes(32), [1, 2], 3, seeded_bytes(3))
    with pytest.raises(ValueError, match="distinct"):
        split_secret(bytes(32), [1, 1], 2, seeded_bytes(3))


def test_share_repr_never_shows_the_value() -> None:
    share = split_secret(bytes(range(32)), [1, 2], 2, seeded_bytes(4))[0]

    assert str(share.y) not in repr(share)
