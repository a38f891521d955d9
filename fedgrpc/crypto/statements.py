"""The canonical bytes fedgrpc signs: one statement per kind of signed message.

Nothing is signed in its protobuf form (protobuf encodings are not
canonical: field order, repeated or unknown fields and varint widths may
differ between languages). Each signature covers a *statement* built here:

    field(domain) || field(version) || field(algorithm) || field(x1) || ...

where `field(b)` is `len(b)` as a uint32 little-endian followed by `b`. The
domain string says what kind of statement it is (`fedgrpc.v1.Join`,
`...UpdateHeader`, `...UpdateChunk`, `...UpdateCommit`, `...ModelHeader`),
so a signature made for one can never pass as another; the version byte lets
the layout change later; the algorithm name ("ed25519") inside the signed
bytes keeps a signature from being replayed under another algorithm once
ML-DSA joins. Integers are 8-byte little-endian, doubles and floats IEEE 754
little-endian (8 and 4 bytes), strings UTF-8. The .proto comments list every
statement's fields; client/node/signing.js builds the same bytes, and
tests/unit/crypto/test_signing.py pins the layout. `signing` chains the
update statements. No grpc or protobuf here.

The update chain hashes (payload digests, statement links, the update's
digest) use the hash the update header names: BLAKE3 by default, SHA-256
for runs that must stay with FIPS algorithms and for clients older than the
choice. Both give 32 bytes, so the chain's layout is the same under either.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import blake3

from fedgrpc.crypto.keys import PublicKey
from fedgrpc.domain.requests import HashName

FORMAT_VERSION = 1
"""Version byte of every statement layout defined here."""
SHA256_BYTES = 32
DOMAIN_JOIN = "fedgrpc.v1.Join"
DOMAIN_UPDATE = "fedgrpc.v1.UpdateHeader"
DOMAIN_CHUNK = "fedgrpc.v1.UpdateChunk"
DOMAIN_COMMIT = "fedgrpc.v1.UpdateCommit"
DOMAIN_MODEL = "fedgrpc.v1.ModelHeader"
_U32 = struct.Struct("<I")
_U64_FIELD = struct.Struct("<IQ")  # an 8-byte integer field: length 8, then the value
_F64_FIELD = struct.Struct("<Id")
CHUNK_POSITION = struct.Struct("<IQIQIQ")
"""A chunk's seq, offset and count as three 8-byte integer fields, in one pack."""
_F32 = struct.Struct("<f")


def field(data: bytes) -> bytes:
    """`data` prefixed with its length (uint32 little-endian)."""
    return _U32.pack(len(data)) + data


def u64(value: int) -> bytes:
    """An unsigned integer as an 8-byte little-endian field."""
    return _U64_FIELD.pack(8, value)


def f64(value: float) -> bytes:
    """A double as an 8-byte IEEE 754 little-endian field."""
    return _F64_FIELD.pack(8, value)


def f32(value: float) -> bytes:
    """A float as a 4-byte IEEE 754 little-endian field (as protobuf stores it).

    Rounds like protobuf's float fields: values beyond float32's range
    become infinities instead of raising.
    """
    try:
        packed = _F32.pack(value)
    except OverflowError:
        packed = _F32.pack(math.copysign(math.inf, value))
    return field(packed)


def text(value: str) -> bytes:
    """A string as a UTF-8 field."""
    return field(value.encode())


def statement(domain: str, algorithm: str, *fields: bytes) -> bytes:
    """The signed bytes: domain, version, algorithm, then `fields` (each framed)."""
    head = text(domain) + field(bytes((FORMAT_VERSION,))) + text(algorithm)
    return head + b"".join(fields)


HASH_NAMES: tuple[HashName, ...] = ("sha256", "blake3")
DEFAULT_HASH: HashName = "sha256"
"""What an update that names no hash uses: clients older than the choice."""
Hasher = Callable[[bytes | memoryview], bytes]
"""One-shot 32-byte digest of a buffer."""


def sha256(data: bytes | memoryview) -> bytes:
    """SHA-256 digest (32 bytes). Releases the GIL for inputs over 2 KiB."""
    return hashlib.sha256(data).digest()


def blake3_digest(data: bytes | memoryview) -> bytes:
    """BLAKE3 digest (32 bytes, unkeyed), on one thread.

    One thread (the package's default `max_threads=1`): the callers already
    hash chunks in parallel on their own threads, and the machine's other
    core is busy receiving. The binding releases the GIL while it hashes.
    """
    return blake3.blake3(data).digest()


HASHERS: dict[HashName, Hasher] = {"sha256": sha256, "blake3": blake3_digest}
"""Each chain hash by name."""


class StreamHasher(Protocol):
    """An incremental hash: `hashlib`'s and `blake3`'s objects both fit."""

    def update(self, data: bytes | memoryview, /) -> object:
        """Hash `data` after everything before it."""

    def digest(self) -> bytes:
        """The digest of everything hashed so far."""


def stream_hasher(name: HashName) -> StreamHasher:
    """An incremental hasher for `name` (a pulled model is hashed chunk by chunk)."""
    return blake3.blake3() if name == "blake3" else hashlib.sha256()


def model_digest(name: HashName, data: bytes | memoryview) -> bytes:
    """The digest of a whole model's bytes under `name`.

    BLAKE3 here uses the package's own threads (`max_threads=AUTO`): unlike
    chunk hashing, a model digest is one large buffer hashed while nothing
    else runs (the coordinator's apply path, a client's check of a pull),
    and BLAKE3's tree splits it across cores (~6 GB/s on this machine's two
    against ~3.6 on one). SHA-256 is sequential by construction.
    """
    if name == "blake3":
        return blake3.blake3(data, max_threads=blake3.blake3.AUTO).digest()
    return hashlib.sha256(data).digest()


HASH_LABELS: dict[HashName, str] = {"sha256": "SHA-256", "blake3": "BLAKE3"}
"""How error messages and logs spell each hash."""


# -- Join and model statements --------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class JoinStatement:
    """What a client signs at Join: proof it holds `client_key`, for this challenge."""

    run_id: str
    nonce: bytes
    coordinator_key: PublicKey
    client_key: PublicKey
    client_name: str
    model_spec_digest: bytes

    def encode(self) -> bytes:
        """The statement's bytes, under the client key's algorithm."""
        return statement(
            DOMAIN_JOIN,
            self.client_key.algorithm,
            text(self.run_id),
            field(self.nonce),
            text(self.coordinator_key.algorithm),
            field(self.coordinator_key.raw),
            field(self.client_key.raw),
            text(self.client_name),
            field(self.model_spec_digest),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelStatement:
    """What the coordinator signs for each model it sends (ModelHeader)."""

    run_id: str
    model_version: int
    round_id: int
    model_spec_digest: bytes
    total_bytes: int
    weights_sha256: bytes
    """The weights' digest under `hash_name` (the field name predates BLAKE3)."""
    hash_name: HashName = DEFAULT_HASH
    """The hash of `weights_sha256` (ModelHeader.weights_hash)."""

    def encode(self, algorithm: str) -> bytes:
        """The statement's bytes under `algorithm` (the coordinator key's).

        A digest under another hash than SHA-256 appends the tag "hash" and
        the hash's name, as the update statement does: SHA-256 statements
        keep the exact bytes they had before the choice (older clients still
        verify them), and a header cannot name another hash than was signed.
        """
        claim = (
            ()
            if self.hash_name == DEFAULT_HASH
            else (text("hash"), text(self.hash_name))
        )
        return statement(
            DOMAIN_MODEL,
            algorithm,
            text(self.run_id),
            u64(self.model_version),
            u64(self.round_id),
            field(self.model_spec_digest),
            u64(self.total_bytes),
            field(self.weights_sha256),
            *claim,
        )


# -- the update chain ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateStatement:
    """Everything an UpdateHeader claims, plus the run it belongs to.

    Integers that are enums on the wire (`kind`, `codec`, `values`) are
    their protobuf numbers; `values` and `density` are the federation's
    CodecParams (FP32 and 0 for DENSE_FP32 and initial weights).
    """

    run_id: str
    round_id: int
    round_nonce: bytes
    client_id: str
    base_version: int
    base_model_sha256: bytes
    kind: int
    codec: int
    values: int
    density: float
    num_coordinates: int
    num_samples: int
    train_loss: float
    record_dp: tuple[float, float, int] | None = None
    """Record-level DP claim (ε, δ, steps), or None when the header makes none."""
    compute_s: float | None = None
    """Training seconds the update claims (goodput), or None when not reported."""
    eval_claim: tuple[float, int] | None = None
    """(validation loss, model version it was measured on), or None."""
    hash_name: HashName = DEFAULT_HASH
    """The hash of the update's chain (payload digests and statement links)."""
    shard: tuple[int, int] | None = None
    """(shard index, shard count) of a sharded client's range, or None."""

    def encode(self, algorithm: str) -> bytes:
        """The update statement's bytes (domain fedgrpc.v1.UpdateHeader).

        A record-level DP claim appends ε and δ (doubles) and the step count;
        without one the bytes are exactly those of clients older than the
        claim, so their signatures still verify. A compute claim appends a
        tag and the seconds (a double) after it, the same way; an eval claim
        its tag, the loss and the version after that; a sharded client's
        range its tag "shard", the index and the count (so an update signed
        for one shard cannot be presented to another as its own). A chain
        hash other than SHA-256 comes last, as the tag "hash" and its name,
        so the signature binds the hash every later link is made with.
        """
        claim: tuple[bytes, ...] = ()
        if self.record_dp is not None:
            epsilon, delta, steps = self.record_dp
            claim = (f64(epsilon), f64(delta), u64(steps))
        if self.compute_s is not None:
            claim = (*claim, text("compute_s"), f64(self.compute_s))
        if self.eval_claim is not None:
            loss, version = self.eval_claim
            claim = (*claim, text("eval_loss"), f64(loss), u64(version))
        if self.shard is not None:
            index, count = self.shard
            claim = (*claim, text("shard"), u64(index), u64(count))
        if self.hash_name != DEFAULT_HASH:
            claim = (*claim, text("hash"), text(self.hash_name))
        return statement(
            DOMAIN_UPDATE,
            algorithm,
            text(self.run_id),
            u64(self.round_id),
            field(self.round_nonce),
            text(self.client_id),
            u64(self.base_version),
            field(self.base_model_sha256),
            u64(self.kind),
            *self._codec_fields(),
            u64(self.num_coordinates),
            u64(self.num_samples),
            f32(self.train_loss),
            *claim,
        )

    def _codec_fields(self) -> tuple[bytes, ...]:
        return (u64(self.codec), u64(self.values), f64(self.density))

    def chunk_prefix(self, algorithm: str) -> bytes:
        """The part every chunk statement of this update shares."""
        return statement(
            DOMAIN_CHUNK,
            algorithm,
            text(self.run_id),
            u64(self.round_id),
            field(self.round_nonce),
            text(self.client_id),
            field(self.base_model_sha256),
            *self._codec_fields(),
        )

    def commit_prefix(self, algorithm: str) -> bytes:
        """The part of the commit statement fixed by the header."""
        return statement(
            DOMAIN_COMMIT,
            algorithm,
            text(self.run_id),
            u64(self.round_id),
            field(self.round_nonce),
            text(self.client_id),
        )
