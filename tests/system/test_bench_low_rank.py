"""Issue 18's low-rank candidate (`bench/_low_rank.py`, PowerSGD): specs,
what one push carries and decodes to, the warm start, the shared rounds'
projection, and the uplink ratio the README quotes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedgrpc.compress.quantize import decode_values, value_bytes
from fedgrpc.domain.codecs import ValueFormat
from fedgrpc.errors import ConfigError
from fedgrpc.wire.tensors import spec_from_module

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from _convergence_wire import payload_push_bytes
from _low_rank import (
    LowRankCodec,
    LowRankSpec,
    MatrixLayout,
    SharedLowRank,
    parse_low_rank,
)

pytestmark = pytest.mark.filterwarnings("error")


def _layout(rank: int) -> MatrixLayout:
    """Linear 12 -> 10 (weight, bias), LayerNorm(10), Linear 10 -> 2 (no bias)."""
    nn = torch.nn
    layers = (nn.Linear(12, 10), nn.LayerNorm(10), nn.Linear(10, 2, bias=False))
    model = nn.Sequential(*layers)
    return MatrixLayout(spec_from_module(model), rank)


def test_specs_parse_and_bad_ones_are_refused() -> None:
    assert parse_low_rank("lowrank:2") == LowRankSpec(2, "int8", shared=False)
    shared = LowRankSpec(7, "int2", shared=True)
    assert parse_low_rank("lowrank-shared:7:int2") == shared
    assert parse_low_rank("topk:0.1:int8") is None
    for bad in ("lowrank:0", "lowrank:x:int8", "lowrank:1:int9", "lowrank-shared:"):
        with pytest.raises(ConfigError, match="expected lowrank"):
            parse_low_rank(bad)


def test_layout_sends_matrices_as_factors_and_everything_else_as_is() -> None:
    layout = _layout(rank=2)

    # the 2 x 10 output matrix has only 2 rows: factors would not save a byte
    assert [(m.offset, m.rows, m.cols) for m in layout.matrices] == [(0, 10, 12)]
    assert layout.rest.tolist() == list(range(120, 120 + 10 + 20 + 20))
    assert (layout.p_values, layout.q_values) == (20, 24)


def test_an_exact_rank_r_update_arrives_whole_and_decode_matches_sent() -> None:
    layout = _layout(rank=2)
    rng = np.random.default_rng(0)
    flat = rng.standard_normal(layout.num_coordinates).astype(np.float32)
    a, b = rng.standard_normal((10, 2)), rng.standard_normal((12, 2))
    flat[:120] = (a @ b.T).astype(np.float32).ravel()  # rank 2
    codec = LowRankCodec(layout, "fp32", np.random.default_rng(1))

    payload, sent = codec.encode(flat.copy())

    assert len(payload) == codec.payload_bytes() == 4 * (20 + 24 + 50)
    np.testing.assert_array_equal(codec.decode(payload), sent)
    np.testing.assert_allclose(sent[:120], flat[:120], atol=1e-5)
    np.testing.assert_array_equal(sent[120:], flat[120:])  # fp32, sent as is


def test_the_warm_start_converges_to_the_top_singular_pair() -> None:
    """One power iteration a round from the last Q: on a fixed full-rank
    matrix, rank 1 approaches sigma_1 u_1 v_1^T (PowerSGD's warm start)."""
    layout = _layout(rank=1)
    rng = np.random.default_rng(3)
    u, _ = np.linalg.qr(rng.standard_normal((10, 10)))
    v, _ = np.linalg.qr(rng.standard_normal((12, 10)))
    sigma = np.array([10.0, 3.0] + [1.0] * 8)
    flat = np.zeros(layout.num_coordinates, dtype=np.float32)
    flat[:120] = ((u * sigma) @ v.T).astype(np.float32).ravel()
    best = (sigma[0] * np.outer(u[:, 0], v[:, 0])).ravel()
    codec = LowRankCodec(layout, "fp32", np.random.default_rng(4))

    sent = [codec.encode(flat.copy())[1][:120] for _ in range(6)]
    errors = [np.linalg.norm(s - best) for s in sent]

    assert errors[-1] < 1e-3 * sigma[0]
    assert errors[-1] < errors[0]


@pytest.mark.parametrize("values", ["fp32", "int8"])
def test_a_shared_round_projects_the_mean_onto_one_subspace(
    values: ValueFormat,
) -> None:
    """The coordinator sums the first pushes' P_w, announces P^ = orth(sum),
    and every worker's sent matrix lies in P^'s span; their mean is
    P^ P^^T mean(M_w) up to the Q values' rounding."""
    layout = _layout(rank=2)
    rng = np.random.default_rng(5)
    residuals = [
        rng.standard_normal(layout.num_coordinates).astype(np.float32) for _ in range(3)
    ]
    rounds = SharedLowRank(layout, values, seed=6)

    pushes = rounds.round(residuals, [np.random.default_rng(w) for w in range(3)])

    assert [len(p.first) for p in pushes] == [value_bytes(values, 20 + 50)] * 3
    assert [len(p.second) for p in pushes] == [value_bytes(values, 24)] * 3
    firsts = [decode_values(memoryview(p.first), values, 70) for p in pushes]
    p_sum = torch.stack([torch.from_numpy(f[:20].copy()) for f in firsts]).sum(0)
    p_hat = torch.linalg.qr(p_sum.view(2, 10).T).Q  # what the coordinator announces
    projection = p_hat @ p_hat.T
    sent = [torch.from_numpy(p.sent[:120]).view(10, 12) for p in pushes]
    for matrix in sent:  # inside the announced subspace
        torch.testing.assert_close(projection @ matrix, matrix, atol=1e-5, rtol=0)
    mean_matrix = torch.stack([torch.from_numpy(r[:120]) for r in residuals]).mean(0)
    mean_matrix = mean_matrix.view(10, 12)
    error = float((torch.stack(sent).mean(0) - projection @ mean_matrix).norm())
    assert error < (1e-5 if values == "fp32" else 0.05) * float(mean_matrix.norm())
    np.testing.assert_allclose(
        np.mean([p.sent[120:] for p in pushes], axis=0),
        np.mean([r[120:] for r in residuals], axis=0),
        atol=1e-6 if values == "fp32" else 0.05,
    )
    assert rounds.q[0].shape == (12, 2)  # the next warm start: the mean Q


def test_rank_1_int8_moves_over_100x_fewer_uplink_bytes_on_the_bench_model() -> None:
    """The README's ratio: `lowrank:1:int8` on the convergence bench's
    char-LM, framed as update chunks with a push's header and commit."""
    from _convergence_sim import DEFAULTS

    from fedgrpc.sim.models import build_model

    spec = spec_from_module(build_model(DEFAULTS.model, seed=0))
    codec = LowRankCodec(MatrixLayout(spec, 1), "int8", np.random.default_rng(0))
    flat = np.random.default_rng(1).standard_normal(spec.num_coordinates)

    payload, _ = codec.encode(flat.astype(np.float32))
    framed = payload_push_bytes(payload, spec.num_coordinates, 1 << 20)

    assert 4 * spec.num_coordinates / framed > 150
