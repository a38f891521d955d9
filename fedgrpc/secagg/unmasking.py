"""The coordinator's last step: rebuild the needed secrets and strip the masks.

After unmasking, the coordinator holds the ring sum of the survivors' masked
vectors,

    sum_{u in U3} y_u = sum_{u in U3} x_u + sum_{u in U3} PRG(b_u)
                        + sum_{u in U3, v in N(u) and U2 minus U3} +-PRG(s_uv)

(pairwise masks between two survivors cancel: one added, one subtracted).
It rebuilds each survivor's self-mask seed b_u and each dropped client's
mask private key s_v from t shares, recomputes those masks at the index
set, and subtracts them. What remains is exactly sum x_u mod 2^m, which the
ring lowers to signed integers. At no point does it hold an unmasked
individual vector: every intermediate still carries the masks of all
survivors, which it removes only as a sum.

A rebuilt mask key is checked against the public key its owner advertised,
so t wrong shares that happen to interpolate to some value are caught too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass

import numpy as np

from fedgrpc.errors import InvalidUpdateError
from fedgrpc.secagg import agreement, prg, shamir
from fedgrpc.secagg.errors import InconsistentSharesError, TooFewClientsError
from fedgrpc.secagg.graph import NeighbourGraph
from fedgrpc.secagg.messages import AdvertiseKeys, RoundSetup, UnmaskResponse
from fedgrpc.secagg.ring import Ring, RingArray


@dataclass(frozen=True, slots=True)
class RoundView:
    """What the coordinator knows when it unmasks (fixed once U4 closes)."""

    setup: RoundSetup
    graph: NeighbourGraph
    ring: Ring
    positions: np.ndarray
    """The index set, uint64, in value order."""
    adverts: Mapping[str, AdvertiseKeys]
    """U1's advertised keys."""
    survivors: tuple[str, ...]
    """U3: whose masked input is in the sum."""
    dropped: tuple[str, ...]
    """U2 minus U3: shared keys, never delivered input."""


def check_response(
    response: UnmaskResponse,
    *,
    survived: Set[str],
    dropped: Set[str],
    holds_shares_of: Set[str],
    share_id: int,
) -> None:
    """A response reveals only what it may: each kind for the right owners.

    Mask-key shares only of dropped owners, self-seed shares only of
    survivors, each owner once, all of owners the responder holds shares of,
    all at the responder's own share id.

    Raises:
        InvalidUpdateError: otherwise (the coordinator drops that response).
    """
    client = response.client
    for owners, items in (
        (dropped, response.mask_key_shares),
        (survived, response.self_seed_shares),
    ):
        names = [owner for owner, _ in items]
        allowed = owners & holds_shares_of
        if len(set(names)) != len(names) or not set(names) <= allowed:
            raise InvalidUpdateError(f"{client} reveals shares of the wrong owners")
        if any(share.x != share_id for _, share in items):
            raise InvalidUpdateError(f"{client} reveals shares it does not hold")


def collect_shares(
    responses: Sequence[UnmaskResponse], owner_kind: str
) -> dict[str, list[shamir.Share]]:
    """Group revealed shares by owner: kind "mask_key" or "self_seed"."""
    grouped: dict[str, list[shamir.Share]] = {}
    for response in responses:
        items = (
            response.mask_key_shares
            if owner_kind == "mask_key"
            else response.self_seed_shares
        )
        for owner, share in items:
            grouped.setdefault(owner, []).append(share)
    return grouped


def _rebuild(owner: str, shares: Sequence[shamir.Share], threshold: int) -> bytes:
    if len(shares) < threshold:
        raise TooFewClientsError(
            f"{len(shares)} shares arrived for {owner}'s secret; {threshold} needed"
        )
    return shamir.reconstruct_secret(shares, threshold)


def remove_masks(
    view: RoundView, masked_sum: RingArray, responses: Sequence[UnmaskResponse]
) -> RingArray:
    """The survivors' exact ring sum: `masked_sum` minus every leftover mask.

    Raises:
        TooFewClientsError: fewer than t shares for some needed secret.
        InconsistentSharesError: shares that disagree, or a rebuilt mask key
            whose public key is not the one its owner advertised.
    """
    total = masked_sum.copy()
    t = view.graph.threshold
    # The clients' kernel: one plan, its buffers reused by every seed below.
    keystream = prg.Keystream(view.positions, view.ring)
    seeds = collect_shares(responses, "self_seed")
    for owner in view.survivors:
        keystream.add(total, _rebuild(owner, seeds.get(owner, []), t), -1)
    keys = collect_shares(responses, "mask_key")
    for owner in view.dropped:
        mask_key = _rebuild(owner, keys.get(owner, []), t)
        _remove_pairwise(view, keystream, total, owner, mask_key)
    view.ring.reduce_into(total)  # once: the subtractions wrapped mod 2^w
    return total


def _remove_pairwise(
    view: RoundView,
    keystream: prg.Keystream,
    total: RingArray,
    dropped: str,
    mask_key: bytes,
) -> None:
    """Subtract the masks each surviving neighbour u added for `dropped`."""
    private = agreement.private_from_bytes(mask_key)
    if agreement.public_bytes(private) != view.adverts[dropped].mask_key:
        raise InconsistentSharesError(
            f"the mask key rebuilt for {dropped} does not match its advertised key"
        )
    setup, survived = view.setup, set(view.survivors)
    dropped_id = setup.share_id(dropped)
    for peer in sorted(view.graph.of(dropped) & survived):
        peer_first = setup.share_id(peer) < dropped_id
        pair = agreement.PairContext(setup.session_id, setup.round_id, dropped, peer)
        seed = agreement.mask_seed(
            private, view.adverts[peer].mask_key, pair, me_first=not peer_first
        )
        # The survivor added +mask if it had the lower index, else -mask.
        keystream.add(total, seed, -1 if peer_first else 1)
