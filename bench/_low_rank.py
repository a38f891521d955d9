"""Low-rank pseudo-gradients (PowerSGD): issue 18's matrix candidate (bench only).

Top-k at ~100x spends most of its bytes on positions (~7 of top-k 3 %
int2's ~9.2 bits a value), and neither runs of coordinates nor seeded
random positions did better (README, "Compression"). A rank-r factor pair
has no positions at all: an m x n matrix costs r (m + n) values, and it
keeps what top-k drops first, the pseudo-gradient's dominant directions,
spread over every coordinate. PowerSGD (Vogels et al. 2019, "PowerSGD:
Practical low-rank gradient compression for distributed optimization",
Alg. 1) finds them with one power iteration per round, warm-started from
the previous round's Q, and relies on error feedback for the rest:

    P = M Q;   P^ = orthonormalise(P);   Q = M^T P^;   sent = P^ Q^T

with M the worker's residual e + Delta reshaped to the tensor's matrix.
Two ways to run it:

- per worker (`lowrank:R[:V]`): each worker runs the iteration on its own
  M and sends P^ and Q; the coordinator sums P^_w Q_w^T. One push a round.
- shared (`lowrank-shared:R[:V]`, PowerSGD's own all-reduce form): every
  worker multiplies by the same Q, the coordinator sums the P_w (a plain
  sum, so secure aggregation's masks could hide each one), orthonormalises
  the sum and announces P^; each worker sends Q_w = M_w^T P^, which is
  summed again. The mean of the workers' P^ Q_w^T is P^ P^^T mean(M_w): the
  same subspace for everyone, as a shared index set is, but chosen by
  the workers' summed data instead of by a seed or a ranking. Two pushes
  a round.

Tensors that are not matrices of more than r rows and columns (biases,
norms) go as they are, in the same value format. Values are quantised with
the library's `encode_values`, factors laid out column by column so a
scale group covers one column. Payload of one push: the values in `V`
(default int8), no header (every peer knows the layout from the model).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedgrpc.compress.blocks import F32Array, I64Array
from fedgrpc.compress.quantize import decode_values, encode_values, value_bytes
from fedgrpc.domain.codecs import VALUE_FORMATS, ValueFormat
from fedgrpc.domain.model_spec import ModelSpec
from fedgrpc.errors import ConfigError

KINDS = ("lowrank", "lowrank-shared")


@dataclass(frozen=True)
class LowRankSpec:
    """A parsed `lowrank[-shared]:R[:V]` spec."""

    rank: int
    values: ValueFormat
    shared: bool


def parse_low_rank(spec: str) -> LowRankSpec | None:
    """The low-rank spec `spec` names, or None if it names another codec.

    Raises:
        ConfigError: a low-rank spec with a bad rank or value format.
    """
    kind, _, rest = spec.partition(":")
    if kind not in KINDS:
        return None
    rank_text, _, values = rest.partition(":")
    values = values or "int8"
    if not rank_text.isdigit() or int(rank_text) < 1 or values not in VALUE_FORMATS:
        raise ConfigError(
            f"low-rank codec {spec!r} is invalid: expected {kind}:R[:V] with R >= 1 "
            f"and V one of {' | '.join(VALUE_FORMATS)}"
        )
    return LowRankSpec(int(rank_text), values, kind == "lowrank-shared")  # type: ignore[arg-type]


@dataclass(frozen=True)
class Matrix:
    """One tensor sent as factors: its first flat coordinate and its shape."""

    offset: int
    rows: int
    cols: int

    def view(self, flat: F32Array) -> torch.Tensor:
        """The tensor's rows x cols matrix, sharing `flat`'s (writable) memory."""
        end = self.offset + self.rows * self.cols
        return torch.from_numpy(flat[self.offset : end]).view(self.rows, self.cols)


class MatrixLayout:
    """Which of a model's tensors travel as rank-r factors, and the rest."""

    def __init__(self, spec: ModelSpec, rank: int) -> None:
        self.rank = rank
        self.num_coordinates = spec.num_coordinates
        self.matrices: list[Matrix] = []
        rest: list[I64Array] = []
        for slot in spec.slots:
            shape = slot.spec.shape
            if len(shape) == 2 and min(shape) > rank:
                self.matrices.append(Matrix(slot.coord_offset, shape[0], shape[1]))
            else:
                start = slot.coord_offset
                rest.append(np.arange(start, start + slot.spec.numel, dtype=np.int64))
        self.rest: I64Array = (
            np.concatenate(rest) if rest else np.zeros(0, dtype=np.int64)
        )

    @property
    def p_values(self) -> int:
        """Values of every P factor: r x rows summed over the matrices."""
        return sum(self.rank * m.rows for m in self.matrices)

    @property
    def q_values(self) -> int:
        """Values of every Q factor: r x cols summed over the matrices."""
        return sum(self.rank * m.cols for m in self.matrices)

    def initial_q(self, seed: int) -> list[torch.Tensor]:
        """Gaussian Q factors to warm-start from (PowerSGD's initialisation)."""
        generator = torch.Generator().manual_seed(seed)
        shapes = [(m.cols, self.rank) for m in self.matrices]
        return [torch.randn(shape, generator=generator) for shape in shapes]


def orthonormalise(p: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis of p's column space (reduced QR), columns kept in order."""
    basis: torch.Tensor = torch.linalg.qr(p).Q
    return basis


def _columns(factors: list[torch.Tensor]) -> F32Array:
    """Factors laid out column after column (a column is one scale group's run)."""
    if not factors:
        return np.zeros(0, dtype=np.float32)
    return torch.cat([f.T.reshape(-1) for f in factors]).numpy()


def _factors(flat: F32Array, heights: list[int], rank: int) -> list[torch.Tensor]:
    """Inverse of `_columns`: height x rank factors from consecutive columns."""
    out, start = [], 0
    for height in heights:
        end = start + height * rank
        column_major = np.array(flat[start:end], dtype=np.float32)  # writable copy
        out.append(torch.from_numpy(column_major).view(rank, height).T)
        start = end
    return out


def _quantised(
    flat: F32Array, values: ValueFormat, rng: np.random.Generator
) -> tuple[bytes, F32Array]:
    """`flat` in `values`, and what a receiver decodes from those bytes."""
    payload = encode_values(np.ascontiguousarray(flat, dtype=np.float32), values, rng)
    return payload, decode_values(memoryview(payload), values, flat.size)


class LowRankCodec:
    """Per-worker PowerSGD: one push of P^, Q and the other tensors a round."""

    def __init__(
        self, layout: MatrixLayout, values: ValueFormat, rng: np.random.Generator
    ) -> None:
        self.layout, self.values, self._rng = layout, values, rng
        self._q = layout.initial_q(int(rng.integers(0, 1 << 31)))

    @property
    def payload_values(self) -> int:
        """Values one push carries."""
        return self.layout.p_values + self.layout.q_values + self.layout.rest.size

    def payload_bytes(self) -> int:
        """Bytes of one push's payload (exact)."""
        return value_bytes(self.values, self.payload_values)

    def encode(self, residual: F32Array) -> tuple[bytes, F32Array]:
        """One power iteration per matrix; (payload, the flat update it decodes to)."""
        ps, qs = [], []
        for i, matrix in enumerate(self.layout.matrices):
            m = matrix.view(residual)
            p = orthonormalise(m @ self._q[i])
            q = m.T @ p
            self._q[i] = q  # warm start for the next round (Vogels et al. 2019, §3)
            ps.append(p)
            qs.append(q)
        flat = np.concatenate([_columns(ps), _columns(qs), residual[self.layout.rest]])
        payload = encode_values(flat, self.values, self._rng)
        return payload, self.decode(payload)

    def decode(self, payload: bytes) -> F32Array:
        """The flat update a push's payload stands for: P^ Q^T per matrix."""
        layout = self.layout
        flat = decode_values(memoryview(payload), self.values, self.payload_values)
        p_end = layout.p_values
        q_end = p_end + layout.q_values
        ps = _factors(flat[:p_end], [m.rows for m in layout.matrices], layout.rank)
        qs = _factors(flat[p_end:q_end], [m.cols for m in layout.matrices], layout.rank)
        out = np.zeros(layout.num_coordinates, dtype=np.float32)
        for matrix, p, q in zip(layout.matrices, ps, qs, strict=True):
            matrix.view(out).copy_(p @ q.T)
        out[layout.rest] = flat[q_end:]
        return out


@dataclass
class SharedPush:
    """One worker's two pushes of a shared round and what they decode to."""

    first: bytes
    """Its P_w = M_w Q (every matrix) and the other tensors' values."""
    second: bytes
    """Its Q_w = M_w^T P^."""
    sent: F32Array
    """P^ Q_w^T per matrix and the other tensors: what leaves its residual."""


class SharedLowRank:
    """PowerSGD in its all-reduce form: one shared subspace a round, from summed P_w.

    The coordinator's side sees only sums (of P_w, then of Q_w), so the
    round fits secure aggregation's masked sums; `Q`, the warm start, is
    the previous round's mean Q and so known to every worker.
    """

    def __init__(self, layout: MatrixLayout, values: ValueFormat, seed: int) -> None:
        self.layout, self.values = layout, values
        self.q = layout.initial_q(seed)

    def round(
        self, residuals: list[F32Array], rngs: list[np.random.Generator]
    ) -> list[SharedPush]:
        """Run one round over every worker's residual (read only)."""
        layout = self.layout
        firsts: list[bytes] = []
        p_sum = [torch.zeros(m.rows, layout.rank) for m in layout.matrices]
        rests: list[F32Array] = []
        heights = [m.rows for m in layout.matrices]
        for residual, rng in zip(residuals, rngs, strict=True):
            pairs = zip(layout.matrices, self.q, strict=True)
            ps = [m.view(residual) @ q for m, q in pairs]
            flat = np.concatenate([_columns(ps), residual[layout.rest]])
            payload, decoded = _quantised(flat, self.values, rng)
            firsts.append(payload)
            decoded_p = _factors(decoded, heights, layout.rank)
            for total, p in zip(p_sum, decoded_p, strict=True):
                total += p
            rests.append(decoded[layout.p_values :])
        p_hat = [orthonormalise(p) for p in p_sum]  # the coordinator announces these
        pushes: list[SharedPush] = []
        q_sum = [torch.zeros(m.cols, layout.rank) for m in layout.matrices]
        for residual, rng, rest in zip(residuals, rngs, rests, strict=True):
            pairs = zip(layout.matrices, p_hat, strict=True)
            qs = [m.view(residual).T @ p for m, p in pairs]
            payload, decoded = _quantised(_columns(qs), self.values, rng)
            widths = [m.cols for m in layout.matrices]
            sent = np.zeros(layout.num_coordinates, dtype=np.float32)
            decoded_q = _factors(decoded, widths, layout.rank)
            for matrix, p, q, total in zip(
                layout.matrices, p_hat, decoded_q, q_sum, strict=True
            ):
                matrix.view(sent).copy_(p @ q.T)
                total += q
            sent[layout.rest] = rest
            pushes.append(SharedPush(firsts[len(pushes)], payload, sent))
        self.q = [q / len(residuals) for q in q_sum]
        return pushes

    def announce_bytes(self) -> int:
        """Bytes of the announced P^ (fp32), downloaded by each worker a round."""
        return 4 * self.layout.p_values
