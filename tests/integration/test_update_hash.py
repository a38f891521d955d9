"""The update hash end to end: BLAKE3 by default, SHA-256 for FIPS-only runs.

Real coordinators on 127.0.0.1 port 0: DiLoCoClient runs under each setting
(audited with `fedgrpc verify`), then raw signed pushes through real stubs
for the negotiation and the refusals (each followed by a round that must
still apply exactly, so nothing refused reached a sum).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from _pytest.capture import CaptureFixture

import fedgrpc
from fedgrpc._proto.v1 import common_pb2
from fedgrpc.cli import main
from fedgrpc.config import ClientConfig, CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import serve_in_thread
from fedgrpc.crypto.signing import HashName, sha256
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
from tests.helpers.raw import (
    PB,
    Joined,
    UpdateParams,
    join,
    pull,
    pull_model,
    signed_chunk,
    signed_header,
    tiny_spec,
)

H = 2
BLAKE3, SHA256 = common_pb2.HASH_ALGORITHM_BLAKE3, common_pb2.HASH_ALGORITHM_SHA256
Messages = list[PB.PushUpdateRequest]


@pytest.mark.parametrize(
    ("update_hash", "announced", "label"),
    [("blake3", BLAKE3, "BLAKE3"), ("sha256", SHA256, "SHA-256")],
)
def test_a_client_trains_and_its_export_verifies_under_the_runs_hash(
    update_hash: str,
    announced: int,
    label: str,
    tmp_path: Path,
    capsys: CaptureFixture[str],
) -> None:
    # Arrange
    config = CoordinatorConfig(
        seed_from_first_client=True, listen="127.0.0.1:0", open_enrollment=True,
        min_clients=1, inner_steps=H, update_hash=update_hash,  # type: ignore[arg-type]
    )  # fmt: skip
    exports = tmp_path / "exports"
    client_config = ClientConfig(export_updates_dir=str(exports), rpc_timeout_s=10)
    model = torch.nn.Linear(4, 2)

    # Act: seed, one round, then audit its update.
    with (
        serve_in_thread(config) as coordinator,
        fedgrpc.DiLoCoClient(coordinator.address, model, config=client_config) as c,
    ):
        base = c._sync.base_sha256.hex()  # version 0's digest, as pulled
        for _ in range(H):
            with torch.no_grad():
                model.weight.add_(0.1)
            c.step()
        digest, outcome = c.last_update_sha256, c.last_round_outcome
        status = coordinator.status()
    (export,) = exports.glob("*-r000001-*.fedupdate")
    capsys.readouterr()
    verified = main(["verify", "--update", str(export), "--hash", digest])
    printed = capsys.readouterr().out
    forged = main(["verify", "--update", str(export), "--hash", "0" * 64])
    args = ["verify", "--update", str(export), "--hash", digest, "--base"]
    based = main([*args, base])
    other_base = main([*args, "0" * 64])

    # Assert
    assert outcome == "applied"
    assert status.model_version == 1  # round 1 applied on the seed (version 0)
    assert status.round_config.update_hash == announced
    assert verified == 0
    assert f"hashed with {label}," in printed
    assert len(base) == 64
    assert f"model version 0, whose {label} digest it signed: {base}" in printed
    assert forged == 1
    assert (based, other_base) == (0, 1)  # the base the client pulled, not another


@pytest.fixture
def fed(tmp_path: Path) -> Iterator[Fed]:
    """Allowed clients a and b (offering no hash: SHA-256), update_hash blake3."""
    with closed_federation(tmp_path) as running:
        yield running


@pytest.fixture
def fips(tmp_path: Path) -> Iterator[Fed]:
    """The same, with update_hash = "sha256"."""
    with closed_federation(tmp_path / "fips", update_hash="sha256") as running:
        yield running


def _update(
    fed: Fed,
    joined: Joined,
    values: np.ndarray,
    hash_name: HashName,
    base: bytes | None = None,
) -> Messages:
    """A signed update of `joined` for the open round, hashed with `hash_name`.

    `base`: the base model digest it signs (None: the one status reports).
    """
    status = fed.status()
    params = UpdateParams(
        status.round_id, status.model_version, hash_name=hash_name, base_sha256=base
    )
    header, signer = signed_header(joined, values.size, params)
    flat = values.astype("<f4")
    chunks = [
        signed_chunk(signer, seq, start, len(part), part.tobytes())
        for seq, start in enumerate(range(0, N, CHUNK))
        for part in [flat[start : start + CHUNK]]
    ]
    return [header, *chunks, commit_message(signer)]


def test_join_negotiates_the_hash_per_client(fed: Fed, fips: Fed) -> None:
    spec = tiny_spec(N)
    offers = (BLAKE3, SHA256)

    new_client = join(fed.service, spec, "new", key=fed.a.key, hashes=offers)
    fips_client = join(fips.service, spec, "new", key=fips.a.key, hashes=offers)
    newer = join(fed.service, spec, "newer", key=fed.b.key, hashes=(9, BLAKE3))

    assert new_client.round_config.update_hash == BLAKE3
    assert newer.round_config.update_hash == BLAKE3  # an unknown offer is ignored
    assert fed.a.round_config.update_hash == SHA256  # offered none: older client
    assert fips_client.round_config.update_hash == SHA256


def _rejoin_blake3(fed: Fed) -> Joined:
    """Client a joined again, offering BLAKE3 (b still offers nothing: SHA-256)."""
    return join(fed.service, tiny_spec(N), "a", key=fed.a.key, hashes=(BLAKE3, SHA256))


def test_blake3_and_sha256_updates_average_exactly_in_one_round(fed: Fed) -> None:
    # Arrange: a negotiates BLAKE3, b SHA-256; each pulls its own digest.
    a = _rejoin_blake3(fed)
    header_a, base = pull_model(fed.service, a, min_version=fed.status().model_version)
    header_b, _ = pull_model(fed.service, fed.b, min_version=header_a.model_version)
    rng = np.random.default_rng(1)
    ga, gb = (rng.standard_normal(N).astype(np.float32) for _ in range(2))

    # Act: a pushes BLAKE3, b SHA-256, into the same round, each on its digest.
    acks = [
        fed.push(_update(fed, a, ga, "blake3", header_a.weights_sha256)),
        fed.push(_update(fed, fed.b, gb, "sha256", header_b.weights_sha256)),
    ]

    # Assert: FedAvg (lr 1) of both, exactly.
    _, after = pull(fed.service, a, min_version=header_a.model_version + 1)
    np.testing.assert_allclose(after, base - (ga + gb) / 2, rtol=0, atol=1e-6)
    assert [len(a.update_sha256) for a in acks] == [32, 32]
    assert (header_a.weights_hash, header_b.weights_hash) == (BLAKE3, SHA256)


def test_a_fips_run_refuses_blake3_updates(fips: Fed) -> None:
    messages = _update(fips, fips.a, np.full(N, 0.5, np.float32), "blake3")
    before = RoundState.of(fips)

    details = expect_status(
        lambda: fips.push(messages), grpc.StatusCode.INVALID_ARGUMENT,
        'update_hash = "sha256"',
    )  # fmt: skip

    assert "BLAKE3" in details
    assert RoundState.of(fips) == before
    complete_a_round(fips)


def test_a_blake3_header_with_sha256_chunk_digests_is_refused(fed: Fed) -> None:
    # Validly signed by the client, but chunk 0 carries its payload's SHA-256.
    a = _rejoin_blake3(fed)
    header_a, _ = pull_model(fed.service, a, min_version=fed.status().model_version)
    status = fed.status()
    params = UpdateParams(
        status.round_id, status.model_version, hash_name="blake3",
        base_sha256=header_a.weights_sha256,
    )  # fmt: skip
    header, signer = signed_header(a, N, params)
    payload = np.full(CHUNK, 0.5, "<f4").tobytes()
    proof = signer.sign_chunk(0, 0, CHUNK, sha256(payload))
    chunk = PB.PushUpdateRequest(
        chunk=PB.UpdateChunk(
            seq=0, offset=0, count=CHUNK, payload=payload,
            payload_sha256=proof.payload_sha256, prev_sha256=proof.prev_sha256,
            signature=proof.signature,
        )
    )  # fmt: skip
    before = RoundState.of(fed)

    expect_status(
        lambda: fed.push([header, chunk]),
        grpc.StatusCode.PERMISSION_DENIED, "does not match the BLAKE3",
    )  # fmt: skip

    assert RoundState.of(fed) == before
    complete_a_round(dataclasses.replace(fed, a=a))  # its BLAKE3 digest from status


def test_a_hash_changed_after_signing_or_unknown_is_refused(fed: Fed) -> None:
    # Signed as SHA-256, then relabelled BLAKE3: not the hash Join agreed on
    # (and, were it, the header statement would differ from the signed one).
    relabelled = _update(fed, fed.a, np.full(N, 0.5, np.float32), "sha256")
    relabelled[0].header.hash_algorithm = BLAKE3
    unknown = _update(fed, fed.a, np.full(N, 0.5, np.float32), "sha256")
    unknown[0].header.hash_algorithm = 7  # type: ignore[assignment]
    before = RoundState.of(fed)

    expect_status(lambda: fed.push(relabelled), grpc.StatusCode.INVALID_ARGUMENT,
                  "Join agreed on SHA-256")  # fmt: skip
    expect_status(lambda: fed.push(unknown), grpc.StatusCode.INVALID_ARGUMENT,
                  "hash algorithm 7 is unknown")  # fmt: skip

    assert RoundState.of(fed) == before
    complete_a_round(fed)
