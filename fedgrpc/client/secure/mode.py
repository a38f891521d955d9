"""Secure aggregation as a mode the client holds, not a kind of client.

`DiLoCoClient` makes a `SecureMode` when a Join announces secure
aggregation and keeps it for its lifetime, across reconnects: the mode owns
the masked-push encoder (`SecureUpdates`, with the error-feedback residual
that must survive a new link) and gives every new link a fresh
`SecureParticipant` for that link's Session (`attach`, the link's
`connection.link.Attach` hook). The plain path holds no secure object.

Parameter shards (`client.sharded`): masks are addressed by position, so
each shard runs its own masked round over its own range. The mode then
holds one encoder per range (`range_updates`, each with its own residual,
as compressed ranges do) and one participant per shard link, all with the
same identity key; shard k's link gets slot k (`Federation.shard_index`).
"""

from __future__ import annotations

import functools
import itertools

from fedgrpc.client.connection.join import Federation
from fedgrpc.client.connection.link import CoordinatorLink
from fedgrpc.client.secure.participant import SecureParticipant
from fedgrpc.client.secure.updates import SecureUpdates


def range_sizes(federation: Federation, num_coordinates: int) -> tuple[int, ...]:
    """Coordinates each masked round covers: the whole model, or each shard's range."""
    bounds = federation.shard_bounds
    if len(bounds) < 2:
        return (num_coordinates,)
    return tuple(hi - lo for lo, hi in itertools.pairwise(bounds))


class SecureMode:
    """The masked pushes and each link's SecAgg participant."""

    def __init__(
        self,
        federation: Federation,
        num_coordinates: int,
        wait_s: float,
        max_update_norm: float = 0.0,
        *,
        min_noise_multiplier: float = 0.0,
    ):
        """Build the encoders for `federation`'s codec (one per shard range).

        `num_coordinates` is the model's size (announced positions must lie
        below it, or below the shard's range size); `wait_s` bounds how long
        a push waits for its round's key exchange
        (`ClientConfig.rpc_timeout_s`); `max_update_norm` > 0 clips each
        masked update's L2 norm (`ClientConfig.max_update_norm`; per range
        on shards); `min_noise_multiplier` > 0 refuses rounds with less
        distributed-DP noise (`ClientConfig.min_dp_noise_multiplier`).
        """
        self._sizes = range_sizes(federation, num_coordinates)
        self._min_noise_multiplier = min_noise_multiplier
        self.participants: list[SecureParticipant | None] = [None] * len(self._sizes)
        """Each shard link's current participant (one slot unsharded)."""
        self.range_updates = tuple(
            SecureUpdates(
                federation.codec,
                size,
                federation.chunk_bytes,
                functools.partial(self._participant_of, k),  # after reconnects too
                feedback_decay=federation.feedback_decay,
                wait_s=wait_s,
                max_update_norm=max_update_norm,
            )
            for k, size in enumerate(self._sizes)
        )
        """Masked-push encoder of each range (one: the whole model unsharded)."""

    def _participant_of(self, k: int) -> SecureParticipant | None:
        return self.participants[k]

    @property
    def updates(self) -> SecureUpdates:
        """The whole model's masked-push encoder (unsharded; shard 0's otherwise)."""
        return self.range_updates[0]

    @property
    def participant(self) -> SecureParticipant | None:
        """The current link's participant (unsharded; shard 0's otherwise)."""
        return self.participants[0]

    def attach(
        self, link: CoordinatorLink, federation: Federation
    ) -> SecureParticipant | None:
        """A participant for `link`'s Session (None if its rounds are not masked).

        Runs on the background loop, after Join and before the Session
        starts, so the first setup is not missed. A shard's link fills its
        shard's slot and checks setups against that range's size.
        """
        k = federation.shard_index if len(self._sizes) > 1 else 0
        if k >= len(self._sizes):
            return None  # not a shard of our map: `ShardedSync` refuses it
        if not federation.secure_aggregation:
            self.participants[k] = None  # pushes then go as "not taking part"
            return None
        participant = SecureParticipant(
            link.identity.key,
            link.credentials.client_id,
            federation,
            link.send_event,
            self._sizes[k],
            min_noise_multiplier=self._min_noise_multiplier,
        )
        self.participants[k] = participant
        return participant
