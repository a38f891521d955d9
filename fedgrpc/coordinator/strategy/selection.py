"""The Selector stage: who takes part in a round, drawn from the round's nonce.

When a round opens the coordinator knows its candidates (the connected
clients) and has drawn the round nonce every update must sign. A Selector
maps (candidates, nonce) to the ids that take part; the others keep training
and their next update spans the rounds they sat out.

Reproducible by construction: every random choice comes from the nonce
through SHA-256, never from a process-local RNG, so anyone holding the nonce
and the candidate list (a test, an auditor, the clients) gets the same
answer on any machine and any numpy version:

    uᵢ = (⌊SHA-256("fedgrpc-select-v1" ‖ len(nonce) ‖ nonce ‖ idᵢ) / 2²⁰³⌋ + ½) / 2⁵³

i.e. the hash's top 53 bits as a float64 in (0, 1). Each candidate gets its
own independent uniform (rendezvous hashing), so the draw does not depend on
the order the candidates are listed in, and a client cannot steer it: the
nonce is fresh and unknown until the round opens.

Built-ins: `all`, `random` (here), `loss` (`power_of_choice`) and
`throughput` (`throughput`). Plain dataclasses in, a sorted tuple of ids out:
no gRPC, no asyncio.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from fedgrpc.errors import ConfigError

SelectionName = Literal["all", "random", "loss", "throughput"]
SELECTIONS: tuple[SelectionName, ...] = ("all", "random", "loss", "throughput")

_DOMAIN = b"fedgrpc-select-v1"
"""Separates these hashes from every other use of the nonce (signatures)."""
_MANTISSA_BITS = 53


@dataclass(frozen=True, slots=True)
class Candidate:
    """What the coordinator knows of one connected client when a round opens.

    Only `client_id` is trusted. `declared_samples` and `last_loss` are the
    client's own claims (it may lie); `throughput_bps` is measured by the
    coordinator (payload bytes / seconds from first header to commit of its
    last accepted update).
    """

    client_id: str
    declared_samples: int = 1
    """Samples the client says its last update was trained on (its data size)."""
    last_loss: float | None = None
    """Local training loss of its last update; None if it never sent one."""
    throughput_bps: float | None = None
    """Bytes per second its last update arrived at; None if never measured."""
    rounds_since_selected: int | None = None
    """Rounds opened since it was last selected; None if never selected."""


class Selector(Protocol):
    """Chooses a round's participants from its candidates and nonce."""

    @property
    def name(self) -> str:
        """Config name (`all`, `random`, `loss`, `throughput`)."""
        ...

    def select(self, candidates: Sequence[Candidate], nonce: bytes) -> tuple[str, ...]:
        """The ids taking part, sorted; every candidate if there are too few.

        Deterministic in (the set of candidates, nonce). Raises ValueError if
        two candidates share an id (a coordinator bug, not client input).
        """
        ...


def nonce_uniforms(nonce: bytes, client_ids: Sequence[str]) -> npt.NDArray[np.float64]:
    """One uniform in (0, 1) per client id, from the round nonce (module docstring).

    A Python loop over *clients* (not coordinates): a hash each, ~1 µs.
    """
    prefix = _DOMAIN + len(nonce).to_bytes(4, "big") + nonce
    draws = np.empty(len(client_ids), dtype=np.float64)
    for i, client_id in enumerate(client_ids):
        digest = hashlib.sha256(prefix + client_id.encode()).digest()
        top = int.from_bytes(digest[:8], "big") >> (64 - _MANTISSA_BITS)
        draws[i] = (top + 0.5) / 2.0**_MANTISSA_BITS  # exact in float64
    return draws


def check_clients_per_round(clients_per_round: int) -> None:
    """Refuse a k no round could use.

    Raises:
        ConfigError: k < 1.
    """
    if clients_per_round < 1:
        raise ConfigError(
            f"clients_per_round={clients_per_round!r} is invalid: expected >= 1; "
            "leave it unset (selection = 'all') to take every client"
        )


def candidate_ids(candidates: Sequence[Candidate]) -> list[str]:
    """The ids in order, refusing duplicates (they would skew every draw)."""
    ids = [c.client_id for c in candidates]
    if len(set(ids)) != len(ids):
        raise ValueError("two selection candidates share a client id")
    return ids


def pick(ids: Sequence[str], order: npt.NDArray[np.intp], k: int) -> tuple[str, ...]:
    """The first k of `ids` taken in `order`, as a sorted tuple."""
    return tuple(sorted(ids[int(i)] for i in order[:k]))


class AllSelector:
    """Every connected client takes part (today's behaviour)."""

    @property
    def name(self) -> str:
        """Always `all`."""
        return "all"

    def select(self, candidates: Sequence[Candidate], nonce: bytes) -> tuple[str, ...]:
        """Every candidate, sorted."""
        return tuple(sorted(candidate_ids(candidates)))


class RandomSelector:
    """k of the n candidates, uniformly without replacement, from the nonce.

    The k candidates with the smallest uᵢ: since the uᵢ are i.i.d. uniform,
    every k-subset is equally likely (FedAvg's C-fraction sampling,
    McMahan et al. 2017).
    """

    def __init__(self, clients_per_round: int) -> None:
        """Choose k = `clients_per_round` (>= 1) clients per round.

        Raises:
            ConfigError: k < 1.
        """
        check_clients_per_round(clients_per_round)
        self.clients_per_round = clients_per_round

    @property
    def name(self) -> str:
        """Always `random`."""
        return "random"

    def select(self, candidates: Sequence[Candidate], nonce: bytes) -> tuple[str, ...]:
        """The k smallest draws; every candidate when n <= k."""
        ids = candidate_ids(candidates)
        draws = nonce_uniforms(nonce, ids)
        return pick(ids, np.argsort(draws, kind="stable"), self.clients_per_round)


def finite_or(value: float | None, fallback: float) -> float:
    """`value` if it is a finite number, else `fallback` (None, NaN, ±inf)."""
    return value if value is not None and math.isfinite(value) else fallback
