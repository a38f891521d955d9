"""DiLoCoClient with a lossy codec: what is not sent waits in the residual."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import fedgrpc
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import serve_in_thread
from fedgrpc.wire.tensors import flatten_fp32, spec_from_module


def _flat(model: torch.nn.Module) -> np.ndarray:
    spec = spec_from_module(model)
    return flatten_fp32(list(model.parameters()), spec).numpy().copy()


@dataclass
class _Round:
    """One top-k round of a seeding client: the weights around it."""

    client: fedgrpc.DiLoCoClient
    global_before: np.ndarray
    local: np.ndarray
    global_after: np.ndarray

    @property
    def residual(self) -> np.ndarray:
        compressed = self.client._sync.compressed
        assert compressed is not None
        return compressed.feedback.residual  # type: ignore[no-any-return]


@contextmanager
def _one_topk_round(values: str, bits: int) -> Iterator[_Round]:
    """A coordinator with `topk:0.25:<values>`, one client, one applied round
    (fedavg, lr 1: global -= mean of what was sent) after a random step."""
    config = CoordinatorConfig(
        seed_from_first_client=True,
        listen="127.0.0.1:0",
        open_enrollment=True,
        min_clients=1,
        inner_steps=1,
        outer_optimizer="fedavg",
        codec=f"topk:0.25:{values}",
    )
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 32)
    compression = fedgrpc.TopK(density=0.25, bits=bits)  # type: ignore[arg-type]
    with (
        serve_in_thread(config) as coordinator,
        fedgrpc.DiLoCoClient(
            coordinator.address, model, compression=compression
        ) as client,
    ):
        global_before = _flat(model)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn_like(param))
        local = _flat(model)
        assert client.step() is True
        assert client.model_version == 1
        # The new global weights are loaded in place after the round.
        yield _Round(client, global_before, local, _flat(model))


def test_topk_round_keeps_unsent_mass_in_the_residual() -> None:
    # fp32 values are lossless: only the selection loses mass.
    with _one_topk_round("fp32", 32) as r:
        delta = r.global_before - r.local
        sent = r.global_before - r.global_after
        assert 0 < np.count_nonzero(sent) <= 0.25 * delta.size + 4
        np.testing.assert_allclose(sent + r.residual, delta, rtol=1e-6, atol=1e-6)
        seed_bytes = delta.size * 4  # this client seeded the model in raw fp32
        assert r.client.bytes_sent - seed_bytes < 0.4 * delta.size * 4


def test_compression_must_match_the_coordinator() -> None:
    config = CoordinatorConfig(
        seed_from_first_client=True,
        listen="127.0.0.1:0",
        open_enrollment=True,
        min_clients=1,
        codec="topk:0.1",
    )
    with (
        serve_in_thread(config) as coordinator,
        pytest.raises(fedgrpc.IncompatibleClientError, match="dense:bf16"),
    ):
        fedgrpc.DiLoCoClient(
            coordinator.address,
            torch.nn.Linear(4, 2),
            compression=fedgrpc.Dense(values="bf16"),
        )


def test_client_uses_the_announced_feedback_decay() -> None:
    config = CoordinatorConfig(
        seed_from_first_client=True,
        listen="127.0.0.1:0",
        open_enrollment=True,
        min_clients=1,
        outer_optimizer="sparseloco",
        codec="topk:0.1:int8",
    )
    with (
        serve_in_thread(config) as coordinator,
        fedgrpc.DiLoCoClient(coordinator.address, torch.nn.Linear(8, 4)) as client,
    ):
        compressed = client._sync.compressed
        assert compressed is not None
        assert compressed.feedback.decay == pytest.approx(0.95)


def test_int2_topk_round_sends_2_bit_values_and_keeps_the_rest() -> None:
    """`topk:...:int2` end to end: announced, encoded, decoded into the sum."""
    with _one_topk_round("int2", 2) as r:
        delta = r.global_before - r.local
        sent = r.global_before - r.global_after
        # Every sent value keeps its coordinate's sign (top-k values lie above
        # the int2 scale), and the rest (unsent and rounding) is in e.
        nz = np.flatnonzero(sent)
        assert 0 < nz.size <= 0.25 * delta.size + 4
        assert np.array_equal(np.sign(sent[nz]), np.sign(delta[nz]))
        np.testing.assert_allclose(sent + r.residual, delta, rtol=1e-5, atol=1e-5)
        seed_bytes = delta.size * 4
        # 25 % of coordinates at ~2.25 bits plus indices: < 1/8 of fp32.
        assert r.client.bytes_sent - seed_bytes < delta.size * 4 / 8
