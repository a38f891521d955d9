"""Streaming DiLoCo's client half: one fragment per sync point, merged τ steps later.

Streaming DiLoCo (Douillard et al. 2025, arXiv 2501.18512) splits the
model into P fragments (`domain.fragments`) and syncs them in turn: a
sync point comes every H/P inner steps and moves one fragment, 1/P of the
model, each way. The coordinator's round of base version v syncs fragment
v mod P, so the client learns which fragment to send from the round that
opened, never from its own count: a skipped round is retried with the
same fragment and nobody drifts out of step.

With `streaming_overlap_steps` τ > 0 the exchange (push, the round's
close, the fragment's pull) runs on a worker thread while the training
loop goes on; τ steps later `merge_due` holds and `merge` mixes the
fragment in (`fragment_weights.merge_fragment`). The worker never touches
the model: it reads the fragment's pseudo-gradient, already computed into
`LocalRun.delta`, and writes the pulled bytes into `LocalRun.downlink`,
which only a merge reads. τ < H/P (the config checks it) so a fragment is
merged before the next one leaves, and the next round's base is then the
version just merged.

Each fragment keeps its own error-feedback residual (one encoder per
fragment, n/P long each: the same memory as one). A pull whose bytes do
not complete the signed digest (this client missed a version) falls back
to a full pull, which also rebases every fragment.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time

import torch

from fedgrpc.client.compressed import codec_encoder
from fedgrpc.client.connection import Connection
from fedgrpc.client.connection.join import Federation
from fedgrpc.client.connection.pull import RangeMismatchError
from fedgrpc.client.connection.push import UpdateEncoder, UpdateMeta
from fedgrpc.client.connection.round_tracker import RoundStart, RunFinished, StaleBase
from fedgrpc.client.fragment_weights import (
    fragment_pseudo_gradient,
    merge_fragment,
    rebase_fragment,
)
from fedgrpc.client.sync import SyncOutcome, SyncPoint
from fedgrpc.client.transform import UpdateContext, apply_transform
from fedgrpc.client.weights import LocalRun
from fedgrpc.compress.norm_clip import clip_to_norm
from fedgrpc.config import ClientConfig
from fedgrpc.domain.fragments import Fragment, fragment_of_version, split_fragments
from fedgrpc.errors import IncompatibleClientError, WrongRoundError


@dataclasses.dataclass(frozen=True, slots=True)
class _Exchanged:
    """What the worker learned: the round's outcome and the version pulled."""

    outcome: SyncOutcome
    version: int = 0
    sha256: bytes = b""
    run_finished: bool = False
    """The round was the run's last: `finished` turns True at the merge,
    once the model holds the final weights (never from the worker)."""


@dataclasses.dataclass(slots=True)
class _InFlight:
    """A fragment that left and has not been merged yet."""

    fragment: Fragment
    opened: RoundStart
    exchange: concurrent.futures.Future[_Exchanged]
    steps: int = 0
    """Inner steps trained since it left."""


class StreamingSync(SyncPoint):
    """Sync points of `round_mode = "streaming"`: a fragment each, overlapped."""

    def __init__(
        self,
        connection: Connection,
        federation: Federation,
        local: LocalRun,
        config: ClientConfig,
    ) -> None:
        """Fragments and their encoders for the federation Join described.

        Raises:
            IncompatibleClientError: the announced fragments do not fit the
                model or H (an older or misconfigured coordinator).
        """
        super().__init__(connection, federation, local, config)
        count, h = federation.fragments, federation.inner_steps
        if count < 2 or h % count or federation.streaming_overlap_steps >= h // count:
            raise IncompatibleClientError(
                f"the coordinator announced streaming with fragments={count}, "
                f"overlap={federation.streaming_overlap_steps} and inner_steps={h}; "
                "expected 2+ fragments dividing H and an overlap below H/P"
            )
        try:
            self.fragments = split_fragments(local.spec, count)
        except ValueError as exc:
            raise IncompatibleClientError(str(exc)) from exc
        self.interval = h // count
        """Inner steps between two sync points: H/P."""
        self.overlap = federation.streaming_overlap_steps
        self.mix = federation.streaming_mix if self.overlap else 0.0
        self.encoders: list[UpdateEncoder | None] = [
            codec_encoder(federation, config, f.num_coordinates) for f in self.fragments
        ]
        self._worker = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="fedgrpc-streaming"
        )
        self.in_flight: _InFlight | None = None

    def due(self, steps: int, inner_steps: int) -> bool:
        """A sync point every H/P steps (once finished: every H, doing nothing)."""
        return steps >= (inner_steps if self.finished else self.interval)

    def merge_due(self) -> bool:
        """Count one overlapped step; True once τ of them ran: call `merge`."""
        flight = self.in_flight
        if flight is None:
            return False
        flight.steps += 1
        return flight.steps >= self.overlap

    def run(self) -> SyncOutcome:
        """Send the open round's fragment; with τ = 0 wait and merge at once."""
        if self.in_flight is not None:  # cannot happen with τ < H/P; be safe
            self.merge()
        if self.finished:
            return "finished"
        wait_s, base = self._config.round_wait_s, self._local.base_version
        opened = self.connection.wait_round_open(base, wait_s, span=self.sat_out)
        if isinstance(opened, RunFinished):
            self.finished = True
            return "finished"
        if isinstance(opened, StaleBase):
            self.pull_and_load(opened.model_version, self._config.rpc_timeout_s)
            return "stale"
        if not opened.selected:
            self.sat_out = True
            return "not_selected"
        fragment = self.fragments[fragment_of_version(base, len(self.fragments))]
        delta = fragment_pseudo_gradient(self._local, fragment)
        bound = self._config.max_update_norm
        if bound and self.encoders[fragment.index] is None:
            clip_to_norm(delta.numpy(), bound)  # an encoder clips e + delta itself
        if self.update_transform is not None:
            context = UpdateContext(
                self.client_id, opened.round_id, base, self._local.samples
            )
            delta = apply_transform(self.update_transform, delta, context)
        meta = self.update_meta(
            opened.round_id, opened.nonce, self._compute_since_last_push()
        )
        self.pending = opened
        exchange = self._worker.submit(self._exchange, opened, fragment, meta, delta)
        self.in_flight = _InFlight(fragment, opened, exchange)
        if self.overlap == 0:
            return self.merge()
        return "in_flight"

    def _compute_since_last_push(self) -> float:
        """Training seconds this fragment's update stands for (goodput)."""
        now = time.monotonic()
        seconds, self._progress_since_s = now - self._progress_since_s, now
        return seconds

    def _exchange(
        self,
        opened: RoundStart,
        fragment: Fragment,
        meta: UpdateMeta,
        delta: torch.Tensor,
    ) -> _Exchanged:
        """Worker thread: push, wait for the close, pull the fragment's bytes.

        The model and `finished` are untouched: the merge applies both.
        """
        encoder = self.encoders[fragment.index]
        try:
            result = self.connection.push(meta, delta, self._chunk_bytes, encoder)
        except WrongRoundError as exc:
            self._log.warning("update_refused", round=opened.round_id, reason=str(exc))
            return _Exchanged("missed")
        self.bytes_sent += result.bytes_sent
        self.last_update_sha256 = result.update_sha256
        closed = self.connection.wait_round_closed(
            opened.round_id, self._config.round_wait_s
        )
        self._log.info(
            "fragment_synced", round=closed.round_id, fragment=fragment.index,
            outcome=closed.outcome, version=closed.model_version,
            bytes=result.bytes_sent,
        )  # fmt: skip
        last = closed.run_finished
        if closed.outcome != "applied":
            return _Exchanged(closed.outcome, run_finished=last)
        self._local.downlink_version = None  # compressed steps: whole pulls only
        pulled = self.connection.pull(
            closed.model_version, self._local.downlink, self._config.rpc_timeout_s,
            self._chunk_bytes, (fragment.byte_start, fragment.byte_stop),
        )  # fmt: skip
        self.bytes_received += fragment.num_bytes
        return _Exchanged("applied", pulled.version, pulled.sha256, last)

    def merge(self) -> SyncOutcome:
        """Wait for the fragment in flight (if still busy) and mix it in.

        A transient fault inside the exchange is raised here, on the
        training thread, where `Reconnector` catches it and `resume` settles
        the update; a pull that did not complete the version pulls it whole.
        """
        flight, self.in_flight = self.in_flight, None
        if flight is None:
            return "missed"
        fragment, encoder = flight.fragment, self.encoders[flight.fragment.index]
        try:
            exchanged = flight.exchange.result()
        except RangeMismatchError:
            self.pending = None
            if encoder is not None:
                encoder.settle(True)  # it was applied: the model we pull holds it
            self.pull_and_load(
                flight.opened.base_version + 1, self._config.rpc_timeout_s
            )
            return "stale"
        except BaseException:
            self.pending = flight.opened  # `resume` asks the coordinator
            raise
        self.pending = None
        outcome = exchanged.outcome
        if encoder is not None and encoder.settle(applied=outcome == "applied"):
            rebase_fragment(self._local, fragment)
        if outcome == "applied":
            merge_fragment(self._local, fragment, self.mix)
            self._local.base_version = exchanged.version
            self.base_sha256 = exchanged.sha256
            self._local.restart_counts()
            self.sat_out = False
        if exchanged.run_finished:  # the model becomes the final global one
            self._local.load(self._local.downlink, self._local.base_version)
            self.finished = True
        return outcome

    def resume(self) -> SyncOutcome:
        """After a re-join: settle the update in flight, then pull the whole model.

        Whether the fragment that was in flight counted comes from Join (as
        in `SyncPoint.resume`); either way the client then loads the
        coordinator's model whole, so every fragment is rebased on it.
        """
        federation, pending = self.federation, self.pending
        self.pending, self.in_flight = None, None
        if pending is not None:
            applied = federation.last_applied_round == pending.round_id
            fragment = self.fragments[
                fragment_of_version(pending.base_version, len(self.fragments))
            ]
            encoder = self.encoders[fragment.index]
            if encoder is not None:
                encoder.settle(applied)
        if federation.seed_model:
            self.seed()
        self.pull_and_load(federation.model_version, self._config.rpc_timeout_s)
        if federation.run_finished:
            self.finished = True
            return "finished"
        return "stale"

    def close(self) -> None:
        """Stop the worker thread (an exchange still running is abandoned)."""
        self._worker.shutdown(wait=False, cancel_futures=True)
