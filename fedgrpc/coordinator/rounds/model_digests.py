"""A model version's digests, one per hash the clients that pull it need.

Each client gets model digests under the hash Join negotiated with it
(`update_hash_for`): BLAKE3 for clients that offered it, SHA-256 for older
or SHA-256-only ones and on runs held to FIPS algorithms. Hashing the
weights is on the apply path (~0.3 s of SHA-256 per round at 100.7M
parameters on this machine, 0.14 s of BLAKE3 on two threads), so a version
is hashed only under the hashes someone needs: at publish those of the
clients in the registry (`ClientRegistry.model_hashes`), and any other once,
lazily, when a client that needs it first asks (then cached). An
all-BLAKE3 federation never pays for SHA-256.

The digests outlive the weights: the round engine keeps those of recent
versions (`Participation.base_digests`) to check the base an update signs,
without keeping the bytes. A digest that was never computed for an older
version cannot be checked, and such an update is refused ("pull again").

Plain Python and torch, no gRPC.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping

import torch

from fedgrpc.crypto.statements import HASH_NAMES, model_digest
from fedgrpc.domain.requests import HashName


class ModelDigests:
    """The digests computed so far of one model version's bytes, by hash."""

    __slots__ = ("_known", "_lock")

    def __init__(self, known: Mapping[HashName, bytes] | None = None) -> None:
        """Start with `known` digests (a checkpoint's), computing none."""
        self._known: dict[HashName, bytes] = dict(known or {})
        self._lock = threading.Lock()
        """Held while hashing: two pulls that need the same missing digest
        (on the event loop and a worker thread) hash the bytes once."""

    def get(self, name: HashName) -> bytes | None:
        """The digest under `name`, or None if it was never computed."""
        return self._known.get(name)

    def compute(self, name: HashName, data: torch.Tensor) -> bytes:
        """The digest of `data` (the version's uint8 bytes) under `name`, cached."""
        known = self._known.get(name)
        if known is not None:
            return known
        with self._lock:
            known = self._known.get(name)
            if known is None:
                known = model_digest(name, data.numpy().data)
                self._known[name] = known
            return known

    def compute_all(self, names: Iterable[HashName], data: torch.Tensor) -> None:
        """Compute (once) the digest under each of `names`."""
        for name in names:
            self.compute(name, data)

    def adopt(self, known: Mapping[HashName, bytes]) -> None:
        """Take digests computed elsewhere of the same bytes (a checkpoint's)."""
        for name, digest in known.items():
            self._known.setdefault(name, digest)

    def known(self) -> dict[HashName, bytes]:
        """A copy of every digest computed so far (what checkpoints keep)."""
        return dict(self._known)

    def preferred(self, first: HashName) -> tuple[HashName, bytes] | None:
        """`first`'s digest if computed, else any computed one (status shows one)."""
        for name in (first, *HASH_NAMES):
            digest = self._known.get(name)
            if digest is not None:
                return name, digest
        return None
