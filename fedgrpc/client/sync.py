"""One DiLoCo sync point from the client's side: wait, push, wait, pull.

DiLoCo (Douillard et al. 2023, arXiv 2311.08105): after H inner steps a
client sends its pseudo-gradient (global weights at the round's start minus
its local weights now); the coordinator averages them and applies an outer
optimizer (Nesterov SGD). `SyncPoint` runs the client's half in order:

1. wait for a round based on our model version (or find we are stale and
   just pull the newer model);
2. push the pseudo-gradient (a refusal because the round closed under us
   is not an error: the round's outcome decides what happens next);
3. wait for the round to close: applied -> pull and load the new weights;
   skipped -> keep the local weights and base, so the next pseudo-gradient
   spans both rounds.

It runs on the training thread and reaches the coordinator only through
the synchronous `connection.Connection`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Literal

from fedgrpc.client.connection import Connection
from fedgrpc.client.connection.join import Federation
from fedgrpc.client.connection.push import UpdateEncoder, UpdateMeta
from fedgrpc.client.connection.round_tracker import RoundStart, RunFinished, StaleBase
from fedgrpc.client.evaluation import GlobalEvaluation, latest_loss
from fedgrpc.client.transform import UpdateContext, UpdateTransform, apply_transform
from fedgrpc.client.weights import LocalRun
from fedgrpc.compress.norm_clip import clip_to_norm
from fedgrpc.config import ClientConfig
from fedgrpc.domain.requests import RecordPrivacyClaim
from fedgrpc.errors import (
    CoordinatorUnavailableError,
    ShuttingDownError,
    WrongRoundError,
)
from fedgrpc.log import get_logger

log = get_logger(__name__)
ASYNC_PUSH_RETRIES = 3
"""Rounds a buffered_async push that found its round full tries next."""

SyncOutcome = Literal[
    "applied",
    "skipped",
    "stale",
    "missed",
    "offline",
    "not_selected",
    "finished",
    "in_flight",
]
"""How a sync point ended for this client: its update was averaged into a new
model ("applied"); the round closed below quorum ("skipped"); a newer model
existed, so it pulled without pushing ("stale"); its push was refused
because the round had closed ("missed"); the coordinator was away and
training goes on locally until the next sync point ("offline",
`reconnect.Reconnector`); client selection left it out of the open round
("not_selected"): nothing was sent, the weights, base and residual stay as
they are, training goes on, and the next update (when a round selects it)
spans every round it sat out, against the base version it last pulled; or
the run had already ended (`max_rounds`) and the model holds its final
weights, so nothing was sent ("finished"); or, in streaming rounds with an
overlap, the fragment left and training goes on while it is in flight
("in_flight": the merge `streaming_overlap_steps` later sets the outcome)."""


class SyncPoint:
    """Seeds, pulls and runs sync points for one client; counts bytes moved."""

    def __init__(
        self,
        connection: Connection,
        federation: Federation,
        local: LocalRun,
        config: ClientConfig,
    ) -> None:
        """Sync points over `connection`, which has joined: Join said `federation`."""
        self.connection = connection
        self.federation = federation
        """What the last Join said; `rejoined` updates it after a reconnect."""
        self._local = local
        self._config = config
        self._chunk_bytes = federation.chunk_bytes
        self.client_id = connection.client_id
        self._log = log.bind(client=self.client_id)
        self.bytes_sent = 0
        """Update payload bytes pushed (initial weights included)."""
        self.bytes_received = 0
        """Model payload bytes pulled."""
        self.compressed: UpdateEncoder | None = None
        """Codec and error feedback, unless updates go as raw float32."""
        self.update_transform: UpdateTransform | None = None
        """Simulation and research only (`client.transform`): rewrites each
        pseudo-gradient before it is encoded and signed."""
        self.evaluation: GlobalEvaluation | None = None
        """The `evaluate=` results: the newest loss of our base version goes
        with the next update (the coordinator's validation curve)."""
        self.record_dp: Callable[[], RecordPrivacyClaim] | None = None
        """The client's record-level DP spend (`RecordDP.claim`), read at
        each push and signed into its header; None: no claim."""
        self.base_sha256 = b""
        """SHA-256 of the weights last loaded (what the next update is based on)."""
        self.last_update_sha256 = ""
        """Digest of the last update pushed, as the coordinator verified it."""
        self.pending: RoundStart | None = None
        """The round our last accepted update went to, until we hear its end."""
        self.sat_out = False
        """A round left us out since our last pull: our next update spans it."""
        self.finished = federation.run_finished
        """The run's last round closed and its model is loaded: push nothing more."""
        self._compute_s = 0.0
        """Training seconds the pending update stands for (set by `run`)."""
        self._progress_since_s = time.monotonic()
        """When the local progress the next update carries began (its last
        load): the update reports the training seconds since (goodput)."""

    def due(self, steps: int, inner_steps: int) -> bool:
        """H steps done (sync, buffered_async), or the round's time up (deadline).

        In deadline mode H does not count: the client trains until the
        open round's training seconds run out (`RoundTracker.sync_due`).
        """
        if self.federation.round_mode != "deadline" or self.finished:
            return steps >= inner_steps
        return self.connection.sync_due(self._local.base_version)

    def seed(self) -> None:
        """Upload our weights as the initial model (losing the race is fine)."""
        seeded = self.connection.seed(self._local.local_weights(), self._chunk_bytes)
        if seeded is not None:
            self.bytes_sent += seeded.bytes_sent
            self._log.info("model_seeded", bytes=seeded.bytes_sent)

    def pull_and_load(self, min_version: int, wait_s: float) -> None:
        """Pull weights of at least `min_version` into the model and snapshot."""
        started, local = time.monotonic(), self._local
        # A pull that fails midway leaves the buffer part old, part new: it
        # holds no version until one completes (and is digest-checked).
        held, local.downlink_version = local.downlink_version, None
        pulled = self.connection.pull(
            min_version, local.downlink, wait_s, self._chunk_bytes, None, held
        )
        local.downlink_version = pulled.version
        local.load(pulled.buffer, pulled.version)
        self.base_sha256 = pulled.sha256
        self.sat_out = False
        self._progress_since_s = time.monotonic()
        nbytes = pulled.bytes_received
        self.bytes_received += nbytes
        seconds = round(time.monotonic() - started, 3)
        self._log.info(
            "model_loaded",
            version=pulled.version,
            bytes=nbytes,
            steps_from=pulled.delta_from,
            seconds=seconds,
        )

    def run(self) -> SyncOutcome:
        """One sync point (see the module docstring); blocks until it is done.

        Raises:
            CoordinatorUnavailableError: no round opened or closed within
                `round_wait_s`, or the coordinator became unreachable.
            ShuttingDownError: the coordinator announced shutdown.
        """
        if self.finished:
            return "finished"
        wait_s, base_version = self._config.round_wait_s, self._local.base_version
        self._compute_s = time.monotonic() - self._progress_since_s
        # buffered_async: the open round takes our update whatever its base
        # (the coordinator refuses one past max_staleness, and we then pull).
        span = self.sat_out or self.federation.round_mode == "buffered_async"
        opened = self.connection.wait_round_open(base_version, wait_s, span=span)
        if isinstance(opened, RunFinished):
            self._log.info("run_finished", version=opened.model_version)
            self.finished = True
            return "finished"
        if isinstance(opened, StaleBase):
            latest = opened.model_version
            self._log.warning("model_stale", version=base_version, latest=latest)
            self.pull_and_load(latest, wait_s=self._config.rpc_timeout_s)
            return "stale"
        if not opened.selected:
            # Nothing is encoded or sent, so the residual (error feedback) and
            # the base snapshot are untouched: the next pseudo-gradient is
            # base - local over all the steps since the pull, exactly once.
            self.sat_out = True
            self._log.info("round_not_selected", round=opened.round_id)
            return "not_selected"
        self.pending = opened  # until its close, or `resume`, settles it
        pushed = self._push(opened.round_id, opened.nonce)
        if not pushed and span and not self.sat_out:
            opened, pushed = self._push_into_next(opened)
        if not pushed:
            self.pending = None
        return self._finish(opened, pushed)

    def update_meta(
        self, round_id: int, round_nonce: bytes, compute_s: float
    ) -> UpdateMeta:
        """The header of the update the local run stands for now (any mode)."""
        local = self._local
        meta = UpdateMeta(
            round_id=round_id,
            base_version=local.base_version,
            kind="pseudo_gradient",
            num_samples=local.samples,
            train_loss=local.loss_mean,
            round_nonce=round_nonce,
            base_sha256=self.base_sha256,
            record_dp=None if self.record_dp is None else self.record_dp(),
            compute_s=max(0.0, compute_s),
        )
        return self._with_eval(meta)

    def _with_eval(self, meta: UpdateMeta) -> UpdateMeta:
        """`meta` with the eval claim of its base version, if one was measured."""
        evaluation = self.evaluation
        latest = None if evaluation is None else latest_loss(evaluation.history)
        if latest is None or latest[0] != meta.base_version:
            return meta
        return dataclasses.replace(
            meta, eval_loss=latest[1], eval_version=meta.base_version
        )

    def _push_into_next(self, refused: RoundStart) -> tuple[RoundStart, bool]:
        """buffered_async: the round filled before our push; try the next one.

        A round closes at K commits, so a push that started as the K-th
        arrived can find its round gone. The next round takes the same
        update one version staler (scaled by the coordinator) as long as it
        is within `max_staleness`; a few tries, each costing one header.
        """
        base = self._local.base_version
        opened = refused
        for _ in range(ASYNC_PUSH_RETRIES):
            wait_s = self._config.round_wait_s
            nxt = self.connection.wait_round_open(
                base, wait_s, span=True, after_round=opened.round_id
            )
            if (
                not isinstance(nxt, RoundStart)
                or not nxt.selected
                or nxt.base_version - base > self.federation.max_staleness
            ):
                break
            opened = self.pending = nxt
            self._log.info("update_retried", round=nxt.round_id, base_version=base)
            if self._push(nxt.round_id, nxt.nonce):
                return nxt, True
        return opened, False

    def _finish(self, opened: RoundStart, pushed: bool) -> SyncOutcome:
        """Steps 3 and 4: wait for `opened` to close, settle, pull if applied."""
        wait_s = self._config.round_wait_s
        closed = self.connection.wait_round_closed(opened.round_id, wait_s)
        self.pending = None
        self._log.info(
            "round_closed",
            round=closed.round_id,
            outcome=closed.outcome,
            version=closed.model_version,
            updates=closed.num_updates,
        )
        if pushed:
            self._settle(applied=closed.outcome == "applied")
        if closed.outcome == "applied":
            self.pull_and_load(closed.model_version, self._config.rpc_timeout_s)
        if closed.run_finished:  # after the final pull: the model is final
            self._log.info("run_finished", version=closed.model_version)
            self.finished = True
        return closed.outcome if pushed else "missed"

    def rejoined(self, federation: Federation) -> None:
        """Continue after the connection re-joined; Join said `federation`."""
        self.federation = federation
        self.client_id = self.connection.client_id
        self._log = log.bind(client=self.client_id)

    def resume(self) -> SyncOutcome:
        """Finish the sync point a fault interrupted, on a re-joined link.

        The update in flight (if any) is settled from what Join says the
        coordinator recorded, never guessed: committed to the round we
        pushed to, and that round still open (same nonce) -> wait for its
        close. Committed to a round that was applied -> it counted.
        Otherwise (never committed: the push broke first, or a restart lost
        the round; or its round was skipped) -> it goes back to the
        residual and is sent again. A push whose acknowledgement was lost
        is thus counted exactly once.

        Then the model version: equal to our base -> run the sync point
        (push into the open round); ahead -> pull without pushing. A
        coordinator that lost its history (behind us, or a new run) is
        followed too: we pull its model.
        """
        federation, base = self.federation, self._local.base_version
        pending, latest = self.pending, federation.model_version
        self.pending = None
        if pending is not None:
            landed = federation.last_update_round == pending.round_id
            still_open = latest == base and pending.nonce == federation.round_nonce
            if landed and still_open:
                self.pending = pending
                return self._finish(pending, pushed=True)
            counted = landed and federation.last_applied_round == pending.round_id
            self._log.info(
                "update_in_flight_settled",
                round=pending.round_id,
                committed=landed,
                applied=counted,
            )
            self._settle(applied=counted)
        if federation.run_finished:
            if latest != base:
                self.pull_and_load(latest, self._config.rpc_timeout_s)
            self.finished = True
            return "finished"
        if latest == base and not federation.seed_model:
            return self.run()
        self._log.warning("model_stale", version=base, latest=latest)
        if federation.seed_model:
            self.seed()
        self.pull_and_load(latest, self._config.rpc_timeout_s)
        return "stale"

    def _settle(self, applied: bool) -> None:
        """Compressed updates: a round that did not apply ours gives it back."""
        if self.compressed is not None and self.compressed.settle(applied):
            self._local.rebase_on_local()
            self._log.info("update_returned_to_residual", applied=applied)

    def _push(self, round_id: int, round_nonce: bytes) -> bool:
        local = self._local
        delta = local.pseudo_gradient()
        bound = self._config.max_update_norm
        if bound and self.compressed is None:
            # Raw float32: clip Δ itself (an encoder clips e + Δ instead).
            norm = clip_to_norm(delta.numpy(), bound)
            if norm > bound:
                self._log.info("update_clipped", norm=norm, max_update_norm=bound)
        if self.update_transform is not None:
            context = UpdateContext(
                self.client_id, round_id, local.base_version, local.samples
            )
            delta = apply_transform(self.update_transform, delta, context)
        meta = self.update_meta(round_id, round_nonce, self._compute_s)
        try:
            result = self.connection.push(
                meta, delta, self._chunk_bytes, self.compressed
            )
        except WrongRoundError as exc:
            self._settle(applied=False)
            self._log.warning("update_refused", round=round_id, reason=str(exc))
            return False
        except (CoordinatorUnavailableError, ShuttingDownError):
            raise  # it may have been committed: `resume` asks, then settles it
        except BaseException:
            self.pending = None
            self._settle(applied=False)  # what was sent must not be lost
            raise
        self.bytes_sent += result.bytes_sent
        self.last_update_sha256 = result.update_sha256
        self._log.info(
            "update_pushed",
            round=round_id,
            bytes=result.bytes_sent,
            updates_in_round=result.updates_in_round,
            update_sha256=result.update_sha256,
        )
        return True
