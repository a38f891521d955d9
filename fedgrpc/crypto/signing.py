"""The update chain: signing and verifying an update header, its chunks, its commit.

DESIGN.md step 5. A client signs its update header, then each chunk's
statement, which names the chunk's position, the hash of its payload and
the hash of the previous statement (`prev_sha256`; the header statement
for chunk 0), then a commit over the last link (`chain_sha256`) and the
chunk count (`statements` defines the bytes). The hash is the one the
header statement names (`UpdateStatement.hash_name`: BLAKE3, or SHA-256
for FIPS runs and older clients), so the header's signature fixes the hash
of every link after it. Only the ~300-byte statements
are signed: hashing a 1 MiB payload once is far cheaper than signing it,
and it lets the coordinator verify each chunk completely *before* adding it
to the round's sum. A dropped, reordered or replayed chunk breaks the
chain; the final commit shows that nothing was cut off at the end. The
chain head is the update's digest: `fedgrpc verify` recomputes it from an
exported update.

Cost, measured on this 2-core machine (shared, so noisy): SHA-256 of 1 MiB
0.5-1.4 ms (OpenSSL with SHA-NI, 0.8-1.9 GB/s), BLAKE3 0.25-0.45 ms (one
thread, 2.3-4.1 GB/s); both release the GIL, so other threads run while a
payload is hashed (`UpdateSigner.hash`, `UpdateVerifier.hash`; the client
hashes on a worker thread, the coordinator on its event loop's, which
costs less CPU: `coordinator.ingest.signatures`), Ed25519 sign 25-70 us and
verify 60-220 us of held GIL per statement (bench/signing.py).
No grpc or protobuf here (tests/unit/test_layering.py): `wire` maps
messages onto these types.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedgrpc.crypto.keys import PrivateKey, PublicKey
from fedgrpc.crypto.statements import (
    CHUNK_POSITION,
    DEFAULT_HASH,
    HASH_LABELS,
    HASH_NAMES,
    HASHERS,
    Hasher,
    JoinStatement,
    ModelStatement,
    UpdateStatement,
    blake3_digest,
    f32,
    f64,
    field,
    sha256,
    statement,
    text,
    u64,
)
from fedgrpc.domain.requests import HashName
from fedgrpc.errors import BadSignatureError, IncompleteUpdateError

__all__ = [
    "DEFAULT_HASH",
    "HASHERS",
    "HASH_LABELS",
    "HASH_NAMES",
    "ChunkProof",
    "CommitProof",
    "HashName",
    "Hasher",
    "JoinStatement",
    "ModelStatement",
    "UpdateSigner",
    "UpdateStatement",
    "UpdateVerifier",
    "blake3_digest",
    "f32",
    "f64",
    "field",
    "sha256",
    "statement",
    "text",
    "u64",
]


@dataclass(frozen=True, slots=True)
class ChunkProof:
    """What a chunk carries besides its payload: hash, chain link, signature."""

    payload_sha256: bytes
    prev_sha256: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class CommitProof:
    """What the commit carries: chunk count, chain head, signature."""

    num_chunks: int
    chain_sha256: bytes
    signature: bytes


def _chunk_statement(
    prefix: bytes, seq: int, offset: int, count: int, payload_sha256: bytes, prev: bytes
) -> bytes:
    position = CHUNK_POSITION.pack(8, seq, 8, offset, 8, count)
    return b"".join((prefix, position, field(payload_sha256), field(prev)))


class UpdateSigner:
    """The client's half of the chain: sign the header, each chunk, the commit.

    Chunks must be signed in stream order. Not thread-safe (one per update).
    """

    def __init__(
        self, key: PrivateKey, update: UpdateStatement, sign_chunks: bool = True
    ) -> None:
        """Sign the header now; chunks and the commit as they come.

        `sign_chunks` False: chunks carry their link and digest unsigned, the
        commit's signature covering the chain
        (RoundConfig.chunk_signatures_optional).
        """
        self._key = key
        self.sign_chunks = sign_chunks
        self.hash: Hasher = HASHERS[update.hash_name]
        """The update's chain hash; payload digests passed in must use it."""
        header = update.encode(key.algorithm)
        self.header_signature = key.sign(header)
        self.chain = self.hash(header)
        """The last link: the hash of the last signed statement."""
        self._chunk_prefix = update.chunk_prefix(key.algorithm)
        self._commit_prefix = update.commit_prefix(key.algorithm)
        self.num_chunks = 0

    def sign_chunk(
        self, seq: int, offset: int, count: int, payload_sha256: bytes
    ) -> ChunkProof:
        """Sign the next chunk, given its payload's digest (`self.hash`)."""
        prev = self.chain
        message = _chunk_statement(
            self._chunk_prefix, seq, offset, count, payload_sha256, prev
        )
        self.chain = self.hash(message)
        self.num_chunks += 1
        signature = self._key.sign(message) if self.sign_chunks else b""
        return ChunkProof(payload_sha256, prev, signature)

    def commit(self) -> CommitProof:
        """Close the chain over every chunk signed so far."""
        message = self._commit_prefix + field(self.chain) + u64(self.num_chunks)
        return CommitProof(self.num_chunks, self.chain, self._key.sign(message))


class UpdateVerifier:
    """The coordinator's half: check the header, then each chunk, then the commit.

    Built from the coordinator's *own* view of the update (run id, codec)
    plus what the header claims; the caller compares the claims (round,
    nonce, base digest) with the round. Every check leaves the verifier
    unchanged when it fails, so nothing half-checked advances the chain.
    """

    def __init__(
        self,
        key: PublicKey,
        update: UpdateStatement,
        header_signature: bytes,
        require_chunk_signatures: bool = True,
    ) -> None:
        """Verify the header's signature.

        `require_chunk_signatures` False: a chunk may come unsigned; its link
        and payload digest are still checked, and `verify_commit` checks the
        signature over the chain they form (the caller must keep unverified
        chunks out of any sum until then: the staged sum does).

        Raises:
            BadSignatureError: it does not verify under `key`.
        """
        self._key = key
        self.require_chunk_signatures = require_chunk_signatures
        self._who = f"the update from {update.client_id} for round {update.round_id}"
        self.hash: Hasher = HASHERS[update.hash_name]
        """The update's chain hash; `verify_chunk` expects payload digests in it."""
        self._label = HASH_LABELS[update.hash_name]
        header = update.encode(key.algorithm)
        self._verify(header_signature, header, "header")
        self.chain = self.hash(header)
        self._chunk_prefix = update.chunk_prefix(key.algorithm)
        self._commit_prefix = update.commit_prefix(key.algorithm)
        self.num_chunks = 0

    def verify_chunk(
        self,
        seq: int,
        offset: int,
        count: int,
        payload_sha256: bytes,
        proof: ChunkProof,
    ) -> None:
        """Check chunk `seq` (whose payload's `self.hash` is `payload_sha256`).

        Raises:
            IncompleteUpdateError: its chain link is not this update's last
                link: a chunk is missing, or this one belongs to another
                update (replayed from another round, client or push).
            BadSignatureError: the payload is not the one the chunk signed,
                or the signature does not verify.
        """
        if proof.prev_sha256 != self.chain:
            raise IncompleteUpdateError(
                f"chunk {seq} of {self._who} does not continue its chain "
                f"(prev_sha256 is not the {self._label} of the statement before "
                "it): it "
                "was signed for another update, replayed from another round or "
                "client, or a chunk before it is missing; resend the whole "
                "update, chunks in order, each once"
            )
        if proof.payload_sha256 != payload_sha256:
            raise BadSignatureError(
                f"the payload of chunk {seq} of {self._who} does not match the "
                f"{self._label} its chunk carries: it was altered in transit, the "
                "client hashed other bytes than it sent, or with another hash than "
                "its header names"
            )
        message = _chunk_statement(
            self._chunk_prefix, seq, offset, count, payload_sha256, self.chain
        )
        if proof.signature or self.require_chunk_signatures:
            self._verify(proof.signature, message, f"chunk {seq}")
        self.chain = self.hash(message)
        self.num_chunks += 1

    def verify_commit(self, proof: CommitProof) -> bytes:
        """Check the commit; returns the update's digest (the chain head).

        Raises:
            IncompleteUpdateError: the commit's chunk count or chain head
                differs from what arrived (chunks lost at the end).
            BadSignatureError: the commit's signature does not verify.
        """
        if proof.num_chunks != self.num_chunks or proof.chain_sha256 != self.chain:
            raise IncompleteUpdateError(
                f"the commit of {self._who} closes a chain of {proof.num_chunks} "
                f"chunks, but {self.num_chunks} arrived or their chain differs; "
                "chunks were lost: resend the whole update"
            )
        message = self._commit_prefix + field(self.chain) + u64(self.num_chunks)
        self._verify(proof.signature, message, "commit")
        return self.chain

    def _verify(self, signature: bytes, message: bytes, part: str) -> None:
        try:
            self._key.verify(signature, message)
        except BadSignatureError as exc:
            raise BadSignatureError(
                f"the {part} signature of {self._who} does not verify under the "
                f"client's key {self._key.short_fingerprint}: the {part} was "
                "altered in transit or signed by another key"
            ) from exc
