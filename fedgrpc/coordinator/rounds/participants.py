"""Who takes part in a round, and which base versions a client may push from.

When a round opens the Selector (`RoundStages.selector`) picks among the
connected clients, seeded by the round's nonce, so the choice is
reproducible by anyone holding the nonce and the candidate list. `None`
means selection `all`: every client may push, as before selection existed.

A client left out keeps training from the base version it last pulled. When
a later round selects it, its pseudo-gradient spans every round it sat out,
so the coordinator accepts that older base, but only from a client that was
not selected in between: a client selected in a round based on version v
either pushed into it (and pulled v+1 once applied) or let it pass, so a
later update from a base <= v is stale (FAILED_PRECONDITION, as before).

`Participation` keeps that state for the round engine, which holds one: the
published versions' SHA-256 an older base signs, who the open round
selected, and what each client was last selected on.
"""

from __future__ import annotations

from collections.abc import Iterable

from fedgrpc.coordinator.rounds.model_digests import ModelDigests
from fedgrpc.coordinator.rounds.records import OpenRound, PublishedModel
from fedgrpc.coordinator.rounds.registry import ClientRecord, ClientRegistry
from fedgrpc.coordinator.strategy.selection import Candidate, Selector
from fedgrpc.errors import WrongRoundError

BASE_SHAS_KEPT = 256
"""Published versions whose SHA-256 is kept, so a client that sat out up to
this many applied rounds can still sign its older base."""


def choose(
    selector: Selector, connected: Iterable[ClientRecord], current: OpenRound
) -> tuple[str, ...] | None:
    """The clients `current` takes updates from (None: everyone, selection `all`)."""
    if selector.name == "all":
        return None
    candidates = [
        Candidate(
            client_id=c.client_id,
            declared_samples=max(1, c.last_samples),
            last_loss=c.last_train_loss if c.updates_accepted else None,
            throughput_bps=c.throughput_bps,
            rounds_since_selected=(
                None
                if c.last_selected_round is None
                else current.round_id - c.last_selected_round
            ),
        )
        for c in connected
    ]
    return selector.select(candidates, current.nonce)


def is_selected(current: OpenRound, client_id: str) -> bool:
    """Whether `client_id` may push into `current`."""
    return current.selected is None or client_id in current.selected


def check_selected(current: OpenRound, client: ClientRecord) -> None:
    """Refuse an update from a client the round did not select.

    Raises:
        WrongRoundError: it was not selected (FAILED_PRECONDITION).
    """
    if not is_selected(current, client.client_id):
        raise WrongRoundError(
            f"client {client.client_id} was not selected for round "
            f"{current.round_id}; keep training and push when a round selects "
            "you (RoundStarted.not_selected is false)"
        )


def may_span(current: OpenRound, client: ClientRecord, base_version: int) -> bool:
    """True if an update from the older `base_version` spans rounds it sat out.

    Only under selection, only for a base the coordinator still knows, and
    only if no round the client was selected in was based on `base_version`
    or later (module docstring).
    """
    if current.selected is None or base_version >= current.base_version:
        return False
    last = client.last_selected_base
    return last is None or last < base_version


class Participation:
    """Who takes part in the open round, and the bases they may push from."""

    def __init__(self, selector: Selector, registry: ClientRegistry) -> None:
        """Choose with `selector` among `registry`'s connected clients."""
        self.selector = selector
        self.registry = registry
        self.base_digests: dict[int, ModelDigests] = {}
        """Digests of recent published versions (no bytes: `model_digests`):
        what an update spanning the rounds its client sat out signs as its base."""

    def check(self, current: OpenRound, client: ClientRecord, base: int) -> bool:
        """Refuse a client `current` did not select; True if `base` spans rounds.

        Raises:
            WrongRoundError: it was not selected (FAILED_PRECONDITION).
        """
        check_selected(current, client)
        return base in self.base_digests and may_span(current, client, base)

    def round_opened(
        self, current: OpenRound, published: PublishedModel | None
    ) -> None:
        """Remember the base `current` opened on, then choose its clients."""
        if published is not None:
            self.base_digests[current.base_version] = published.digests
            for old in [v for v in self.base_digests if v < current.base_version -
                        BASE_SHAS_KEPT]:  # fmt: skip
                del self.base_digests[old]
        self.reselect(current)

    def reselect(self, current: OpenRound, only_if_short: bool = False) -> None:
        """Let the Selector choose `current`'s clients among those connected.

        `only_if_short`: only while nothing has arrived for the round and
        fewer of its chosen clients are connected than it could have (it
        opened before enough clients connected, or chosen ones left), so a
        round neither hangs on clients that are gone nor runs short of k.
        Same nonce, so the choice stays reproducible from the candidates.
        """
        if only_if_short:
            connected = {c.client_id for c in self.registry.connected()}
            if current.selected is None or current.contributors or current.streaming:
                return
            k = getattr(self.selector, "clients_per_round", len(connected))
            if len(connected & set(current.selected)) >= min(k, len(connected)):
                return
        candidates = self.registry.connected()
        current.population = len(candidates)
        current.selected = choose(self.selector, candidates, current)

    def round_closed(self, closing: OpenRound) -> None:
        """Note what `closing`'s selected clients were selected on (`may_span`)."""
        for client_id in closing.selected or ():
            chosen = self.registry.get(client_id)
            if chosen is not None:
                chosen.last_selected_base = closing.base_version
                chosen.last_selected_round = closing.round_id
