"""`throughput` selection: prefer clients whose updates arrive fastest.

A round waits for its slowest selected client, so taking the k fastest
shortens rounds. Speed is what the coordinator *measured* (payload bytes
over the seconds from an update's header to its commit), never what a
client reports, so a client cannot lie its way in; it can only really be
fast, and what it sends is then the Aggregator's business.

Pure "fastest first" would starve the slow and never measure the new, so
the k slots fill in this order:

1. overdue clients: not selected for `patience_rounds` rounds or more,
   longest-waiting first (no client waits unboundedly, and its next update,
   spanning the rounds it sat out, is not lost);
2. newcomers (never measured), but at most ⌈k/2⌉ of them: a stream of
   fresh identities can take half of a round, never all of it;
3. measured clients, fastest first (a non-finite or negative figure counts
   as 0, slowest);
4. the remaining newcomers, if slots are left.

Ties split by the round nonce's per-client draw (`selection`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedgrpc.coordinator.strategy.selection import (
    Candidate,
    candidate_ids,
    check_clients_per_round,
    finite_or,
    nonce_uniforms,
    pick,
)
from fedgrpc.errors import ConfigError

DEFAULT_PATIENCE_ROUNDS = 10
"""A client sits out at most 10 rounds in a row before it is forced in."""


class ThroughputSelector:
    """The k fastest measured clients, with room for the overdue and the new."""

    def __init__(
        self, clients_per_round: int, patience_rounds: int = DEFAULT_PATIENCE_ROUNDS
    ) -> None:
        """Choose k = `clients_per_round`; `patience_rounds` >= 1 bounds a wait.

        Raises:
            ConfigError: k < 1 or `patience_rounds` < 1.
        """
        check_clients_per_round(clients_per_round)
        if patience_rounds < 1:
            raise ConfigError(
                f"selection_patience_rounds={patience_rounds!r} is invalid: "
                "expected >= 1 (rounds a client may sit out before it is chosen)"
            )
        self.clients_per_round = clients_per_round
        self.patience_rounds = patience_rounds

    @property
    def name(self) -> str:
        """Always `throughput`."""
        return "throughput"

    def select(self, candidates: Sequence[Candidate], nonce: bytes) -> tuple[str, ...]:
        """Overdue, then up to ⌈k/2⌉ newcomers, then the fastest (module doc)."""
        ids = candidate_ids(candidates)
        k = self.clients_per_round
        if len(ids) <= k:
            return tuple(sorted(ids))
        ties = nonce_uniforms(nonce, ids)
        waited = np.array([c.rounds_since_selected or 0 for c in candidates])
        speed = np.array(
            [max(finite_or(c.throughput_bps, 0.0), 0.0) for c in candidates]
        )
        overdue = waited >= self.patience_rounds
        new = np.array([c.throughput_bps is None for c in candidates]) & ~overdue
        measured = ~overdue & ~new
        newcomers = _ordered(new, ties)
        cap = math.ceil(k / 2)
        order = np.concatenate(
            [
                _ordered(overdue, ties, -waited),
                newcomers[:cap],
                _ordered(measured, ties, -speed),
                newcomers[cap:],
            ]
        )
        return pick(ids, order, k)


def _ordered(
    mask: np.ndarray, ties: np.ndarray, key: np.ndarray | None = None
) -> np.ndarray:
    """Indices where `mask`, sorted by `key` (ascending) and then by `ties`."""
    (indices,) = np.nonzero(mask)
    keys = (ties[indices],) if key is None else (ties[indices], key[indices])
    return indices[np.lexsort(keys)]
