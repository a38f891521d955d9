"""The client's side of secure aggregation: the key exchange on the Session stream.

Transparent to the training loop: when the coordinator announces
`secure_aggregation`, `DiLoCoClient` pushes through
`secure.updates.SecureUpdates` instead of the plain codec, and each link's
`SecureParticipant` (`secure.mode.SecureMode.attach`) answers the
coordinator's SecAgg events on the background loop while the user trains:

    SecAggRoundSetup    -> fresh X25519 keys (`secagg.ClientRound`), advertise
    SecAggKeyDirectory  -> verify each neighbour's keys against its identity,
                           seal Shamir shares to it
    SecAggShareInbox    -> open the shares; the round is ready for the push
    (sync point)        -> `SecureUpdates`: quantise e + delta with the
                           round's clip, mask, push as CODEC_SECAGG_RING
    SecAggSurvivorList  -> sign it (once; a second, different list aborts)
    SecAggUnmaskRequest -> reveal one share per neighbour

A refusal by the core (a forged peer key, a tampered share, too few peers),
less distributed-DP noise than `ClientConfig.min_dp_noise_multiplier`
asks (at the setup, and again over the survivors before signing their
list), or a setup that does not verify or decode (an index set that is
not exactly its count of increasing positions inside our model, a dense
round over another number of coordinates than our model or shard range),
ends this client's part in the round: it reveals nothing more, logs the reason
(`secagg_round_left`), and its push, if any, is refused as for a client
that is not a participant; the round goes on without it or aborts.

Runs on the client's background loop; not thread-safe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from fedgrpc._proto.v1 import coordinator_pb2 as pb
from fedgrpc.client.connection.join import Federation
from fedgrpc.crypto.keys import PrivateKey
from fedgrpc.errors import FedGrpcError, InvalidUpdateError
from fedgrpc.log import get_logger
from fedgrpc.privacy.discrete import discrete_noise_multiplier
from fedgrpc.secagg import (
    ClientRound,
    KeyDirectory,
    SecAggAbortError,
    ShareInbox,
    SurvivorList,
    UnmaskRequest,
)
from fedgrpc.wire.secagg import (
    ClientPayload,
    Rejection,
    SecureRoundSetup,
    ServerPayload,
    client_event,
    server_event_from_proto,
)

log = get_logger(__name__)


class InsufficientNoiseError(FedGrpcError):
    """A masked round's announced DP noise is below this client's floor."""


KEEP_ROUNDS = 4
"""Rounds whose state is kept (a round's unmask may arrive after the next opens)."""


@dataclass(eq=False)
class ClientSecureRound:
    """One round this client takes part in."""

    announce: SecureRoundSetup
    machine: ClientRound
    ready: bool = False
    """Shares received: the masked push may go."""
    error: str | None = None
    """Why this client left the round (a core refusal or a coordinator rejection)."""
    codes: np.ndarray | None = field(default=None, repr=False)
    """The codes this client masked (its own data; kept for audit and tests)."""


class SecureParticipant:
    """Answers one link's SecAgg events; one per `CoordinatorLink`.

    Implements `connection.session.SessionEvents`.
    """

    def __init__(
        self,
        identity: PrivateKey,
        client_id: str,
        federation: Federation,
        send: Callable[[pb.SessionRequest], None],
        num_coordinates: int,
        *,
        min_noise_multiplier: float = 0.0,
    ) -> None:
        self._identity, self._me, self._federation = identity, client_id, federation
        self._min_noise = min_noise_multiplier
        self._send, self._num_coordinates = send, num_coordinates
        self.rounds: dict[int, ClientSecureRound] = {}
        self.excluded: set[int] = set()
        """Rounds announced without this client, or whose setup it refused."""
        self.control_bytes = 0
        """Bytes of SecAgg messages sent on the Session (keys, shares, reveals)."""
        self._changed = asyncio.Condition()
        self._log = log.bind(client=client_id)

    async def handle(self, response: pb.SessionResponse) -> None:
        """One SecAgg SessionResponse; refusals end our part in its round."""
        kind = response.WhichOneof("event")
        if kind is None or not kind.startswith("secagg_"):
            return  # not a SecAgg event: not ours
        run_id = self._federation.run_id
        try:
            decoded = server_event_from_proto(response, run_id, self._num_coordinates)
        except FedGrpcError as exc:
            # Every SecAgg event names its round: leave that one, at once,
            # so the sync point does not wait for a round we cannot join.
            round_id = getattr(response, kind).round_id
            self._fail(round_id, str(exc), "malformed")
            async with self._changed:
                self._changed.notify_all()
            return
        if decoded is None:
            return
        round_id, payload = decoded
        try:
            self._step(round_id, payload)
        except (SecAggAbortError, FedGrpcError) as exc:
            self._fail(round_id, str(exc), getattr(exc, "reason", "refused"))
        async with self._changed:
            self._changed.notify_all()

    def _step(self, round_id: int, payload: ServerPayload) -> None:
        if isinstance(payload, SecureRoundSetup):
            self._start(payload)
            return
        current = self.rounds.get(round_id)
        if current is None or current.error is not None:
            return  # not ours, or we left it: reveal nothing
        machine = current.machine
        if isinstance(payload, KeyDirectory):
            self._reply(round_id, machine.share_keys(payload))
        elif isinstance(payload, ShareInbox):
            machine.receive_shares(payload)
            current.ready = True
        elif isinstance(payload, SurvivorList):
            self._check_noise(current.announce, len(payload.survivors))
            self._reply(round_id, machine.sign_survivors(payload))
        elif isinstance(payload, UnmaskRequest):
            self._reply(round_id, machine.unmask(payload))
        elif isinstance(payload, Rejection):
            self._fail(round_id, payload.message, f"rejected (code {payload.code})")

    def _start(self, announce: SecureRoundSetup) -> None:
        setup = announce.setup
        if self._me not in setup.participants:
            self.excluded = {*sorted(self.excluded)[-KEEP_ROUNDS:], setup.round_id}
            return
        if setup.round_id in self.rounds:
            return  # announced again (a reconnect elsewhere): keep our keys
        # A setup the coordinator did not sign is not its own (BadSignatureError).
        self._federation.coordinator_key.verify(
            announce.signature, announce.statement()
        )
        if (
            announce.positions is None
            and announce.num_positions != self._num_coordinates
        ):
            raise InvalidUpdateError(  # a shard announcing another range's round
                f"the dense setup announces {announce.num_positions} positions, but "
                f"this client's model (or shard range) has {self._num_coordinates} "
                "coordinates: a round over another range is refused"
            )
        self._check_noise(announce, len(setup.participants))
        machine = ClientRound(
            setup,
            self._me,
            self._identity,
            announce.identities,
            coordinator=self._federation.coordinator_key,
        )
        self.rounds[setup.round_id] = ClientSecureRound(announce, machine)
        for old in sorted(self.rounds)[:-KEEP_ROUNDS]:
            del self.rounds[old]
        self._reply(setup.round_id, machine.advertise())
        self._log.debug(
            "secagg_round_joined",
            round=setup.round_id,
            n_clients=len(setup.participants),
        )

    def _check_noise(self, announce: SecureRoundSetup, shares: int) -> None:
        """Refuse a round whose noise, over `shares` clients, is below our floor.

        z_eff is what the coordinator's own accounting uses
        (`privacy.discrete.discrete_noise_multiplier`) from the announced
        Δ₂ and sigma_c: a coordinator announcing less noise than it promised
        cannot get this client's masked update, nor (with the survivors
        known) the shares that unmask a sum holding it.

        Raises:
            InsufficientNoiseError: below `min_dp_noise_multiplier`.
        """
        if self._min_noise <= 0:
            return
        noise = announce.noise
        if noise is None:
            raise InsufficientNoiseError(
                "the coordinator announced a masked round without distributed-DP "
                f"noise, but this client requires min_dp_noise_multiplier = "
                f"{self._min_noise:g}"
            )
        z = discrete_noise_multiplier(
            noise.norm_bound, announce.num_positions, noise.client_std, shares
        )
        if z < self._min_noise:
            raise InsufficientNoiseError(
                f"the round's noise over {shares} clients is a noise multiplier "
                f"of {z:.4g}, below this client's min_dp_noise_multiplier = "
                f"{self._min_noise:g}"
            )

    def _reply(self, round_id: int, payload: ClientPayload) -> None:
        request = client_event(round_id, payload)
        self.control_bytes += request.ByteSize()
        self._send(request)

    def _fail(self, round_id: int, reason: str, kind: object) -> None:
        current = self.rounds.get(round_id)
        if current is None:  # a refused setup: as if announced without us
            self.excluded = {*sorted(self.excluded)[-KEEP_ROUNDS:], round_id}
        elif current.error is None:
            current.error = reason
        self._log.warning(
            "secagg_round_left", round=round_id, kind=str(kind), reason=reason
        )

    async def wait_ready(
        self, round_id: int, timeout_s: float
    ) -> ClientSecureRound | None:
        """The round once our shares arrived, or None (not a participant, failed).

        Waits at most `timeout_s`: by a sync point the exchange has usually
        long finished, since it runs while the client trains.
        """

        def settled() -> bool:
            current = self.rounds.get(round_id)
            if current is None:
                return round_id in self.excluded
            return current.ready or current.error is not None

        try:
            async with asyncio.timeout(timeout_s), self._changed:
                await self._changed.wait_for(settled)
        except TimeoutError:
            pass
        return self.rounds.get(round_id)
