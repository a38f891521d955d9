"""The coordinator's side of one secure-aggregation round: a state machine, no I/O.

The coordinator relays and sums; it never holds a secret key, a readable
share before unmasking, or an unmasked individual vector. Per phase, the
integration calls `receive_*` for each client message as it arrives, and a
`close_*` at quorum or deadline, which fixes that phase's set of clients and
returns what to send next:

    receive_advertisement*    close_advertise()      -> KeyDirectory     U1
    receive_share_package*    close_share_keys()     ; share_inbox(c)    U2
    receive_masked_input*     close_masked_input()   -> SurvivorList     U3
    receive_confirmation*     close_consistency()    ; unmask_request(c) U4
    receive_unmask_response*  recover()              -> AggregateResult  U5

Errors, two kinds (see `errors`): a refused *message* raises
`WrongRoundError` (wrong phase, unknown or repeated sender),
`InvalidUpdateError` (malformed content) or `BadSignatureError`, and leaves
the state untouched; that client just counts as dropped. A `close_*` or
`recover` that finds a neighbourhood below the threshold t, or shares that
disagree, raises a `SecAggAbortError` and the round is over (ABORTED).

Each masked input is added into one running ring sum as it is accepted, so
memory is O(k) for the sum plus the inputs in flight: the integration
assembles a client's chunks and calls `receive_masked_input` at its commit.

Not thread-safe: drive one round from one task (the round engine's).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

import numpy as np

from fedgrpc.errors import IncompatibleClientError, InvalidUpdateError, WrongRoundError
from fedgrpc.secagg import consistency, prg, sealing
from fedgrpc.secagg.agreement import SignatureVerifier as Verifier
from fedgrpc.secagg.agreement import Signer
from fedgrpc.secagg.errors import TooFewClientsError
from fedgrpc.secagg.messages import (
    AdvertiseKeys,
    AggregateResult,
    ConsistencySignature,
    KeyDirectory,
    MaskedInput,
    RoundSetup,
    SealedShare,
    ShareInbox,
    SharePackage,
    SurvivorList,
    UnmaskRequest,
    UnmaskResponse,
)
from fedgrpc.secagg.phases import PhaseMachine, ServerPhase
from fedgrpc.secagg.unmasking import RoundView, check_response, remove_masks

_T = TypeVar("_T")


class ServerRound:
    """The coordinator's state for one round (see the module docstring)."""

    def __init__(
        self,
        setup: RoundSetup,
        index_set: np.ndarray,
        *,
        identities: Mapping[str, Verifier] | None = None,
        signer: Signer | None = None,
    ) -> None:
        """Start collecting advertisements.

        Args:
            setup: the announced round.
            index_set: the announced positions (unique, >= 0), in value order.
            identities: participants' identity keys; if given, signatures are
                checked on receipt so a forged message is refused early
                (clients check them again: they do not trust the coordinator).
            signer: the coordinator's identity; if given, it signs the
                survivor list.
        """
        self._setup, self._identities, self._signer = setup, identities, signer
        self._positions = prg.check_positions(index_set)
        self._ring, self._graph = setup.ring(), setup.graph()
        self._machine = PhaseMachine(
            ServerPhase.ADVERTISE, ServerPhase.ABORTED, WrongRoundError
        )
        self._adverts: dict[str, AdvertiseKeys] = {}
        self._packages: dict[str, SharePackage] = {}
        self._inboxes: dict[str, list[SealedShare]] = {}
        self._sum = self._ring.zeros(self._positions.size)
        self._inputs: set[str] = set()
        self._u2: tuple[str, ...] = ()
        self._u3: tuple[str, ...] = ()
        self._survivor_list: SurvivorList | None = None
        self._confirmations: dict[str, ConsistencySignature] = {}
        self._responses: dict[str, UnmaskResponse] = {}

    @property
    def phase(self) -> ServerPhase:
        """The current phase (ABORTED once a close found the round unrecoverable)."""
        return self._machine.phase

    @property
    def shared(self) -> tuple[str, ...]:
        """U2 once `close_share_keys` ran: the clients to send a `share_inbox`."""
        return self._u2

    @property
    def survivor_list(self) -> SurvivorList | None:
        """U3 as announced by `close_masked_input` (to re-send on reconnect)."""
        return self._survivor_list

    @property
    def confirmed(self) -> tuple[str, ...]:
        """U4 once `close_consistency` ran: the clients to send an unmask request."""
        done = self._machine.phase in (ServerPhase.UNMASK, ServerPhase.DONE)
        return tuple(sorted(self._confirmations)) if done else ()

    def _accept(self, phase: ServerPhase, client: str, seen: Iterable[str]) -> None:
        self._machine.expect(phase, f"{client}'s {phase.value} message")
        if client not in self._setup.participants or client in seen:
            raise WrongRoundError(f"{client!r} is not expected in {phase.value} now")

    def _close(
        self, phase: ServerPhase, after: ServerPhase, step: Callable[[], _T]
    ) -> _T:
        return self._machine.run(phase, after, step, f"closing {phase.value}")

    def _require(
        self, owners: Iterable[str], holders: Iterable[str], what: str
    ) -> None:
        """Every owner keeps >= t share holders (itself, neighbours), else abort."""
        alive, t = set(holders), self._graph.threshold
        for owner in owners:
            count = len((self._graph.of(owner) | {owner}) & alive)
            if count < t:
                raise TooFewClientsError(
                    f"{owner} has {count} share holders (itself and neighbours) "
                    f"that {what}; the threshold is {t}"
                )

    def _verify(self, client: str, signature: bytes, message: bytes) -> None:
        if self._identities is not None:
            self._identities[client].verify(signature, message)

    def receive_advertisement(self, advert: AdvertiseKeys) -> None:
        """Accept one client's signed round keys (BadSignatureError if forged).

        Raises:
            IncompatibleClientError: the client masks with another keystream
                layout: its masks would not cancel, and the sum would come
                out wrong without a trace, so it never gets into U1.
        """
        self._accept(ServerPhase.ADVERTISE, advert.client, self._adverts)
        if advert.keystream_layout != prg.KEYSTREAM_LAYOUT:
            raise IncompatibleClientError(
                f"{advert.client} masks with keystream "
                f"{prg.layout_name(advert.keystream_layout)}, but this round uses "
                f"{prg.layout_name(prg.KEYSTREAM_LAYOUT)}; upgrade fedgrpc on the "
                "client to take part in secure rounds"
            )
        self._verify(
            advert.client, advert.signature, advert.signed_message(self._setup)
        )
        self._adverts[advert.client] = advert

    def close_advertise(self) -> KeyDirectory:
        """Fix U1 and return the directory to relay to every client in it."""
        return self._close(ServerPhase.ADVERTISE, ServerPhase.SHARE_KEYS, self._u1)

    def _u1(self) -> KeyDirectory:
        u1 = sorted(self._adverts)
        self._require(u1, u1, "advertised keys")
        return KeyDirectory(tuple(self._adverts[c] for c in u1))

    def receive_share_package(self, package: SharePackage) -> None:
        """Accept one client's sealed shares: exactly one per neighbour in U1."""
        sender = package.sender
        self._accept(ServerPhase.SHARE_KEYS, sender, self._packages)
        if sender not in self._adverts:
            raise WrongRoundError(f"{sender} shares keys it never advertised")
        expected = self._graph.of(sender) & self._adverts.keys()
        recipients = [s.recipient for s in package.sealed]
        if sorted(recipients) != sorted(expected) or any(
            s.sender != sender or len(s.envelope) != sealing.ENVELOPE_BYTES
            for s in package.sealed
        ):
            raise InvalidUpdateError(
                f"{sender}'s share package must hold one {sealing.ENVELOPE_BYTES}-byte "
                f"envelope for each of its {len(expected)} neighbours in U1"
            )
        self._packages[sender] = package

    def close_share_keys(self) -> None:
        """Fix U2 (clients whose shares arrived); then serve `share_inbox`."""
        self._close(ServerPhase.SHARE_KEYS, ServerPhase.MASKED_INPUT, self._close_u2)

    def _close_u2(self) -> None:
        self._u2 = tuple(sorted(self._packages))
        self._require(self._u2, self._u2, "shared keys")
        for sender in self._u2:
            for item in self._packages[sender].sealed:
                if item.recipient in self._packages:
                    self._inboxes.setdefault(item.recipient, []).append(item)

    def share_inbox(self, client: str) -> ShareInbox:
        """The envelopes addressed to `client` from U2 (after `close_share_keys`)."""
        if (
            self._machine.phase is not ServerPhase.MASKED_INPUT
            or client not in self._u2
        ):
            raise WrongRoundError(
                f"no share inbox for {client!r} in {self._machine.phase.value}"
            )
        return ShareInbox(client, tuple(self._inboxes.get(client, ())))

    def receive_masked_input(self, masked: MaskedInput) -> None:
        """Add one client's whole masked vector into the running ring sum."""
        self._accept(ServerPhase.MASKED_INPUT, masked.client, self._inputs)
        if masked.client not in self._u2:
            raise WrongRoundError(f"{masked.client} sends input but shared no keys")
        self._ring.check(masked.values)
        if masked.values.size != self._positions.size:
            raise InvalidUpdateError(
                f"{masked.client} sent {masked.values.size} masked values; the "
                f"index set has {self._positions.size}"
            )
        self._ring.add_into(self._sum, masked.values)
        self._inputs.add(masked.client)

    def close_masked_input(self) -> SurvivorList:
        """Fix U3 and return the survivor list for the consistency check."""
        return self._close(
            ServerPhase.MASKED_INPUT, ServerPhase.CONSISTENCY, self._close_u3
        )

    def _close_u3(self) -> SurvivorList:
        self._u3 = tuple(sorted(self._inputs))
        self._require(self._u2, self._u3, "delivered masked input")
        signature = None
        if self._signer is not None:
            message = consistency.server_message(self._setup, self._u3)
            signature = self._signer.sign(message)
        self._survivor_list = SurvivorList(self._u3, signature)
        return self._survivor_list

    def receive_confirmation(self, confirmation: ConsistencySignature) -> None:
        """Accept a client's signature over the survivor list."""
        client = confirmation.client
        self._accept(ServerPhase.CONSISTENCY, client, self._confirmations)
        if client not in self._u3:
            raise WrongRoundError(f"{client} confirms a list it is not on")
        message = consistency.client_message(self._setup, self._u3)
        self._verify(client, confirmation.signature, message)
        self._confirmations[client] = confirmation

    def close_consistency(self) -> None:
        """Fix U4; abort unless every needed secret has t confirmed holders."""
        self._close(ServerPhase.CONSISTENCY, ServerPhase.UNMASK, self._close_u4)

    def _close_u4(self) -> None:
        self._require(self._u2, self._confirmations, "confirmed the survivor list")

    def unmask_request(self, client: str) -> UnmaskRequest:
        """The survivor list with the confirmations of `client`'s neighbours."""
        if (
            self._machine.phase is not ServerPhase.UNMASK
            or client not in self._confirmations
        ):
            raise WrongRoundError(f"no unmask request for {client!r} now")
        confirmations = tuple(
            self._confirmations[c]
            for c in sorted(self._graph.of(client) & self._confirmations.keys())
        )
        return UnmaskRequest(client, self._u3, confirmations)

    def receive_unmask_response(self, response: UnmaskResponse) -> None:
        """Accept a client's revealed shares, checking each is of the right kind."""
        client = response.client
        self._accept(ServerPhase.UNMASK, client, self._responses)
        if client not in self._confirmations:
            raise WrongRoundError(f"{client} unmasks without confirming the list")
        check_response(
            response,
            survived=set(self._u3),
            dropped=set(self._u2) - set(self._u3),
            holds_shares_of=self._graph.of(client) | {client},
            share_id=self._setup.share_id(client),
        )
        self._responses[client] = response

    def recover(self) -> AggregateResult:
        """Rebuild secrets from U5's shares and return the survivors' exact sum."""
        return self._close(ServerPhase.UNMASK, ServerPhase.DONE, self._recover)

    def _recover(self) -> AggregateResult:
        view = RoundView(
            setup=self._setup,
            graph=self._graph,
            ring=self._ring,
            positions=self._positions,
            adverts=self._adverts,
            survivors=self._u3,
            dropped=tuple(c for c in self._u2 if c not in set(self._u3)),
        )
        ring_sum = remove_masks(view, self._sum, list(self._responses.values()))
        return AggregateResult(self._u3, ring_sum, self._ring.lower(ring_sum))
