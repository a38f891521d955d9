"""The consistency check: one survivor list, confirmed by t neighbours, or no unmask.

Bonawitz et al. 2017 (round "ConsistencyCheck"): after masked input, the
coordinator announces the survivors U3; each client signs that list with its
identity; and before revealing any share a client checks that at least t of
its neighbours signed *the same* list. A coordinator that shows one group
"v dropped" (to collect shares of v's mask key) and another "v survived"
(to collect shares of v's self-mask seed) cannot obtain t signatures over
either list from the other group: honest clients sign one list per round,
and t > (k + corrupt) / 2 (`graph`) keeps two groups of t apart.

Pure functions over the messages; the client state machine applies them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from fedgrpc.errors import BadSignatureError
from fedgrpc.secagg import transcript
from fedgrpc.secagg.agreement import SignatureVerifier as Verifier
from fedgrpc.secagg.errors import ConsistencyCheckError
from fedgrpc.secagg.messages import ConsistencySignature, RoundSetup, SurvivorList


def client_message(setup: RoundSetup, survivors: Sequence[str]) -> bytes:
    """What each client signs over the survivor list."""
    return transcript.survivors(
        transcript.SURVIVORS_CLIENT, setup.session_id, setup.round_id, survivors
    )


def server_message(setup: RoundSetup, survivors: Sequence[str]) -> bytes:
    """What the coordinator signs over the survivor list it announces."""
    return transcript.survivors(
        transcript.SURVIVORS_SERVER, setup.session_id, setup.round_id, survivors
    )


def check_survivor_list(
    setup: RoundSetup,
    me: str,
    survivor_list: SurvivorList,
    coordinator: Verifier | None,
) -> None:
    """The list is well formed, includes `me`, and (if required) is signed.

    Raises:
        ConsistencyCheckError: unsorted or repeated ids, `me` missing, or a
            missing or bad coordinator signature when `coordinator` is given.
    """
    survivors = survivor_list.survivors
    if list(survivors) != sorted(set(survivors)) or me not in survivors:
        raise ConsistencyCheckError("survivor list unsorted, repeated or without me")
    if coordinator is None:
        return
    try:
        coordinator.verify(
            survivor_list.server_signature or b"", server_message(setup, survivors)
        )
    except BadSignatureError as exc:
        raise ConsistencyCheckError(
            "survivor list is not signed by the coordinator"
        ) from exc


def require_confirmations(
    setup: RoundSetup,
    signed: Sequence[str],
    confirmations: Sequence[ConsistencySignature],
    eligible: Collection[str],
    identities: Mapping[str, Verifier],
    needed: int,
) -> None:
    """At least `needed` distinct `eligible` clients signed exactly `signed`.

    Any invalid, repeated or ineligible confirmation fails the check rather
    than being skipped: a coordinator that relays one is misbehaving.

    Raises:
        ConsistencyCheckError: as above, or too few confirmations.
    """
    message = client_message(setup, signed)
    confirmed: set[str] = set()
    for item in confirmations:
        peer = item.client
        if peer in confirmed or peer not in eligible or peer not in identities:
            raise ConsistencyCheckError(f"unexpected confirmation from {peer!r}")
        try:
            identities[peer].verify(item.signature, message)
        except BadSignatureError as exc:
            raise ConsistencyCheckError(
                f"{peer}'s confirmation is not over the list I signed: the "
                "coordinator showed different survivor lists"
            ) from exc
        confirmed.add(peer)
    if len(confirmed) < needed:
        raise ConsistencyCheckError(
            f"only {len(confirmed) + 1} clients (me included) confirmed the "
            f"survivor list; {needed + 1} must before I reveal shares"
        )
