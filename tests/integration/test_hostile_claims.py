"""Issue 13 A.1: a client's sample count and loss are claims, and cannot take the model.

Through real stubs on a real coordinator (`tests.helpers.three_clients`):
two honest clients claim 100 samples each, one hostile client claims as
many as the protocol allows. Before the fix its 2^64 - 1 samples made it
100 % of the global model every round, and its overflowed total broke
GetStatus (UNKNOWN) for good, also after a restart. FedAvg with lr 1
makes new weights = base - the weighted mean, so each applied weight is
checked exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.helpers.federation import expect_status
from tests.helpers.three_clients import N, Trio, make_keys, running_trio, trio_config

Code = grpc.StatusCode
U64_MAX = 2**64 - 1
COUNTER_MAX = 2**63 - 1
HONEST = 100


def _updates(round_id: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(round_id)
    return {name: rng.standard_normal(N).astype(np.float32) for name in "abm"}


def _round(trio: Trio, claims: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Every client pushes with its claim; (weights before, weights after)."""
    status = trio.status()
    _, before = trio.weights(status.model_version)
    updates = _updates(status.round_id)
    for name, samples in claims.items():
        trio.push(name, updates[name], num_samples=samples)
    _, after = trio.weights(status.model_version + 1)
    return before, after - before


def _mean(round_id: int, weights: Mapping[str, float]) -> np.ndarray:
    updates = _updates(round_id)
    total = sum(weights.values())
    return sum(updates[n].astype(np.float64) * w for n, w in weights.items()) / total  # type: ignore[return-value]


def _samples(trio: Trio) -> dict[str, int]:
    ids = {j.client_id: name for name, j in trio.clients.items()}
    return {ids[c.client_id]: c.samples_contributed for c in trio.status().clients}


def test_a_2_64_sample_claim_is_refused_and_a_liar_weighs_at_most_2_honest_clients(
    tmp_path: Path,
) -> None:
    keys, config = make_keys(tmp_path), trio_config(tmp_path)
    liar = {"a": HONEST, "b": HONEST, "m": 10**9}  # the largest claim allowed
    with running_trio(config, keys, np.zeros(N, np.float32)) as trio:
        # The claim that took the model before is refused outright.
        expect_status(
            lambda: trio.push("m", _updates(1)["m"], num_samples=U64_MAX),
            Code.INVALID_ARGUMENT, "max_samples_per_update",
        )  # fmt: skip

        # Round 1: no typical claim known yet, so every update weighs 1.
        _, step = _round(trio, liar)
        expected = -_mean(1, {"a": 1, "b": 1, "m": 1})
        np.testing.assert_allclose(step, expected, rtol=1e-5, atol=1e-5)

        # Round 2: the liar's 10^9 counts as 2 x the median claim (100).
        _, step = _round(trio, liar)
        capped = {"a": HONEST, "b": HONEST, "m": 2 * HONEST}
        np.testing.assert_allclose(step, -_mean(2, capped), rtol=1e-5, atol=1e-5)
        assert _samples(trio) == {"a": 200, "b": 200, "m": 2 * 10**9}

    # After a restart from the checkpoint: status works, and the cap holds
    # from the first round (its reference claim was checkpointed).
    with running_trio(config, keys, seed=None) as trio:
        assert trio.status().model_version == 2
        assert _samples(trio) == {"a": 200, "b": 200, "m": 2 * 10**9}
        _, step = _round(trio, liar)
        np.testing.assert_allclose(step, -_mean(3, capped), rtol=1e-5, atol=1e-5)


def test_counters_saturate_so_status_survives_2_64_claims_and_a_restart(
    tmp_path: Path,
) -> None:
    # An operator who trusts every claim (weighting = samples, no real cap).
    keys = make_keys(tmp_path)
    config = trio_config(tmp_path, weighting="samples", max_samples_per_update=U64_MAX)
    claims = {"a": HONEST, "b": HONEST, "m": U64_MAX}
    with running_trio(config, keys, np.zeros(N, np.float32)) as trio:
        for _ in range(2):  # the second round pushed m's total past 2^64
            _round(trio, claims)
        status = trio.status()  # UNKNOWN before counters saturated
        assert status.model_version == 2
        assert _samples(trio) == {"a": 200, "b": 200, "m": COUNTER_MAX}
    with running_trio(config, keys, seed=None) as trio:
        assert _samples(trio) == {"a": 200, "b": 200, "m": COUNTER_MAX}
        _round(trio, claims)
        assert _samples(trio)["m"] == COUNTER_MAX


@pytest.mark.parametrize("loss", [math.nan, math.inf, -math.inf])
def test_a_non_finite_train_loss_is_refused_and_the_round_goes_on(
    tmp_path: Path, loss: float
) -> None:
    keys, config = make_keys(tmp_path), trio_config(tmp_path)
    with running_trio(config, keys, np.zeros(N, np.float32)) as trio:
        expect_status(
            lambda: trio.push("m", _updates(1)["m"], train_loss=loss),
            Code.INVALID_ARGUMENT, "train_loss",
        )  # fmt: skip
        _, step = _round(trio, {"a": HONEST, "b": HONEST, "m": HONEST})
        np.testing.assert_allclose(
            step, -_mean(1, {"a": 1, "b": 1, "m": 1}), rtol=1e-5, atol=1e-5
        )
        losses = [r.mean_train_loss for r in trio.status().recent_rounds]
        assert losses == [1.0]


@pytest.mark.parametrize("seconds", [math.nan, math.inf, -1.0, 1e12])
def test_an_impossible_compute_claim_is_refused_and_the_round_goes_on(
    tmp_path: Path, seconds: float
) -> None:
    # compute_s only feeds goodput, but a NaN would break the status's JSON
    # and a negative or absurd one would make the figure meaningless.
    keys, config = make_keys(tmp_path), trio_config(tmp_path)
    with running_trio(config, keys, np.zeros(N, np.float32)) as trio:
        expect_status(
            lambda: trio.push("m", _updates(1)["m"], compute_s=seconds),
            Code.INVALID_ARGUMENT, "compute_s",
        )  # fmt: skip
        _round(trio, {"a": HONEST, "b": HONEST, "m": HONEST})
        status = trio.status()
        assert status.model_version == 1
        assert status.compute_offered_s == 0.0  # nothing of the refused claim
