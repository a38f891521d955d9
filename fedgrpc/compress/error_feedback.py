"""Client-side error feedback: what a codec leaves out is carried, never lost.

The residual e is one fp32 buffer the size of the model (DESIGN.md, step 1).
Each round the client adds its pseudo-gradient, encodes e block by block and
subtracts exactly what each payload decodes to (error feedback
as in DGC, Lin et al. 2018, and Stich et al. 2018, "Sparsified SGD with
memory"). So over any number of rounds

    Σ sent + e_final = Σ Δ            (to float32 rounding, with decay = 1)

and quantisation error and unselected coordinates are retried later.
With decay β < 1 the update is e ← β·e + Δ: the accumulator then plays the
role of momentum, as in SparseLoCo (arXiv 2508.15706, used with plain outer
SGD), and mass is deliberately forgotten at rate 1 - β.

With a norm bound B (`ClientConfig.max_update_norm`) the residual is clipped
right after Δ is folded in, e ← e · min(1, B/‖e‖), so what the round encodes
(e + Δ) has norm <= B up to the codec's rounding. The clipped-off part is
dropped, not carried: carrying it would hand the coordinator the excess a
round later, and the bound is meant to cap what any one client moves the
model by. (So with a bound the identity above holds for the clipped e.)

Not thread-safe: one client thread owns it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from fedgrpc.compress.blocks import (
    DecodedBlock,
    EncodedBlock,
    F32Array,
)
from fedgrpc.compress.codec import BlockCodec
from fedgrpc.compress.norm_clip import clip_to_norm
from fedgrpc.errors import ConfigError


@dataclass(frozen=True, slots=True)
class OffsetBlock:
    """One encoded block and where it sits: what the wire sends per message."""

    offset: int
    """Index of the block's first coordinate in the flat vector."""
    count: int
    """Coordinates the block covers (the decoder's `count`)."""
    encoded: EncodedBlock


class ErrorFeedback:
    """The residual e of a flat fp32 vector of `num_coordinates`."""

    def __init__(
        self, num_coordinates: int, *, decay: float = 1.0, max_norm: float = 0.0
    ) -> None:
        """Start from e = 0.

        Args:
            num_coordinates: length of the flat update vector.
            decay: β in e ← β·e + Δ. 1.0 is plain error feedback; SparseLoCo
                uses ~0.95. Must be in (0, 1].
            max_norm: clip e to this L2 norm after each `accumulate`; 0: never.

        Raises:
            ConfigError: a negative length or a decay outside (0, 1].
        """
        if num_coordinates < 0:
            raise ConfigError(
                f"num_coordinates={num_coordinates} is invalid: expected >= 0"
            )
        if not 0 < decay <= 1:
            raise ConfigError(f"decay={decay!r} is invalid: expected in (0, 1]")
        if not (max_norm == 0 or (np.isfinite(max_norm) and max_norm > 0)):
            raise ConfigError(
                f"max_update_norm={max_norm!r} is invalid: expected > 0 (0: off)"
            )
        self.decay = decay
        self.max_norm = max_norm
        self.norm_before_clip = 0.0
        """‖e + Δ‖₂ at the last `accumulate` with a bound (for logs)."""
        self._residual = np.zeros(num_coordinates, dtype=np.float32)

    @property
    def residual(self) -> F32Array:
        """A read-only view of e (for checkpoints, norms and tests)."""
        view = self._residual.view()
        view.flags.writeable = False
        return view

    def accumulate(self, delta: F32Array) -> None:
        """Fold in this round's pseudo-gradient Δ (1-D float32): e ← decay·e + Δ.

        Raises:
            ValueError: `delta` has the wrong dtype or length.
        """
        if delta.dtype != np.float32 or delta.shape != self._residual.shape:
            raise ValueError(
                f"delta must be float32 of shape {self._residual.shape}, got "
                f"{delta.dtype} {delta.shape}"
            )
        if self.decay != 1.0:
            self._residual *= np.float32(self.decay)
        self._residual += delta
        if self.max_norm:
            self.norm_before_clip = clip_to_norm(self._residual, self.max_norm)

    def reset(self) -> float:
        """Drop the carried residual: e ← 0. Returns ‖e‖₂ before, for logs.

        Loses that mass on purpose (`optim.divergence`: after a divergence
        trip, stale residuals leaving all at once break the model). Call it
        before `accumulate`, so the round's own Δ survives.
        """
        # float64 accumulation: a norm over millions of float32 coordinates.
        dropped = float(np.linalg.norm(self._residual.astype(np.float64)))
        self._residual.fill(0.0)
        return dropped

    def subtract(self, offset: int, sent: DecodedBlock) -> None:
        """e[offset + i] -= sent value i: the block at `offset` has been sent."""
        sent.add_into(self._block(offset, sent), -1.0)

    def restore(self, offset: int, sent: DecodedBlock) -> None:
        """Undo `subtract`: the push carrying this block failed, keep its mass."""
        sent.add_into(self._block(offset, sent), 1.0)

    def encode_blocks(
        self, codec: BlockCodec, chunk_bytes: int
    ) -> Iterator[OffsetBlock]:
        """Encode e in order, subtracting each block's `sent` before yielding it.

        Lazy, so the wire can stream block i while block i+1 is not yet
        encoded. A caller that cannot deliver a yielded block must `restore`
        it (or accept that its mass is gone).
        """
        step = codec.block_coordinates(chunk_bytes)
        for offset in range(0, self._residual.size, step):  # one block at a time
            block = self._residual[offset : offset + step]
            encoded = codec.encode(block)
            encoded.sent.add_into(block, -1.0)
            yield OffsetBlock(offset, block.size, encoded)

    def _block(self, offset: int, sent: DecodedBlock) -> F32Array:
        """The residual slice `sent` applies to; it must lie inside e."""
        length = sent.extent
        if offset < 0 or offset + length > self._residual.size:
            raise ValueError(
                f"block [{offset}, {offset + length}) is outside the "
                f"{self._residual.size}-coordinate residual"
            )
        return self._residual[offset : offset + length]
