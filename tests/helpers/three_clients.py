"""Two honest clients and one hostile one on a real coordinator that can restart.

For the issue 13 tests of lying headers (sample counts, losses) and of the
divergence guard: a coordinator that admits exactly three keys (`a`, `b`
honest, `m` the attacker), FedAvg with lr 1 (new weights = base - the
weighted mean, so every applied weight can be checked exactly), a checkpoint
directory, and `restart` to stop it and start it again from its checkpoint
on a fresh port, the clients re-joining with their keys.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from fedgrpc._proto.v1 import admin_pb2
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import CoordinatorThread, serve_in_thread
from fedgrpc.crypto.files import save_key_pair
from fedgrpc.crypto.keys import PrivateKey
from fedgrpc.wire.signed import commit_message
from tests.helpers.raw import (
    PB,
    Joined,
    Service,
    UpdateParams,
    join,
    pull,
    signed_chunk,
    signed_header,
    stub,
    tiny_spec,
)

N = 600
"""Coordinates: three chunks of CHUNK."""
CHUNK = 256
NAMES = ("a", "b", "m")


@dataclass
class Trio:
    """The running coordinator, a stub on it, and the three joined clients."""

    coordinator: CoordinatorThread
    service: Service
    channel: grpc.Channel
    clients: dict[str, Joined]
    keys: dict[str, PrivateKey] = field(repr=False)

    def status(self) -> admin_pb2.GetStatusResponse:
        return self.coordinator.status()

    def push(self, name: str, values: np.ndarray, **header: Any) -> Any:
        """`name`'s signed update for the open round.

        `header`: `UpdateParams` fields (num_samples, train_loss).
        """
        status = self.status()
        params = UpdateParams(status.round_id, status.model_version, **header)
        messages = update(self.clients[name], values, params)
        return self.service.PushUpdate(iter(messages), timeout=10)

    def weights(self, min_version: int) -> tuple[int, np.ndarray]:
        """(version, weights) once the model reached `min_version`."""
        return pull(self.service, self.clients["a"], min_version=min_version)


def update(
    joined: Joined, values: np.ndarray, params: UpdateParams
) -> list[PB.PushUpdateRequest]:
    """A signed dense float32 update: header (from `params`), chunks, commit."""
    header, signer = signed_header(joined, values.size, params)
    messages = [header]
    flat = values.astype("<f4")
    for seq, start in enumerate(range(0, flat.size, CHUNK)):
        part = flat[start : start + CHUNK]
        messages.append(signed_chunk(signer, seq, start, part.size, part.tobytes()))
    return [*messages, commit_message(signer)]


def trio_config(directory: Path, **overrides: Any) -> CoordinatorConfig:
    """Three allowed keys under `directory`/keys, FedAvg, a checkpoint dir."""
    keys = directory / "keys"
    config = CoordinatorConfig(
        seed_from_first_client=True,
        listen="127.0.0.1:0",
        identity_key=str(keys / "coordinator.key"),
        allowed_client_keys=str(keys / "allowed"),
        min_clients=3,
        inner_steps=5,
        chunk_bytes=CHUNK * 4,
        outer_optimizer="fedavg",
        checkpoint_dir=str(directory / "ckpt"),
    )
    return dataclasses.replace(config, **overrides)


def make_keys(directory: Path) -> dict[str, PrivateKey]:
    """The coordinator's key and the three clients' (public halves allowed)."""
    keys = directory / "keys"
    save_key_pair(PrivateKey.generate(), keys, "coordinator")
    private = {name: PrivateKey.generate() for name in NAMES}
    for name, key in private.items():
        save_key_pair(key, keys / "allowed", name)
        (keys / "allowed" / f"{name}.key").unlink()
    return private


@contextlib.contextmanager
def running_trio(
    config: CoordinatorConfig, keys: dict[str, PrivateKey], seed: np.ndarray | None
) -> Iterator[Trio]:
    """Start `config`, join the three clients; `seed`: initial weights a pushes."""
    with serve_in_thread(config) as coordinator:
        channel, service = stub(coordinator.address)
        with channel:
            clients = {
                name: join(service, tiny_spec(N), name, key=keys[name])
                for name in NAMES
            }
            if seed is not None:
                messages = update(clients["a"], seed, UpdateParams(0, 0, initial=True))
                service.PushUpdate(iter(messages), timeout=10)
            yield Trio(coordinator, service, channel, clients, keys)
