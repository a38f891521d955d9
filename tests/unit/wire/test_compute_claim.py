"""The compute claim (UpdateHeader.compute_s) on the wire: optional and signed.

Goodput reads it, so a claim that could be changed in flight would let
anyone on the path skew it; one that was not optional would break every
older client's signature.
"""

from __future__ import annotations

import dataclasses
import struct

import pytest

from fedgrpc._proto.v1 import common_pb2
from fedgrpc._proto.v1 import coordinator_pb2 as pb
from fedgrpc.crypto.keys import PrivateKey
from fedgrpc.crypto.signing import UpdateVerifier
from fedgrpc.errors import BadSignatureError
from fedgrpc.wire.codec_params import DENSE_FP32_BINDING
from fedgrpc.wire.convert import header_from_proto
from fedgrpc.wire.signed import sign_update_header, update_statement
from tests.unit.privacy.test_record_claim_wire import BASE


def _header(**fields: object) -> pb.UpdateHeader:
    return pb.UpdateHeader(
        client_id="c1", round_id=2, base_version=1,
        kind=pb.UPDATE_KIND_PSEUDO_GRADIENT, codec=common_pb2.CODEC_DENSE_FP32,
        num_coordinates=8, num_samples=1, **fields,  # type: ignore[arg-type]
    )  # fmt: skip


def test_unset_reads_as_none_and_signs_the_bytes_older_clients_sign() -> None:
    assert header_from_proto(_header()).compute_s is None
    assert dataclasses.replace(BASE, compute_s=None).encode("ed25519") == (
        BASE.encode("ed25519")
    )


def test_a_claim_is_appended_tagged_after_the_statement() -> None:
    assert header_from_proto(_header(compute_s=12.5)).compute_s == 12.5
    data = dataclasses.replace(BASE, compute_s=12.5).encode("ed25519")
    assert data.startswith(BASE.encode("ed25519"))
    assert data.endswith(struct.pack("<Id", 8, 12.5))
    assert b"compute_s" in data[len(BASE.encode("ed25519")) :]


def test_changing_a_signed_claim_breaks_the_signature() -> None:
    key = PrivateKey.generate()
    request = pb.PushUpdateRequest(header=_header(compute_s=3.0))
    sign_update_header(request.header, key, "run", DENSE_FP32_BINDING)
    request.header.compute_s = 300.0  # inflated in flight
    info = header_from_proto(request.header)
    statement = update_statement(info, "run", DENSE_FP32_BINDING)
    with pytest.raises(BadSignatureError):
        UpdateVerifier(key.public_key, statement, request.header.signature)
    request.header.compute_s = 3.0  # as signed: verifies
    UpdateVerifier(key.public_key, update_statement(
        header_from_proto(request.header), "run", DENSE_FP32_BINDING
    ), request.header.signature)  # fmt: skip


def test_an_eval_claim_is_signed_after_the_compute_claim() -> None:
    info = header_from_proto(_header(eval_loss=1.5, eval_version=7))
    assert (info.eval_loss, info.eval_version) == (1.5, 7)
    assert header_from_proto(_header()).eval_loss is None
    both = dataclasses.replace(BASE, compute_s=2.0, eval_claim=(1.5, 7))
    data = both.encode("ed25519")
    assert data.endswith(struct.pack("<Id", 8, 1.5) + struct.pack("<IQ", 8, 7))
    moved = dataclasses.replace(both, eval_claim=(1.5, 6))  # another version
    assert moved.encode("ed25519") != data
