"""An in-memory federation for secagg tests: real keys, real crypto, no transport.

`Federation` plays the gRPC integration's part: it carries each message from
`ClientRound`s to the `ServerRound` and back, and lets a test drop clients
between phases or tamper with what the coordinator relays. Randomness is
seeded per client, so every run (and every chi-square statistic) is the same.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ed25519

from fedgrpc.crypto import PrivateKey, PublicKey
from fedgrpc.secagg import (
    AggregateResult,
    ClientRound,
    KeyDirectory,
    RoundSetup,
    SecAggParams,
    ServerRound,
    SurvivorList,
)

SESSION = b"session-7f3a"


def seeded_bytes(seed: int):
    """A deterministic stand-in for os.urandom (tests only)."""
    return random.Random(seed).randbytes


def identity(seed: int) -> PrivateKey:
    """A deterministic Ed25519 identity."""
    raw = random.Random(10_000 + seed).randbytes(32)
    return PrivateKey(ed25519.Ed25519PrivateKey.from_private_bytes(raw))


def client_ids(n: int) -> tuple[str, ...]:
    return tuple(f"client-{i:03d}" for i in range(n))


def make_setup(
    n: int,
    *,
    value_bits: int = 8,
    params: SecAggParams | None = None,
    round_id: int = 1,
) -> RoundSetup:
    return RoundSetup(
        session_id=SESSION,
        round_id=round_id,
        participants=client_ids(n),
        graph_seed=bytes(range(32)),
        value_bits=value_bits,
        params=params or SecAggParams(),
    )


@dataclass
class Federation:
    """n clients and one coordinator, in one process."""

    setup: RoundSetup
    positions: np.ndarray
    seed: int = 0
    coordinator_key: PrivateKey | None = None
    keys: dict[str, PrivateKey] = field(init=False)
    publics: dict[str, PublicKey] = field(init=False)
    clients: dict[str, ClientRound] = field(init=False)
    server: ServerRound = field(init=False)

    def __post_init__(self) -> None:
        ids = self.setup.participants
        self.keys = {c: identity(self.seed * 1000 + i) for i, c in enumerate(ids)}
        self.publics = {c: k.public_key for c, k in self.keys.items()}
        coordinator = self.coordinator_key.public_key if self.coordinator_key else None
        self.clients = {
            c: ClientRound(
                self.setup,
                c,
                self.keys[c],
                self.publics,
                coordinator=coordinator,
                random_bytes=seeded_bytes(self.seed * 1000 + i),
            )
            for i, c in enumerate(ids)
        }
        self.server = ServerRound(
            self.setup,
            self.positions,
            identities=self.publics,
            signer=self.coordinator_key,
        )

    def _alive(self, among: Iterable[str], drop: Iterable[str]) -> list[str]:
        gone = set(drop)
        return [c for c in among if c not in gone]

    def advertise(self, drop: Iterable[str] = ()) -> KeyDirectory:
        for c in self._alive(self.clients, drop):
            self.server.receive_advertisement(self.clients[c].advertise())
        return self.server.close_advertise()

    def share_keys(self, directory: KeyDirectory, drop: Iterable[str] = ()) -> None:
        for advert in directory.advertisements:
            if advert.client in set(drop):
                continue
            package = self.clients[advert.client].share_keys(directory)
            self.server.receive_share_package(package)
        self.server.close_share_keys()

    def deliver_shares(self, drop: Iterable[str] = ()) -> list[str]:
        delivered = self._alive(self.server.shared, drop)
        for c in delivered:
            self.clients[c].receive_shares(self.server.share_inbox(c))
        return delivered

    def mask(
        self,
        codes: Mapping[str, np.ndarray],
        senders: Iterable[str],
        drop: Iterable[str] = (),
    ) -> SurvivorList:
        for c in self._alive(senders, drop):
            masked = self.clients[c].mask_input(self.positions, codes[c])
            self.server.receive_masked_input(masked)
        return self.server.close_masked_input()

    def confirm(self, survivors: SurvivorList, drop: Iterable[str] = ()) -> list[str]:
        confirmed = self._alive(survivors.survivors, drop)
        for c in confirmed:
            self.server.receive_confirmation(self.clients[c].sign_survivors(survivors))
        self.server.close_consistency()
        assert self.server.confirmed == tuple(confirmed)
        return confirmed

    def unmask(self, confirmed: Iterable[str], drop: Iterable[str] = ()) -> None:
        for c in self._alive(confirmed, drop):
            response = self.clients[c].unmask(self.server.unmask_request(c))
            self.server.receive_unmask_response(response)

    def finish(self, codes: Mapping[str, np.ndarray]) -> AggregateResult:
        """From masked input on, with no further dropouts."""
        survivors = self.mask(codes, self.server.shared)
        self.unmask(self.confirm(survivors))
        return self.server.recover()

    def run(
        self,
        codes: Mapping[str, np.ndarray],
        *,
        drop_before_advertise: Iterable[str] = (),
        drop_after_advertise: Iterable[str] = (),
        drop_after_share: Iterable[str] = (),
        drop_after_mask: Iterable[str] = (),
        drop_after_confirm: Iterable[str] = (),
    ) -> AggregateResult:
        """The whole round, dropping clients at the given points."""
        directory = self.advertise(drop_before_advertise)
        self.share_keys(directory, drop_after_advertise)
        senders = self.deliver_shares()
        survivors = self.mask(codes, senders, drop_after_share)
        confirmed = self.confirm(survivors, drop_after_mask)
        self.unmask(confirmed, drop_after_confirm)
        return self.server.recover()


def random_codes(
    ids: Iterable[str], size: int, value_bits: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """Signed codes over the full symmetric b-bit range, per client."""
    rng = np.random.default_rng(seed)
    qmax = (1 << (value_bits - 1)) - 1
    return {c: rng.integers(-qmax, qmax + 1, size=size) for c in ids}


def sparse_positions(size: int, density: float, seed: int = 0) -> np.ndarray:
    """An announced index set: `density` of `size` coordinates, shuffled order."""
    rng = np.random.default_rng(seed)
    return rng.choice(size, size=max(1, int(size * density)), replace=False)
