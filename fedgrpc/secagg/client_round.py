"""The client's side of one secure-aggregation round, as a state machine without I/O.

SecAgg+ (Bell et al. 2020) over the Bonawitz et al. 2017 protocol, each
method one phase; the integration carries the returned message to the
coordinator and feeds the answer to the next method:

    advertise()            -> AdvertiseKeys            fresh keys, identity-signed
    share_keys(directory)  -> SharePackage             verify peers, share, seal
    receive_shares(inbox)                              open what neighbours sealed
    mask_input(pos, codes) -> MaskedInput              lift, add self + pairwise masks
    sign_survivors(list)   -> ConsistencySignature     sign the one list, once
    unmask(request)        -> UnmaskResponse           check t signatures, reveal

What the client refuses, and why (each raises a `SecAggAbortError` and the
round is over for this client; it reveals nothing afterwards):

- a neighbour's keys not signed by that neighbour's identity (a coordinator
  in the middle could otherwise strip masks);
- fewer than t share holders (itself and its neighbours) at any phase: its
  input would hide behind too few masks, or its secrets could not be rebuilt;
- a second, different survivor list, or an unmask request whose list or
  signatures differ from what it signed (the consistency check: a
  coordinator cannot call a client "dropped" to some and "alive" to others,
  and so can never collect both its mask-key and its self-mask shares);
- revealing, for any peer, both kinds of share.

Not thread-safe: one round object per client per round, driven by one task.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from fedgrpc.errors import InvalidUpdateError
from fedgrpc.secagg import agreement, consistency, prg, sealing, transcript
from fedgrpc.secagg.agreement import RandomBytes, Signer
from fedgrpc.secagg.agreement import SignatureVerifier as Verifier
from fedgrpc.secagg.errors import (
    ConsistencyCheckError,
    ProtocolViolationError,
    TooFewClientsError,
)
from fedgrpc.secagg.messages import (
    AdvertiseKeys,
    ConsistencySignature,
    KeyDirectory,
    MaskedInput,
    RoundSetup,
    ShareInbox,
    SharePackage,
    SurvivorList,
    UnmaskRequest,
    UnmaskResponse,
)
from fedgrpc.secagg.neighbours import Neighbours, verify_advertisement
from fedgrpc.secagg.phases import ClientPhase, PhaseMachine


class ClientRound:
    """One client's state for one round (see the module docstring)."""

    def __init__(
        self,
        setup: RoundSetup,
        me: str,
        signer: Signer,
        peers: Mapping[str, Verifier],
        *,
        coordinator: Verifier | None = None,
        random_bytes: RandomBytes = os.urandom,
    ) -> None:
        """Fresh round keys and self-mask seed for `me`.

        Args:
            setup: the announced round.
            me: this client's id, one of `setup.participants`.
            signer: this client's identity key.
            peers: identity verifiers of (at least) this client's neighbours,
                from the coordinator's Join records.
            coordinator: the coordinator's identity; if given, survivor lists
                must carry its signature.
            random_bytes: secret randomness (the OS CSPRNG; tests seed it).
        """
        if me not in setup.participants:
            raise ValueError(f"{me!r} is not a participant of round {setup.round_id}")
        self._setup, self._me, self._signer = setup, me, signer
        self._peers, self._coordinator = peers, coordinator
        self._random_bytes = random_bytes
        self._ring, graph = setup.ring(), setup.graph()
        self._neighbours, self._threshold = graph.of(me), graph.threshold
        self._keys = agreement.RoundKeys.generate(random_bytes)
        self._self_seed = random_bytes(prg.SEED_BYTES)
        self._machine = PhaseMachine(
            ClientPhase.NEW, ClientPhase.ABORTED, ProtocolViolationError
        )
        self._advert: AdvertiseKeys | None = None
        self._neighbourhood: Neighbours | None = None  # set once U1 is known
        # Owner -> my shares of its secrets: neighbours in U2, and myself.
        self._held: dict[str, sealing.SharePair] = {}
        self._own_shares: sealing.SharePair | None = None
        self._signed: tuple[str, ...] | None = None
        self._signature = b""
        self._revealed: dict[str, str] = {}  # peer -> "mask_key" | "self_seed"

    @property
    def phase(self) -> ClientPhase:
        """The current phase (ABORTED after any refusal)."""
        return self._machine.phase

    def advertise(self) -> AdvertiseKeys:
        """This round's two public keys, signed by the client's identity."""
        return self._machine.run(
            ClientPhase.NEW, ClientPhase.ADVERTISED, self._advertise
        )

    def _advertise(self) -> AdvertiseKeys:
        enc = agreement.public_bytes(self._keys.encryption)
        mask = agreement.public_bytes(self._keys.mask)
        message = transcript.advertisement(
            self._setup.session_id, self._setup.round_id, self._me, enc, mask
        )
        self._advert = AdvertiseKeys(self._me, enc, mask, self._signer.sign(message))
        return self._advert

    def share_keys(self, directory: KeyDirectory) -> SharePackage:
        """Verify neighbours' keys, then seal shares of both secrets to each.

        Raises:
            ProtocolViolationError: duplicate or foreign entries, or my own
                advertisement missing or altered.
            PeerSignatureError: a neighbour's keys are not signed by it.
            TooFewClientsError: fewer than t - 1 neighbours advertised (with me,
                t holders are needed).
        """
        return self._machine.run(
            ClientPhase.ADVERTISED, ClientPhase.SHARED, lambda: self._share(directory)
        )

    def _share(self, directory: KeyDirectory) -> SharePackage:
        assert self._advert is not None, "advertise ran before share_keys"
        neighbourhood = Neighbours.from_directory(
            self._setup, self._keys, self._advert, directory, self._neighbours
        )
        for peer, advert in neighbourhood.peers.items():
            verify_advertisement(self._setup, advert, self._peers.get(peer))
        self._require(len(neighbourhood.peers), "advertised keys")
        self._neighbourhood = neighbourhood
        package, self._own_shares = neighbourhood.seal_shares(
            self._threshold, self._self_seed, self._random_bytes
        )
        return package

    def _require(self, neighbours: int, what: str) -> None:
        """Abort unless `neighbours` plus me (the k+1 share holders) reach t."""
        if neighbours + 1 < self._threshold:
            raise TooFewClientsError(
                f"only {neighbours} of {self._me}'s {len(self._neighbours)} "
                f"neighbours {what}; with {self._me} that is below the "
                f"threshold {self._threshold}"
            )

    def receive_shares(self, inbox: ShareInbox) -> None:
        """Open the shares neighbours sealed to me; their senders are my U2.

        Raises:
            ProtocolViolationError: misaddressed, repeated or unexpected senders.
            TamperedShareError: an envelope fails authentication or has the
                wrong share id.
            TooFewClientsError: fewer than t - 1 neighbours sent shares.
        """
        self._machine.run(
            ClientPhase.SHARED, ClientPhase.RECEIVED, lambda: self._receive(inbox)
        )

    def _receive(self, inbox: ShareInbox) -> None:
        if inbox.recipient != self._me or self._neighbourhood is None:
            raise ProtocolViolationError(f"share inbox for {inbox.recipient!r}")
        held = self._neighbourhood.open_inbox(inbox)
        self._require(len(held), "sent shares")
        assert self._own_shares is not None, "set together with the neighbourhood"
        self._held = {**held, self._me: self._own_shares}

    def mask_input(self, positions: np.ndarray, codes: np.ndarray) -> MaskedInput:
        """Lift `codes` (signed, b-bit; wider with noise shares) and mask them.

        Masks go at `positions`; a round with noise shares (`ring_bits` set)
        accepts any value of its ring.

        `positions` is the announced index set, in the order the values are
        sent; called once per round (a second vector under the same masks
        would reveal its difference from the first).

        Raises:
            InvalidUpdateError: bad positions or codes (the phase is unchanged,
                so the caller may retry with a correct vector).
        """
        pos = prg.check_positions(positions)
        if codes.shape != pos.shape:
            raise InvalidUpdateError(
                f"{codes.size} codes for {pos.size} positions: expected one each"
            )
        values = self._ring.lift(codes, self._setup.input_bits)
        return self._machine.run(
            ClientPhase.RECEIVED, ClientPhase.MASKED, lambda: self._mask(pos, values)
        )

    def _mask(self, positions: np.ndarray, values: np.ndarray) -> MaskedInput:
        assert self._neighbourhood is not None, "receive_shares ran, so share_keys did"
        # One keystream plan for every seed: its buffers are reused, so masking
        # allocates nothing the size of the model per neighbour.
        keystream = prg.Keystream(positions, self._ring)
        keystream.add(values, self._self_seed, 1)
        # Masks with the neighbours in my U2: exactly those whose shares I hold.
        peers = self._held.keys() - {self._me}
        self._neighbourhood.add_pairwise_masks(values, keystream, peers)
        self._ring.reduce_into(values)  # once: the adds wrapped mod 2^w
        return MaskedInput(self._me, values)

    def sign_survivors(self, survivor_list: SurvivorList) -> ConsistencySignature:
        """Sign the survivor list (U3) after checking it against what I saw.

        Signing the identical list again returns the same signature (a retry);
        any other list is refused.

        Raises:
            ConsistencyCheckError: a different list than the one signed before,
                a survivor that never shared with me, or a missing or bad
                coordinator signature.
            TooFewClientsError: fewer than t - 1 of my neighbours survived.
        """
        if self._signed is not None and survivor_list.survivors == self._signed:
            return ConsistencySignature(self._me, self._signature)
        if self._signed is not None:
            self._machine.abort()
            raise ConsistencyCheckError(
                "asked to sign a second, different survivor list for this round"
            )
        return self._machine.run(
            ClientPhase.MASKED, ClientPhase.SIGNED, lambda: self._sign(survivor_list)
        )

    def _sign(self, survivor_list: SurvivorList) -> ConsistencySignature:
        survivors = survivor_list.survivors
        consistency.check_survivor_list(
            self._setup, self._me, survivor_list, self._coordinator
        )
        alive = self._neighbours.intersection(survivors)
        if not alive <= self._held.keys():
            raise ConsistencyCheckError(
                f"survivor list names {sorted(alive - self._held.keys())}, who never "
                "shared keys with me"
            )
        self._require(len(alive), "survived")
        message = consistency.client_message(self._setup, survivors)
        self._signed, self._signature = survivors, self._signer.sign(message)
        return ConsistencySignature(self._me, self._signature)

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Reveal, per neighbour, the one share the signed survivor list calls for.

        Raises:
            ConsistencyCheckError: the request's list differs from the signed
                one, a signature is invalid or not from a surviving neighbour,
                or fewer than t clients (me included) confirmed it.
            ProtocolViolationError: called again (nothing is revealed twice).
        """
        return self._machine.run(
            ClientPhase.SIGNED, ClientPhase.DONE, lambda: self._unmask(request)
        )

    def _unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        if request.recipient != self._me or request.survivors != self._signed:
            raise ConsistencyCheckError(
                "unmask request carries a survivor list other than the one I signed"
            )
        signed = self._signed
        consistency.require_confirmations(
            self._setup,
            signed,
            request.signatures,
            self._neighbours.intersection(signed),
            self._peers,
            self._threshold - 1,  # my own confirmation is the t-th
        )
        survived = set(self._signed)  # includes me: I checked before signing
        mask_keys, seeds = [], []
        for peer, pair in sorted(self._held.items()):
            if peer in survived:
                self._reveal(peer, "self_seed")
                seeds.append((peer, pair.self_seed))
            else:
                self._reveal(peer, "mask_key")
                mask_keys.append((peer, pair.mask_key))
        return UnmaskResponse(self._me, tuple(mask_keys), tuple(seeds))

    def _reveal(self, peer: str, kind: str) -> None:
        """Record a reveal; the second kind for one peer is never allowed."""
        if self._revealed.setdefault(peer, kind) != kind:
            raise ProtocolViolationError(
                f"refusing to reveal both shares of {peer}: that would unmask it"
            )
