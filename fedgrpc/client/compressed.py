"""Compressed pushes: a codec plus the error-feedback residual behind it.

Each round the pseudo-gradient Δ is folded into the residual e, e is encoded
block by block (one block per UpdateChunk) and what each payload decodes to
is subtracted from e as it is sent. What a round could not deliver is put
back: if the push fails, or the round is skipped or discarded, every sent
block is restored into e and the snapshot moves to the current local
weights, so the next Δ counts only new progress while e still holds this
round's. Nothing is lost and nothing is counted twice:
Σ applied updates + e = global - local, whatever happened to the rounds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import torch

from fedgrpc._proto.v1 import coordinator_pb2
from fedgrpc.client.connection.channel import Credentials
from fedgrpc.client.connection.join import Federation
from fedgrpc.client.connection.push import (
    Signing,
    UpdateMeta,
    end_of_update,
    payload_digest,
    update_header,
)
from fedgrpc.compress import CodecConfig, Dense, ErrorFeedback, OffsetBlock, make_codec
from fedgrpc.config import ClientConfig
from fedgrpc.domain.requests import wire_codec
from fedgrpc.wire.codec_params import WIRE_CODEC_TO_PROTO
from fedgrpc.wire.frames import encode_update_chunk


class CompressedUpdates:
    """One client's codec and residual; encodes rounds and settles them.

    The plain `connection.push.UpdateEncoder`; secure aggregation has its own
    (`client.secure.SecureUpdates`), which holds a residual the same way.
    """

    def __init__(
        self,
        config: CodecConfig,
        num_coordinates: int,
        chunk_bytes: int,
        feedback_decay: float = 1.0,
        max_update_norm: float = 0.0,
    ) -> None:
        """`max_update_norm` > 0 clips e + Δ to that L2 norm each round."""
        self.config = config
        self.codec = make_codec(config)  # fresh entropy: clients' rounding differs
        self.feedback = ErrorFeedback(
            num_coordinates, decay=feedback_decay, max_norm=max_update_norm
        )
        self.chunk_bytes = chunk_bytes
        self._wire_codec = WIRE_CODEC_TO_PROTO[wire_codec(config)]
        self._pending: list[OffsetBlock] = []
        self.payload_bytes = 0
        """Payload bytes of the last update encoded."""

    async def requests(
        self,
        credentials: Credentials,
        meta: UpdateMeta,
        delta: torch.Tensor,
        signing: Signing | None = None,
    ) -> AsyncIterator[coordinator_pb2.PushUpdateRequest | bytes]:
        """Header, one pre-encoded chunk per block of e + Δ, commit.

        With `signing`, the header, every chunk and the commit are signed.

        Lazy: block i+1 is encoded while block i is on the wire. Every
        yielded block is remembered until `settle` says what became of it.
        """
        if self._pending:
            raise RuntimeError("the previous update was not settled")
        values = delta.detach().numpy()
        self.feedback.accumulate(values)
        self.payload_bytes = 0
        header = update_header(credentials, meta, values.size, self._wire_codec)
        signer = signing.sign_header(header) if signing is not None else None
        yield header
        seq = 0
        for seq, block in enumerate(
            self.feedback.encode_blocks(self.codec, self.chunk_bytes), start=1
        ):
            self._pending.append(block)
            payload = block.encoded.payload
            self.payload_bytes += len(payload)
            offset, count = block.offset, block.count
            proof = None
            if signer is not None:
                digest = await payload_digest(payload, signer.hash)
                proof = signer.sign_chunk(seq - 1, offset, count, digest)
            yield encode_update_chunk(
                seq - 1, offset, count, memoryview(payload), proof
            )
        yield end_of_update(signer, seq)

    def settle(self, applied: bool) -> bool:
        """Close the last update's books; True if blocks were put back into e.

        `applied`: the round averaged our update into a new model. Otherwise
        (push failed, round skipped or discarded) the sent blocks return to
        the residual; the caller must then rebase its snapshot on the local
        weights (`LocalRun.rebase_on_local`).
        """
        pending, self._pending = self._pending, []
        if applied or not pending:
            return False
        for block in pending:
            self.feedback.restore(block.offset, block.encoded.sent)
        return True

    def residual_norm(self) -> float:
        """‖e‖₂, for logs: how much progress is still waiting to be sent."""
        return float(np.linalg.norm(self.feedback.residual))


def codec_encoder(
    federation: Federation, config: ClientConfig, num_coordinates: int
) -> CompressedUpdates | None:
    """The federation codec's encoder of `num_coordinates`-long updates.

    None for raw float32, which goes out as it is. One per vector that keeps
    its own residual: the whole model, or each streaming fragment or shard
    range (a residual is position-addressed, so ranges cannot share one).
    """
    if federation.codec == Dense(values="fp32"):
        return None
    return CompressedUpdates(
        federation.codec,
        num_coordinates,
        federation.chunk_bytes,
        federation.feedback_decay,
        config.max_update_norm,
    )
