"""A closed federation on a real coordinator, for rejection and fuzz tests.

`closed_federation` starts a coordinator that admits only two client keys
(FedAvg, so a round's new weights are exactly the old ones minus the mean
update), joins both clients over a raw stub and seeds zeros. Tests then
send something malformed and check, with `RoundState` and
`complete_a_round`, that the coordinator still serves and that nothing of
the rejected update reached the weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from fedgrpc._proto.v1 import admin_pb2
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import CoordinatorThread, serve_in_thread
from fedgrpc.crypto.files import save_key_pair
from fedgrpc.crypto.keys import PrivateKey
from tests.helpers.raw import (
    Joined,
    Service,
    join,
    pull,
    stub,
    tiny_spec,
    update_messages,
)

N = 600
"""Coordinates: three chunks of at most CHUNK at chunk_bytes=1024."""
CHUNK = 256


@dataclass
class Fed:
    """The running coordinator, a stub, and the two allowed clients."""

    coordinator: CoordinatorThread
    service: Service
    a: Joined
    b: Joined
    keys: Path

    def status(self) -> admin_pb2.GetStatusResponse:
        return self.coordinator.status()

    def push(self, messages: Any) -> Any:
        return self.service.PushUpdate(iter(list(messages)), timeout=10)


def two_allowed_clients(keys: Path) -> tuple[PrivateKey, PrivateKey]:
    """A coordinator key pair in `keys` and clients `a` and `b` allowed there."""
    a_key, b_key = PrivateKey.generate(), PrivateKey.generate()
    save_key_pair(PrivateKey.generate(), keys, "coordinator")
    save_key_pair(a_key, keys / "allowed", "a")
    save_key_pair(b_key, keys / "allowed", "b")
    return a_key, b_key


def identity_files(keys: Path) -> dict[str, Any]:
    """The `CoordinatorConfig` fields naming what `two_allowed_clients` wrote."""
    return {
        "identity_key": str(keys / "coordinator.key"),
        "allowed_client_keys": str(keys / "allowed"),
    }


@contextlib.contextmanager
def closed_federation(tmp_path: Path, **settings: Any) -> Iterator[Fed]:
    """Coordinator with allowed keys for `a` and `b`, both joined, zeros seeded.

    `settings`: further `CoordinatorConfig` fields, overriding the ones set here.
    """
    keys = tmp_path / "keys"
    a_key, b_key = two_allowed_clients(keys)
    for private in (keys / "allowed").glob("*.key"):
        private.unlink()
    config = CoordinatorConfig(
        seed_from_first_client=True,
        listen="127.0.0.1:0",
        **identity_files(keys),
        min_clients=2,
        inner_steps=5,
        chunk_bytes=CHUNK * 4,
        outer_optimizer="fedavg",
    ).replace(**settings)
    with serve_in_thread(config) as coordinator:
        channel, service = stub(coordinator.address)
        with channel:
            a = join(service, tiny_spec(N), "a", key=a_key)
            b = join(service, tiny_spec(N), "b", key=b_key)
            seed = update_messages(
                a, np.zeros(N, np.float32), round_id=0, base_version=0, initial=True,
                chunk_coords=CHUNK,
            )  # fmt: skip
            service.PushUpdate(seed, timeout=10)
            yield Fed(coordinator, service, a, b, keys)


@dataclass(frozen=True)
class RoundState:
    """What a rejection must leave as it was (from AdminService.GetStatus)."""

    round_id: int
    round_nonce: bytes
    model_version: int
    model_sha256: bytes
    closed_rounds: int
    accepted: tuple[tuple[str, int], ...]
    bytes_received: int

    @classmethod
    def of(cls, fed: Fed) -> RoundState:
        s = fed.status()
        return cls(
            s.round_id,
            s.round_nonce,
            s.model_version,
            s.model_sha256,
            len(s.recent_rounds),
            tuple((c.client_id, c.updates_accepted) for c in s.clients),
            s.bytes_received,
        )


def expect_status(
    call: Callable[[], object], code: grpc.StatusCode, fragment: str
) -> str:
    """Run `call`; it must fail with `code` and details containing `fragment`."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    details = info.value.details() or ""
    assert info.value.code() == code, details
    assert fragment in details, details
    return details


def complete_a_round(fed: Fed) -> None:
    """Both clients push for the open round; the new weights must be exact.

    FedAvg (lr 1): new = base - (ga + gb) / 2, so any residue of a rejected
    update in the round's sum would show.
    """
    status = fed.status()
    round_id, version = status.round_id, status.model_version
    _, base = pull(fed.service, fed.a, min_version=version)
    rng = np.random.default_rng(round_id)
    ga, gb = (rng.standard_normal(N).astype(np.float32) for _ in range(2))
    for joined, g in ((fed.a, ga), (fed.b, gb)):
        fed.push(
            update_messages(joined, g, round_id=round_id, base_version=version,
                            chunk_coords=CHUNK)
        )  # fmt: skip
    new_version, weights = pull(fed.service, fed.a, min_version=version + 1)
    assert new_version == version + 1
    np.testing.assert_allclose(weights, base - (ga + gb) / 2, rtol=1e-6, atol=1e-6)
