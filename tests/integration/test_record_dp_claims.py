"""Issue 14: record-level DP claims in signed update headers, through real stubs.

A real coordinator (`tests.helpers.three_clients`, FedAvg lr 1) and three
clients that sign their headers: the ε(δ) each claims is shown per client
in GetStatus and, aggregated, in metrics; a claim no accountant makes (NaN,
infinite or negative ε, δ outside (0, 1), a changed δ, an ε or step count
below the client's last) is refused with INVALID_ARGUMENT before a chunk
counts, and the round goes on; a claim edited after signing fails the
signature; the bar survives a restart from the checkpoint.
"""

from __future__ import annotations

import math
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedgrpc.domain.requests import RecordPrivacyClaim as Claim
from tests.helpers.federation import expect_status
from tests.helpers.metrics import scrape
from tests.helpers.raw import UpdateParams
from tests.helpers.three_clients import (
    N,
    Trio,
    make_keys,
    running_trio,
    trio_config,
    update,
)

Code = grpc.StatusCode
DELTA = 1e-5


def _values(name: str, round_id: int) -> np.ndarray:
    rng = np.random.default_rng([round_id, ord(name)])
    return rng.standard_normal(N).astype(np.float32)


def _push(trio: Trio, name: str, claim: Claim | None) -> object:
    round_id = trio.status().round_id
    return trio.push(name, _values(name, round_id), record_dp=claim)


def _round(trio: Trio, claims: dict[str, Claim | None]) -> None:
    """Every client pushes with its claim; the round must apply."""
    version = trio.status().model_version
    for name, claim in claims.items():
        _push(trio, name, claim)
    assert trio.weights(version + 1)[0] == version + 1


def _claims(trio: Trio) -> dict[str, tuple[float, float, int]]:
    ids = {j.client_id: name for name, j in trio.clients.items()}
    return {
        ids[c.client_id]: (c.record_dp_epsilon, c.record_dp_delta, c.record_dp_steps)
        for c in trio.status().clients
    }


@pytest.mark.parametrize(
    ("claim", "fragment"),
    [
        (Claim(math.nan, DELTA, 10), "record_dp_epsilon is nan"),
        (Claim(math.inf, DELTA, 10), "record_dp_epsilon is inf"),
        (Claim(-0.5, DELTA, 10), "record_dp_epsilon is -0.5"),
        (Claim(1.0, 0.0, 10), "record_dp_delta is 0.0"),
        (Claim(1.0, 1.0, 10), "record_dp_delta is 1.0"),
        (Claim(1.0, math.nan, 10), "δ must be in (0, 1)"),
    ],
)
def test_an_impossible_claim_is_refused_and_the_round_goes_on(
    tmp_path: Path, claim: Claim, fragment: str
) -> None:
    keys, config = make_keys(tmp_path), trio_config(tmp_path)
    with running_trio(config, keys, np.zeros(N, np.float32)) as trio:
        expect_status(lambda: _push(trio, "m", claim), Code.INVALID_ARGUMENT, fragment)
        # The refused client pushes an honest update in the same round.
        good = Claim(1.0, DELTA, 10)
        _round(trio, {"a": good, "b": None, "m": good})
        assert _claims(trio)["m"] == (1.0, DELTA, 10)


def test_claims_show_in_status_and_metrics_and_never_decrease_even_after_restart(
    tmp_path: Path,
) -> None:
    keys = make_keys(tmp_path)
    config = trio_config(tmp_path, metrics_listen="127.0.0.1:0")
    with running_trio(config, keys, np.zeros(N, np.float32)) as trio:
        _round(trio, {"a": Claim(1.0, DELTA, 10), "b": None, "m": Claim(2.5, DELTA, 5)})
        assert _claims(trio) == {
            "a": (1.0, DELTA, 10), "b": (0.0, 0.0, 0), "m": (2.5, DELTA, 5)
        }  # fmt: skip
        _, samples = scrape(trio.coordinator)
        assert samples["fedgrpc_record_dp_epsilon_max"] == 2.5
        assert samples["fedgrpc_record_dp_clients"] == 2

        # Round 2: accounting never decreases, and δ stays what it was.
        expect_status(lambda: _push(trio, "a", Claim(0.9, DELTA, 20)),
                      Code.INVALID_ARGUMENT, "never decreases")  # fmt: skip
        expect_status(lambda: _push(trio, "a", Claim(1.5, DELTA, 9)),
                      Code.INVALID_ARGUMENT, "never decreases")  # fmt: skip
        expect_status(lambda: _push(trio, "a", Claim(1.5, 1e-6, 20)),
                      Code.INVALID_ARGUMENT, "record_dp_delta changed")  # fmt: skip
        _round(trio, {"a": Claim(1.5, DELTA, 20), "b": None, "m": Claim(2.5, DELTA, 5)})
        assert _claims(trio)["a"] == (1.5, DELTA, 20)
        assert _claims(trio)["m"] == (2.5, DELTA, 5)  # an equal claim is honest

    # The checkpoint keeps each client's last claim: the bar holds.
    with running_trio(config, keys, seed=None) as trio:
        assert _claims(trio)["a"] == (1.5, DELTA, 20)
        expect_status(lambda: _push(trio, "a", Claim(0.1, DELTA, 1)),
                      Code.INVALID_ARGUMENT, "never decreases")  # fmt: skip


def test_a_claim_edited_after_signing_fails_the_signature(tmp_path: Path) -> None:
    keys, config = make_keys(tmp_path), trio_config(tmp_path)
    with running_trio(config, keys, np.zeros(N, np.float32)) as trio:
        status = trio.status()
        params = UpdateParams(status.round_id, status.model_version,
                              record_dp=Claim(3.0, DELTA, 30))  # fmt: skip
        messages = update(trio.clients["m"], _values("m", 1), params)
        messages[0].header.record_dp_epsilon = 0.1  # a man in the middle lowers it
        expect_status(
            lambda: trio.service.PushUpdate(iter(messages), timeout=10),
            Code.PERMISSION_DENIED, "signature",
        )  # fmt: skip
        assert _claims(trio)["m"] == (0.0, 0.0, 0)
