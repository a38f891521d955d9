"""Chunks without signatures of their own: the commit's signature covers them.

With `sign_chunks = "auto"` (the default) a client signs an update's header
and commit; each chunk carries its payload hash and chain link only. Real
coordinators on 127.0.0.1 port 0 and raw pushes through real stubs: an
unsigned-chunk update applies exactly; a chunk whose bytes, hash or link
were changed in transit is refused and nothing of it reaches the sum (the
round then applies exactly with honest updates); a run with
`sign_chunks = "always"` refuses unsigned chunks; and a DiLoCoClient sends
unsigned chunks when Join allows it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from _pytest.capture import CaptureFixture

import fedgrpc
from fedgrpc.cli import main
from fedgrpc.config import ClientConfig, CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import serve_in_thread
from fedgrpc.crypto.signing import HASHERS, UpdateSigner
from fedgrpc.wire.export import MAGIC, _messages
from fedgrpc.wire.signed import commit_message
from tests.helpers.federation import (
    CHUNK,
    Fed,
    N,
    RoundState,
    closed_federation,
    complete_a_round,
    expect_status,
)
from tests.helpers.raw import PB, Joined, UpdateParams, pull, signed_header

Messages = list[PB.PushUpdateRequest]


@pytest.fixture
def fed(tmp_path: Path) -> Iterator[Fed]:
    with closed_federation(tmp_path) as running:
        yield running


@pytest.fixture
def strict(tmp_path: Path) -> Iterator[Fed]:
    with closed_federation(tmp_path / "strict", sign_chunks="always") as running:
        yield running


def _unsigned_chunk(
    signer: UpdateSigner, seq: int, offset: int, payload: bytes
) -> PB.PushUpdateRequest:
    proof = signer.sign_chunk(seq, offset, len(payload) // 4, signer.hash(payload))
    assert proof.signature == b""  # the signer was told not to sign chunks
    return PB.PushUpdateRequest(
        chunk=PB.UpdateChunk(
            seq=seq, offset=offset, count=len(payload) // 4, payload=payload,
            payload_sha256=proof.payload_sha256, prev_sha256=proof.prev_sha256,
        )
    )  # fmt: skip


def _update(fed: Fed, joined: Joined, values: np.ndarray) -> Messages:
    status = fed.status()
    header, signer = signed_header(
        joined, values.size, UpdateParams(status.round_id, status.model_version)
    )
    signer.sign_chunks = False
    flat = values.astype("<f4")
    chunks = [
        _unsigned_chunk(signer, seq, start, flat[start : start + CHUNK].tobytes())
        for seq, start in enumerate(range(0, N, CHUNK))
    ]
    return [header, *chunks, commit_message(signer)]


def _g(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(N).astype(np.float32)


def test_join_says_chunks_may_go_unsigned_and_such_updates_apply(fed: Fed) -> None:
    assert fed.a.round_config.chunk_signatures_optional
    version, base = pull(fed.service, fed.a, min_version=fed.status().model_version)
    ga, gb = _g(1), _g(2)

    acks = [fed.push(_update(fed, fed.a, ga)), fed.push(_update(fed, fed.b, gb))]

    _, after = pull(fed.service, fed.a, min_version=version + 1)
    np.testing.assert_allclose(after, base - (ga + gb) / 2, rtol=0, atol=1e-6)
    assert [len(a.update_sha256) for a in acks] == [32, 32]


@pytest.mark.parametrize("tamper", ["payload", "payload_and_hash", "link"])
def test_an_unsigned_chunk_changed_in_transit_never_reaches_the_sum(
    fed: Fed, tamper: str
) -> None:
    messages = _update(fed, fed.a, _g(3))
    last = messages[-2].chunk  # the last chunk: no later link would catch it
    data = bytearray(last.payload)
    data[0] ^= 0xFF
    if tamper in ("payload", "payload_and_hash"):
        last.payload = bytes(data)
    if tamper == "payload_and_hash":  # consistent bytes and hash: the chain breaks
        last.payload_sha256 = HASHERS["sha256"](bytes(data))
    if tamper == "link":
        last.prev_sha256 = bytes(32)
    before = RoundState.of(fed)

    code = {
        "payload": grpc.StatusCode.PERMISSION_DENIED,
        "payload_and_hash": grpc.StatusCode.DATA_LOSS,
        "link": grpc.StatusCode.DATA_LOSS,
    }[tamper]
    expect_status(lambda: fed.push(messages), code, "")

    assert RoundState.of(fed).model_sha256 == before.model_sha256
    complete_a_round(fed)  # exact FedAvg of two fresh updates: nothing left over


def test_a_run_that_signs_every_chunk_refuses_unsigned_ones(strict: Fed) -> None:
    assert not strict.a.round_config.chunk_signatures_optional
    before = RoundState.of(strict)

    expect_status(
        lambda: strict.push(_update(strict, strict.a, _g(4))),
        grpc.StatusCode.PERMISSION_DENIED, "chunk 0",
    )  # fmt: skip

    assert RoundState.of(strict) == before
    complete_a_round(strict)


def test_a_client_sends_unsigned_chunks_and_its_export_verifies(
    tmp_path: Path, capsys: CaptureFixture[str]
) -> None:
    config = CoordinatorConfig(
        listen="127.0.0.1:0", open_enrollment=True, seed_from_first_client=True,
        min_clients=1, inner_steps=1, chunk_bytes=1024,
    )  # fmt: skip
    exports = tmp_path / "exports"
    client_config = ClientConfig(export_updates_dir=str(exports), rpc_timeout_s=10)
    model = torch.nn.Linear(100, 20)  # 2,020 values: 8 chunks of 256
    with (
        serve_in_thread(config) as coordinator,
        fedgrpc.DiLoCoClient(coordinator.address, model, config=client_config) as c,
    ):
        with torch.no_grad():
            model.weight.add_(0.1)
        assert c.step(0.5)
        digest, outcome = c.last_update_sha256, c.last_round_outcome
    (export,) = exports.glob("*-r000001-*.fedupdate")
    with export.open("rb") as stream:
        assert stream.read(len(MAGIC)) == MAGIC
        stream.readline()  # the export's context (run, client key)
        chunks = [m.chunk for m in _messages(stream) if m.HasField("chunk")]

    assert outcome == "applied"
    assert len(chunks) == 8
    assert all(chunk.signature == b"" for chunk in chunks)  # 8 verifies saved
    capsys.readouterr()
    assert main(["verify", "--update", str(export), "--hash", digest]) == 0
    assert main(["verify", "--update", str(export), "--hash", "0" * 64]) == 1
