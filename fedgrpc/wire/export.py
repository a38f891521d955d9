"""Exported updates: the exact PushUpdate messages a client sent, in a file.

With `ClientConfig.export_updates_dir` set, a client writes every update it
pushes to `<run>-r<round>-<client>.fedupdate`, so an auditor can later show
which bytes went into a round. The format:

    fedgrpc-update 1                                       (a text line)
    {"run_id": ..., "client_key": {...}, "values": ..., ...}  (a JSON line)
    varint length + PushUpdateRequest bytes, repeated: header, chunks, commit

The messages are the bytes that went on the wire (length-delimited as
protobuf's writeDelimitedTo does); the JSON line adds what the signatures
cover but the messages do not carry (run id, the federation's codec values
and density) and the client's public key.

`verify_export` re-checks the whole chain (every payload's hash, chain link
and signature, then the commit; the hash the header names, SHA-256 in
exports older than BLAKE3) and compares the chain head with the
digest the coordinator reported (PushUpdateResponse.update_sha256, its
`update_committed` log line): equal means this file is exactly the update
the coordinator added. `fedgrpc verify --update FILE --hash HEX` runs it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from google.protobuf.message import DecodeError

from fedgrpc._proto.v1 import coordinator_pb2
from fedgrpc.crypto.keys import PublicKey
from fedgrpc.crypto.signing import HASH_LABELS, UpdateVerifier
from fedgrpc.errors import (
    BadSignatureError,
    FedGrpcError,
    IncompleteUpdateError,
    InvalidKeyError,
    InvalidUpdateError,
)
from fedgrpc.wire.codec_params import CodecBinding
from fedgrpc.wire.convert import header_from_proto
from fedgrpc.wire.frames import chunk_proof, encode_varint
from fedgrpc.wire.signed import commit_proof, update_statement

MAGIC = b"fedgrpc-update 1\n"
SUFFIX = ".fedupdate"
_MAX_MESSAGE_BYTES = 64 << 20


class ExportFormatError(FedGrpcError):
    """The file is not a fedgrpc update export (or is truncated)."""


@dataclass(frozen=True, slots=True)
class ExportContext:
    """What an export records besides the messages."""

    run_id: str
    client_key: PublicKey
    binding: CodecBinding

    def to_json(self) -> bytes:
        """The preamble line."""
        return json.dumps(
            {
                "run_id": self.run_id,
                "client_key": {
                    "algorithm": self.client_key.algorithm,
                    "public_key": self.client_key.raw.hex(),
                    "sha256": self.client_key.fingerprint,
                },
                "values": self.binding.values,
                "density": self.binding.density,
            }
        ).encode()

    @classmethod
    def from_json(cls, line: bytes) -> ExportContext:
        """Parse the preamble line.

        Raises:
            ExportFormatError: not the JSON object `to_json` writes.
        """
        try:
            doc = json.loads(line)
            key = doc["client_key"]
            return cls(
                run_id=str(doc["run_id"]),
                client_key=PublicKey(
                    key["algorithm"], bytes.fromhex(key["public_key"])
                ),
                binding=CodecBinding(int(doc["values"]), float(doc["density"])),
            )
        except (ValueError, KeyError, TypeError, InvalidKeyError) as exc:
            raise ExportFormatError(
                f"the export's header line is malformed: {exc}"
            ) from exc


def export_path(directory: str, run_id: str, round_id: int, client_id: str) -> Path:
    """Where a client exports its update for `round_id`."""
    return Path(directory) / f"{run_id}-r{round_id:06d}-{client_id}{SUFFIX}"


async def exported(
    requests: AsyncIterator[coordinator_pb2.PushUpdateRequest | bytes],
    path: Path,
    context: ExportContext,
) -> AsyncGenerator[coordinator_pb2.PushUpdateRequest | bytes, None]:
    """Pass `requests` through, writing each to `path` as it goes.

    The file appears under its final name only once the whole update was
    written (a `.partial` file is removed if the stream stops early).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    done = False
    try:
        with partial.open("wb") as out:
            out.write(MAGIC + context.to_json() + b"\n")
            async for request in requests:
                data = (
                    request
                    if isinstance(request, bytes)
                    else request.SerializeToString()
                )
                out.write(encode_varint(len(data)))
                out.write(data)
                yield request
        os.replace(partial, path)
        done = True
    finally:
        if not done:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()


def _read_varint(stream: BinaryIO) -> int | None:
    value = shift = 0
    while True:
        byte = stream.read(1)
        if not byte:
            if shift:
                raise ExportFormatError("the export ends inside a length prefix")
            return None
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ExportFormatError("a length prefix is over 64 bits")


def _messages(stream: BinaryIO) -> Iterator[coordinator_pb2.PushUpdateRequest]:
    while (size := _read_varint(stream)) is not None:
        if size > _MAX_MESSAGE_BYTES:
            raise ExportFormatError(f"a message claims {size} bytes; not an export?")
        data = stream.read(size)
        if len(data) != size:
            raise ExportFormatError("the export is truncated inside a message")
        try:
            yield coordinator_pb2.PushUpdateRequest.FromString(data)
        except DecodeError as exc:
            raise ExportFormatError(f"a message does not parse: {exc}") from exc


@dataclass(frozen=True, slots=True)
class ExportReport:
    """The outcome of `verify_export`: what the file holds and whether it matches."""

    ok: bool
    reason: str
    """Why it does not match ("" when ok)."""
    update_sha256: str
    """The chain head recomputed from the file (hex; "" if unreadable)."""
    client_id: str = ""
    round_id: int = 0
    chunks: int = 0
    payload_bytes: int = 0
    key_sha256: str = ""
    hash_algorithm: str = ""
    """The update's chain hash ("SHA-256" or "BLAKE3"; "" if unreadable)."""
    base_version: int = 0
    """The model version the update was computed from."""
    base_digest: str = ""
    """That version's digest as the update signed it (hex), under the same
    hash: the `weights_sha256` of the model the client pulled."""


def verify_export(
    path: str | Path, expected_sha256: str, key: PublicKey | None = None
) -> ExportReport:
    """Re-verify an exported update and compare its digest with `expected_sha256`.

    `key`, if given, must be the file's client key (otherwise the key the
    file names is used: the digest comparison is what ties it to a round).

    Raises:
        ExportFormatError: unreadable, or not a fedgrpc update export.
    """
    try:
        with Path(path).open("rb") as stream:
            return _verify_stream(stream, expected_sha256.lower(), key)
    except OSError as exc:
        raise ExportFormatError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _verify_stream(
    stream: BinaryIO, expected: str, key: PublicKey | None
) -> ExportReport:
    if stream.read(len(MAGIC)) != MAGIC:
        raise ExportFormatError("this file is not a fedgrpc update export")
    context = ExportContext.from_json(stream.readline())
    if key is not None and key != context.client_key:
        return ExportReport(
            False,
            f"the update is signed by key {context.client_key.fingerprint}, "
            f"not the expected {key.fingerprint}",
            "",
        )
    return _verify_messages(_messages(stream), context, expected)


def _verify_messages(
    messages: Iterator[coordinator_pb2.PushUpdateRequest],
    context: ExportContext,
    expected: str,
) -> ExportReport:
    first = next(messages, None)
    if first is None or not first.HasField("header"):
        raise ExportFormatError("the export does not start with an UpdateHeader")
    try:
        header = header_from_proto(first.header)
    except InvalidUpdateError as exc:
        raise ExportFormatError(f"the export's header is malformed: {exc}") from exc
    report = ExportReport(
        False,
        "",
        "",
        client_id=header.client_id,
        round_id=header.round_id,
        key_sha256=context.client_key.fingerprint,
        hash_algorithm=HASH_LABELS[header.hash_name],
        base_version=header.base_version,
        base_digest=header.base_model_sha256.hex(),
    )
    statement = update_statement(header, context.run_id, context.binding)
    try:
        # The commit's signature covers every chunk's link and digest, so an
        # export of unsigned chunks (RoundConfig.chunk_signatures_optional)
        # proves as much; a chunk signature present is still checked.
        verifier = UpdateVerifier(
            context.client_key, statement, header.signature, False
        )
        digest, nbytes = _verify_chain(verifier, messages)
    except (BadSignatureError, IncompleteUpdateError) as exc:
        return dataclasses.replace(report, reason=str(exc))
    ok = digest == expected
    return dataclasses.replace(
        report,
        ok=ok,
        reason=""
        if ok
        else f"the update's {HASH_LABELS[header.hash_name]} is {digest}, "
        f"not {expected}",
        update_sha256=digest,
        chunks=verifier.num_chunks,
        payload_bytes=nbytes,
    )


def _verify_chain(
    verifier: UpdateVerifier, messages: Iterator[coordinator_pb2.PushUpdateRequest]
) -> tuple[str, int]:
    """Check every chunk and the commit; (chain head hex, payload bytes)."""
    nbytes = 0
    for message in messages:
        if message.HasField("commit"):
            return verifier.verify_commit(commit_proof(message.commit)).hex(), nbytes
        c = message.chunk
        proof = chunk_proof(c.payload_sha256, c.prev_sha256, c.signature)
        if proof is None:
            raise BadSignatureError(f"chunk {c.seq} carries no signature")
        digest = verifier.hash(c.payload)
        verifier.verify_chunk(c.seq, c.offset, c.count, digest, proof)
        nbytes += len(c.payload)
    raise IncompleteUpdateError("the export ends before its commit")
