"""Identities end to end: DiLoCoClient against a coordinator with allowed keys.

Real coordinators on 127.0.0.1 port 0, real Ed25519 keys on disk, the real
client: who gets in, what the client trusts, what an auditor can check.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from structlog.testing import capture_logs

import fedgrpc
from fedgrpc.cli import main
from fedgrpc.config import ClientConfig, CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import CoordinatorThread, serve_in_thread
from fedgrpc.crypto.files import save_key_pair
from fedgrpc.crypto.keys import PrivateKey
from fedgrpc.errors import UnknownClientError, UntrustedCoordinatorError

H = 2


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """coordinator.key/.pub, worker{1,2}.key/.pub; allowed/ has the workers' .pub."""
    directory = tmp_path / "keys"
    save_key_pair(PrivateKey.generate(), directory, "coordinator")
    for name in ("worker1", "worker2"):
        save_key_pair(PrivateKey.generate(), directory, name)
        pub = (directory / f"{name}.pub").read_bytes()
        (directory / "allowed").mkdir(exist_ok=True)
        (directory / "allowed" / f"{name}.pub").write_bytes(pub)
    return directory


@pytest.fixture
def coordinator(keys: Path) -> Iterator[CoordinatorThread]:
    config = CoordinatorConfig(
        seed_from_first_client=True,
        listen="127.0.0.1:0",
        identity_key=str(keys / "coordinator.key"),
        allowed_client_keys=str(keys / "allowed"),
        min_clients=1,
        inner_steps=H,
    )
    with serve_in_thread(config) as running:
        yield running


def _client_config(
    keys: Path, name: str, coordinator_key: str = "", export_updates_dir: str = ""
) -> ClientConfig:
    return ClientConfig(
        name=name,
        identity_key=str(keys / f"{name}.key"),
        coordinator_key=coordinator_key or str(keys / "coordinator.pub"),
        export_updates_dir=export_updates_dir,
        connect_timeout_s=10,
        rpc_timeout_s=10,
    )


def _train_one_round(client: fedgrpc.DiLoCoClient, model: torch.nn.Linear) -> None:
    for _ in range(H):
        with torch.no_grad():
            model.weight.add_(0.1)
        client.step()


def test_allowed_clients_train_and_their_updates_can_be_audited(
    coordinator: CoordinatorThread, keys: Path, tmp_path: Path
) -> None:
    # Arrange: worker1 exports what it pushes.
    exports = tmp_path / "exports"
    config = _client_config(keys, "worker1", export_updates_dir=str(exports))
    model = torch.nn.Linear(4, 2)

    # Act: seed + one round, then the audit of the round's update.
    with fedgrpc.DiLoCoClient(coordinator.address, model, config=config) as client:
        _train_one_round(client, model)
        digest = client.last_update_sha256
    files = sorted(exports.glob("*-r000001-*.fedupdate"))
    verified = main(["verify", "--update", str(files[0]), "--hash", digest,
                     "--key", str(keys / "worker1.pub")])  # fmt: skip
    forged = main(["verify", "--update", str(files[0]), "--hash", "0" * 64])

    # Assert
    assert client.last_round_outcome == "applied"
    assert len(digest) == 64
    assert len(files) == 1
    assert verified == 0
    assert forged == 1
    status = coordinator.status()
    worker1 = (keys / "worker1.pub").read_bytes()
    assert (
        status.clients[0].key_sha256
        == fedgrpc.crypto.PublicKey.from_pem(worker1).fingerprint
    )
    assert not status.open_enrollment
    assert status.round_config.update_signatures_required


def test_a_client_without_an_allowed_key_is_refused_with_what_to_do(
    coordinator: CoordinatorThread,
) -> None:
    config = ClientConfig(connect_timeout_s=10, rpc_timeout_s=10)
    with pytest.raises(UnknownClientError) as refused:
        fedgrpc.DiLoCoClient(coordinator.address, torch.nn.Linear(4, 2), config=config)
    message = str(refused.value)
    assert "not allowed to join" in message
    assert "throwaway key" in message
    assert "fedgrpc keygen" in message
    assert coordinator.status().clients == []


def test_a_client_refuses_a_coordinator_that_is_not_the_pinned_one(
    coordinator: CoordinatorThread, keys: Path
) -> None:
    impostor = PrivateKey.generate().public_key.fingerprint
    config = _client_config(keys, "worker1", coordinator_key=impostor)
    with pytest.raises(UntrustedCoordinatorError, match="impostor"):
        fedgrpc.DiLoCoClient(coordinator.address, torch.nn.Linear(4, 2), config=config)
    assert coordinator.status().clients == []  # it never signed a Join for it


def test_unsigned_mode_trains_without_digests() -> None:
    config = CoordinatorConfig(
        seed_from_first_client=True,
        listen="127.0.0.1:0",
        open_enrollment=True,
        update_signatures="off",
        min_clients=1,
        inner_steps=H,
    )
    model = torch.nn.Linear(4, 2)
    with (
        serve_in_thread(config) as coordinator,
        fedgrpc.DiLoCoClient(coordinator.address, model) as client,
    ):
        _train_one_round(client, model)
        assert client.last_round_outcome == "applied"
        assert client.last_update_sha256 == ""


def test_logs_carry_fingerprints_never_keys_tokens_or_tensors(
    coordinator: CoordinatorThread, keys: Path
) -> None:
    # Arrange: everything secret or raw that passes through this round.
    worker = PrivateKey.from_pem((keys / "worker1.key").read_bytes())
    model = torch.nn.Linear(4, 2)
    secrets: list[str] = [worker.public_key.raw.hex()]
    for path in keys.glob("*.key"):
        secrets += path.read_text().splitlines()[1:-1]  # base64 body lines

    # Act: a round, then a refused stranger; everything the library logs.
    logging.getLogger("fedgrpc").setLevel(logging.DEBUG)
    with capture_logs() as logs:
        config = _client_config(keys, "worker1")
        with fedgrpc.DiLoCoClient(coordinator.address, model, config=config) as c:
            _train_one_round(c, model)
            token = c._sync.connection.link.credentials.session_token
            secrets.append(token.hex())
        stranger = ClientConfig(connect_timeout_s=10, rpc_timeout_s=10)
        with pytest.raises(UnknownClientError):
            fedgrpc.DiLoCoClient(coordinator.address, model, config=stranger)
    values = [str(v) for entry in logs for v in entry.values()]
    text = "\n".join(values)

    # Assert
    events = {entry["event"] for entry in logs}
    assert {"client_joined", "update_committed", "rpc_rejected"} <= events
    joined = [e for e in logs if e["event"] == "client_joined" and "key" in e]
    assert all(len(e["key"]) == 8 for e in joined)  # short fingerprints
    assert "PRIVATE KEY" not in text
    for secret in secrets:
        assert secret not in text
    weights = model.weight.detach().flatten().tolist()
    assert not any(repr(w) in text for w in weights if w != 0)


def test_open_enrollment_is_logged_as_a_warning_at_start() -> None:
    config = CoordinatorConfig(
        seed_from_first_client=True, listen="127.0.0.1:0", open_enrollment=True
    )
    with capture_logs() as logs, serve_in_thread(config) as coordinator:
        assert coordinator.status().open_enrollment
    warnings = {e["event"] for e in logs if e["log_level"] == "warning"}
    assert {"open_enrollment", "coordinator_identity_ephemeral"} <= warnings
    serving = next(e for e in logs if e["event"] == "coordinator_serving")
    assert serving["enrollment"] == "open"
    assert len(serving["coordinator_key"]) == 64  # a fingerprint, not the key
