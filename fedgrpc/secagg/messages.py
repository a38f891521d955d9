"""The messages of one secure-aggregation round, as plain typed data.

The state machines (`client_round`, `server_round`) consume and produce
exactly these; the gRPC integration only converts them to and from proto
fields and carries them on the Session stream. Phases and their messages:

    phase           client -> coordinator        coordinator -> client
    round start                                  RoundSetup (+ index set, scale)
    advertise       AdvertiseKeys                KeyDirectory      (U1)
    share keys      SharePackage                 ShareInbox        (U2)
    masked input    MaskedInput                  SurvivorList      (U3)
    consistency     ConsistencySignature         UnmaskRequest     (U4)
    unmask          UnmaskResponse               -> AggregateResult (coordinator only)

Secret material never appears in a message except as a sealed envelope, or
as the one share per peer that unmasking reveals by design.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedgrpc.errors import check_config
from fedgrpc.secagg import shamir, transcript
from fedgrpc.secagg.graph import (
    GRAPH_SEED_BYTES,
    NeighbourGraph,
    SecAggParams,
    choose_neighbourhood,
)
from fedgrpc.secagg.prg import KEYSTREAM_LAYOUT
from fedgrpc.secagg.ring import MAX_RING_BITS, Ring, ring_bits


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundSetup:
    """What the coordinator announces at round start, signed with the round start.

    Every party derives the same ring and neighbour graph from it. The index
    set (which coordinates carry values) and the fixed-point scale travel
    beside it; they do not affect the key agreement.
    """

    session_id: bytes
    """The run's id; bound into every key, share and signature of the round."""
    round_id: int
    """The round; with `session_id`, makes each round's secrets single-use."""
    participants: tuple[str, ...]
    """The clients chosen for the round: client ids, sorted, unique, >= 3."""
    graph_seed: bytes
    """32 public random bytes ordering the Harary ring (unused for complete)."""
    value_bits: int
    """b: bits of the signed codes summed (8 for int8 codes, 4 for int4)."""
    params: SecAggParams = field(default_factory=SecAggParams)
    """How degree and threshold are chosen; every party must use the same."""
    ring_bits: int = 0
    """M, when wider than b + ceil(log2 n): a round whose clients add noise
    shares to their codes (distributed DP) sums more than b-bit codes. 0: the
    plain ring."""

    def __post_init__(self) -> None:
        ids = self.participants
        check_config(
            list(ids) == sorted(set(ids)), "participants", ids, "sorted, unique ids"
        )
        check_config(0 <= self.round_id < 1 << 64, "round_id", self.round_id, "u64")
        check_config(
            len(self.graph_seed) == GRAPH_SEED_BYTES,
            "graph_seed",
            f"{len(self.graph_seed)} bytes",
            f"{GRAPH_SEED_BYTES} bytes",
        )
        # Fail at construction, not mid-round: ring width and graph rule.
        plain = ring_bits(self.value_bits, len(ids))
        check_config(self.ring_bits == 0 or plain <= self.ring_bits <= MAX_RING_BITS,
                     "ring_bits", self.ring_bits,
                     f"0 or {plain}..{MAX_RING_BITS}")  # fmt: skip
        choose_neighbourhood(len(ids), self.params)

    def ring(self) -> Ring:
        """Z_2^(b + ceil(log2 n)): n = every participant, so any survivor set fits.

        Wider (`ring_bits`) when the round's codes carry noise shares.
        """
        if self.ring_bits:
            return Ring(self.ring_bits)
        return Ring.for_sum(self.value_bits, len(self.participants))

    @property
    def input_bits(self) -> int | None:
        """Bits of one client's lifted values: b, or None (the whole ring) with noise.

        With noise shares, what bounds the sum is the noise's tail over all
        n shares, not one client's range (`privacy.discrete.ring_bits_for_noise`).
        """
        return None if self.ring_bits else self.value_bits

    def graph(self) -> NeighbourGraph:
        """The round's neighbour graph and threshold (`graph.NeighbourGraph`)."""
        return NeighbourGraph.build(self.participants, self.graph_seed, self.params)

    def share_id(self, client: str) -> int:
        """The Shamir x of `client`'s shares: 1 + its index in `participants`."""
        return self.participants.index(client) + 1


@dataclass(frozen=True, slots=True)
class NoiseShareSpec:
    """What each client of a distributed-DP round adds before masking.

    Announced in the signed setup (`fedgrpc.privacy.distributed` plans it):
    the client clips its values to L2 norm `clip_norm`, rounds them to codes
    of L2 norm <= `norm_bound`, adds N_Z(0, `client_std`²) to each code.
    """

    clip_norm: float
    """S, value units."""
    client_std: float
    """sigma_c of each client's discrete Gaussian share, code units."""
    norm_bound: float
    """Δ₂: the codes' L2 norm after conditional rounding, code units."""

    def __post_init__(self) -> None:
        for name in ("clip_norm", "client_std", "norm_bound"):
            value = getattr(self, name)
            check_config(np.isfinite(value) and value > 0, name, value, "finite > 0")


@dataclass(frozen=True, slots=True)
class AdvertiseKeys:
    """A client's two round X25519 public keys, signed by its identity."""

    client: str
    encryption_key: bytes
    """32 bytes: peers derive the keys of the share envelopes from it."""
    mask_key: bytes
    """32 bytes: peers derive the pairwise mask seeds from it."""
    signature: bytes
    """Identity signature over `signed_message`."""
    keystream_layout: int = KEYSTREAM_LAYOUT
    """The layout this client masks with (`prg`); the coordinator refuses
    any other than the round's. A compatibility claim, not a secret: not in
    the signed statement, so a client predating it is refused by name."""

    def signed_message(self, setup: RoundSetup) -> bytes:
        """The bytes the client's identity signs: keys bound to session and round."""
        return transcript.advertisement(
            setup.session_id,
            setup.round_id,
            self.client,
            self.encryption_key,
            self.mask_key,
        )


@dataclass(frozen=True, slots=True)
class KeyDirectory:
    """Every advertisement the coordinator accepted (U1), relayed to all."""

    advertisements: tuple[AdvertiseKeys, ...]


@dataclass(frozen=True, slots=True)
class SealedShare:
    """An encrypted pair of shares (`sealing`), addressed sender -> recipient."""

    sender: str
    recipient: str
    envelope: bytes


@dataclass(frozen=True, slots=True)
class SharePackage:
    """A client's sealed shares, one per neighbour in U1."""

    sender: str
    sealed: tuple[SealedShare, ...]


@dataclass(frozen=True, slots=True)
class ShareInbox:
    """The sealed shares addressed to one client; their senders are its view of U2."""

    recipient: str
    sealed: tuple[SealedShare, ...]


@dataclass(frozen=True, slots=True, eq=False)
class MaskedInput:
    """A client's masked vector: ring elements at the announced index set, in order."""

    client: str
    values: np.ndarray
    """1-D, `RoundSetup.ring().dtype`, one per announced position."""


@dataclass(frozen=True, slots=True)
class SurvivorList:
    """The clients whose masked input the coordinator holds (U3), sorted."""

    survivors: tuple[str, ...]
    server_signature: bytes | None = None
    """Coordinator's signature over `transcript.survivors(SURVIVORS_SERVER, ...)`,
    when it has an identity key; clients configured with its key require it."""


@dataclass(frozen=True, slots=True)
class ConsistencySignature:
    """A client's signature over the survivor list it was shown."""

    client: str
    signature: bytes


@dataclass(frozen=True, slots=True)
class UnmaskRequest:
    """The survivor list again, with its signatures by the recipient's neighbours."""

    recipient: str
    survivors: tuple[str, ...]
    signatures: tuple[ConsistencySignature, ...]


@dataclass(frozen=True, slots=True)
class UnmaskResponse:
    """One share per peer: its mask-key share if it dropped, else its seed share."""

    client: str
    mask_key_shares: tuple[tuple[str, shamir.Share], ...]
    """(dropped owner, share of its X25519 mask private key)."""
    self_seed_shares: tuple[tuple[str, shamir.Share], ...]
    """(surviving owner, share of its self-mask seed)."""


@dataclass(frozen=True, slots=True, eq=False)
class AggregateResult:
    """The exact sum of the survivors' codes, and who they were."""

    survivors: tuple[str, ...]
    ring_sum: np.ndarray
    """The sum in the ring (`Ring.dtype`), as the coordinator accumulated it."""
    total: np.ndarray
    """`ring_sum` lowered to signed int64: sum of the survivors' codes."""
