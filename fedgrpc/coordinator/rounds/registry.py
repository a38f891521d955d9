"""Who has joined, who is connected, and what each client contributed.

Plain Python, no gRPC: the servicer authenticates every call through
`ClientRegistry.authenticate`, and the round engine asks it who is connected.

Registry exhaustion (issue 13, A.5): under open enrollment 1,023 throwaway
keys that joined and left filled `max_clients` in 1.4 s, and the checkpoint
kept them, so the lockout survived a restart. A record without standing
(`has_standing`: no accepted update, never excluded or down-weighted) that
is not connected holds nothing worth keeping, so:

- when the registry is full and a new key joins, the longest-idle such
  record is evicted to make room (`add`). Evicting on demand rather than on
  a timer after each disconnect: nothing changes while there is room (a
  client that reconnects keeps its id, logs stay readable), no timer or
  grace setting is needed, and under a flood the oldest idle records go
  first, so an honest client that just joined is the last to be pushed out,
  after `max_clients` newer joins; if it is, its next call gets
  UNAUTHENTICATED and it joins again, as after a coordinator restart.
  Connected clients, and any the open round counts or waits for, are never
  evicted: a flood of *connected* throwaway sessions is bounded by the
  stream limits, and `allowed_client_keys` is the answer for production;
- checkpoints keep only records with standing (`durable`), and the next id,
  so a restart neither restores the flood nor reissues an id.
"""

from __future__ import annotations

import hmac
import secrets
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from fedgrpc.crypto.keys import PublicKey
from fedgrpc.domain.requests import HashName, JoinInfo, RecordPrivacyClaim
from fedgrpc.errors import TooLargeError, UnknownClientError, WrongRoundError

SESSION_TOKEN_BYTES = 16


class HashRule(Protocol):
    """The run's hash rule (`CoordinatorConfig.update_hash_for`)."""

    def update_hash_for(self, offered: Collection[str]) -> HashName:
        """The hash a client that offered `offered` must use."""
        ...


@dataclass(slots=True)
class ClientRecord:
    """One joined client and its credit (samples contributed)."""

    client_id: str
    name: str
    session_token: bytes = field(repr=False)
    public_key: PublicKey | None = None
    """The key the client proved it holds at Join; its updates must verify under it."""
    connected: bool = False
    last_seen_s: float = 0.0
    updates_accepted: int = 0
    samples_contributed: int = 0
    bytes_received: int = 0
    """Payload bytes of its committed updates (saturating, like every counter)."""
    bytes_sent: int = 0
    """Model bytes it pulled (saturating)."""
    last_round: int = 0
    """Round of the client's last update committed to a round's sum."""
    last_applied_round: int = 0
    """Last round applied with an update of this client in its mean.

    With `last_round` it tells a client that lost a push's acknowledgement
    whether that update landed and counted, so it neither sends it twice
    nor keeps it in its residual as well (see JoinResponse).
    """
    last_train_loss: float = 0.0
    last_samples: int = 0
    """Samples its last committed update declared (a claim; selection bounds it)."""
    throughput_bps: float | None = None
    """Payload bytes / seconds of its last committed update, measured here."""
    last_applied_base: int | None = None
    """Base version of its newest update that was applied (None: none yet);
    buffered_async refuses a later update from that base or an older one."""
    last_selected_base: int | None = None
    """Base version of the last closed round that selected it (None: none did)."""
    last_selected_round: int | None = None
    """That round's id."""
    leaves_for_good: bool = False
    """It said its leave is final (a throwaway key): forget it once gone."""
    excluded_until_round: int = 0
    """Its updates for rounds before this one are refused and no round waits
    for it: one mechanism for every exclusion (a client that keeps breaking
    its uploads, hard quarantine). 0: never excluded."""
    exclusion_reason: str = ""
    """Why, in words the refused client reads (empty when not excluded)."""
    weight_factor: float = 1.0
    """Multiplies its aggregation weight: 1 normally, below 1 under soft
    quarantine (trust scores)."""
    record_dp: RecordPrivacyClaim | None = None
    """Record-level DP spend its last counted update claimed (None: none);
    its next claim may not go below it (`rounds.record_privacy`)."""
    hash_name: HashName | None = None
    """The hash Join negotiated with it for its update chains
    (`update_hash_for`). None: not joined in this process (a record restored
    from a checkpoint)."""
    model_hash_name: HashName | None = None
    """The hash of the model digests it pulls and signs as its base, by the
    same rule from JoinRequest.model_hashes (SHA-256 for a client from
    before that field, even one that hashes its updates with BLAKE3)."""

    def agree_hashes(self, rule: HashRule, join: JoinInfo) -> None:
        """Negotiate both of Join's hashes by the run's `update_hash` rule."""
        self.hash_name = rule.update_hash_for(join.supported_hashes)
        self.model_hash_name = rule.update_hash_for(join.model_hashes)

    @property
    def has_standing(self) -> bool:
        """True if the record holds something to keep.

        Credit, an exclusion or a reduced weight. Without any, the record
        may be evicted when idle and is not checkpointed (module docstring).
        """
        return (
            self.updates_accepted > 0
            or self.excluded_until_round > 0
            or self.weight_factor != 1.0
        )

    def excluded_from(self, round_id: int) -> bool:
        """True if its update for `round_id` must be refused."""
        return round_id < self.excluded_until_round


class ClientRegistry:
    """Joined clients by id. Ids are short and sequential for readable logs."""

    def __init__(self, max_clients: int) -> None:
        self.max_clients = max_clients
        self._clients: dict[str, ClientRecord] = {}
        self._by_key: dict[PublicKey, ClientRecord] = {}
        """Re-joins find their record in O(1): a cohort of thousands re-joining
        at once after a restart would otherwise cost O(n^2) key comparisons."""
        self.next_id = 1
        """Number of the next client id; checkpointed so ids are never reissued."""
        self._idle: OrderedDict[str, None] = OrderedDict()
        """Ids that were idle without standing when queued, longest first:
        eviction candidates, checked again when popped (`_evict_idle`)."""
        self.evicted = 0
        """Records evicted to make room for new keys (this process)."""
        self._leaving: set[str] = set()
        """Ids that left for good and wait for `forget_departed`."""
        self.forgotten = 0
        """Records dropped by `forget_departed` (they still joined this run)."""

    def add(
        self,
        name: str,
        now_s: float,
        public_key: PublicKey | None = None,
        in_use: Callable[[], Collection[str]] = frozenset,
    ) -> ClientRecord:
        """Register a new client with a fresh random session token.

        When full, the longest-idle record without standing makes room;
        `in_use` names ids that must stay (the open round's).

        Raises:
            TooLargeError: `max_clients` clients are connected or have standing.
        """
        if (
            len(self._clients) >= self.max_clients
            and self._evict_idle(in_use()) is None
        ):
            raise TooLargeError(
                f"the coordinator already has {self.max_clients} clients "
                "(max_clients) that are connected or have contributed; try "
                "again later, or ask the operator to raise max_clients"
            )
        client_id = f"c{self.next_id:05d}"
        self.next_id += 1
        record = ClientRecord(
            client_id=client_id,
            name=name or client_id,
            session_token=secrets.token_bytes(SESSION_TOKEN_BYTES),
            public_key=public_key,
            last_seen_s=now_s,
        )
        self._index(record)
        self._idle[client_id] = None  # no session yet: idle until it opens one
        return record

    def model_hashes(self, fallback: HashName) -> set[HashName]:
        """The hashes its connected clients need model digests under.

        Connected ones only: a client that left and comes back gets its
        digest lazily at its next pull (`model_digests`), so one SHA-256
        client that left long ago costs later versions nothing. `fallback`
        (the run's `update_hash`) when none is connected, so a version is
        always hashed once (status shows it).
        """
        clients = self._clients.values()
        hashes = {
            c.model_hash_name for c in clients if c.connected and c.model_hash_name
        }
        return hashes or {fallback}

    def _evict_idle(self, in_use: Collection[str]) -> ClientRecord | None:
        """Drop the longest-idle record without standing; None if there is none.

        Amortised O(1): a popped id that is no longer idle (connected since,
        or earned credit) is discarded, and `left` queues it again when it
        next goes idle. Ids in `in_use` are skipped and stay queued.
        """
        kept: list[str] = []
        evicted = None
        while self._idle:
            client_id, _ = self._idle.popitem(last=False)
            record = self._clients.get(client_id)
            if record is None or record.connected or record.has_standing:
                continue
            if client_id in in_use:
                kept.append(client_id)
                continue
            self._drop(record)
            self.evicted += 1
            evicted = record
            break
        for client_id in reversed(kept):  # back at the front, in their order
            self._idle[client_id] = None
            self._idle.move_to_end(client_id, last=False)
        return evicted

    def _drop(self, record: ClientRecord) -> None:
        del self._clients[record.client_id]
        self._leaving.discard(record.client_id)
        self._idle.pop(record.client_id, None)
        key = record.public_key
        if key is not None and self._by_key.get(key) is record:
            del self._by_key[key]

    def _index(self, record: ClientRecord) -> None:
        self._clients[record.client_id] = record
        if record.public_key is not None:
            self._by_key[record.public_key] = record

    def admit(
        self,
        name: str,
        now_s: float,
        public_key: PublicKey,
        in_use: Callable[[], Collection[str]] = frozenset,
    ) -> ClientRecord:
        """The client holding `public_key`: its earlier record, or a new one.

        A client that joins again (reconnecting, or after a restart from a
        checkpoint, which keeps keys but not session tokens) keeps its id and
        credit and gets a fresh session token; the old token stops working.

        Raises:
            TooLargeError: a new key, and no record can make room (`add`).
        """
        record = self._by_key.get(public_key)
        if record is None:
            return self.add(name, now_s, public_key, in_use)
        if record.client_id in self._idle:  # seen just now: the last to evict
            self._idle.move_to_end(record.client_id)
        record.session_token = secrets.token_bytes(SESSION_TOKEN_BYTES)
        record.name, record.last_seen_s = name or record.name, now_s
        record.leaves_for_good = False  # back after all: keep it after all
        self._leaving.discard(record.client_id)
        return record

    def authenticate(self, client_id: str, session_token: bytes) -> ClientRecord:
        """The record for `client_id` if `session_token` matches.

        Raises:
            WrongRoundError: no client id and no token at all: the call came
                before Join (FAILED_PRECONDITION).
            UnknownClientError: no such client, or the token does not match.
        """
        if not client_id and not session_token:
            raise WrongRoundError(
                "the call carries no client_id or session_token: it came before "
                "Join; call GetJoinChallenge and Join first and send what Join "
                "returns"
            )
        record = self._clients.get(client_id)
        if record is None or not hmac.compare_digest(
            record.session_token, session_token
        ):
            raise UnknownClientError(
                f"client {client_id!r} is not joined or its session token is wrong; "
                "call Join first and use the returned client_id and session_token"
            )
        return record

    def forget_departed(self, needed: set[str]) -> list[str]:
        """Forget clients that left for good, except those in `needed`; their ids.

        A final leave comes from a throwaway key that no one can use again,
        so the record would only sit in the status list and hold a
        `max_clients` slot. `needed`: ids the open round still counts (its
        contributors); forgetting one of those would let its key re-join
        under a new id and update that round twice.
        """
        gone = [
            client_id
            for client_id in self._leaving
            if client_id not in needed and not self._clients[client_id].connected
        ]
        self.forgotten += len(gone)
        for client_id in gone:
            self._drop(self._clients[client_id])
        return gone

    def left(self, record: ClientRecord) -> None:
        """`record`'s session ended; remember it if the leave was final.

        Only those are scanned by `forget_departed`, not every client: a
        burst of thousands of leaves must not cost O(clients) each.
        """
        if record.client_id not in self._clients:
            return
        if record.leaves_for_good:
            self._leaving.add(record.client_id)
        if not record.has_standing:
            self._idle[record.client_id] = None
            self._idle.move_to_end(record.client_id)

    def connected(self) -> list[ClientRecord]:
        """Clients whose Session stream is open."""
        return [c for c in self._clients.values() if c.connected]

    def restore(self, records: Iterable[ClientRecord], next_id: int = 0) -> None:
        """Re-admit checkpointed clients; new ids continue after them.

        And after `next_id`, so ids of records not checkpointed are not
        reissued to other keys.
        """
        highest = 0
        for record in records:
            self._index(record)
            if not record.has_standing:  # an older checkpoint kept everyone
                self._idle[record.client_id] = None
            digits = record.client_id.lstrip("c")
            highest = max(highest, int(digits) if digits.isdigit() else 0)
        self.next_id = max(highest + 1, next_id, self.next_id)

    def durable(self) -> list[ClientRecord]:
        """The records a checkpoint keeps: those with standing, in join order."""
        return [c for c in self._clients.values() if c.has_standing]

    def get(self, client_id: str) -> ClientRecord | None:
        """The record of `client_id`, if it ever joined."""
        return self._clients.get(client_id)

    def all(self) -> list[ClientRecord]:
        """Every client that ever joined, in join order."""
        return list(self._clients.values())
