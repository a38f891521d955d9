"""Neighbour graphs: complete below the cut-over, random Harary above; thresholds."""

from __future__ import annotations

import math
from collections import deque

import pytest

from fedgrpc.errors import ConfigError
from fedgrpc.secagg import NeighbourGraph, SecAggParams, choose_neighbourhood
from tests.unit.secagg._federation import client_ids

SEED = bytes(range(32))


def _connected(graph: NeighbourGraph) -> bool:
    start = next(iter(graph.neighbours))
    seen, queue = {start}, deque([start])
    while queue:
        for peer in graph.of(queue.popleft()) - seen:
            seen.add(peer)
            queue.append(peer)
    return len(seen) == len(graph.neighbours)


@pytest.mark.parametrize(
    ("n", "k", "t"), [(3, 2, 3), (5, 4, 4), (8, 7, 5), (32, 31, 18)]
)
def test_small_rounds_use_the_complete_graph(n: int, k: int, t: int) -> None:
    graph = NeighbourGraph.build(client_ids(n), SEED, SecAggParams())

    assert (graph.degree, graph.threshold) == (k, t)
    assert all(graph.of(c) == set(client_ids(n)) - {c} for c in client_ids(n))


@pytest.mark.parametrize(("n", "k"), [(150, None), (400, None), (60, 10), (61, 6)])
def test_harary_graph_is_regular_symmetric_and_connected(n: int, k) -> None:
    params = SecAggParams(complete_graph_max_clients=50, degree=k)
    graph = NeighbourGraph.build(client_ids(n), SEED, params)

    assert graph.degree < n - 1
    assert graph.degree % 2 == 0
    for c in client_ids(n):
        assert len(graph.of(c)) == graph.degree
        assert c not in graph.of(c)
        assert all(c in graph.of(peer) for peer in graph.of(c))
    assert _connected(graph)


def test_graph_is_a_function_of_the_public_seed() -> None:
    params = SecAggParams(complete_graph_max_clients=10, degree=6)
    ids = client_ids(40)

    first = NeighbourGraph.build(ids, SEED, params)
    again = NeighbourGraph.build(ids, SEED, params)
    other = NeighbourGraph.build(ids, bytes(32), params)

    assert first == again
    assert first.neighbours != other.neighbours


def test_harary_degree_grows_logarithmically_and_meets_its_bounds() -> None:
    params = SecAggParams()
    sizes = (1_000, 10_000, 100_000)

    chosen = [choose_neighbourhood(n, params) for n in sizes]

    for (k, t), n in zip(chosen, sizes, strict=True):
        assert (k + 1) // 2 < t <= k
        assert (
            n * (params.corrupt_fraction + params.dropout_fraction) ** (k // 2)
            <= 2.0**-params.security_bits
        )
        assert k <= 12 * math.log2(n)
    # Ten times the clients costs a roughly constant number of extra neighbours.
    assert chosen[2][0] - chosen[1][0] <= 2 * (chosen[1][0] - chosen[0][0]) + 4


@pytest.mark.parametrize(
    ("n", "params", "field"),
    [
        (2, SecAggParams(), "participants"),
        (10, SecAggParams(degree=5), "degree"),
        (10, SecAggParams(degree=10), "degree"),
        (10, SecAggParams(threshold=5), "threshold"),
        (10, SecAggParams(threshold=11), "threshold"),
        (10, SecAggParams(degree=4, threshold=2), "threshold"),
    ],
)
def test_unsafe_or_impossible_parameters_are_config_errors(n, params, field) -> None:
    with pytest.raises(ConfigError, match=field):
        choose_neighbourhood(n, params)


def test_threshold_override_must_stay_above_half_the_holders() -> None:
    # k = 9 neighbours + the owner = 10 holders: t in 6..10.
    assert choose_neighbourhood(10, SecAggParams(threshold=6)) == (9, 6)
    assert choose_neighbourhood(10, SecAggParams(threshold=10)) == (9, 10)
