"""The round setup on the wire: `SecureRoundSetup` <-> SecAggRoundSetup.

Split from `wire.secagg` (the other Session-stream messages): the setup is
the one message with a signed statement of its own, a coded index set and
the distributed-DP fields (secure_aggregation.proto), so its layout lives
in one place. No grpc.

Decoding never trusts sizes: malformed fields raise `InvalidUpdateError`
(INVALID_ARGUMENT), so a peer's garbage never reaches the state machines.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import torch

from fedgrpc._proto.v1 import secure_aggregation_pb2 as sa
from fedgrpc.compress.chunk_norms import num_chunks
from fedgrpc.compress.shared_index import decode_index_set, encode_index_set
from fedgrpc.crypto.keys import PublicKey
from fedgrpc.errors import InvalidUpdateError, check_config
from fedgrpc.secagg import transcript
from fedgrpc.secagg.fixed_point import FixedPointScale
from fedgrpc.secagg.graph import SecAggParams
from fedgrpc.secagg.messages import NoiseShareSpec, RoundSetup
from fedgrpc.secagg.prg import KEYSTREAM_LAYOUT, LEGACY_LAYOUT, layout_name
from fedgrpc.wire.signed import key_from_proto, key_to_proto

SETUP_DOMAIN = transcript.DOMAIN_PREFIX + b"round-setup"
NORM_TAIL_LABEL = b"norm-tail"
NORM_TAIL_BASE = 1 << 62
"""Mask position of the chunk-norm tail's value j: 2^62 + j, above any model
coordinate, so tail and values never share keystream (`secagg.prg`)."""


def session_id(run_id: str, round_nonce: bytes) -> bytes:
    """The SecAgg session id: UTF-8 run id, then the round's 16-byte nonce.

    Binding the nonce makes a restarted run's reopened round (same id, new
    nonce) a different session, so no key, share or signature carries over.
    """
    return run_id.encode() + round_nonce


@dataclass(frozen=True, slots=True)
class SecureRoundSetup:
    """The coordinator's announcement of one masked round (SecAggRoundSetup)."""

    setup: RoundSetup
    """Participants, graph seed, ring width; every party derives the same."""
    identities: dict[str, PublicKey]
    """Participant -> identity key from Join; verifies its advertisement."""
    round_nonce: bytes
    scale: FixedPointScale
    """Round-wide clip and value bits (codes are value_bits wide)."""
    num_positions: int
    positions: np.ndarray | None = None
    """uint64 index set; None means dense (every coordinate, in order)."""
    coded_positions: bytes = b""
    """`positions` gap-coded as sent (`encode_index_set`); b"" when dense.

    Left empty, it is coded from `positions` at construction: the
    coordinator passes the bytes its planner already coded off the event
    loop (coding 1M positions takes ~50 ms), so no setup codes them twice.
    """
    signature: bytes = b""
    """The coordinator's signature over `statement()`."""
    reset_residuals: bool = False
    """Clients zero their error-feedback residual first (after a guard trip)."""
    noise: NoiseShareSpec | None = None
    """Distributed DP: the noise share each client adds (with a widened
    `setup.ring_bits`); None for a round without noise."""
    keystream_layout: int = KEYSTREAM_LAYOUT
    """The masks' keystream layout (`secagg.prg`); not signed (proto field 40)."""
    norm_chunk: int = 0
    """C of the chunk-norm tail (`compress.chunk_norms`); 0: no tail."""
    norm_tail: int = 0
    """Tail values after the positions' values: ceil(d / C), 0 without a tail."""

    def __post_init__(self) -> None:
        """Code `positions` once if the caller did not; noise needs a wider ring.

        Raises:
            ConfigError: noise without a widened ring, or the reverse.
        """
        check_config((self.noise is None) == (self.setup.ring_bits == 0),
                     "ring_bits", self.setup.ring_bits,
                     "set exactly when the round carries noise shares")  # fmt: skip
        check_config((self.norm_chunk == 0) == (self.norm_tail == 0), "norm_tail",
                     self.norm_tail, "set exactly when norm_chunk is")  # fmt: skip
        check_config(self.noise is None or self.norm_tail == 0, "norm_chunk",
                     self.norm_chunk, "0 in a round with DP noise")  # fmt: skip
        if self.positions is not None and not self.coded_positions:
            coded = encode_index_set(torch.from_numpy(self.positions.astype(np.int64)))
            object.__setattr__(self, "coded_positions", coded)  # frozen: set once

    def statement(self) -> bytes:
        """The bytes the coordinator signs (secure_aggregation.proto's layout).

        `reset_residuals` adds a last framed byte only when set: every other
        setup signs as before, so clients predating the flag still verify
        them, and refuse (rather than silently ignore) a reset they cannot do.
        The positions are signed decoded (uint64), not as coded: the
        signature binds the set itself, so a client that decodes the coded
        bytes to anything else than what was signed refuses the setup.
        """
        setup, graph = self.setup, self.setup.graph()
        ids = setup.participants
        head = transcript.round_context(SETUP_DOMAIN, setup.session_id, setup.round_id)
        positions = (
            b"" if self.positions is None else self.positions.astype("<u8").tobytes()
        )
        reset = (b"\x01",) if self.reset_residuals else ()
        noise = self.noise
        dp = () if noise is None else (
            transcript.u64(setup.ring_bits),
            *(struct.pack(">d", v) for v in (noise.clip_norm, noise.client_std,
                                              noise.norm_bound)),
        )  # fmt: skip
        norm = () if not self.norm_chunk else (
            NORM_TAIL_LABEL, transcript.u64(self.norm_chunk),
            transcript.u64(self.norm_tail),
        )  # fmt: skip
        return head + transcript.id_list(ids) + transcript.frame(
            *(self.identities[c].raw for c in ids),
            setup.graph_seed,
            *(transcript.u64(v) for v in (graph.degree, graph.threshold,
                                          setup.value_bits, self.num_positions)),
            struct.pack(">d", self.scale.clip),
            positions,
            *reset,
            *dp,
            *norm,
        )  # fmt: skip

    def index_set(self) -> np.ndarray:
        """The announced positions as uint64 (0..n-1 when dense)."""
        if self.positions is not None:
            return self.positions
        return np.arange(self.num_positions, dtype=np.uint64)

    @property
    def vector_length(self) -> int:
        """Values in each masked push: the positions' plus the chunk-norm tail."""
        return self.num_positions + self.norm_tail

    def mask_positions(self) -> np.ndarray:
        """Where each pushed value is masked: `index_set()`, then the tail's."""
        if not self.norm_tail:
            return self.index_set()
        tail = np.arange(self.norm_tail, dtype=np.uint64) + np.uint64(NORM_TAIL_BASE)
        return np.concatenate((self.index_set(), tail))


def setup_to_proto(announce: SecureRoundSetup) -> sa.SecAggRoundSetup:
    """Encode a round setup; degree and threshold are sent explicitly."""
    setup = announce.setup
    graph = setup.graph()
    message = sa.SecAggRoundSetup(
        round_id=setup.round_id,
        round_nonce=announce.round_nonce,
        participants=[
            sa.SecAggParticipant(client_id=c, identity_key=key_to_proto(k))
            for c, k in sorted(announce.identities.items())
        ],
        graph_seed=setup.graph_seed,
        degree=graph.degree,
        threshold=graph.threshold,
        value_bits=setup.value_bits,
        clip=announce.scale.clip,
        dense=announce.positions is None,
        coded_positions=announce.coded_positions,
        num_positions=announce.num_positions,
        coordinator_signature=announce.signature,
        reset_residuals=announce.reset_residuals,
        keystream_layout=announce.keystream_layout,
        norm_chunk=announce.norm_chunk,
        norm_tail=announce.norm_tail,
    )
    noise = announce.noise
    if noise is not None:  # distributed DP (fields 15-18; 0 otherwise)
        message.ring_bits = setup.ring_bits
        message.dp_clip_norm = noise.clip_norm
        message.dp_noise_std = noise.client_std
        message.dp_norm_bound = noise.norm_bound
    return message


def _noise(message: sa.SecAggRoundSetup) -> NoiseShareSpec | None:
    """The announced noise share, None when all of its fields are 0."""
    if not (message.dp_clip_norm or message.dp_noise_std or message.dp_norm_bound):
        return None
    return NoiseShareSpec(
        message.dp_clip_norm, message.dp_noise_std, message.dp_norm_bound
    )


def setup_from_proto(
    message: sa.SecAggRoundSetup, run_id: str, num_coordinates: int
) -> SecureRoundSetup:
    """Decode a round setup (the client's view of a model of `num_coordinates`).

    Raises:
        InvalidUpdateError: malformed participants, keys, graph or scale, an
            index set that is not exactly num_positions increasing positions
            below `num_coordinates`, or masks in another keystream layout than
            this client's (the client leaves the round).
    """
    layout = message.keystream_layout or LEGACY_LAYOUT  # 0: predates the field
    if layout != KEYSTREAM_LAYOUT:
        raise InvalidUpdateError(
            f"the coordinator's round masks with keystream {layout_name(layout)}, "
            f"but this client masks with {layout_name(KEYSTREAM_LAYOUT)}; run the "
            "same fedgrpc release on both sides"
        )
    try:
        identities = {p.client_id: key_from_proto(p.identity_key)
                      for p in message.participants}  # fmt: skip
        positions = _positions(message, num_coordinates)
        params = SecAggParams(degree=message.degree, threshold=message.threshold)
        setup = RoundSetup(
            session_id=session_id(run_id, message.round_nonce),
            round_id=message.round_id,
            participants=tuple(p.client_id for p in message.participants),
            graph_seed=message.graph_seed,
            value_bits=message.value_bits,
            params=params,
            ring_bits=message.ring_bits,
        )
        scale = FixedPointScale(message.clip, message.value_bits)
        _check_tail(message, num_coordinates)
        return SecureRoundSetup(
            setup,
            identities,
            message.round_nonce,
            scale,
            message.num_positions,
            positions,
            message.coded_positions,
            message.coordinator_signature,
            message.reset_residuals,
            _noise(message),
            layout,
            message.norm_chunk,
            message.norm_tail,
        )
    except (ValueError, KeyError) as exc:  # ConfigError is a ValueError
        raise InvalidUpdateError(f"malformed secure-aggregation setup: {exc}") from exc


def _check_tail(message: sa.SecAggRoundSetup, num_coordinates: int) -> None:
    """The chunk-norm tail must be ceil(d / C) values of this client's model."""
    if message.norm_chunk and message.norm_tail != num_chunks(
        num_coordinates, message.norm_chunk
    ):
        raise InvalidUpdateError(
            f"the setup asks for {message.norm_tail} chunk norms of "
            f"{message.norm_chunk} coordinates, but this model of "
            f"{num_coordinates} coordinates has "
            f"{num_chunks(num_coordinates, message.norm_chunk)}"
        )


def _positions(message: sa.SecAggRoundSetup, num_coordinates: int) -> np.ndarray | None:
    """The decoded sparse set as uint64, or None when dense.

    k is checked against the model first: it bounds what decoding may
    allocate (a zstd body up to 5k bytes), and the signature is checked
    only after decoding, so these bytes are not yet trusted.
    """
    if message.dense:
        return None
    k = message.num_positions
    if k > num_coordinates:
        raise InvalidUpdateError(
            f"the setup announces {k} positions for a model of {num_coordinates} "
            "coordinates"
        )
    decoded = decode_index_set(message.coded_positions, k, num_coordinates)
    return decoded.numpy().astype(np.uint64)
