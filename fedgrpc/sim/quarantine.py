"""How well trust scores caught the attackers: `AttackFigures.quarantine`.

Read from the coordinator's final status (`Coordinator.status()`): each
participant's trust score and standing, and the round whose score first put
it in hard quarantine (`Standing.first_quarantined_round`). Against the true
attackers, "hard-quarantined by round W" is a detector of Byzantine clients:

    precision = |caught ∩ attackers| / |caught|      (None when nobody is caught)
    recall    = |caught ∩ attackers| / |attackers|

with caught = participants first quarantined in rounds 1..W (W = 5 by
default: a detector that needs the whole run is of little use).
"""

from __future__ import annotations

from typing import Any

from fedgrpc.domain.status import ClientSummary, CoordinatorStatus

CAUGHT_WITHIN_ROUNDS = 5
"""W: a quarantine counts as catching its client if it began by round W."""


def quarantine_figures(
    status: CoordinatorStatus,
    joined: dict[int, str],
    attackers: set[int],
    within: int = CAUGHT_WITHIN_ROUNDS,
) -> dict[str, Any]:
    """Per participant trust and quarantine, and the detector's precision/recall.

    `joined`: participant index -> the client id it joined as; a participant
    the status does not know (never joined) reads as never scored.
    """
    by_id = {c.client_id: c for c in status.clients}
    rows = [
        _row(index, by_id.get(client_id), index in attackers)
        for index, client_id in sorted(joined.items())
    ]
    caught = {
        row["index"]
        for row in rows
        if row["first_quarantined_round"] is not None
        and row["first_quarantined_round"] <= within
    }
    hits = len(caught & attackers)
    return {
        "within_rounds": within,
        "caught": sorted(caught),
        "precision": hits / len(caught) if caught else None,
        "recall": hits / len(attackers) if attackers else None,
        "clients": rows,
    }


def _row(index: int, client: ClientSummary | None, attacker: bool) -> dict[str, Any]:
    if client is None:
        client = ClientSummary("", "", False, 0, 0, 0, 0.0)
    return {
        "index": index,
        "attacker": attacker,
        "trust_score": client.trust_score,
        "trust_state": client.trust_state,
        "first_quarantined_round": client.first_quarantined_round or None,
        "excluded_until_round": client.excluded_until_round,
    }
