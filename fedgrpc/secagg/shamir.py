"""Shamir t-of-n secret sharing of 32-byte secrets over the prime field GF(p).

Used twice per client per round: for its self-mask seed b_u and for its mask
private key s_u (Bonawitz et al. 2017). Any t of its k + 1 share holders
(its neighbours and itself) can then rebuild the one the coordinator needs
(s_u if u dropped, b_u if it did not), and fewer than t learn nothing: any
t - 1 shares are consistent with every possible secret, because the t - 1
random coefficients make each candidate secret equally likely.

The field: p = 2^256 + 297, the smallest prime above 2^256 (checked in the
tests with Miller-Rabin). Any 32-byte string, read as a big-endian integer,
is below p, so secrets need no encoding tricks, and X25519 private keys of
any bit pattern can be shared as they are (2^255 - 19 would need the top
bit cleared first). A field element takes 33 bytes on the wire.

Share ids are x = 1 + the holder's index among the round's participants, so
ids run 1..n, are public, and x = 0 (the secret) is never handed out.

Not numpy: the arithmetic is on 257-bit integers. The work is small anyway,
O(t * k) multiplications to split and O(t^2) to rebuild a secret, for at most
2 secrets per client per round; the Lagrange weights for one set of ids are
cached, since many secrets are rebuilt from the same survivors.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from fedgrpc.secagg.agreement import RandomBytes
from fedgrpc.secagg.errors import InconsistentSharesError

PRIME = (1 << 256) + 297
"""p: the smallest prime above 2^256 (see the module docstring)."""
ELEMENT_BYTES = 33
"""Bytes of a field element on the wire (257 bits, big-endian)."""
SECRET_BYTES = 32


@dataclass(frozen=True, slots=True)
class Share:
    """One point (x, y) on a secret's polynomial: x = holder id, y in GF(p)."""

    x: int
    y: int

    def __repr__(self) -> str:  # a share is secret material: never print y
        return f"Share(x={self.x}, y=<secret>)"


def _random_element(random_bytes: RandomBytes) -> int:
    """Uniform in GF(p) by rejection: 257 random bits, accepted if below p (~1/2)."""
    while True:
        value = int.from_bytes(random_bytes(ELEMENT_BYTES), "big") & ((1 << 257) - 1)
        if value < PRIME:
            return value


def split_secret(
    secret: bytes, xs: Sequence[int], threshold: int, random_bytes: RandomBytes
) -> list[Share]:
    """Shares of `secret` (32 bytes) at the ids `xs`; any `threshold` rebuild it.

    Raises:
        ValueError: wrong secret size, threshold outside 1..len(xs), or ids
            that repeat or fall outside 1..p-1 (caller bugs, not wire input).
    """
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"a secret has {SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold {threshold} not in 1..{len(xs)}")
    if len(set(xs)) != len(xs) or not all(0 < x < PRIME for x in xs):
        raise ValueError("share ids must be distinct and in 1..p-1")
    # f(z) = secret + a_1 z + ... + a_(t-1) z^(t-1), coefficients low to high.
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [_random_element(random_bytes) for _ in range(threshold - 1)]
    return [Share(x, _evaluate(coefficients, x)) for x in xs]


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    """Horner's rule in GF(p)."""
    value = 0
    for c in reversed(coefficients):
        value = (value * x + c) % PRIME
    return value


@functools.lru_cache(maxsize=4096)
def lagrange_weights(xs: tuple[int, ...], at: int) -> tuple[int, ...]:
    """w_i with f(at) = sum w_i f(x_i) for any polynomial of degree < len(xs)."""
    weights = []
    for i, xi in enumerate(xs):
        numerator, denominator = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                numerator = numerator * (at - xj) % PRIME
                denominator = denominator * (xi - xj) % PRIME
        weights.append(numerator * pow(denominator, -1, PRIME) % PRIME)
    return tuple(weights)


def _interpolate(base: Sequence[Share], at: int) -> int:
    weights = lagrange_weights(tuple(s.x for s in base), at)
    return sum(w * s.y for w, s in zip(weights, base, strict=True)) % PRIME


def reconstruct_secret(shares: Sequence[Share], threshold: int) -> bytes:
    """The 32-byte secret from at least `threshold` shares.

    Interpolates at 0 from the `threshold` lowest ids and checks that every
    further share lies on the same polynomial, so a holder who sends a wrong
    share is noticed whenever more than t shares arrive.

    Raises:
        InconsistentSharesError: fewer than `threshold` shares, a repeated or
            out-of-range id or value, shares off one polynomial, or a result
            that is not a 32-byte value.
    """
    if len(shares) < threshold:
        raise InconsistentSharesError(
            f"{len(shares)} shares cannot rebuild a {threshold}-of-n secret"
        )
    ordered = sorted(shares, key=lambda s: s.x)
    xs = [s.x for s in ordered]
    if len(set(xs)) != len(xs):
        raise InconsistentSharesError(f"share ids repeat: {xs}")
    if not all(0 < s.x < PRIME and 0 <= s.y < PRIME for s in ordered):
        raise InconsistentSharesError("a share id or value is outside the field")
    base, extra = ordered[:threshold], ordered[threshold:]
    for share in extra:
        if _interpolate(base, share.x) != share.y:
            raise InconsistentSharesError(
                f"share {share.x} does not lie on the polynomial of shares "
                f"{[s.x for s in base]}: a holder sent a wrong share"
            )
    secret = _interpolate(base, 0)
    if secret >> (8 * SECRET_BYTES):
        raise InconsistentSharesError("rebuilt value exceeds 32 bytes: wrong shares")
    return secret.to_bytes(SECRET_BYTES, "big")


def element_to_bytes(value: int) -> bytes:
    """A field element as 33 big-endian bytes."""
    return value.to_bytes(ELEMENT_BYTES, "big")


def element_from_bytes(data: bytes) -> int:
    """Inverse of `element_to_bytes`.

    Raises:
        InconsistentSharesError: wrong length, or not below p.
    """
    value = int.from_bytes(data, "big")
    if len(data) != ELEMENT_BYTES or value >= PRIME:
        raise InconsistentSharesError("a share value is not a field element")
    return value
