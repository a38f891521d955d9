"""The leader's commit board: a round applies on every shard or on none.

Each shard's round over its own range closes on its own (its clients'
commits, its deadline). It then proposes what it committed; the leader
holds the proposals of a round until all N arrived and answers every shard
with one decision: APPLY if every shard saw the round as usable with the
same base version, the same clients and the same total weight (so the N
range means are slices of one mean), else SKIP. A shard that never
proposes (it crashed, or its round never closed) makes the first waiter's
timeout decide SKIP for everyone; a proposal arriving after a decision
gets that decision. So no shard applies a round another skipped.

Under secure aggregation each shard runs its own masked round over its
range, and its committed clients are that round's survivors (the clients
whose masked inputs were unmasked into its sum), so APPLY also means the
survivor sets agree: a client recovered as dropped on one shard but summed
on another makes the round skip everywhere.

A client that pushes to only some shards (or cuts one of its N streams)
would make every round skip, one client stalling the federation. So once
all N proposals are in, the leader also names the *partial* clients: in
some shard's set but not in every one (`partial_clients`). Each shard
counts that as one of the client's broken uploads (`ingest.breakers`):
after `max_broken_uploads` of them it is excluded on every shard alike,
and rounds apply again without it. A round missing a whole shard names
no one (a crashed shard is not its clients' doing). A client that drops
out of one shard's masked round is partial too, and counted the same way.

Plain asyncio, no gRPC: the servicer awaits `propose` on the event loop.
"""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from fedgrpc.log import get_logger

log = get_logger(__name__)
KEPT_ROUNDS = 64
"""Decided rounds remembered, for shards whose proposal comes late."""


@dataclass(frozen=True, slots=True)
class Proposal:
    """One shard's view of a closing round."""

    shard_index: int
    base_version: int
    clients: tuple[str, ...]
    """Committed clients' key fingerprints, sorted."""
    total_weight: float
    usable: bool


Decision = tuple[bool, str]
"""(apply, why not): (True, "") or (False, the reason for the logs)."""


def next_round_id(board: CommitBoard) -> int:
    """One past the newest round any shard proposed (see shard.proto)."""
    return max(board.rounds_seen, default=0) + 1


@dataclass
class _Round:
    decision: asyncio.Future[Decision]
    proposals: dict[int, Proposal] = field(default_factory=dict)
    partial: tuple[str, ...] = ()


class CommitBoard:
    """Collects proposals per round and decides once all N are in, or on timeout."""

    def __init__(self, count: int, timeout_s: float) -> None:
        self.count = count
        self.timeout_s = timeout_s
        self._rounds: OrderedDict[int, _Round] = OrderedDict()

    @property
    def rounds_seen(self) -> tuple[int, ...]:
        """Round ids proposed and remembered (the newest `KEPT_ROUNDS`)."""
        return tuple(self._rounds)

    async def propose(self, round_id: int, proposal: Proposal) -> Decision:
        """Record `proposal` for `round_id`; wait for the round's decision."""
        entry = self._entry(round_id)
        if entry.decision.done():
            return entry.decision.result()
        entry.proposals[proposal.shard_index] = proposal
        if len(entry.proposals) == self.count:
            entry.partial = partial_clients(entry.proposals.values())
            self._decide(round_id, entry, decide(entry.proposals.values()))
        try:
            return await asyncio.wait_for(
                asyncio.shield(entry.decision), self.timeout_s
            )
        except TimeoutError:
            missing = sorted(set(range(self.count)) - set(entry.proposals))
            self._decide(round_id, entry, (False, (
                f"shard(s) {', '.join(map(str, missing))} did not propose round "
                f"{round_id} within shard_commit_timeout_s = {self.timeout_s:g} s "
                "(crashed or unreachable)"
            )))  # fmt: skip
            return entry.decision.result()

    def partial(self, round_id: int) -> tuple[str, ...]:
        """Partial clients of `round_id`, sorted (see the module docstring)."""
        entry = self._rounds.get(round_id)
        return () if entry is None else entry.partial

    def _entry(self, round_id: int) -> _Round:
        entry = self._rounds.get(round_id)
        if entry is None:
            entry = _Round(asyncio.get_running_loop().create_future())
            self._rounds[round_id] = entry
            while len(self._rounds) > KEPT_ROUNDS:
                _, old = self._rounds.popitem(last=False)
                if not old.decision.done():
                    old.decision.set_result((False, "forgotten (too many rounds)"))
        return entry

    @staticmethod
    def _decide(round_id: int, entry: _Round, decision: Decision) -> None:
        if entry.decision.done():
            return
        entry.decision.set_result(decision)
        log.info(
            "shard_round_decided",
            round=round_id,
            apply=decision[0],
            reason=decision[1] or None,
            proposals=len(entry.proposals),
        )


def decide(proposals: Iterable[Proposal]) -> Decision:
    """APPLY iff every proposal is usable and they agree (see the module docstring)."""
    props = sorted(proposals, key=lambda p: p.shard_index)
    first = props[0]
    for p in props:
        if not p.usable:
            return (
                False,
                f"shard {p.shard_index} cannot apply the round "
                "(below quorum or voided)",
            )
        if p.base_version != first.base_version:
            return False, (
                f"shard {p.shard_index} is at base version {p.base_version}, "
                f"shard {first.shard_index} at {first.base_version}"
            )
        if p.clients != first.clients or not math.isclose(
            p.total_weight, first.total_weight, rel_tol=1e-9
        ):
            return False, (
                f"shard {p.shard_index} committed {len(p.clients)} client(s) "
                f"(weight {p.total_weight:g}), shard {first.shard_index} "
                f"{len(first.clients)} (weight {first.total_weight:g}): "
                "not the same set"
            )
    return True, ""


def partial_clients(proposals: Iterable[Proposal]) -> tuple[str, ...]:
    """Clients in some proposal's set but not in every one, sorted."""
    sets = [frozenset(p.clients) for p in proposals]
    if not sets:
        return ()
    every = sets[0].intersection(*sets[1:])
    return tuple(sorted(sets[0].union(*sets[1:]) - every))
