"""A client of a parameter-sharded federation: N ranges, N coordinators, in parallel.

With `shard = "I/N"` on the coordinators (`config.shards`), Join says so:
every shard answers with the same map (`JoinResponse.shard_peers`,
`shard_bounds`). The client joins the remaining shards with the same
identity, then each sync point is the plain DiLoCo one (`sync.SyncPoint`)
done per range: wait for every shard's round, push range k of the
pseudo-gradient to shard k (in parallel, one thread per shard), wait for
every close, and if the rounds applied pull range k from shard k into the
one downlink buffer and load it whole. Each shard's SHA-256 covers its own
range (it holds no other range current), so each pull is checked alone and
each update names its shard's digest as its base.

The shards apply a round on all of them or none (their commit protocol,
`coordinator.shards`), so the N outcomes agree; an update one shard refused
makes the sets differ, and the round then skips everywhere. Compressed
updates keep one encoder (and error-feedback residual) per range, as
streaming fragments do.

Secure aggregation: each shard runs its own masked round over its own
range (masks are addressed by position), so every shard link gets its own
participant through the client's `attach` hook (same identity key) and
range k is pushed through its own masked encoder (`range_encoders`). The shards'
commit vote compares the survivors of those N rounds: a client unmasked
into one shard's sum and dropped from another's skips the round on all.

A fault on any shard's link goes to `Reconnector` like any other: `resume`
re-joins every shard and carries on from what their model versions say.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from collections.abc import Callable, Sequence
from typing import TypeVar

from fedgrpc.client.compressed import codec_encoder
from fedgrpc.client.connection import Connection
from fedgrpc.client.connection.join import Federation, JoinSettings
from fedgrpc.client.connection.link import Attach
from fedgrpc.client.connection.push import UpdateEncoder
from fedgrpc.client.connection.round_tracker import RoundStart, RunFinished, StaleBase
from fedgrpc.client.fragment_weights import rebase_fragment
from fedgrpc.client.streaming import StreamingSync
from fedgrpc.client.sync import SyncOutcome, SyncPoint
from fedgrpc.client.weights import LocalRun
from fedgrpc.compress.norm_clip import clip_to_norm
from fedgrpc.config import ClientConfig
from fedgrpc.domain.shards import shard_ranges
from fedgrpc.errors import IncompatibleClientError, WrongRoundError
from fedgrpc.log import get_logger

log = get_logger(__name__)
T = TypeVar("T")


class ShardedSync(SyncPoint):
    """Sync points over N shard connections (see the module docstring)."""

    def __init__(
        self,
        connection: Connection,
        federation: Federation,
        local: LocalRun,
        config: ClientConfig,
        settings: JoinSettings,
        *,
        attach: Attach | None = None,
        range_encoders: Sequence[UpdateEncoder] = (),
    ) -> None:
        """Join every other shard the map names; check they agree on it.

        `attach` is given to every other shard's link (the client's round
        mode: with secure aggregation, a participant per shard);
        `range_encoders`, one per shard, replace the codec's (secure
        aggregation's masked pushes, `SecureMode.range_updates`).

        Raises:
            IncompatibleClientError: a map that does not fit the model, or a
                shard answering with another map, index or run.
            CoordinatorUnavailableError: a shard is not reachable.
        """
        super().__init__(connection, federation, local, config)
        try:
            self.ranges = shard_ranges(local.spec, federation.shard_bounds)
        except ValueError as exc:
            raise IncompatibleClientError(str(exc)) from exc
        count = len(self.ranges)
        if len(federation.shard_peers) != count:
            raise IncompatibleClientError(
                f"the coordinator announced {len(federation.shard_peers)} shard "
                f"addresses for {count} shard ranges"
            )
        self.links: list[Connection] = []
        self.federations: list[Federation] = []
        try:
            for k, peer in enumerate(federation.shard_peers):
                link, joined = connection, federation
                if k != federation.shard_index:
                    link = Connection(  # one identity: the same client everywhere
                        peer, local.spec, settings, config, attach=attach,
                        identity=connection.link.identity,
                    )  # fmt: skip
                    self.links.append(link)
                    joined = link.join()
                self._check_shard(k, peer, joined)
                self.federations.append(joined)
        except BaseException:
            for link in self.links:
                link.close()
            raise
        others = iter(self.links)
        self.links = [
            connection if k == federation.shard_index else next(others)
            for k in range(count)
        ]
        self.base_shas = [b""] * count
        self.encoders: list[UpdateEncoder | None] = (
            list(range_encoders)
            if len(range_encoders) == count
            else [codec_encoder(federation, config, r.num_coordinates)
                  for r in self.ranges]
        )  # fmt: skip
        self._pool = concurrent.futures.ThreadPoolExecutor(
            count, thread_name_prefix="fedgrpc-shard"
        )
        self._log.info("shards_joined", shards=count, peers=",".join(self.peers))

    @property
    def peers(self) -> tuple[str, ...]:
        """Every shard's address, in shard order."""
        return self.federation.shard_peers

    def _check_shard(self, k: int, peer: str, joined: Federation) -> None:
        first = self.federation
        if (
            joined.shard_index != k
            or joined.shard_bounds != first.shard_bounds
            or joined.shard_peers != first.shard_peers
            or joined.secure_aggregation != first.secure_aggregation
        ):
            raise IncompatibleClientError(
                f"shard {k} at {peer} answered Join as shard {joined.shard_index} "
                f"with bounds {list(joined.shard_bounds)} and peers "
                f"{list(joined.shard_peers)} (secure_aggregation "
                f"{joined.secure_aggregation}); shard {first.shard_index} "
                f"announced bounds {list(first.shard_bounds)} and peers "
                f"{list(first.shard_peers)} (secure_aggregation "
                f"{first.secure_aggregation}): the shards must be started with "
                "the same shard_peers, model and settings"
            )

    def _each(self, work: Callable[[int], T]) -> list[T]:
        """`work(k)` for every shard at once; the first failure is raised."""
        futures = [self._pool.submit(work, k) for k in range(len(self.links))]
        return [future.result() for future in futures]

    # -- the model -------------------------------------------------------------

    def seed(self) -> None:
        """Upload each shard whose Join asked for them its range of our weights."""
        weights = self._local.local_weights()
        count = len(self.links)
        for k, (link, joined) in enumerate(
            zip(self.links, self.federations, strict=True)
        ):
            if joined.seed_model:
                r = self.ranges[k]
                part = weights[r.coord_start : r.coord_stop]
                seeded = link.seed(part, self._chunk_bytes, (k, count))
                if seeded is not None:
                    self.bytes_sent += seeded.bytes_sent
                self.federations[k] = dataclasses.replace(joined, seed_model=False)

    def pull_and_load(self, min_version: int, wait_s: float) -> None:
        """Pull every shard's range of version >= `min_version`; load the whole."""
        if min_version == 0:
            self.seed()  # shards whose Join asked, the primary's aside
        local = self._local
        local.downlink_version = None  # ranges from N shards: no steps

        def pull(k: int) -> tuple[int, bytes, int]:
            r = self.ranges[k]
            pulled = self.links[k].pull(
                min_version, local.downlink, wait_s, self._chunk_bytes,
                (r.byte_start, r.byte_stop),
            )  # fmt: skip
            return pulled.version, pulled.sha256, pulled.bytes_received

        results = self._each(pull)
        versions = {version for version, _, _ in results}
        if len(versions) != 1:
            raise IncompatibleClientError(
                f"the shards serve different model versions {sorted(versions)} "
                "(one restarted without its checkpoint?); every shard must "
                "resume from its own checkpoint_dir"
            )
        version = versions.pop()
        local.load(local.downlink, version)
        self.base_shas = [sha for _, sha, _ in results]
        self.bytes_received += sum(n for _, _, n in results)
        self.sat_out = False
        self._log.info("model_loaded", version=version, shards=len(results))

    # -- a sync point ----------------------------------------------------------

    def run(self) -> SyncOutcome:
        """Wait for every shard's round, push N ranges, wait, pull if applied."""
        if self.finished:
            return "finished"
        wait_s = self._config.round_wait_s
        rounds = self._open_rounds(wait_s)
        if isinstance(rounds, str):
            return rounds
        delta = self._local.pseudo_gradient()
        bound = self._config.max_update_norm
        if bound and self.encoders[0] is None:
            clip_to_norm(delta.numpy(), bound)  # the whole update's norm
        compute_s = self._compute_s

        def push(k: int) -> bool:
            r, start = self.ranges[k], rounds[k]
            meta = dataclasses.replace(
                self.update_meta(start.round_id, start.nonce, compute_s),
                base_sha256=self.base_shas[k],
                shard=(k, len(self.ranges)),
            )
            part = delta[r.coord_start : r.coord_stop]
            try:
                result = self.links[k].push(
                    meta, part, self._chunk_bytes, self.encoders[k]
                )
            except WrongRoundError as exc:
                self._log.warning("update_refused", shard=k, reason=str(exc))
                return False
            self.bytes_sent += result.bytes_sent
            return True

        pushed = self._each(push)
        closed = self._each(
            lambda k: self.links[k].wait_round_closed(rounds[k].round_id, wait_s)
        )
        outcomes = {c.outcome for c in closed}
        applied = outcomes == {"applied"}
        self._settle_ranges(applied)
        log.info(
            "shard_round_closed", client=self.client_id,
            rounds=",".join(str(c.round_id) for c in closed),
            outcomes=",".join(sorted(outcomes)),
        )  # fmt: skip
        if applied:
            self.pull_and_load(closed[0].model_version, self._config.rpc_timeout_s)
        if any(c.run_finished for c in closed):
            self.finished = True
        if not all(pushed):
            return "missed"
        return "applied" if applied else closed[0].outcome

    def _open_rounds(self, wait_s: float) -> list[RoundStart] | SyncOutcome:
        """Every shard's open round for our base, or why there is nothing to push."""
        base = self._local.base_version
        opened = self._each(
            lambda k: self.links[k].wait_round_open(base, wait_s, span=self.sat_out)
        )
        if any(isinstance(o, RunFinished) for o in opened):
            self.finished = True
            return "finished"
        stale = [o.model_version for o in opened if isinstance(o, StaleBase)]
        if stale:
            self.pull_and_load(max(stale), self._config.rpc_timeout_s)
            return "stale"
        rounds = [o for o in opened if isinstance(o, RoundStart)]
        if not all(o.selected for o in rounds):
            self.sat_out = True
            return "not_selected"
        return rounds

    def _settle_ranges(self, applied: bool) -> None:
        """Compressed ranges a round did not apply go back to their residual."""
        for encoder, r in zip(self.encoders, self.ranges, strict=True):
            if encoder is not None and encoder.settle(applied):
                rebase_fragment(self._local, r)

    def resume(self) -> SyncOutcome:
        """After a fault: re-join every other shard, then follow their versions.

        The primary link was re-joined by `Reconnector`. What became of the
        update in flight is settled as not applied (it goes back to the
        residual) unless the shards moved past our base, which they do only
        by applying a round on all of them; then the model is pulled.
        """
        primary = self.federation.shard_index
        for k, link in enumerate(self.links):
            if k != primary:
                link.drop("reconnecting")
                self.federations[k] = link.rejoin(self.federations[k])
        self.federations[primary] = self.federation
        latest = max(f.model_version for f in self.federations)
        if latest == self._local.base_version:
            self._settle_ranges(False)
            return "missed"
        self._settle_ranges(True)
        self.pull_and_load(latest, self._config.rpc_timeout_s)
        return "stale"

    def close(self) -> None:
        """Leave every other shard and stop the push threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        for k, link in enumerate(self.links):
            if k != self.federation.shard_index:
                link.close()


def whole_encoder(
    sync: SyncPoint,
    federation: Federation,
    config: ClientConfig,
    secure: UpdateEncoder | None,
    num_coordinates: int,
) -> UpdateEncoder | None:
    """The encoder of whole-model updates: secure aggregation's, or the codec's.

    None for raw float32, and for sync points that keep one encoder per
    range (streaming fragments, shards: masked ranges too).
    """
    if isinstance(sync, StreamingSync | ShardedSync):
        return None
    if secure is not None:  # masked rounds (client.secure)
        return secure
    return codec_encoder(federation, config, num_coordinates)


def build_sync(
    connection: Connection,
    federation: Federation,
    local: LocalRun,
    config: ClientConfig,
    settings: JoinSettings,
    *,
    attach: Attach | None = None,
    range_encoders: Sequence[UpdateEncoder] = (),
) -> SyncPoint:
    """The sync point the federation calls for: sharded, or none of that.

    `attach` and `range_encoders` matter to shards only (see `ShardedSync`).
    """
    if federation.shard_peers:
        return ShardedSync(
            connection, federation, local, config, settings,
            attach=attach, range_encoders=range_encoders,
        )  # fmt: skip
    kind = StreamingSync if federation.round_mode == "streaming" else SyncPoint
    return kind(connection, federation, local, config)
