"""Partitioners: sizes, disjointness, skew measured by label entropy, seeds, errors."""

from __future__ import annotations

import numpy as np
import pytest

from fedgrpc.data import Partition, PartitionSpec, parse_partition, partition_labels
from fedgrpc.data.partition import MAX_ATTEMPTS
from fedgrpc.errors import ConfigError

LABELS = np.repeat(np.arange(10), 180)  # digits-like: 10 balanced labels
SPECS = ["iid", "dirichlet:0.1", "dirichlet:0.5", "quantity:0.5", "quantity:5"]


def _split(text: str, seed: int = 0, clients: int = 4, min_size: int = 1) -> Partition:
    spec = parse_partition(text)
    return partition_labels(LABELS, clients, spec, seed=seed, min_size=min_size)


@pytest.mark.parametrize("text", SPECS)
def test_every_sample_goes_to_exactly_one_client(text: str) -> None:
    part = _split(text)

    pieces = [part.indices(i) for i in range(4)]

    joined = np.sort(np.concatenate(pieces))
    assert np.array_equal(joined, np.arange(LABELS.size))  # disjoint and complete
    assert part.sizes.sum() == LABELS.size
    assert [len(p) for p in pieces] == part.sizes.tolist()
    assert np.array_equal(part.counts.sum(axis=1), part.sizes)
    assert np.array_equal(part.counts.sum(axis=0), np.bincount(LABELS))
    for piece in pieces:  # the counts describe the indices
        assert np.all(np.diff(piece) > 0)


def test_iid_sizes_differ_by_at_most_one() -> None:
    part = partition_labels(np.zeros(1003, dtype=int), 4, PartitionSpec(), seed=3)

    assert part.sizes.max() - part.sizes.min() <= 1


@pytest.mark.parametrize("text", SPECS)
def test_same_seed_same_split_other_seed_other_split(text: str) -> None:
    first, again, other = (
        _split(text, seed=7),
        _split(text, seed=7),
        _split(text, seed=8),
    )

    assert np.array_equal(first.assignment, again.assignment)
    assert not np.array_equal(first.assignment, other.assignment)


def test_large_alpha_approaches_iid_label_proportions() -> None:
    # Arrange: every client's label shares vs the global 1/10.
    part = _split("dirichlet:10000", clients=4)

    shares = part.counts / part.sizes[:, None]

    assert np.abs(shares - 0.1).max() < 0.02
    assert np.abs(part.sizes / LABELS.size - 0.25).max() < 0.02
    assert part.label_entropy().min() > 0.99 * np.log(10)


def test_small_alpha_concentrates_labels() -> None:
    # Mean per-client label entropy, averaged over 5 seeds, falls with alpha.
    def entropy(text: str) -> float:
        values = [_split(text, seed=s).label_entropy().mean() for s in range(5)]
        return float(np.mean(values))

    iid, half, tenth = (
        entropy("iid"),
        entropy("dirichlet:0.5"),
        entropy("dirichlet:0.1"),
    )

    assert iid > 0.99 * np.log(10)
    assert tenth < half < iid
    assert tenth < 0.6 * iid  # measured ~0.5x at alpha 0.1 over 4 clients


def test_quantity_skew_skews_sizes_but_not_labels() -> None:
    spreads = [_split("quantity:0.5", seed=s).sizes for s in range(5)]

    ratio = np.mean([s.max() / max(s.min(), 1) for s in spreads])
    part = _split("quantity:0.5", seed=0, min_size=100)

    assert ratio > 3  # some clients far bigger than others
    assert part.sizes.min() >= 100
    big = int(np.argmax(part.sizes))  # a big client's labels stay near-uniform
    assert part.label_entropy()[big] > 0.97 * np.log(10)


def test_min_size_is_guaranteed_by_redrawing() -> None:
    part = _split("dirichlet:0.1", clients=10, min_size=50)

    assert part.sizes.min() >= 50
    assert part.attempts > 1  # alpha 0.1 over 10 clients: first draws fail


def test_impossible_min_size_fails_with_advice_after_bounded_attempts() -> None:
    with pytest.raises(ConfigError, match=rf"no draw in {MAX_ATTEMPTS}.*raise alpha"):
        _split("dirichlet:0.01", clients=20, min_size=80)


def test_more_clients_than_samples_allow_is_refused_at_once() -> None:
    with pytest.raises(ConfigError, match="cannot give 5 clients 400 samples"):
        _split("iid", clients=5, min_size=400)


@pytest.mark.parametrize(
    ("labels", "clients", "message"),
    [
        (np.array([], dtype=int), 2, "non-empty 1-D integer"),
        (np.array([0.5, 1.0]), 2, "non-empty 1-D integer"),
        (np.array([[0, 1]]), 2, "non-empty 1-D integer"),
        (np.array([0, -1]), 2, "labels must be >= 0"),
        (np.array([0, 1]), 0, "num_clients=0"),
    ],
)
def test_bad_arguments_are_refused(
    labels: np.ndarray, clients: int, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        partition_labels(labels, clients, PartitionSpec(), seed=0)


def test_label_names_must_cover_every_label() -> None:
    with pytest.raises(ConfigError, match="label_names has 2 names"):
        partition_labels([0, 1, 2], 1, PartitionSpec(), seed=0, label_names=["a", "b"])


def test_indices_of_a_client_out_of_range_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"client=4 is invalid: expected 0..3"):
        _split("iid").indices(4)


@pytest.mark.parametrize(
    ("text", "kind", "alpha"),
    [
        ("iid", "iid", None),
        ("dirichlet:0.3", "dirichlet", 0.3),
        ("quantity:2", "quantity", 2.0),
    ],
)
def test_spec_grammar_parses_and_prints_back(
    text: str, kind: str, alpha: float | None
) -> None:
    spec = parse_partition(text)

    assert (spec.kind, spec.alpha) == (kind, alpha)
    assert str(spec) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dirichlet", "dirichlet needs an alpha"),
        ("dirichlet:abc", "alpha 'abc' is not a number"),
        ("dirichlet:0", "alpha=0.0 is invalid"),
        ("quantity:-1", "alpha=-1.0 is invalid"),
        ("dirichlet:nan", "alpha=nan is invalid"),
        ("dirichlet:inf", "alpha=inf is invalid"),
        ("iid:3", "iid takes no alpha"),
        ("shards:2", "unknown kind 'shards'"),
        ("", "unknown kind ''"),
    ],
)
def test_spec_grammar_refuses_bad_text_naming_the_problem(
    text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_partition(text)

    assert "iid | dirichlet:ALPHA | quantity:ALPHA" in str(caught.value)
