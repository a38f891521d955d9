"""Who masks with whom: the neighbour graph of a round and its Shamir threshold.

Bonawitz et al. 2017 pair every client with every other (the complete graph):
per-client cost O(n). SecAgg+ (Bell et al. 2020, "Secure single-server
aggregation with (poly)logarithmic overhead", CCS) replaces it with a random
k-regular Harary graph H(n, k): place the clients on a ring in a random order
and join each to its k/2 nearest on either side. Each client then agrees
keys, shares secrets and masks with k = O(log n) peers only.

Shares: each client splits its two secrets t-of-h among h = k + 1 holders,
its k neighbours plus itself (as Bonawitz et al. share among all n clients,
the owner included). So t of a client's neighbourhood must remain to
rebuild its secret, and up to h - t of it may drop.

Rules implemented (`choose_neighbourhood`):

- n <= `complete_graph_max_clients` (100): complete graph, k = n - 1, h = n.
  The threshold is t = floor((h + c) / 2) + 1 with c = ceil(gamma n) corrupt
  clients assumed (`fork_safe_threshold`): two disjoint groups of honest
  holders can then never both reach t, so a coordinator that forks the
  survivor list (with the c corrupt clients signing both forks) cannot
  obtain both secrets of one client (the Bonawitz et al. active-security
  bound t > (n + n_C) / 2).
- larger n: the smallest even k whose random Harary graph meets Bell et
  al.'s three conditions, union-bounded over the n neighbourhoods, with
  Binomial tails (which dominate the hypergeometric ones, Hoeffding 1963):
  security     n P[Bin(k, gamma) >= 2t - h] <= 2^-sigma (no fork succeeds),
  correctness  n P[Bin(h, delta) > h - t]   <= 2^-eta   (t holders survive),
  connectivity n (gamma + delta)^(k/2)      <= 2^-sigma (no k/2-run of bad
  ring slots, the event that can cut the honest survivors apart), with t the
  smallest value > h/2 passing the security bound. All terms decay
  exponentially in k, so k = O(sigma + log n). If no k < n - 1 qualifies,
  the complete graph is used.

The graph order comes from a public 32-byte round seed: clients sort by
SHA-256("fedgrpc.secagg.v1/harary" || seed || id), so every party, in any
language, derives the same graph.
Caveat: Bell et al.'s bounds assume the seed is not chosen by the adversary;
a coordinator that grinds seeds can steer neighbourhoods. The complete graph
(every deployment up to 100 clients by default) has no such exposure.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass

from fedgrpc.errors import check_config

MIN_CLIENTS = 3
"""With two clients the sum minus one's own input is the other's input."""
GRAPH_SEED_BYTES = 32


@dataclass(frozen=True, slots=True, kw_only=True)
class SecAggParams:
    """How the neighbour graph and threshold are chosen (see module docstring)."""

    complete_graph_max_clients: int = 100
    """Up to this many participants everyone is everyone's neighbour (DESIGN.md:
    Harary graphs only above ~100 clients, where O(n) per client starts to hurt)."""
    corrupt_fraction: float = 0.05
    """gamma: fraction of clients assumed to collude with the coordinator (Bell et
    al.'s example setting)."""
    dropout_fraction: float = 0.1
    """delta: fraction of clients that may drop during one round."""
    security_bits: int = 40
    """sigma: failure probability of privacy is at most 2^-sigma (Harary only)."""
    correctness_bits: int = 20
    """eta: a round fails to recover with probability at most 2^-eta (Harary only)."""
    degree: int | None = None
    """Override k (even for Harary, < n); None applies the rule. For experiments."""
    threshold: int | None = None
    """Override t (> (k+1)/2, <= k+1); None applies the rule."""

    def __post_init__(self) -> None:
        for name in ("corrupt_fraction", "dropout_fraction"):
            value = getattr(self, name)
            check_config(0 <= value < 0.5, name, value, "in [0, 0.5)")
        check_config(
            self.complete_graph_max_clients >= MIN_CLIENTS,
            "complete_graph_max_clients",
            self.complete_graph_max_clients,
            f">= {MIN_CLIENTS}",
        )
        for name in ("security_bits", "correctness_bits"):
            check_config(getattr(self, name) >= 1, name, getattr(self, name), ">= 1")


def _binomial_tail(k: int, p: float) -> list[float]:
    """tail[c] = P[Bin(k, p) >= c] for c in 0..k+1, via log-space pmf terms."""
    if p == 0:
        return [1.0] + [0.0] * (k + 1)
    log_p, log_q = math.log(p), math.log1p(-p)
    pmf = [
        math.exp(
            math.lgamma(k + 1)
            - math.lgamma(i + 1)
            - math.lgamma(k - i + 1)
            + i * log_p
            + (k - i) * log_q
        )
        for i in range(k + 1)
    ]
    tail = [0.0] * (k + 2)
    for i in range(k, -1, -1):
        tail[i] = tail[i + 1] + pmf[i]
    return tail


def _harary_threshold(n: int, k: int, params: SecAggParams) -> int | None:
    """The smallest t meeting all three bounds for degree k, or None."""
    security, correctness = 2.0**-params.security_bits, 2.0**-params.correctness_bits
    bad = params.corrupt_fraction + params.dropout_fraction
    if n * bad ** (k // 2) > security:
        return None
    holders = k + 1
    corrupt = _binomial_tail(k, params.corrupt_fraction)  # the owner is honest
    dropped = _binomial_tail(holders, params.dropout_fraction)
    for t in range(holders // 2 + 1, holders + 1):
        if n * corrupt[2 * t - holders] <= security:
            # P[more than h - t of the h holders drop] = tail at h - t + 1.
            return t if n * dropped[holders - t + 1] <= correctness else None
    return None


def fork_safe_threshold(k: int, params: SecAggParams) -> int:
    """Threshold floor((h + c) / 2) + 1, h = k + 1, c = ceil(gamma h).

    For the complete graph h = n and c = ceil(gamma n) is a worst-case count
    of corrupt clients, not a tail bound (module docstring).
    """
    holders = k + 1
    corrupt = math.ceil(params.corrupt_fraction * holders)
    t = (holders + corrupt) // 2 + 1
    check_config(
        t <= holders,
        "corrupt_fraction",
        params.corrupt_fraction,
        f"small enough that {holders} holders can meet the threshold (t={t})",
    )
    return t


@functools.lru_cache(maxsize=64)
def choose_neighbourhood(n: int, params: SecAggParams) -> tuple[int, int]:
    """(degree k, threshold t) for n participants (module docstring's rules).

    Raises:
        ConfigError: n < 3, or overrides that break k < n, k even (Harary),
            (k + 1) / 2 < t <= k + 1.
    """
    check_config(n >= MIN_CLIENTS, "participants", n, f">= {MIN_CLIENTS}")
    k = params.degree
    if k is None:
        k = n - 1
        if n > params.complete_graph_max_clients:
            k = next(
                (
                    d
                    for d in range(2, n - 1, 2)
                    if _harary_threshold(n, d, params) is not None
                ),
                n - 1,
            )
    check_config(
        2 <= k <= n - 1 and (k == n - 1 or k % 2 == 0),
        "degree",
        k,
        f"even in 2..{n - 2}, or {n - 1} (complete)",
    )
    t = params.threshold
    if t is None:
        auto = _harary_threshold(n, k, params) if k < n - 1 else None
        t = auto if auto is not None else fork_safe_threshold(k, params)
    low = (k + 1) // 2 + 1
    check_config(low <= t <= k + 1, "threshold", t, f"in {low}..{k + 1} for k={k}")
    return k, t


@dataclass(frozen=True, slots=True)
class NeighbourGraph:
    """The round's neighbour sets: symmetric, k-regular, identical on every party."""

    degree: int
    """k: neighbours per client."""
    threshold: int
    """t: shares (of the k + 1 each client makes) needed to rebuild a secret."""
    neighbours: dict[str, frozenset[str]]
    """client id -> its k neighbours (never itself). Treat as read-only."""

    @classmethod
    def build(
        cls, participants: tuple[str, ...], seed: bytes, params: SecAggParams
    ) -> NeighbourGraph:
        """The complete graph, or a random Harary graph ordered by `seed`."""
        if len(seed) != GRAPH_SEED_BYTES:
            raise ValueError(f"graph seed has {len(seed)} bytes, expected 32")
        k, t = choose_neighbourhood(len(participants), params)
        everyone = frozenset(participants)
        if k == len(participants) - 1:
            return cls(k, t, {u: everyone - {u} for u in participants})
        ring = sorted(participants, key=lambda u: (_ring_key(seed, u), u))
        n, half = len(ring), k // 2
        neighbours = {
            u: frozenset(
                ring[(i + step) % n] for s in range(1, half + 1) for step in (s, -s)
            )
            for i, u in enumerate(ring)
        }
        return cls(k, t, neighbours)

    def of(self, client: str) -> frozenset[str]:
        """The neighbours of `client` (KeyError for a non-participant)."""
        return self.neighbours[client]


def _ring_key(seed: bytes, client: str) -> bytes:
    return hashlib.sha256(b"fedgrpc.secagg.v1/harary" + seed + client.encode()).digest()
