"""Model digests under each client's negotiated hash, end to end.

Real coordinators on 127.0.0.1 port 0: a BLAKE3 client and a SHA-256-only
client (`ClientConfig.hashes`) train in one run, each pulling digests under
its own hash; an all-BLAKE3 run never hashes a version with SHA-256, a FIPS
run never with BLAKE3; then raw signed pushes through real stubs for the
refusals (each followed by a round that must still apply exactly).
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import blake3
import grpc
import numpy as np
import pytest
import torch
from torch import nn

from fedgrpc.client import DiLoCoClient
from fedgrpc.config import ClientConfig, CoordinatorConfig
from fedgrpc.coordinator.rounds.records import PublishedModel
from fedgrpc.coordinator.services.in_thread import CoordinatorThread, serve_in_thread
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
    join_before_model_hashes,
    pull_model,
    signed_chunk,
    signed_header,
    tiny_spec,
)
from tests.helpers.scripted import FAST

H = 2
ROUNDS = 2
BLAKE3, SHA256 = 2, 1  # common_pb2.HASH_ALGORITHM_*


def _published(coordinator: CoordinatorThread) -> PublishedModel:
    published = coordinator.running.runtime.engine.model.published
    assert published is not None
    return published


def _train(
    coordinator: CoordinatorThread,
    seed: int,
    config: ClientConfig,
    out: dict[int, DiLoCoClient],
) -> None:
    torch.manual_seed(7)
    model = nn.Linear(8, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    client = DiLoCoClient(coordinator.address, model, config=config)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(ROUNDS * H + H):
        if client.finished:
            break
        loss = model(torch.randn(4, 8, generator=generator) + seed).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        client.step(loss.item(), num_samples=4)
    out[seed] = client


def _run(
    coordinator: CoordinatorThread, configs: list[ClientConfig]
) -> list[DiLoCoClient]:
    out: dict[int, DiLoCoClient] = {}
    threads = [
        threading.Thread(target=_train, args=(coordinator, seed, config, out))
        for seed, config in enumerate(configs)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert set(out) == set(range(len(configs))), "a client thread failed"
    return [out[seed] for seed in range(len(configs))]


def _config(clients: int, update_hash: str = "blake3") -> CoordinatorConfig:
    return CoordinatorConfig(
        listen="127.0.0.1:0", open_enrollment=True, min_clients=clients,
        inner_steps=H, round_timeout_s=20.0, seed_from_first_client=True,
        max_rounds=ROUNDS, update_hash=update_hash,  # type: ignore[arg-type]
    )  # fmt: skip


def test_a_blake3_client_and_a_sha256_only_client_train_in_one_run() -> None:
    sha_only = dataclasses.replace(FAST, hashes=("sha256",))
    with serve_in_thread(_config(2)) as coordinator:
        new, fips = _run(coordinator, [FAST, sha_only])
        published = _published(coordinator)
        status = coordinator.status()
        data = published.data.numpy().tobytes()
        for client in (new, fips):
            client.close()

    # Both trained every round, each on the digest of its own hash.
    assert [c.model_version for c in (new, fips)] == [ROUNDS, ROUNDS]
    assert [c.last_round_outcome for c in (new, fips)] == ["applied", "applied"]
    assert status.recent_rounds[-1].num_updates == 2
    assert new._sync.base_sha256 == blake3.blake3(data).digest()
    assert fips._sync.base_sha256 == hashlib.sha256(data).digest()
    assert published.digests.known() == {
        "blake3": blake3.blake3(data).digest(),
        "sha256": hashlib.sha256(data).digest(),
    }
    assert (status.model_hash, status.model_sha256) == (
        BLAKE3,
        blake3.blake3(data).digest(),
    )


@pytest.mark.parametrize(
    ("update_hash", "only", "announced"),
    [("blake3", "blake3", BLAKE3), ("sha256", "sha256", SHA256)],
)
def test_a_run_hashes_each_version_only_under_the_hash_its_clients_use(
    update_hash: str, only: str, announced: int
) -> None:
    with serve_in_thread(_config(1, update_hash)) as coordinator:
        (client,) = _run(coordinator, [FAST])
        engine = coordinator.running.runtime.engine
        bases = {
            v: set(d.known()) for v, d in engine.participation.base_digests.items()
        }
        published = _published(coordinator)
        status = coordinator.status()
        client.close()

    assert client.model_version == ROUNDS
    assert set(published.digests.known()) == {only}  # never the other hash
    assert bases == {v: {only} for v in range(ROUNDS)}
    assert status.model_hash == announced


# -- hostile pushes through real stubs --------------------------------------------


@pytest.fixture
def blake3_fed(tmp_path: Path) -> Iterator[Fed]:
    """a and b joined again offering BLAKE3, and a round applied since.

    The version they now pull was published with BLAKE3 clients only, so
    it has no SHA-256 digest unless something makes the coordinator hash.
    """
    with closed_federation(tmp_path) as fed:
        offers = (BLAKE3, SHA256)
        a, b = (
            join(fed.service, tiny_spec(N), name, key=joined.key, hashes=offers)
            for name, joined in (("a", fed.a), ("b", fed.b))
        )
        fed = dataclasses.replace(fed, a=a, b=b)
        complete_a_round(fed)
        assert set(_published(fed.coordinator).digests.known()) == {"blake3"}
        yield fed


def _push_with(
    fed: Fed, joined: Joined, hash_name: str, base: bytes
) -> list[PB.PushUpdateRequest]:
    status = fed.status()
    params = UpdateParams(
        status.round_id, status.model_version, hash_name=hash_name,  # type: ignore[arg-type]
        base_sha256=base,
    )  # fmt: skip
    header, signer = signed_header(joined, N, params)
    flat = np.full(N, 0.25, "<f4")
    chunks = [
        signed_chunk(signer, seq, start, CHUNK, flat[start : start + CHUNK].tobytes())
        for seq, start in enumerate(range(0, N, CHUNK))
    ]
    return [header, *chunks, commit_message(signer)]


def test_a_client_cannot_make_the_coordinator_hash_with_another_hash(
    blake3_fed: Fed,
) -> None:
    # a agreed on BLAKE3; it signs a SHA-256 update on the model's true SHA-256.
    fed = blake3_fed
    header, values = pull_model(fed.service, fed.a, fed.status().model_version)
    true_sha256 = hashlib.sha256(values.tobytes()).digest()
    messages = _push_with(fed, fed.a, "sha256", true_sha256)
    before = RoundState.of(fed)

    details = expect_status(
        lambda: fed.push(messages), grpc.StatusCode.INVALID_ARGUMENT,
        "Join agreed on BLAKE3",
    )  # fmt: skip

    assert "hashes with SHA-256" in details
    assert header.weights_hash == BLAKE3
    assert set(_published(fed.coordinator).digests.known()) == {"blake3"}
    assert RoundState.of(fed) == before
    complete_a_round(fed)


def test_a_base_digest_under_the_wrong_hash_is_refused(blake3_fed: Fed) -> None:
    # A BLAKE3 update (as agreed) that signs the model's SHA-256 as its base.
    fed = blake3_fed
    _, values = pull_model(fed.service, fed.a, fed.status().model_version)
    messages = _push_with(
        fed, fed.a, "blake3", hashlib.sha256(values.tobytes()).digest()
    )
    before = RoundState.of(fed)

    expect_status(
        lambda: fed.push(messages), grpc.StatusCode.FAILED_PRECONDITION,
        "BLAKE3 digest is not that of model version",
    )  # fmt: skip

    assert RoundState.of(fed) == before
    complete_a_round(fed)


def test_a_client_from_before_model_hashes_pulls_sha256_models_and_trains(
    tmp_path: Path,
) -> None:
    # a offers BLAKE3 for its updates but sends no JoinRequest.model_hashes,
    # as clients built before model digests were negotiated: it can verify
    # only untagged SHA-256 model statements. b is a current client.
    with closed_federation(tmp_path) as fed:
        offers = (BLAKE3, SHA256)
        a = join_before_model_hashes(fed.service, tiny_spec(N), "a", fed.a.key, offers)
        b = join(fed.service, tiny_spec(N), "b", key=fed.b.key, hashes=offers)
        fed = dataclasses.replace(fed, a=a, b=b)
        old_header, values = pull_model(fed.service, a, fed.status().model_version)
        new_header, _ = pull_model(fed.service, b, fed.status().model_version)

        complete_a_round(fed)  # a: BLAKE3 chain on a SHA-256 base; b: BLAKE3
        after, _ = pull_model(fed.service, a, fed.status().model_version)

    assert a.round_config.update_hash == BLAKE3  # its updates keep BLAKE3
    assert old_header.weights_hash == SHA256  # so its statement has no hash tag
    assert old_header.weights_sha256 == hashlib.sha256(values.tobytes()).digest()
    assert new_header.weights_hash == BLAKE3
    assert after.model_version == old_header.model_version + 1
    assert after.weights_hash == SHA256
