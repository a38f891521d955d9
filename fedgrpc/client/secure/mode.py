"""Secure aggregation as a mode the client holds, not a kind of client.

`DiLoCoClient` makes a `SecureMode` when a Join announces secure
aggregation and keeps it for its lifetime, across reconnects: the mode owns
the masked-push encoder (`SecureUpdates`, with the error-feedback residual
that must survive a new link) and gives every new link a fresh
`SecureParticipant` for that link's Session (`attach`, the link's
`connection.link.Attach` hook). The plain path holds no secure object.
"""

from __future__ import annotations

from fedgrpc.client.connection.join import Federation
from fedgrpc.client.connection.link import CoordinatorLink
from fedgrpc.client.secure.participant import SecureParticipant
from fedgrpc.client.secure.updates import SecureUpdates


class SecureMode:
    """The masked pushes and the current link's SecAgg participant."""

    def __init__(
        self,
        federation: Federation,
        num_coordinates: int,
        wait_s: float,
        max_update_norm: float = 0.0,
        *,
        min_noise_multiplier: float = 0.0,
    ):
        """Build the encoder for `federation`'s codec.

        `num_coordinates` is the model's size (announced positions must lie
        below it); `wait_s` bounds how long a push waits for its round's
        key exchange (`ClientConfig.rpc_timeout_s`); `max_update_norm` > 0
        clips each masked update's L2 norm (`ClientConfig.max_update_norm`);
        `min_noise_multiplier` > 0 refuses rounds with less distributed-DP
        noise (`ClientConfig.min_dp_noise_multiplier`).
        """
        self._num_coordinates = num_coordinates
        self._min_noise_multiplier = min_noise_multiplier
        self.participant: SecureParticipant | None = None
        """The current link's participant; replaced by each `attach`."""
        self.updates = SecureUpdates(
            federation.codec,
            num_coordinates,
            federation.chunk_bytes,
            lambda: self.participant,  # the current link's, after reconnects too
            feedback_decay=federation.feedback_decay,
            wait_s=wait_s,
            max_update_norm=max_update_norm,
        )

    def attach(
        self, link: CoordinatorLink, federation: Federation
    ) -> SecureParticipant | None:
        """A participant for `link`'s Session (None if its rounds are not masked).

        Runs on the background loop, after Join and before the Session
        starts, so the first setup is not missed.
        """
        if not federation.secure_aggregation:
            self.participant = None  # pushes then go as "not taking part"
            return None
        self.participant = SecureParticipant(
            link.identity.key,
            link.credentials.client_id,
            federation,
            link.send_event,
            self._num_coordinates,
            min_noise_multiplier=self._min_noise_multiplier,
        )
        return self.participant
