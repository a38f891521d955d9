"""The per-client disk spool: one file per update, bounds, dropping, cleaning."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from fedgrpc.aggregate import SpoolAccumulator, StreamingSum, WeightedMean
from fedgrpc.aggregate.passes import squared_norms
from fedgrpc.compress import DenseValues, SparseValues
from fedgrpc.errors import InvalidUpdateError, TooLargeError, WrongRoundError

D = 3000
CHUNK = 700


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[SpoolAccumulator]:
    accumulator = SpoolAccumulator(tmp_path / "round-1", D, max_updates=4)
    yield accumulator
    accumulator.discard()


def _scratch() -> np.ndarray:
    return np.empty(CHUNK, np.float32)


def _push(
    acc: SpoolAccumulator | StreamingSum, key: object, update: np.ndarray, weight: float
) -> None:
    for start in range(0, D, CHUNK):
        acc.add_values(key, start, update[start : start + CHUNK], weight, _scratch())
    acc.commit_update(key, weight)


def _files(spool: SpoolAccumulator) -> list[Path]:
    return sorted(spool.directory.glob("*.f32"))


def test_each_committed_update_is_its_own_float32_file_on_disk(
    spool: SpoolAccumulator,
) -> None:
    rng = np.random.default_rng(1)
    updates = [rng.standard_normal(D).astype(np.float32) for _ in range(3)]
    for key, update in enumerate(updates):
        _push(spool, key, update, weight=float(key + 1))

    files = _files(spool)
    assert len(files) == 3
    assert all(path.stat().st_size == D * 4 for path in files)
    on_disk = sorted(np.fromfile(path, np.float32).tobytes() for path in files)
    assert on_disk == sorted(u.tobytes() for u in updates)  # stored unweighted
    held = spool.held()
    assert held.count == 3
    np.testing.assert_array_equal(held.weights(), [1.0, 2.0, 3.0])


def test_file_names_never_come_from_the_key(spool: SpoolAccumulator) -> None:
    _push(spool, "../../escape", np.ones(D, np.float32), 1.0)

    assert [p.name for p in _files(spool)] == ["u0.f32"]
    assert not (spool.directory.parent / "escape").exists()


def test_weighted_mean_over_the_spool_matches_the_streaming_sum(
    spool: SpoolAccumulator,
) -> None:
    rng = np.random.default_rng(2)
    total = StreamingSum(torch.zeros(D))
    for key in range(4):
        update = rng.standard_normal(D).astype(np.float32)
        _push(spool, key, update, weight=float(10 * key + 1))
        _push(total, key, update, weight=float(10 * key + 1))
    out = torch.empty(D)

    WeightedMean(block_bytes=4 * 4 * 1024).aggregate(spool.held(), out)  # 3 blocks

    np.testing.assert_allclose(out.numpy(), total.mean().numpy(), rtol=1e-5, atol=1e-6)


def test_codec_blocks_land_in_the_file_as_the_sum_would_add_them(
    spool: SpoolAccumulator,
) -> None:
    spool.add_block("a", 0, DenseValues(np.arange(5, dtype=np.float32)), 9.0)
    spool.add_block(
        "a",
        100,
        SparseValues(np.array([1, 4], np.int64), np.array([7.0, 8.0], np.float32)),
        9.0,
    )
    spool.commit_update("a", 9.0)
    block = np.empty((1, 110), np.float32)

    spool.held().read_block(0, block)

    expected = np.zeros(110, np.float32)
    expected[:5] = np.arange(5)
    expected[[101, 104]] = [7.0, 8.0]
    np.testing.assert_array_equal(block[0], expected)  # unweighted: weight at commit


def test_a_failed_push_is_dropped_without_voiding_the_round(
    spool: SpoolAccumulator,
) -> None:
    _push(spool, "kept", np.ones(D, np.float32), 1.0)
    spool.add_values("broken", 0, np.full(CHUNK, 5.0, np.float32), 1.0, _scratch())
    assert len(_files(spool)) == 2

    voided = spool.abandon("broken")

    assert voided is False
    assert not spool.voids_on_abandon
    assert len(_files(spool)) == 1
    out = torch.empty(D)
    WeightedMean().aggregate(spool.held(), out)
    assert torch.all(out == 1.0)


def test_writes_outside_the_model_are_refused(spool: SpoolAccumulator) -> None:
    with pytest.raises(InvalidUpdateError, match="outside"):
        spool.add_values("x", D - 1, np.ones(2, np.float32), 1.0, _scratch())
    with pytest.raises(InvalidUpdateError, match="outside"):
        spool.add_values("x", -1, np.ones(2, np.float32), 1.0, _scratch())
    with pytest.raises(InvalidUpdateError, match="float32"):
        spool.add_values("x", 0, np.ones(2), 1.0, _scratch())  # type: ignore[arg-type]


def test_one_client_cannot_write_more_than_one_model_of_coordinates(
    spool: SpoolAccumulator,
) -> None:
    _push_values = np.ones(CHUNK, np.float32)
    for start in range(0, D, CHUNK):
        spool.add_values(
            "greedy", start, _push_values[: min(CHUNK, D - start)], 1.0, _scratch()
        )

    with pytest.raises(TooLargeError, match="more than the model"):
        spool.add_values("greedy", 0, _push_values, 1.0, _scratch())

    assert all(path.stat().st_size == D * 4 for path in _files(spool))


def test_disk_use_is_bounded_by_max_updates(spool: SpoolAccumulator) -> None:
    for key in range(4):
        spool.add_values(key, 0, np.ones(10, np.float32), 1.0, _scratch())

    with pytest.raises(TooLargeError, match="max_updates=4"):
        spool.add_values("fifth", 0, np.ones(10, np.float32), 1.0, _scratch())

    spool.abandon(0)  # a dropped push frees its slot
    spool.add_values("fifth", 0, np.ones(10, np.float32), 1.0, _scratch())
    assert len(_files(spool)) == 4


def test_commit_refuses_bad_weights_and_empty_updates(spool: SpoolAccumulator) -> None:
    spool.add_values("a", 0, np.ones(10, np.float32), 1.0, _scratch())

    with pytest.raises(InvalidUpdateError, match="weight"):
        spool.commit_update("a", float("nan"))
    with pytest.raises(InvalidUpdateError, match="without values"):
        spool.commit_update("never-sent", 1.0)


def test_discard_removes_every_file_and_the_round_directory(
    spool: SpoolAccumulator,
) -> None:
    _push(spool, "a", np.ones(D, np.float32), 1.0)
    spool.add_values("streaming", 0, np.ones(10, np.float32), 1.0, _scratch())

    spool.discard()
    spool.discard()

    assert not spool.directory.exists()
    with pytest.raises(WrongRoundError, match="discarded"):
        spool.add_values("b", 0, np.ones(10, np.float32), 1.0, _scratch())
    with pytest.raises(WrongRoundError, match="discarded"):
        spool.held()


def test_read_block_checks_the_buffer_and_the_range(spool: SpoolAccumulator) -> None:
    _push(spool, "a", np.ones(D, np.float32), 1.0)
    held = spool.held()

    with pytest.raises(InvalidUpdateError, match="C-contiguous float32"):
        held.read_block(0, np.empty((2, 10), np.float32))
    with pytest.raises(InvalidUpdateError, match="outside"):
        held.read_block(D - 5, np.empty((1, 10), np.float32))


def test_a_committed_update_cannot_add_or_commit_again(spool: SpoolAccumulator) -> None:
    _push(spool, "a", np.ones(D, np.float32), 1.0)

    with pytest.raises(WrongRoundError, match="already committed"):
        spool.add_values("a", 0, np.ones(1, np.float32), 1.0, _scratch())
    with pytest.raises(WrongRoundError, match="already committed"):
        spool.commit_update("a", 1.0)
    assert spool.held().count == 1
    assert len(_files(spool)) == 1


def _rss_file_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssFile in /proc/self/status")


def test_a_streaming_update_does_not_stay_in_the_process_rss(tmp_path: Path) -> None:
    # ~64 MiB written in 1 MiB chunks, not yet committed: without releasing
    # the written pages the mapping would hold all of it as RSS.
    d, chunk = 16 << 20, 1 << 18
    spool = SpoolAccumulator(tmp_path / "round", d, 2)
    values = np.arange(chunk, dtype=np.float32)
    scratch = np.empty(0, np.float32)
    try:
        before = _rss_file_bytes()
        for start in range(0, d - chunk, chunk):  # all but the last chunk
            spool.add_values("k", start, values, 1.0, scratch)
        grown = _rss_file_bytes() - before
        # Adding to released pages again refaults them with what was written.
        spool.add_values("k", 0, values, 1.0, scratch)
        spool.commit_update("k", 1.0)
        block = np.empty((1, chunk), dtype=np.float32)
        spool.held().read_block(0, block)
        tail = np.empty((1, chunk), dtype=np.float32)
        spool.held().read_block(d - chunk, tail)
    finally:
        spool.discard()
    assert grown < (8 << 20), grown
    np.testing.assert_array_equal(block[0], 2 * values)  # nothing was lost
    np.testing.assert_array_equal(tail[0], 0.0)


def test_the_spool_knows_each_updates_squared_norm_without_a_pass(
    spool: SpoolAccumulator,
) -> None:
    rng = np.random.default_rng(7)
    updates = [rng.standard_normal(D).astype(np.float32) * (k + 1) for k in range(2)]
    for key, update in enumerate(updates):
        _push(spool, key, update, weight=1.0)
    spool.add_values("cut", 0, updates[0][:CHUNK] * 100, 1.0, _scratch())
    spool.abandon("cut")  # a broken upload counts for nothing
    sparse = SparseValues(np.array([1, 4], np.int64), np.array([3.0, 4.0], np.float32))
    spool.add_block("codec", 0, sparse, 1.0)
    spool.add_block("codec", 5, DenseValues(np.ones(D - 5, np.float32)), 1.0)
    spool.commit_update("codec", 1.0)
    held = spool.held()

    known = held.known_squared_norms()

    assert known is not None
    expected = [float(np.sum(u.astype(np.float64) ** 2)) for u in updates]
    np.testing.assert_allclose(known, [*expected, 25.0 + D - 5], rtol=1e-6)
    np.testing.assert_allclose(known, squared_norms(held), rtol=1e-6)
