"""Flat spaces, chunking and reassembly: every dtype, 0-d and empty tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedgrpc.domain.chunks import ChunkOrder, iter_chunks
from fedgrpc.domain.model_spec import DType, ModelSpec, TensorSpec
from fedgrpc.errors import (
    ConfigError,
    IncompleteUpdateError,
    InvalidUpdateError,
    ModelMismatchError,
)
from fedgrpc.wire.assemble import DenseChunkCheck
from fedgrpc.wire.convert import spec_from_proto, spec_to_proto
from fedgrpc.wire.tensors import (
    flatten_fp32,
    load_flat_fp32,
    pack_native,
    spec_from_module,
    unpack_native,
)


class Mixed(torch.nn.Module):
    """Every supported dtype, a 0-d parameter and an empty one."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = torch.nn.Parameter(torch.randn(3, 5, generator=g))
        self.b = torch.nn.Parameter(torch.randn(7, generator=g).to(torch.bfloat16))
        self.c = torch.nn.Parameter(torch.randn(2, 2, 2, generator=g).half())
        self.d = torch.nn.Parameter(torch.randn(4, generator=g).double())
        self.scalar = torch.nn.Parameter(torch.tensor(1.5))
        self.empty = torch.nn.Parameter(torch.empty(0, 3))


def test_spec_covers_dtypes_scalars_and_empty_tensors() -> None:
    spec = spec_from_module(Mixed())
    assert [t.dtype for t in spec.tensors] == [
        DType.FLOAT32,
        DType.BFLOAT16,
        DType.FLOAT16,
        DType.FLOAT64,
        DType.FLOAT32,
        DType.FLOAT32,
    ]
    assert spec.tensors[4].shape == ()
    assert spec.tensors[4].numel == 1
    assert spec.tensors[5].numel == 0
    assert spec.num_coordinates == 15 + 7 + 8 + 4 + 1
    assert spec.num_bytes == 15 * 4 + 7 * 2 + 8 * 2 + 4 * 8 + 4
    assert spec_from_proto(spec_to_proto(spec)) == spec


@pytest.mark.parametrize("chunk_bytes", [1, 3, 4, 16, 1 << 20])
def test_native_bytes_round_trip_through_chunks(chunk_bytes: int) -> None:
    model = Mixed()
    spec = spec_from_module(model)
    params = list(model.parameters())
    native = pack_native(flatten_fp32(params, spec), spec)
    received = torch.empty(spec.num_bytes, dtype=torch.uint8)
    for offset, view in iter_chunks(native.numpy().data, chunk_bytes):
        received[offset : offset + len(view)] = torch.frombuffer(
            bytearray(view), dtype=torch.uint8
        )
    for original, restored in zip(params, unpack_native(received, spec), strict=True):
        assert restored.dtype == original.dtype
        assert restored.shape == original.shape
        torch.testing.assert_close(restored, original.detach(), rtol=0, atol=0)


def test_load_flat_keeps_dtype_and_writes_in_place() -> None:
    model = Mixed()
    spec = spec_from_module(model)
    params = list(model.parameters())
    before = [p.data_ptr() for p in params]
    flat = torch.arange(spec.num_coordinates, dtype=torch.float32)
    load_flat_fp32(params, spec, flat)
    assert [p.data_ptr() for p in params] == before
    assert params[1].dtype == torch.bfloat16
    torch.testing.assert_close(flatten_fp32(params, spec), flat)


@pytest.mark.parametrize("chunk_coords", [1, 5, 35, 1000])
def test_dense_chunks_are_checked_and_returned_as_views(chunk_coords: int) -> None:
    values = np.random.default_rng(1).standard_normal(35).astype("<f4")
    check = DenseChunkCheck(35, chunk_bytes=4 * max(chunk_coords, 35))
    received = np.empty(35, dtype=np.float32)
    count = 0
    for seq, start in enumerate(range(0, 35, chunk_coords)):
        payload = values[start : start + chunk_coords].tobytes()
        view = check.check(seq, start, len(payload) // 4, payload)
        assert view.base is not None  # a view of the payload, not a copy
        received[start : start + view.size] = view
        count += 1
    check.finish(count)
    np.testing.assert_array_equal(received, values)
    assert check.payload_bytes == 35 * 4


def test_chunk_check_rejects_bad_chunks() -> None:
    check = DenseChunkCheck(8, chunk_bytes=16)
    with pytest.raises(InvalidUpdateError, match="more than the 4"):
        check.check(0, 0, 5, b"\0" * 20)
    with pytest.raises(InvalidUpdateError, match="payload bytes"):
        check.check(0, 0, 4, b"\0" * 15)
    with pytest.raises(InvalidUpdateError, match="NaN"):
        check.check(0, 0, 1, np.array([np.inf], "<f4").tobytes())
    fresh = DenseChunkCheck(8, chunk_bytes=16)
    fresh.check(0, 0, 4, b"\0" * 16)
    # Missing or reordered chunks are DATA_LOSS (IncompleteUpdateError).
    with pytest.raises(IncompleteUpdateError, match="expected"):
        fresh.check(2, 4, 4, b"\0" * 16)
    with pytest.raises(IncompleteUpdateError, match="commit says 3"):
        fresh.finish(3)
    with pytest.raises(IncompleteUpdateError, match="every coordinate"):
        fresh.finish(1)
    assert "without a commit" in str(fresh.missing_commit())


def test_chunk_order_rejects_gaps_and_overruns() -> None:
    order = ChunkOrder(total=10, max_chunks=10)
    order.accept(0, 0, 4)
    with pytest.raises(IncompleteUpdateError, match="previous chunk ended at 4"):
        order.accept(1, 5, 2)
    with pytest.raises(InvalidUpdateError, match="past the end"):
        order.accept(1, 4, 7)
    order.accept(1, 4, 6)
    assert order.is_complete


def test_spec_mismatch_names_the_tensor() -> None:
    ours = ModelSpec((TensorSpec("w", (2, 3), DType.FLOAT32),))
    theirs = ModelSpec((TensorSpec("w", (3, 2), DType.FLOAT32),))
    with pytest.raises(ModelMismatchError, match="'w' \\[2, 3\\]"):
        ours.check_same_as(theirs)


def test_integer_parameters_are_refused() -> None:
    model = torch.nn.Module()
    model.register_parameter(
        "steps",
        torch.nn.Parameter(torch.zeros(2, dtype=torch.int64), requires_grad=False),
    )
    with pytest.raises(ConfigError, match="int64"):
        spec_from_module(model)


@pytest.mark.parametrize(("start", "stop"), [(0, 35), (3, 18), (16, 35), (20, 21)])
def test_native_bytes_of_a_range_are_those_bytes_of_the_whole(
    start: int, stop: int
) -> None:
    # A parameter shard packs only its range, which may cut any tensor.
    spec = spec_from_module(Mixed())
    flat = flatten_fp32(list(Mixed().parameters()), spec)
    whole = pack_native(flat, spec)
    part = pack_native(flat[start:stop], spec, start)
    assert torch.equal(part, whole[_byte_of(spec, start) : _byte_of(spec, stop)])


def _byte_of(spec: ModelSpec, coordinate: int) -> int:
    """Native byte of a coordinate, counted from the spec by hand."""
    byte = 0
    for tensor in spec.tensors:
        if coordinate <= tensor.numel:
            return byte + coordinate * tensor.dtype.itemsize
        coordinate -= tensor.numel
        byte += tensor.nbytes
    return byte
