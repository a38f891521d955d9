"""The client loads only weights its coordinator signed, byte for byte."""

from __future__ import annotations

import hashlib

import blake3
import pytest
import torch

from fedgrpc import errors
from fedgrpc._proto.v1 import common_pb2
from fedgrpc._proto.v1 import coordinator_pb2 as pb
from fedgrpc.client.connection.pull import ModelReceiver, ModelTrust, RangeMismatchError
from fedgrpc.crypto.keys import PrivateKey
from fedgrpc.domain.model_spec import DType, ModelSpec, TensorSpec
from fedgrpc.wire.signed import model_statement

SPEC = ModelSpec((TensorSpec("w", (8,), DType.FLOAT32),))
DATA = bytes(range(32))
COORDINATOR = PrivateKey.generate()
TRUST = ModelTrust(COORDINATOR.public_key, "run1")


def _header(
    signer: PrivateKey = COORDINATOR, run_id: str = "run1"
) -> pb.PullModelResponse:
    header = pb.ModelHeader(
        model_version=3,
        round_id=3,
        model_spec_digest=SPEC.digest,
        total_bytes=SPEC.num_bytes,
        weights_sha256=hashlib.sha256(DATA).digest(),
    )
    header.signature = signer.sign(model_statement(header, run_id).encode("ed25519"))
    return pb.PullModelResponse(header=header)


def _receiver() -> ModelReceiver:
    return ModelReceiver(SPEC, torch.empty(SPEC.num_bytes, dtype=torch.uint8), TRUST)


def _chunk(data: bytes) -> pb.PullModelResponse:
    return pb.PullModelResponse(chunk=pb.ModelChunk(offset=0, data=data))


def test_signed_weights_load_with_their_digest() -> None:
    receiver = _receiver()
    receiver.accept(_header())
    receiver.accept(_chunk(DATA))
    pulled = receiver.finish()
    assert pulled.sha256 == hashlib.sha256(DATA).digest()
    assert bytes(pulled.buffer.numpy()) == DATA


@pytest.mark.parametrize(
    "header",
    [_header(signer=PrivateKey.generate()), _header(run_id="another run")],
    ids=["another key", "another run"],
)
def test_weights_not_signed_by_the_coordinator_are_refused(
    header: pb.PullModelResponse,
) -> None:
    with pytest.raises(errors.BadSignatureError, match="not signed by the coordinator"):
        _receiver().accept(header)


def test_weights_altered_in_transit_are_refused() -> None:
    receiver = _receiver()
    receiver.accept(_header())
    receiver.accept(_chunk(b"\xff" + DATA[1:]))
    with pytest.raises(errors.BadSignatureError, match="altered in transit"):
        receiver.finish()


def test_a_range_pull_completes_the_version_it_holds_or_says_so() -> None:
    # The client holds the first 16 bytes of this version; it pulls the rest.
    held = torch.tensor(list(DATA[:16]) + [0] * 16, dtype=torch.uint8)
    receiver = ModelReceiver(SPEC, held, TRUST, byte_range=(16, 32))
    receiver.accept(_header())
    receiver.accept(
        pb.PullModelResponse(chunk=pb.ModelChunk(offset=16, data=DATA[16:]))
    )
    assert receiver.finish().sha256 == hashlib.sha256(DATA).digest()
    assert bytes(held.numpy()) == DATA

    # Holding another version's first half: the digest cannot match.
    stale = torch.zeros(32, dtype=torch.uint8)
    receiver = ModelReceiver(SPEC, stale, TRUST, byte_range=(16, 32))
    receiver.accept(_header())
    receiver.accept(
        pb.PullModelResponse(chunk=pb.ModelChunk(offset=16, data=DATA[16:]))
    )
    with pytest.raises(RangeMismatchError, match="pull the whole model"):
        receiver.finish()

    # A chunk outside the range asked for is refused.
    receiver = ModelReceiver(SPEC, stale, TRUST, byte_range=(16, 32))
    receiver.accept(_header())
    with pytest.raises(errors.InvalidUpdateError, match="before the range"):
        receiver.accept(_chunk(DATA[:16]))


def _blake3_header(**changes: object) -> pb.PullModelResponse:
    """A header signed over the weights' BLAKE3 digest (tag "hash" "blake3")."""
    header = pb.ModelHeader(
        model_version=3,
        round_id=3,
        model_spec_digest=SPEC.digest,
        total_bytes=SPEC.num_bytes,
        weights_sha256=blake3.blake3(DATA).digest(),
        weights_hash=common_pb2.HASH_ALGORITHM_BLAKE3,
    )
    header.signature = COORDINATOR.sign(
        model_statement(header, "run1").encode("ed25519")
    )
    for name, value in changes.items():
        setattr(header, name, value)
    return pb.PullModelResponse(header=header)


def test_blake3_weights_load_with_their_blake3_digest() -> None:
    receiver = _receiver()
    receiver.accept(_blake3_header())
    receiver.accept(_chunk(DATA))
    pulled = receiver.finish()
    assert (pulled.sha256, pulled.hash_name) == (blake3.blake3(DATA).digest(), "blake3")


def test_a_header_relabelled_to_another_hash_fails_its_signature() -> None:
    # Signed as BLAKE3, relabelled SHA-256 with the SHA-256 digest: an attacker
    # who could swap the bytes for ones with a weaker hash's digest cannot.
    forged = _blake3_header(
        weights_hash=common_pb2.HASH_ALGORITHM_SHA256,
        weights_sha256=hashlib.sha256(DATA).digest(),
    )
    with pytest.raises(errors.BadSignatureError, match="not signed by the coordinator"):
        _receiver().accept(forged)
    unknown = _blake3_header(weights_hash=7)
    with pytest.raises(errors.InvalidUpdateError, match="weights hash 7"):
        _receiver().accept(unknown)


def test_blake3_bytes_altered_in_transit_are_refused() -> None:
    receiver = _receiver()
    receiver.accept(_blake3_header())
    receiver.accept(_chunk(b"\xff" + DATA[1:]))
    with pytest.raises(errors.BadSignatureError, match="BLAKE3 digest the coordinator"):
        receiver.finish()


def test_a_sha256_only_client_refuses_a_blake3_model() -> None:
    trust = ModelTrust(COORDINATOR.public_key, "run1", ("sha256",))
    receiver = ModelReceiver(
        SPEC, torch.empty(SPEC.num_bytes, dtype=torch.uint8), trust
    )
    with pytest.raises(errors.InvalidUpdateError, match="offered only sha256"):
        receiver.accept(_blake3_header())
