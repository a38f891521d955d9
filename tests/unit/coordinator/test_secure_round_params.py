"""round_params: configured degree and threshold become explicit, secure values."""

from __future__ import annotations

import pytest

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.secure.masked_round import round_params


def secure(**settings: object) -> CoordinatorConfig:
    return CoordinatorConfig(
        secure_aggregation=True,
        codec="dense:int8",
        min_clients=3,
        **settings,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("settings", "n", "degree", "threshold"),
    [
        ({}, 4, 3, 3),  # complete graph, fork-safe rule floor((4 + 1) / 2) + 1
        ({"secagg_threshold": 0.67}, 9, 8, 7),  # ceil(0.67 * 9)
        ({"secagg_threshold": 2}, 9, 8, 5),  # raised to floor((k + 1) / 2) + 1
        ({"secagg_threshold": 50}, 9, 8, 9),  # capped at the k + 1 holders
        ({"secagg_degree": 5}, 20, 4, 4),  # rounded down to even (Harary)
        ({"secagg_degree": 30}, 20, 19, 11),  # >= n - 1: complete graph
    ],
)
def test_round_params_are_explicit_and_secure(
    settings: dict[str, object], n: int, degree: int, threshold: int
) -> None:
    params = round_params(secure(**settings), n)
    assert (params.degree, params.threshold) == (degree, threshold)
