"""The record-level DP claim on the wire: present or not, and always signed.

A header without a claim signs exactly the bytes it signed before the
claim existed (older clients and the Node client keep verifying); one with
a claim appends ε, δ and the step count, so changing any of them breaks
the signature.
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

from fedgrpc._proto.v1 import common_pb2
from fedgrpc._proto.v1 import coordinator_pb2 as pb
from fedgrpc.crypto.signing import UpdateStatement
from fedgrpc.domain.requests import RecordPrivacyClaim
from fedgrpc.wire.convert import header_from_proto, record_dp_to_proto

BASE = UpdateStatement(
    run_id="run1", round_id=5, round_nonce=b"n" * 16, client_id="c00002",
    base_version=4, base_model_sha256=b"b" * 32, kind=1, codec=1, values=1,
    density=0.0, num_coordinates=12, num_samples=3, train_loss=0.25,
)  # fmt: skip


def _header(**fields: Any) -> pb.UpdateHeader:
    return pb.UpdateHeader(
        client_id="c1",
        kind=pb.UPDATE_KIND_PSEUDO_GRADIENT,
        codec=common_pb2.CODEC_DENSE_FP32,
        **fields,
    )


def test_no_claim_reads_as_none_and_signs_the_pre_claim_bytes() -> None:
    assert header_from_proto(_header()).record_dp is None
    claimless = BASE.encode("ed25519")
    assert claimless.endswith(struct.pack("<If", 4, 0.25))  # still ends at the loss


def test_a_claim_round_trips_and_is_appended_to_the_signed_statement() -> None:
    header = _header()
    record_dp_to_proto(RecordPrivacyClaim(2.5, 1e-5, 300), header)
    assert header_from_proto(header).record_dp == RecordPrivacyClaim(2.5, 1e-5, 300)
    claimed = dataclasses.replace(BASE, record_dp=(2.5, 1e-5, 300))
    data = claimed.encode("ed25519")
    assert data.startswith(BASE.encode("ed25519"))
    assert data.endswith(
        struct.pack("<Id", 8, 2.5) + struct.pack("<Id", 8, 1e-5)
        + struct.pack("<IQ", 8, 300)
    )  # fmt: skip
    lower = dataclasses.replace(BASE, record_dp=(2.4, 1e-5, 300))
    assert lower.encode("ed25519") != data


def test_a_half_filled_claim_is_kept_so_its_zero_delta_is_refused() -> None:
    claim = header_from_proto(_header(record_dp_epsilon=1.0)).record_dp
    assert claim == RecordPrivacyClaim(1.0, 0.0, 0)
