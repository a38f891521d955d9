"""Compressed downlink: each version's step, encoded with error feedback.

Without it every pull carries the whole model, so a run whose uplink is
compressed 100x still moves one dense model per client per round down, and
its *total* bytes are at most ~2x below dense DiLoCo. With `downlink_codec`
the coordinator sends the step from the version a client holds instead,
compressed with the same block codecs as updates.

Clients must stay bit-identical to the master (their updates sign the
master's SHA-256 as their base, and the pseudo-gradient is measured from
it), so the coordinator does not publish what the outer optimizer proposed
but what a client can rebuild. With w the published master, w' the outer
optimizer's proposal and e the coordinator's residual (error feedback for
the broadcast, as in DoubleSqueeze, Tang et al. 2019, arXiv 1905.10936, and
the server side of Philippenko & Dieuleveut 2020, "Artemis"):

    e      <- e + (w' - w)          (ErrorFeedback.accumulate)
    q      =  decode(encode(e))     (per block; exactly what a client decodes)
    e      <- e - q
    w_new  =  w + q                 (float32, the client's own operation)

Σ q + e = Σ (w' - w): what a round leaves out is sent in later rounds, never
lost. The outer optimizer's state (momentum) is untouched: it saw the true
mean pseudo-gradient; only the applied step is compressed. The residual is
not checkpointed: a restart drops at most the mass not yet sent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedgrpc.compress import ErrorFeedback, make_codec
from fedgrpc.config import CoordinatorConfig
from fedgrpc.domain.codecs import CodecConfig, format_codec
from fedgrpc.domain.model_spec import DType, ModelSpec
from fedgrpc.log import get_logger

log = get_logger(__name__)

MAX_TRANSITIONS = 8
"""Compressed steps kept for clients a few versions behind (if their bytes
stay below one model's: beyond that a whole pull is cheaper)."""


@dataclass(frozen=True, slots=True)
class DeltaBlock:
    """One encoded block of a step: float32 coordinates [offset, offset + count)."""

    offset: int
    count: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Transition:
    """The compressed step from version `version - 1` to `version`."""

    version: int
    blocks: tuple[DeltaBlock, ...]
    num_bytes: int
    """Payload bytes of all blocks (what a pull of this step sends)."""


class DownlinkCompressor:
    """The coordinator's downlink codec, its residual e and the recent steps."""

    def __init__(
        self, config: CodecConfig, num_coordinates: int, chunk_bytes: int
    ) -> None:
        """Encode with `config` in blocks whose payloads fit `chunk_bytes`."""
        self.codec_spec = format_codec(config)
        """The spec string clients decode with (ModelHeader.delta_codec)."""
        self._codec = make_codec(config)
        self._feedback = ErrorFeedback(num_coordinates)
        self._chunk_bytes = chunk_bytes
        self._model_bytes = num_coordinates * 4
        self._history: list[Transition] = []

    @property
    def residual_norm(self) -> float:
        """‖e‖₂ (for logs): the mass of steps not yet sent.

        A float32 dot product, no model-sized float64 copy: a log line does
        not need the last digits.
        """
        return float(np.linalg.norm(self._feedback.residual))

    def apply(
        self, proposed: torch.Tensor, previous: torch.Tensor, version: int
    ) -> None:
        """Turn `proposed` (w', float32, overwritten) into w + q, in place.

        `previous` is w, the published master clients hold: read, never
        written. Afterwards `proposed` holds the version clients rebuild, and
        `recent` ends with its step.
        """
        target = proposed.numpy()
        torch.sub(proposed, previous, out=proposed)  # w' - w
        self._feedback.accumulate(target)
        proposed.copy_(previous)
        blocks = []
        for block in self._feedback.encode_blocks(self._codec, self._chunk_bytes):
            payload = block.encoded.payload
            # Decode the payload as a client will, rather than trusting `sent`:
            # the master must be what the bytes on the wire rebuild.
            decoded = self._codec.decode(payload, block.count)
            decoded.add_into(target[block.offset : block.offset + block.count])
            blocks.append(DeltaBlock(block.offset, block.count, payload))
        step = Transition(version, tuple(blocks), sum(len(b.payload) for b in blocks))
        self._history.append(step)
        while len(self._history) > MAX_TRANSITIONS or (
            sum(t.num_bytes for t in self._history) > self._model_bytes
        ):
            self._history.pop(0)

    def forget(self) -> None:
        """Drop the kept steps: the next version does not follow from them."""
        self._history.clear()

    @property
    def recent(self) -> tuple[Transition, ...]:
        """The kept steps, oldest first, ending at the newest version."""
        return tuple(self._history)


def transitions_from(
    held: int, version: int, recent: tuple[Transition, ...]
) -> tuple[Transition, ...] | None:
    """The steps taking `held` to `version`, or None if some are not kept.

    An empty tuple when `held == version` (nothing to send). None for a
    `held` ahead of `version`, or older than the oldest kept step.
    """
    if held > version:
        return None
    steps = tuple(t for t in recent if held < t.version <= version)
    if len(steps) != version - held:
        return None
    return steps


def downlink_for(
    config: CoordinatorConfig, spec: ModelSpec
) -> DownlinkCompressor | None:
    """The downlink compressor, if configured and the model allows it.

    Clients add decoded float32 steps to the bytes they pulled, which
    only reproduces the float32 master when those bytes *are* float32:
    any other dtype (bfloat16 weights, an integer buffer) pulls whole.
    """
    codec = config.downlink_codec_config
    if codec is None:
        return None
    if not all(t.dtype is DType.FLOAT32 for t in spec.tensors):
        others = sorted({t.dtype.torch_name for t in spec.tensors} - {"float32"})
        log.warning(
            "downlink_codec_off",
            downlink_codec=config.downlink_codec,
            reason="the model is not all float32; pulls carry the whole model",
            dtypes=",".join(others),
        )
        return None
    return DownlinkCompressor(codec, spec.num_coordinates, config.chunk_bytes)
