"""Central client-level DP through real gRPC: clip, noise, ε reported, budget obeyed.

A closed federation (two allowed keys, FedAvg lr 1, so the new weights are
exactly base - mean) on a real coordinator over 127.0.0.1:0. Every ε the
coordinator reports is checked against dp-accounting composed here directly.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fedgrpc
from fedgrpc._proto.v1 import admin_pb2
from fedgrpc._proto.v1 import coordinator_pb2 as pb
from fedgrpc.client.admin import fetch_status
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import serve_in_thread
from fedgrpc.errors import ConfigError
from fedgrpc.privacy import PrivacyLedger, Release
from tests.helpers.eventually import eventually
from tests.helpers.federation import CHUNK, Fed, N, closed_federation
from tests.helpers.metrics import scrape
from tests.helpers.raw import admin_status, pull, update_messages

S, Z, DELTA = 1.0, 0.5, 1e-5
CENTRAL: dict[str, Any] = {
    "privacy": "central", "dp_clip_norm": S, "dp_noise_multiplier": Z,
    "dp_delta": DELTA, "weighting": "equal",
}  # fmt: skip


def _epsilon(rounds: int, z: float = Z) -> float:
    return PrivacyLedger("rdp", releases=[Release(z, count=rounds)]).epsilon(DELTA)


def _big_updates(round_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Two updates of norm ~250 each: both get clipped to S."""
    rng = np.random.default_rng(round_id)
    return tuple(rng.standard_normal(N).astype(np.float32) * 10 for _ in range(2))  # type: ignore[return-value]


def _push_round(fed: Fed) -> tuple[int, np.ndarray, np.ndarray]:
    """Both clients push for the open round; returns (round, base, clipped mean)."""
    status = fed.status()
    round_id, version = status.round_id, status.model_version
    _, base = pull(fed.service, fed.a, min_version=version)
    ga, gb = _big_updates(round_id)
    for joined, g in ((fed.a, ga), (fed.b, gb)):
        fed.push(update_messages(joined, g, round_id=round_id, base_version=version,
                                 chunk_coords=CHUNK))  # fmt: skip
    clipped = [g * (S / np.linalg.norm(g.astype(np.float64))) for g in (ga, gb)]
    return round_id, base, (clipped[0] + clipped[1]) / 2


def _session(fed: Fed, stop: threading.Event) -> Iterator[pb.SessionRequest]:
    yield pb.SessionRequest(
        open=pb.SessionOpen(
            client_id=fed.a.client_id, session_token=fed.a.session_token
        )
    )
    stop.wait(30)


def test_central_dp_clips_noises_and_reports_growing_epsilon(tmp_path: Path) -> None:
    settings = {**CENTRAL, "metrics_listen": "127.0.0.1:0"}
    with closed_federation(tmp_path, **settings) as fed:
        stop = threading.Event()
        events = fed.service.Session(_session(fed, stop), timeout=30)
        epsilons, closed = [], []
        for _ in range(3):
            round_id, base, clean = _push_round(fed)
            version, weights = pull(fed.service, fed.a, min_version=round_id)
            assert version == round_id
            # FedAvg lr 1: base - (clipped mean + noise); noise std z·S/n
            noise = (base - clean) - weights
            assert np.std(noise) == pytest.approx(Z * S / 2, rel=0.2)
            assert abs(np.mean(noise)) < 0.1
            status = admin_status(fed.a)  # GetStatus through real gRPC
            epsilons.append(status.privacy_epsilon)
            event = next(e for e in events if e.WhichOneof("event") == "round_closed")
            closed.append(event.round_closed)
        stop.set()
        events.cancel()
        _, metrics = scrape(fed.coordinator)
        seen = fetch_status(fed.coordinator.address)  # what `fedgrpc status` reads

    assert epsilons == pytest.approx([_epsilon(r) for r in (1, 2, 3)], rel=1e-9)
    assert epsilons[0] < epsilons[1] < epsilons[2]
    assert [c.privacy_epsilon for c in closed] == pytest.approx(epsilons, rel=1e-9)
    assert {(c.privacy_delta, c.dp_clip_norm, c.dp_noise_multiplier)
            for c in closed} == {(DELTA, S, Z)}  # fmt: skip
    assert status.privacy == "central"
    assert status.dp_accountant == "rdp/add_or_remove_one"
    assert [r.privacy_epsilon for r in status.recent_rounds] == pytest.approx(epsilons)
    assert metrics["fedgrpc_privacy_epsilon"] == pytest.approx(epsilons[-1])
    assert metrics["fedgrpc_dp_clip_norm"] == S
    assert seen.privacy.epsilon == epsilons[-1]
    assert (seen.privacy.mode, seen.privacy.clip_norm) == ("central", S)
    assert [r.privacy_epsilon for r in seen.recent_rounds] == pytest.approx(epsilons)


def test_max_epsilon_finishes_the_run_without_applying_the_round_past_it(
    tmp_path: Path,
) -> None:
    # Room for one round, not two: round 2 must be refused, not applied.
    budget = (_epsilon(1) + _epsilon(2)) / 2
    settings = {**CENTRAL, "max_epsilon": budget,
                "checkpoint_dir": str(tmp_path / "ckpt")}  # fmt: skip
    with closed_federation(tmp_path, **settings) as fed:
        _push_round(fed)
        _, after_one = pull(fed.service, fed.a, min_version=1)
        round_id, _, _ = _push_round(fed)
        eventually(lambda: _assert_finished(fed), timeout_s=10)
        status = admin_status(fed.a)
        version, weights = pull(fed.service, fed.a, min_version=1)
        config = fed.coordinator.running.runtime.config

    assert round_id == 2
    assert version == 1  # round 2 was not applied
    np.testing.assert_array_equal(weights, after_one)
    last = status.recent_rounds[-1]
    assert last.privacy_exhausted
    assert "privacy budget" in last.reason
    assert "max_epsilon" in last.reason
    assert status.privacy_epsilon == pytest.approx(_epsilon(1), rel=1e-9)
    assert status.max_epsilon == budget

    # A restart resumes the same ε, and the run stays finished.
    with serve_in_thread(config) as again:
        resumed = again.status()
    assert resumed.privacy_epsilon == status.privacy_epsilon
    assert resumed.phase == status.phase
    assert resumed.model_version == 1


def _assert_finished(fed: Fed) -> bool:
    return fed.status().phase == admin_pb2.ROUND_PHASE_FINISHED


def test_a_restart_resumes_the_same_epsilon_and_keeps_counting(tmp_path: Path) -> None:
    settings = {**CENTRAL, "checkpoint_dir": str(tmp_path / "ckpt")}
    with closed_federation(tmp_path, **settings) as fed:
        _push_round(fed)
        _push_round(fed)
        before = fed.status().privacy_epsilon
        config = fed.coordinator.running.runtime.config
    with serve_in_thread(config) as again:
        assert again.status().privacy_epsilon == before
    assert before == pytest.approx(_epsilon(2), rel=1e-9)


def _refusal(**overrides: Any) -> str:
    base: dict[str, Any] = {"listen": "127.0.0.1:0", "open_enrollment": True,
                            "seed_from_first_client": True, **CENTRAL}  # fmt: skip
    config = CoordinatorConfig(**{**base, **overrides})
    coordinator = fedgrpc.Coordinator(config)
    with pytest.raises(ConfigError) as info:
        coordinator.start()
    coordinator.stop()
    return str(info.value)


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"secure_aggregation": True, "codec": "dense:int8", "min_clients": 3},
         ("privacy = 'central'", "secure_aggregation = true")),
        ({"aggregator": "median"}, ("privacy = 'central'", "aggregator = 'median'")),
        ({"norm_bound": 3.0}, ("privacy = 'central'", "norm_bound")),
        ({"accumulator": "spool"}, ("privacy = 'central'", "accumulator = 'spool'")),
        ({"weighting": "capped"}, ("privacy = 'central'", "weighting = 'capped'")),
        ({"trust": "on"}, ("privacy = 'central'", "trust = 'on'")),
        ({"selection": "loss", "clients_per_round": 2},
         ("privacy = 'central'", "selection = 'loss'")),
        ({"selection": "random", "clients_per_round": 2, "dp_accountant": "pld"},
         ("selection = 'random'", "dp_accountant = 'pld'")),
        ({"dp_noise_multiplier": 0.0, "dp_target_epsilon": 3.0},
         ("dp_target_epsilon", "max_rounds = 0")),
        ({"dp_noise_multiplier": 0.0, "dp_target_epsilon": 1e-4, "max_rounds": 10**6},
         ("out of reach",)),
        ({"dp_noise_multiplier": 0.0, "dp_target_epsilon": 8.0, "max_rounds": 10,
          "max_epsilon": 4.0}, ("dp_target_epsilon = 8", "max_epsilon = 4")),
        ({"max_epsilon": 0.01}, ("max_epsilon = 0.01", "one round")),
        ({"dp_adaptive_clip_quantile": 0.5, "dp_clip_count_noise": 0.1},
         ("dp_clip_count_noise",)),
    ],
)  # fmt: skip
def test_settings_central_dp_cannot_hold_under_are_refused_at_start(
    overrides: dict[str, Any], names: tuple[str, ...]
) -> None:
    message = _refusal(**overrides)
    for name in names:
        assert name in message, message


def test_a_target_epsilon_calibrates_z_to_spend_it_over_max_rounds(
    tmp_path: Path,
) -> None:
    settings = {**CENTRAL, "dp_noise_multiplier": 0.0, "dp_target_epsilon": 2.0,
                "max_rounds": 5}  # fmt: skip
    with closed_federation(tmp_path, **settings) as fed:
        z = fed.status().dp_noise_multiplier
    spent = PrivacyLedger("rdp", releases=[Release(z, count=5)]).epsilon(DELTA)
    assert 1.9 < spent <= 2.0 + 1e-6


def test_adaptive_clipping_raises_s_while_every_update_is_clipped(
    tmp_path: Path,
) -> None:
    # Updates of norm ~250, S from 1: nothing is unclipped, so S grows by
    # ~exp(0.5 x 0.5) a round; the count's noise (sigma_b = 0.3, n = 2) moves
    # log S by ~0.075 a round, far less. The ledger still accounts z.
    settings = {**CENTRAL, "dp_adaptive_clip_quantile": 0.5,
                "dp_clip_learning_rate": 0.5, "dp_clip_count_noise": 0.3}  # fmt: skip
    with closed_federation(tmp_path, **settings) as fed:
        clips = []
        for round_id in (1, 2, 3):
            _push_round_unchecked(fed)
            # the new version is pulled before the round's record is kept
            eventually(partial(_has_closed, fed, round_id), 10)
            clips.append(admin_status(fed.a).recent_rounds[-1].dp_clip_norm)
        status = admin_status(fed.a)
    assert clips[0] == S
    assert clips[0] < clips[1] < clips[2] < status.dp_clip_norm
    assert status.privacy_epsilon == pytest.approx(_epsilon(3), rel=1e-9)


def _has_closed(fed: Fed, round_id: int) -> bool:
    return len(fed.status().recent_rounds) == round_id


def _push_round_unchecked(fed: Fed) -> None:
    """Both clients push big updates for the open round; wait until it applied."""
    status = fed.status()
    round_id, version = status.round_id, status.model_version
    for joined, g in zip((fed.a, fed.b), _big_updates(round_id), strict=True):
        fed.push(update_messages(joined, g, round_id=round_id, base_version=version,
                                 chunk_coords=CHUNK))  # fmt: skip
    pull(fed.service, fed.a, min_version=version + 1)
