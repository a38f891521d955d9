"""Clients that keep breaking their uploads sit rounds out.

A broken upload (a stream cut after admission, a chunk or commit refused
mid-stream, a stream ended without its commit) costs a staged round nothing
(`aggregate.staged`), but it still costs the coordinator the bytes, hashes
and signature checks, and the round waits for its client until the
deadline. A client that does it `max_broken_uploads` times within
`broken_upload_window_rounds` rounds is excluded for `exclusion_rounds`
rounds with the one exclusion mechanism (`ClientRecord.excluded_until_round`):
its headers are refused with FAILED_PRECONDITION, naming why and until when,
and no round waits for it.

Only the client's failures count: not a push cut because the round closed
under it (the coordinator's decision) or because the coordinator is stopping.

The exclusion itself (round and reason) is checkpointed with the client's
record and survives a restart; the count of recent breaks is not (a restart
forgives breaks that did not yet lead to an exclusion).
"""

from __future__ import annotations

from collections import deque

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.rounds.registry import ClientRecord
from fedgrpc.log import get_logger

log = get_logger(__name__)
MAX_TRACKED_CLIENTS = 4096
"""Clients whose recent breaks are remembered; the oldest entry goes first,
so throwaway keys that each break once cannot grow this without bound."""


class BrokenUploads:
    """Counts each client's recent broken uploads; excludes a repeat breaker."""

    def __init__(self, config: CoordinatorConfig) -> None:
        self.max_broken = config.max_broken_uploads
        self.window_rounds = config.broken_upload_window_rounds
        self.exclusion_rounds = config.exclusion_rounds
        self._rounds: dict[str, deque[int]] = {}
        """Per client, the rounds of its last `max_broken` broken uploads."""
        self.exclusions = 0
        """Clients excluded so far by this rule (for metrics and tests)."""

    def record(self, client: ClientRecord, round_id: int, reason: str) -> bool:
        """Count one broken upload of `client` in `round_id`; True if now excluded.

        Excluded from `round_id` itself (so it cannot retry at once) through
        round `round_id + exclusion_rounds`.
        """
        if self.max_broken == 0:
            return False
        recent = self._rounds.pop(client.client_id, None)
        if recent is None:
            recent = deque(maxlen=self.max_broken)
        self._rounds[client.client_id] = recent  # now the newest entry
        while len(self._rounds) > MAX_TRACKED_CLIENTS:
            del self._rounds[next(iter(self._rounds))]
        recent.append(round_id)
        log.info(
            "upload_broken",
            client=client.client_id,
            round=round_id,
            broken_in_window=sum(r > round_id - self.window_rounds for r in recent),
            reason=reason,
        )
        if len(recent) < self.max_broken or recent[0] <= round_id - self.window_rounds:
            return False
        recent.clear()
        until = round_id + 1 + self.exclusion_rounds
        client.excluded_until_round = max(client.excluded_until_round, until)
        client.exclusion_reason = (
            f"{self.max_broken} broken uploads within "
            f"{self.window_rounds} rounds (max_broken_uploads); the last: {reason}"
        )
        self.exclusions += 1
        log.warning(
            "client_excluded",
            client=client.client_id,
            round=round_id,
            excluded_until_round=client.excluded_until_round,
            reason=client.exclusion_reason,
        )
        return True
