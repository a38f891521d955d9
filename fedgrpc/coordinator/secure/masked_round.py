"""One secure-aggregation round on the coordinator: phases, deadlines, masked buffers.

Glue between the round engine's open round and `secagg.ServerRound` (the
pure state machine). DESIGN.md step 4 and secure_aggregation.proto give the
phases; this module decides *when* each closes and keeps what the
coordinator may hold:

- per masked push in flight, a buffer of *masked* ring elements, filled chunk
  by chunk and handed to `ServerRound.receive_masked_input` only once the
  push's signed commit verified (then freed). A push that fails is simply
  forgotten: nothing of it reached the sum, so, unlike plain rounds, a
  broken push never voids the round; its client just counts as dropped;
- the running ring sum inside `ServerRound`;
- after unmasking, only the exact sum of the survivors' codes.

No individual unmasked vector ever exists here: the pairwise masks cancel
only in the sum, and self-masks are removed from the sum only.

A phase closes when every client still expected in it answered, or at its
deadline (`round_timeout_s` after it opened; the masked-input phase, like a
plain round, counts from its first commit, since clients train H steps
first). Clients whose Session ended, or whose message was refused, are
dropped from the round. Not thread-safe: driven from the event loop.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from fedgrpc.aggregate import StreamingSum
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.rounds.records import OpenRound, Ticket
from fedgrpc.coordinator.rounds.weighting import saturating_add
from fedgrpc.domain.requests import UpdateHeaderInfo
from fedgrpc.errors import WrongRoundError
from fedgrpc.secagg import (
    AdvertiseKeys,
    AggregateResult,
    ConsistencySignature,
    MaskedInput,
    SecAggParams,
    ServerPhase,
    ServerRound,
    SharePackage,
    Signer,
    UnmaskResponse,
    choose_neighbourhood,
)
from fedgrpc.wire.secagg import ClientPayload, SecureRoundSetup, ServerPayload

Outgoing = list[tuple[str, ServerPayload]]
"""(client id, message) pairs to put on Session streams."""


class SecureRound:
    """The coordinator's side of one masked round (see the module docstring)."""

    def __init__(
        self,
        announce: SecureRoundSetup,
        signer: Signer,
        clock: Callable[[], float],
        timeout_s: float,
    ) -> None:
        """Start the advertise phase of `announce` (already sent by the caller)."""
        self.announce = announce
        self.round_id = announce.setup.round_id
        self.ring = announce.setup.ring()
        self.server = ServerRound(
            announce.setup,
            announce.mask_positions(),  # the positions', then any chunk-norm tail
            identities=announce.identities,
            signer=signer,
        )
        self._clock, self._timeout_s = clock, timeout_s
        self.deadline_s: float | None = clock() + timeout_s
        self.members: set[str] = set(announce.setup.participants)
        """Who the open phase waits for (U1, U2, ... as phases close)."""
        self.received: set[str] = set()
        self.dropped: set[str] = set()
        self.buffers: dict[int, np.ndarray] = {}
        """Ticket id -> masked ring elements of a push still streaming."""
        self._buffer_owners: dict[int, str] = {}
        self.committed: dict[str, UpdateHeaderInfo] = {}
        self.bytes_received = 0
        self.finished = False
        """Recovered or aborted: nothing more happens in this round."""

    # -- messages ----------------------------------------------------------------

    def receive(self, client: str, payload: ClientPayload) -> None:
        """Hand one client message to the state machine (errors: module docstring)."""
        if client in self.dropped:
            raise WrongRoundError(
                f"{client} was dropped from secure round {self.round_id} (a refused "
                "message or a lost session); it can take part in the next round"
            )
        if isinstance(payload, AdvertiseKeys):
            self.server.receive_advertisement(payload)
        elif isinstance(payload, SharePackage):
            self.server.receive_share_package(payload)
        elif isinstance(payload, ConsistencySignature):
            self.server.receive_confirmation(payload)
        else:
            assert isinstance(payload, UnmaskResponse)  # ClientPayload's last member
            self.server.receive_unmask_response(payload)
        self.received.add(client)

    def drop(self, client: str) -> None:
        """`client` stops counting for this round (session lost, message refused)."""
        self.dropped.add(client)

    # -- masked pushes -------------------------------------------------------------

    def check_push(self, client: str, header: UpdateHeaderInfo) -> None:
        """Refuse a masked push that this round cannot take (FAILED_PRECONDITION).

        Raises:
            WrongRoundError: not in the masked-input phase, the client is not
                in U2 or was dropped, or it already pushed.
            InvalidUpdateError: the position count differs from the setup's.
        """
        if header.num_coordinates == 0:
            raise WrongRoundError(
                f"{client} is not taking part in secure round {self.round_id} "
                "(not a participant, or it left the round); it takes part from "
                "the next round"
            )
        phase = self.server.phase
        if phase is not ServerPhase.MASKED_INPUT:
            raise WrongRoundError(
                f"secure round {self.round_id} is in phase {phase.value}, not taking "
                "masked updates; push after the SecAggShareInbox of a round you "
                "take part in"
            )
        if client not in self.server.shared or client in self.dropped:
            raise WrongRoundError(
                f"{client} shared no keys in secure round {self.round_id} (joined "
                "late, or dropped); it takes part from the next round"
            )
        busy = any(t == client for t in self._buffer_owners.values())
        if client in self.committed or busy:
            raise WrongRoundError(
                f"{client} already sent its masked update for round {self.round_id}"
            )
        if header.num_coordinates != self.announce.vector_length:
            tail = self.announce.norm_tail
            raise WrongRoundError(
                f"masked update has {header.num_coordinates} values but round "
                f"{self.round_id} announced {self.announce.num_positions} positions"
                + (f" and {tail} chunk norms" if tail else "")
            )

    def open_buffer(self, ticket: Ticket) -> None:
        """Allocate the masked buffer of an admitted push."""
        self.buffers[ticket.ticket_id] = self.ring.zeros(self.announce.vector_length)
        self._buffer_owners[ticket.ticket_id] = ticket.client.client_id

    def add_chunk(self, ticket: Ticket, offset: int, values: np.ndarray) -> None:
        """Copy one checked chunk of masked ring elements into its buffer."""
        buffer = self.buffers.get(ticket.ticket_id)
        if buffer is None:
            raise WrongRoundError(
                f"secure round {self.round_id} no longer takes this update"
            )
        buffer[offset : offset + values.size] = values

    def commit(self, ticket: Ticket, nbytes: int) -> int:
        """The push's commit verified: add its masked vector to the ring sum."""
        buffer = self.buffers.pop(ticket.ticket_id, None)
        client = self._buffer_owners.pop(ticket.ticket_id, "")
        if buffer is None:
            raise WrongRoundError(
                f"secure round {self.round_id} closed its masked-input phase while "
                "this update streamed; it takes part from the next round"
            )
        self.server.receive_masked_input(MaskedInput(client, buffer))
        self.committed[client] = ticket.header
        self.bytes_received += nbytes
        if len(self.committed) == 1:  # the phase deadline starts now
            self.deadline_s = self._clock() + self._timeout_s
        return len(self.committed)

    def discard(self, ticket: Ticket) -> None:
        """A push failed before its commit: forget its buffer, drop its client."""
        if self.buffers.pop(ticket.ticket_id, None) is not None:
            self.drop(self._buffer_owners.pop(ticket.ticket_id, ""))

    # -- phases --------------------------------------------------------------------

    def ready_to_close(self) -> bool:
        """Everyone still expected answered, or the phase's deadline passed."""
        if self.finished or self.server.phase in (ServerPhase.DONE,
                                                  ServerPhase.ABORTED):  # fmt: skip
            return False
        masked = self.server.phase is ServerPhase.MASKED_INPUT
        answered = set(self.committed) if masked else self.received
        waiting = self.members - self.dropped - answered
        if not waiting and not self.buffers:
            return True
        now = self._clock()
        if self.deadline_s is None or now < self.deadline_s:
            return False
        # Pushes still streaming at the deadline get as long again (rounds/engine.py).
        return not self.buffers or now >= self.deadline_s + self._timeout_s

    def close_phase(self) -> Outgoing:
        """Close the open phase (not UNMASK: see `recover`); what to send whom.

        Raises:
            SecAggAbortError: a neighbourhood fell below the threshold.
        """
        server, out = self.server, Outgoing()
        phase = server.phase
        if phase is ServerPhase.ADVERTISE:
            directory = server.close_advertise()
            self._next({a.client for a in directory.advertisements})
            out += [(c, directory) for c in sorted(self.members)]
        elif phase is ServerPhase.SHARE_KEYS:
            server.close_share_keys()
            self._next(set(server.shared), deadline=False)
            out += [(c, server.share_inbox(c)) for c in server.shared]
        elif phase is ServerPhase.MASKED_INPUT:
            self.buffers.clear()  # late pushes: refused at commit
            self._buffer_owners.clear()
            survivors = server.close_masked_input()
            self._next(set(survivors.survivors))
            out += [(c, survivors) for c in survivors.survivors]
        elif phase is ServerPhase.CONSISTENCY:
            server.close_consistency()
            self._next(set(server.confirmed))
            out += [(c, server.unmask_request(c)) for c in server.confirmed]
        return out

    def recover(self) -> AggregateResult:
        """Unmask the sum (CPU-heavy: run on a worker thread). Ends the round."""
        self.finished = True
        return self.server.recover()

    def _next(self, members: set[str], *, deadline: bool = True) -> None:
        self.members, self.received = members, set()
        self.deadline_s = self._clock() + self._timeout_s if deadline else None

    def holdings(self) -> dict[str, np.ndarray]:
        """What this round holds in memory now, by name (for status and tests).

        Masked buffers of pushes in flight and the running ring sum: never a
        client's unmasked values.
        """
        held = {f"masked:{self._buffer_owners.get(t, t)}": b
                for t, b in self.buffers.items()}  # fmt: skip
        held["ring_sum"] = self.server._sum  # read-only view, for audit
        return held


def round_params(config: CoordinatorConfig, n: int) -> SecAggParams:
    """Explicit degree and threshold for n participants (sent in the setup).

    The configured degree is rounded down to even (Harary graphs need it)
    and ignored at or above n - 1 (complete graph). A configured threshold
    (count, or fraction of the k + 1 share holders) is clamped into the
    graph rule's secure range [floor((k + 1) / 2) + 1, k + 1].
    """
    degree = config.secagg_degree
    if degree is not None and degree < n - 1:
        degree = max(2, degree - degree % 2)
    else:
        degree = None
    k, t = choose_neighbourhood(n, SecAggParams(degree=degree))
    wanted = config.secagg_threshold
    if wanted is not None:
        count = int(np.ceil(wanted * (k + 1))) if wanted < 1 else int(wanted)
        t = min(k + 1, max((k + 1) // 2 + 1, count))
    return SecAggParams(degree=k, threshold=t)


def install_sum(
    current: OpenRound,
    rnd: SecureRound,
    result: AggregateResult,
    num_coordinates: int,
) -> None:
    """Make the recovered sum `current`'s round sum, one unit weight per survivor.

    The sum of codes times the round's scale is the sum of the survivors'
    (clipped, rounded) values; `StreamingSum.mean` then divides by their
    count: the plain mean (module docstring of `secure.mode`).
    """
    k = rnd.announce.num_positions  # beyond k: the chunk-norm tail, not values
    values = rnd.announce.scale.dequantise(result.total[:k])  # float32 per position
    positions = rnd.announce.positions
    if positions is None:
        dense = torch.from_numpy(values)
    else:
        dense = torch.zeros(num_coordinates)
        dense.numpy()[positions.astype(np.int64)] = values
    total = StreamingSum(dense)
    for _ in result.survivors:
        total.commit(1.0)
    current.total = total
    current.contributors = set(result.survivors)
    for client_id in result.survivors:
        header = rnd.committed[client_id]
        # The ring sum weighs every survivor 1 (num_samples is status only).
        current.samples = saturating_add(current.samples, header.num_samples)
        current.loss_weighted_sum += header.train_loss
        current.loss_weight += 1.0
    current.bytes_received += rnd.bytes_received
