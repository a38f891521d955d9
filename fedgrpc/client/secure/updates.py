"""Masked pushes under secure aggregation: quantise, keep the rest in e, mask, stream.

`DiLoCoClient` uses `SecureUpdates` in place of the plain codec when the
coordinator announces secure aggregation (`secure.mode.SecureMode`); the key
exchange that makes a round ready for this push runs in `secure.participant`.
Like the plain `compressed.CompressedUpdates`, it is a
`connection.push.UpdateEncoder` holding an error-feedback residual; it does
not derive from it (it encodes no codec blocks).

Error feedback: codes are round(clip(e) / scale) at the round's positions;
e keeps everything not sent (the clipped remainder, the rounding error, the
coordinates outside a sparse index set). A round that does not apply the
update gives the sent part back to e (`settle`), as for the other codecs.
A setup that says `reset_residuals` (the first round after the
coordinator's divergence guard tripped) zeroes e *before* this round's Δ is
folded in: the stale residual is dropped, Δ itself is kept and sent (to the
round's quantisation), so the fallback's dense round does not flush every
stale residual at once (`optim.divergence`). Hence the setup is awaited
before Δ is accumulated. A client that is not a participant of that round
keeps its residual (the round-wide clip bounds its flush per coordinate).
A setup with `norm_chunk` (the "chunk_norm" index rule) gets one more
code per chunk after the values: the RMS of e per chunk *after* the send
(`compress.chunk_norms`), masked like them, so the coordinator sees only
the sum over clients. Runs on the client's background loop (masking on a
worker thread).

Distributed DP (a setup with `noise`, `fedgrpc.privacy.distributed`): the
values at the round's positions are clipped to L2 norm S, rounded
conditionally, and the client's discrete Gaussian share is added to the
codes before masking. e keeps what was not sent (the L2-clipped remainder,
the rounding error), never the noise: the residual is this client's own
state, and each round's sent vector still has norm <= S.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import numpy as np
import torch

from fedgrpc._proto.v1 import common_pb2
from fedgrpc._proto.v1 import coordinator_pb2 as pb
from fedgrpc.client.connection.channel import Credentials
from fedgrpc.client.connection.push import (
    Signing,
    UpdateMeta,
    end_of_update,
    payload_digest,
    update_header,
)
from fedgrpc.client.secure.participant import ClientSecureRound, SecureParticipant
from fedgrpc.compress import CodecConfig, DenseValues, ErrorFeedback, SparseValues
from fedgrpc.compress.chunk_norms import chunk_rms
from fedgrpc.log import get_logger
from fedgrpc.privacy.distributed import NoisyShare, encode_noisy_share
from fedgrpc.secagg import FixedPointScale, NoiseShareSpec
from fedgrpc.wire.frames import encode_update_chunk
from fedgrpc.wire.ring import encode_ring_values, ring_values_per_chunk

log = get_logger(__name__)


class SecureUpdates:
    """Masked pushes with error feedback: the codec under secure aggregation."""

    def __init__(
        self,
        config: CodecConfig,
        num_coordinates: int,
        chunk_bytes: int,
        participant: Callable[[], SecureParticipant | None],
        *,
        feedback_decay: float = 1.0,
        wait_s: float = 30.0,
        max_update_norm: float = 0.0,
    ) -> None:
        """`participant` gives the current link's; `max_update_norm` > 0 clips.

        `participant` changes on reconnect; `max_update_norm` > 0 clips e + Δ
        to that L2 norm before masking.
        """
        self.config = config
        self.chunk_bytes = chunk_bytes
        self.feedback = ErrorFeedback(
            num_coordinates, decay=feedback_decay, max_norm=max_update_norm
        )
        self.payload_bytes = 0
        """Payload bytes of the last update encoded."""
        self._participant, self._wait_s = participant, wait_s
        self._rng = np.random.default_rng()
        self._sent: DenseValues | SparseValues | None = None
        self._accumulated = False
        self.last_round: ClientSecureRound | None = None
        self._reset_round: int | None = None
        """Round whose setup last reset e: a second push in it must not again
        (it would drop that round's own Δ, given back to e by `settle`)."""
        self.clipped = 0
        """Coordinates clipped in the last masked push."""
        self.mask_s = 0.0
        """Wall seconds the last quantise + mask + bit-pack took (worker thread)."""
        self.mask_cpu_s = 0.0
        """CPU seconds of that (this thread's; other clients' threads excluded)."""
        self.noise_s = 0.0
        """Wall seconds of the last distributed-DP encoding (clip, conditional
        rounding, noise sampling), included in `mask_s`."""
        self.noise_cpu_s = 0.0
        """CPU seconds of that (this thread's)."""
        self.last_share: NoisyShare | None = None
        """The last distributed-DP share (codes and noise): this client's own."""

    async def requests(
        self,
        credentials: Credentials,
        meta: UpdateMeta,
        delta: torch.Tensor,
        signing: Signing | None = None,
    ) -> AsyncIterator[pb.PushUpdateRequest | bytes]:
        """Header, masked ring chunks, commit (see the module docstring).

        When this client is not ready for the round (not a participant, or
        it left it), a header of 0 values and an empty commit go anyway: the
        coordinator refuses them with FAILED_PRECONDITION, the one place that
        decides, and the sync point records a missed round.
        """
        if self._accumulated:
            raise RuntimeError("the previous update was not settled")
        self.payload_bytes = 0
        participant = self._participant()
        current = None
        if participant is not None:
            current = await participant.wait_ready(meta.round_id, self._wait_s)
        ok = current is not None and current.ready and current.error is None
        if ok and current is not None and current.announce.reset_residuals:
            self._reset_residual(credentials.client_id, meta.round_id)
        self.feedback.accumulate(delta.detach().numpy())
        self._accumulated = True
        # 0 values: "not taking part"; the coordinator refuses it (wrong round).
        count = current.announce.vector_length if ok and current else 0
        codec = common_pb2.CODEC_SECAGG_RING
        header = update_header(credentials, meta, count, codec)
        signer = signing.sign_header(header) if signing is not None else None
        if not ok or current is None:
            yield header
            yield end_of_update(signer, 0)
            return
        # Off the loop: O(degree x positions) of AES must not stall heartbeats.
        # The round's next event (its survivor list) needs this push first.
        # Masked before the header goes: `stream_update` opens the stream at
        # the first message, and the coordinator cuts a stream that is silent
        # past its idle limit, so no long wait may sit between two messages.
        # Bit-packing goes with the masking: ~10 ms per 1M values, off the loop too.
        chunks = await asyncio.to_thread(self._timed_encode, current)
        yield header
        seq = 0
        for seq, (offset, count, payload) in enumerate(chunks, start=1):
            self.payload_bytes += len(payload)
            proof = None
            if signer is not None:
                digest = await payload_digest(payload, signer.hash)
                proof = signer.sign_chunk(seq - 1, offset, count, digest)
            view = memoryview(payload)
            yield encode_update_chunk(seq - 1, offset, count, view, proof)
        yield end_of_update(signer, seq)

    def _reset_residual(self, client_id: str, round_id: int) -> None:
        """Drop the stale residual the setup asked us to (module docstring)."""
        if self._reset_round == round_id:
            return
        self._reset_round = round_id
        dropped = self.feedback.reset()
        log.info(
            "residual_reset", client=client_id, round=round_id, dropped_norm=dropped
        )

    def _timed_encode(self, current: ClientSecureRound) -> list[tuple[int, int, bytes]]:
        """(offset, count, bit-packed payload) per chunk of the masked update."""
        started, cpu = time.perf_counter(), time.thread_time()
        masked = self._mask(current)
        ring = current.announce.setup.ring()
        step = ring_values_per_chunk(ring, self.chunk_bytes)
        chunks = []
        for offset in range(0, masked.size, step):
            values = masked[offset : offset + step]
            chunks.append((offset, values.size, encode_ring_values(values, ring)))
        self.mask_s = time.perf_counter() - started
        self.mask_cpu_s = time.thread_time() - cpu
        return chunks

    def _mask(self, current: ClientSecureRound) -> np.ndarray:
        """Quantise e at the round's positions, keep the rest in e, mask."""
        announce = current.announce
        residual = self.feedback.residual
        positions = announce.positions
        x = residual if positions is None else residual[positions.astype(np.int64)]
        if announce.noise is None:
            quantised = announce.scale.quantise(x, self._rng)
            codes, self.clipped = quantised.codes, quantised.clipped
            lifted = codes
        else:
            share = self._noisy_share(x, announce.scale, announce.noise)
            codes, self.clipped = share.codes, share.clipped
            lifted = share.codes + share.noise  # int64: wider than b bits
        sent_values = announce.scale.dequantise(codes)  # e keeps all but the noise
        if positions is None:
            self._sent = DenseValues(sent_values)
        else:
            self._sent = SparseValues(positions.astype(np.int64), sent_values)
        self.feedback.subtract(0, self._sent)
        if announce.norm_tail:  # where what is left waits (compress.chunk_norms)
            norms = chunk_rms(residual, announce.norm_chunk)
            tail = announce.scale.quantise(norms, self._rng).codes  # in [0, qmax]
            lifted = np.concatenate((lifted, tail.astype(lifted.dtype)))
        current.codes = lifted
        self.last_round = current
        masked = current.machine.mask_input(announce.mask_positions(), lifted)
        return masked.values

    def _noisy_share(
        self, x: np.ndarray, scale: FixedPointScale, noise: NoiseShareSpec
    ) -> NoisyShare:
        """Distributed DP: clip to S, round conditionally, draw the noise share."""
        started, cpu = time.perf_counter(), time.thread_time()
        share = encode_noisy_share(
            x, clip_norm=noise.clip_norm, step=scale.scale, qmax=scale.qmax,
            norm_bound=noise.norm_bound, client_std=noise.client_std, rng=self._rng,
        )  # fmt: skip
        self.noise_s = time.perf_counter() - started
        self.noise_cpu_s = time.thread_time() - cpu
        self.last_share = share
        return share

    def settle(self, applied: bool) -> bool:
        """Close the books; True if this round's delta stays in e (rebase)."""
        sent, self._sent = self._sent, None
        accumulated, self._accumulated = self._accumulated, False
        if applied or not accumulated:
            return False
        if sent is not None:  # give back what was sent: e keeps its mass
            self.feedback.restore(0, sent)
        return True
