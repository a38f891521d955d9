"""The simulator corpus: deterministic bytes, disjoint splits and shards, batches."""

from __future__ import annotations

import pytest
import torch

from fedgrpc.errors import ConfigError
from fedgrpc.sim.corpus import (
    VALIDATION_FRACTION,
    TextSplits,
    load_stdlib_corpus,
    sample_batch,
    source_files,
    stdlib_root,
)

SMALL_CORPUS_BYTES = 200_000


@pytest.fixture(scope="module")
def splits() -> TextSplits:
    return TextSplits.from_bytes(load_stdlib_corpus(SMALL_CORPUS_BYTES))


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_two_loads_give_identical_bytes_of_the_requested_length() -> None:
    first = load_stdlib_corpus(SMALL_CORPUS_BYTES)
    second = load_stdlib_corpus(SMALL_CORPUS_BYTES)

    assert first == second
    assert len(first) == SMALL_CORPUS_BYTES


def test_source_files_are_sorted_and_skip_tests() -> None:
    root = stdlib_root()

    names = [path.relative_to(root).as_posix() for path in source_files(root)]

    assert names == sorted(names)
    assert all(name.endswith(".py") for name in names)
    assert not any("test" in name.split("/")[:-1] for name in names)


@pytest.mark.parametrize("max_bytes", [0, -5])
def test_load_rejects_non_positive_max_bytes(max_bytes: int) -> None:
    with pytest.raises(ConfigError, match="max_bytes"):
        load_stdlib_corpus(max_bytes)


def test_split_is_contiguous_disjoint_and_complete() -> None:
    data = bytes(range(256)) * 4

    splits = TextSplits.from_bytes(data)

    assert splits.train.dtype == torch.uint8
    assert torch.equal(
        torch.cat([splits.train, splits.validation]),
        torch.tensor(list(data), dtype=torch.uint8),
    )
    assert splits.validation.numel() == round(len(data) * VALIDATION_FRACTION)


@pytest.mark.parametrize("data", [b"", b"x"])
def test_from_bytes_rejects_too_short_data(data: bytes) -> None:
    with pytest.raises(ConfigError, match="at least 2"):
        TextSplits.from_bytes(data)


def test_splits_reject_non_uint8_tokens() -> None:
    tokens = torch.arange(10)

    with pytest.raises(ConfigError, match="uint8"):
        TextSplits(train=tokens, validation=tokens)


@pytest.mark.parametrize("num_clients", [1, 3, 4, 7])
def test_shards_are_disjoint_contiguous_and_cover_train(
    splits: TextSplits, num_clients: int
) -> None:
    shards = [splits.shard(i, num_clients) for i in range(num_clients)]

    # In order and concatenating to train means disjoint and covering.
    assert torch.equal(torch.cat(shards), splits.train)
    lengths = [shard.numel() for shard in shards]
    assert max(lengths) - min(lengths) <= 1


@pytest.mark.parametrize(
    ("client_index", "num_clients", "field"),
    [(0, 0, "num_clients"), (-1, 4, "client_index"), (4, 4, "client_index")],
)
def test_shard_rejects_bad_indices(
    splits: TextSplits, client_index: int, num_clients: int, field: str
) -> None:
    with pytest.raises(ConfigError, match=field):
        splits.shard(client_index, num_clients)


def test_shard_rejects_more_clients_than_tokens() -> None:
    splits = TextSplits.from_bytes(b"abcdefghij")

    with pytest.raises(ConfigError, match="only"):
        splits.shard(0, splits.train.numel() + 1)


def test_sample_batch_returns_int64_windows_with_targets_shifted_by_one() -> None:
    tokens = torch.arange(1_000)  # token value == its position

    inputs, targets = sample_batch(tokens, 8, 16, _generator())

    assert inputs.shape == targets.shape == (8, 16)
    assert inputs.dtype == targets.dtype == torch.int64
    assert inputs.is_contiguous()
    assert targets.is_contiguous()
    assert torch.equal(targets, inputs + 1)
    # Each row is one contiguous window inside the data.
    assert torch.equal(inputs - inputs[:, :1], torch.arange(16).expand(8, 16))
    assert int(targets.max()) <= 999


def test_sample_batch_casts_uint8_corpus_tokens(splits: TextSplits) -> None:
    inputs, targets = sample_batch(splits.train, 4, 32, _generator())

    assert inputs.dtype == torch.int64
    assert torch.equal(inputs[:, 1:], targets[:, :-1])


def test_sample_batch_is_reproducible_from_the_generator_seed() -> None:
    tokens = torch.arange(10_000)

    first = sample_batch(tokens, 4, 8, _generator(7))
    second = sample_batch(tokens, 4, 8, _generator(7))
    other = sample_batch(tokens, 4, 8, _generator(8))

    assert torch.equal(first[0], second[0])
    assert not torch.equal(first[0], other[0])


def test_sample_batch_accepts_data_of_exactly_one_window() -> None:
    tokens = torch.arange(9)

    inputs, targets = sample_batch(tokens, 3, 8, _generator())

    assert torch.equal(inputs, torch.arange(8).expand(3, 8))
    assert torch.equal(targets, torch.arange(1, 9).expand(3, 8))


@pytest.mark.parametrize(
    ("tokens", "batch_size", "context", "message"),
    [
        (torch.zeros(4, 100, dtype=torch.uint8), 2, 8, "1-D"),
        (torch.arange(100), 0, 8, "batch_size"),
        (torch.arange(100), 2, 0, "context"),
        (torch.arange(8), 2, 8, "window"),
    ],
)
def test_sample_batch_rejects_bad_arguments(
    tokens: torch.Tensor, batch_size: int, context: int, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        sample_batch(tokens, batch_size, context, _generator())
