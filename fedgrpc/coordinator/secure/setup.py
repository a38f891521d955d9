"""How a masked round starts: who takes part, and the setup they are sent.

Split from `secure.mode`, which decides *when* a round starts (its
index set chosen, enough clients ready, none still connecting); this module
holds *what* it starts with: the participants' identity keys, the
`RoundSetup` (session, graph seed, code width, degree and threshold) and the
coordinator's signature over the announced `SecureRoundSetup`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Container, Iterable

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.rounds.records import OpenRound
from fedgrpc.coordinator.rounds.registry import ClientRecord
from fedgrpc.coordinator.secure.masked_round import round_params
from fedgrpc.crypto.keys import PrivateKey, PublicKey
from fedgrpc.secagg import RoundSetup
from fedgrpc.secagg.graph import GRAPH_SEED_BYTES
from fedgrpc.wire.secagg import SecureRoundSetup, session_id

SETUP_QUIET_S = 0.5
"""A round's participants are fixed only once no Session opened for this long,
so clients connecting together (a start, a restart) all take part."""
VALUE_BITS = {"int8": 8, "int4": 4}
"""Code width of each value format secure aggregation sums (`SECAGG_VALUES`)."""


def ready_identities(
    clients: Iterable[ClientRecord], sessions: Container[str], needed: int
) -> dict[str, PublicKey] | None:
    """Identity keys of the clients that can mask now, None if fewer than `needed`.

    Ready: connected (`clients`), with an open Session and a known key.
    """
    ready = [c for c in clients if c.client_id in sessions and c.public_key is not None]
    if len(ready) < needed:
        return None
    return {c.client_id: c.public_key for c in ready if c.public_key}


def round_setup(
    config: CoordinatorConfig,
    run_id: str,
    current: OpenRound,
    participants: tuple[str, ...],
    value_bits: int,
    ring_bits: int = 0,
) -> RoundSetup:
    """The secagg setup of `current`: a fresh graph seed, explicit parameters.

    `ring_bits` > 0 widens the ring for distributed-DP noise (`secure.noise`).
    """
    return RoundSetup(
        session_id=session_id(run_id, current.nonce),
        round_id=current.round_id,
        participants=participants,
        graph_seed=os.urandom(GRAPH_SEED_BYTES),
        value_bits=value_bits,
        params=round_params(config, len(participants)),
        ring_bits=ring_bits,
    )


def signed(announce: SecureRoundSetup, identity: PrivateKey) -> SecureRoundSetup:
    """`announce` with the coordinator's signature over its statement."""
    return dataclasses.replace(announce, signature=identity.sign(announce.statement()))
