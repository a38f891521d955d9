"""A client's verified neighbours and what it derives with each of them.

Split out of `client_round` (which keeps the phase order and the policy) so
each step reads on its own: verify each neighbour's advertisement against
its identity, Shamir-share both secrets among itself and the neighbours
that advertised (k + 1 holders), seal each neighbour's pair to it, open the
envelopes the neighbours sealed to this client, and derive the pairwise
mask seeds.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Set
from dataclasses import dataclass

from fedgrpc.errors import BadSignatureError
from fedgrpc.secagg import agreement, prg, sealing, shamir
from fedgrpc.secagg.agreement import PairContext, RandomBytes, RoundKeys
from fedgrpc.secagg.agreement import SignatureVerifier as Verifier
from fedgrpc.secagg.errors import (
    PeerSignatureError,
    ProtocolViolationError,
    TamperedShareError,
)
from fedgrpc.secagg.messages import (
    AdvertiseKeys,
    KeyDirectory,
    RoundSetup,
    SealedShare,
    ShareInbox,
    SharePackage,
)
from fedgrpc.secagg.ring import RingArray


def verify_advertisement(
    setup: RoundSetup, advert: AdvertiseKeys, verifier: Verifier | None
) -> None:
    """Check a peer's round keys carry its identity's signature.

    Raises:
        PeerSignatureError: no identity known for the peer, or the signature
            fails (the coordinator may have swapped the keys).
    """
    try:
        if verifier is None:
            raise BadSignatureError(f"no identity key known for {advert.client}")
        verifier.verify(advert.signature, advert.signed_message(setup))
    except BadSignatureError as exc:
        raise PeerSignatureError(
            f"the round keys of {advert.client} are not signed by its identity: "
            "refusing to share with keys the coordinator may have swapped"
        ) from exc


@dataclass(frozen=True, slots=True)
class Neighbours:
    """One client's neighbours in U1 (keys verified) and its own round keys."""

    setup: RoundSetup
    me: str
    keys: RoundKeys
    peers: Mapping[str, AdvertiseKeys]
    """Neighbours in U1 -> their advertisements (the caller verifies them)."""

    @classmethod
    def from_directory(
        cls,
        setup: RoundSetup,
        keys: RoundKeys,
        own: AdvertiseKeys,
        directory: KeyDirectory,
        neighbours: Collection[str],
    ) -> Neighbours:
        """The entries of `directory` that are my neighbours.

        Raises:
            ProtocolViolationError: a repeated or non-participant entry, or my
                own advertisement missing or altered.
        """
        entries: dict[str, AdvertiseKeys] = {}
        for advert in directory.advertisements:
            client = advert.client
            if client in entries or client not in setup.participants:
                raise ProtocolViolationError(
                    f"key directory repeats or invents client {client!r}"
                )
            entries[client] = advert
        if entries.get(own.client) != own:
            raise ProtocolViolationError("key directory lacks or alters my own keys")
        mine = {c: entries[c] for c in sorted(entries) if c in neighbours}
        return cls(setup, own.client, keys, mine)

    def _pair(self, peer: str) -> PairContext:
        return PairContext(self.setup.session_id, self.setup.round_id, self.me, peer)

    def _key(self, peer: str, sending: bool) -> bytes:
        public = self.peers[peer].encryption_key
        return agreement.share_key(
            self.keys.encryption, public, self._pair(peer), sending
        )

    def add_pairwise_masks(
        self, values: RingArray, keystream: prg.Keystream, peers: Set[str]
    ) -> None:
        """Add +-PRG(s_uv) for each of `peers` (in place, unreduced: mod 2^w)."""
        for peer in sorted(peers):
            seed, sign = self.mask_seed(peer)
            keystream.add(values, seed, sign)

    def mask_seed(self, peer: str) -> tuple[bytes, int]:
        """(pairwise seed with `peer`, sign): +1 if I have the lower index.

        The lower-index client adds the mask and the higher one subtracts
        it, so the two cancel in the sum.
        """
        first = self.setup.share_id(self.me) < self.setup.share_id(peer)
        public = self.peers[peer].mask_key
        seed = agreement.mask_seed(self.keys.mask, public, self._pair(peer), first)
        return seed, 1 if first else -1

    def _envelope(self, sender: str, recipient: str) -> sealing.Envelope:
        return sealing.Envelope(
            self.setup.session_id, self.setup.round_id, sender, recipient
        )

    def seal_shares(
        self, threshold: int, self_seed: bytes, random_bytes: RandomBytes
    ) -> tuple[SharePackage, sealing.SharePair]:
        """t-of-(k+1) shares of the mask key and self-mask seed.

        Returns the package (one sealed pair per neighbour) and the pair the
        client keeps for itself, the (k+1)-th holder.
        """
        holders = sorted({*self.peers, self.me})
        xs = [self.setup.share_id(holder) for holder in holders]
        mask_key = agreement.private_bytes(self.keys.mask)
        key_shares = shamir.split_secret(mask_key, xs, threshold, random_bytes)
        seed_shares = shamir.split_secret(self_seed, xs, threshold, random_bytes)
        pairs = {
            holder: sealing.SharePair(key_share, seed_share)
            for holder, key_share, seed_share in zip(
                holders, key_shares, seed_shares, strict=True
            )
        }
        sealed = tuple(
            SealedShare(
                self.me,
                peer,
                sealing.seal(
                    pairs[peer],
                    self._key(peer, sending=True),
                    self._envelope(self.me, peer),
                    random_bytes,
                ),
            )
            for peer in sorted(self.peers)
        )
        return SharePackage(self.me, sealed), pairs[self.me]

    def open_inbox(self, inbox: ShareInbox) -> dict[str, sealing.SharePair]:
        """Sender -> the shares it sealed to me; the senders are my view of U2.

        Raises:
            ProtocolViolationError: misaddressed, repeated or unknown senders.
            TamperedShareError: failed authentication, or a share id not mine.
        """
        my_id = self.setup.share_id(self.me)
        held: dict[str, sealing.SharePair] = {}
        for item in inbox.sealed:
            sender = item.sender
            if item.recipient != self.me or sender not in self.peers:
                raise ProtocolViolationError(f"unexpected share from {sender!r}")
            if sender in held:
                raise ProtocolViolationError(f"two share envelopes from {sender}")
            pair = sealing.open_sealed(
                item.envelope,
                self._key(sender, sending=False),
                self._envelope(sender, self.me),
            )
            if pair.mask_key.x != my_id:
                raise TamperedShareError(f"{sender} sealed a share for another holder")
            held[sender] = pair
        return held
