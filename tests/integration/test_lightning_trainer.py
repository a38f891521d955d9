"""`fedgrpc.integrations.lightning.FedGrpcCallback` in a `lightning.pytorch.Trainer`.

Real in-thread coordinators, a small MLP LightningModule, CPU. The
reference is the plain loop `DiLoCoClient` documents, on the same seeds,
data order (no shuffling) and optimizer: Lightning's final weights must
match it to 1e-6, with and without gradient accumulation (one client step
per optimizer step, not per batch).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedgrpc.client import DiLoCoClient
from fedgrpc.config import ClientConfig, CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import CoordinatorThread, serve_in_thread
from fedgrpc.errors import ConfigError
from fedgrpc.integrations.lightning import FedGrpcCallback

H, ROUNDS, BATCH, IN, OUT = 3, 2, 4, 10, 3
FAST = ClientConfig(rpc_timeout_s=10, round_wait_s=30, connect_timeout_s=10)


def _coordinator(**overrides: Any) -> AbstractContextManager[CoordinatorThread]:
    config = CoordinatorConfig(
        seed_from_first_client=True,
        listen="127.0.0.1:0",
        open_enrollment=True,
        min_clients=1,
        inner_steps=H,
        round_timeout_s=30.0,
    ).replace(**overrides)
    return serve_in_thread(config)


@pytest.fixture
def coordinator() -> Iterator[CoordinatorThread]:
    with _coordinator() as running:
        yield running


@pytest.fixture(autouse=True)
def _quiet_lightning() -> None:
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(IN, 16), nn.Tanh(), nn.Linear(16, OUT))


class Regressor(pl.LightningModule):
    """A small MLP regression, SGD: what a user's module looks like."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss: torch.Tensor = nn.functional.mse_loss(self.net(x), y)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _data(batches: int) -> TensorDataset:
    seeded = torch.Generator().manual_seed(1)
    x = torch.randn(batches * BATCH, IN, generator=seeded)
    return TensorDataset(x, x[:, :OUT].sin())


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _plain_loop(address: str, accumulation: int) -> torch.Tensor:
    """The documented loop; a step reports its micro-batches' mean loss."""
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(_data(ROUNDS * H * accumulation), batch_size=BATCH)
    batches = iter(loader)
    with DiLoCoClient(address, model, config=FAST) as client:
        for _ in range(ROUNDS * H):
            losses = []
            for _ in range(accumulation):
                x, y = next(batches)
                loss = nn.functional.mse_loss(model(x), y)
                (loss / accumulation).backward()
                losses.append(loss.item())
            optimizer.step()
            optimizer.zero_grad()
            client.step(sum(losses) / accumulation, num_samples=BATCH * accumulation)
        assert client.rounds_completed == ROUNDS
    return _flat(model)


def _trainer(callbacks: list[Any], steps: int, accumulation: int = 1) -> Any:
    return pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        accumulate_grad_batches=accumulation,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


class _StatusProbe(pl.Callback):
    """Runs after `FedGrpcCallback`: the coordinator's view after each batch."""

    def __init__(self, coordinator: CoordinatorThread) -> None:
        self.coordinator = coordinator
        self.last: Any = None

    def on_train_batch_end(self, *args: Any) -> None:
        self.last = self.coordinator.status()


@pytest.mark.parametrize("accumulation", [1, 2])
def test_lightning_with_the_callback_ends_on_the_plain_loops_weights(
    accumulation: int,
) -> None:
    # Arrange: the reference run on its own coordinator.
    with _coordinator() as reference:
        expected = _plain_loop(reference.address, accumulation)
        expected_losses = [r.mean_train_loss for r in reference.status().recent_rounds]

    # Act: the same run through Lightning plus the callback.
    with _coordinator() as coordinator:
        module = Regressor()
        callback = FedGrpcCallback(coordinator.address, config=FAST)
        probe = _StatusProbe(coordinator)
        trainer = _trainer([callback, probe], ROUNDS * H, accumulation)
        loader = DataLoader(_data(ROUNDS * H * accumulation), batch_size=BATCH)
        trainer.fit(module, loader)
        status = coordinator.status()

    # Assert: same weights, rounds, losses and samples as the plain loop.
    torch.testing.assert_close(_flat(module), expected, rtol=0, atol=1e-6)
    assert callback.client.rounds_completed == ROUNDS
    assert status.model_version == ROUNDS
    losses = [r.mean_train_loss for r in status.recent_rounds]
    assert losses == pytest.approx(expected_losses, rel=1e-5)
    (row,) = probe.last.clients  # taken after the last batch, before leaving
    assert row.samples_contributed == ROUNDS * H * BATCH * accumulation


def test_lightning_stops_when_the_federations_run_ends() -> None:
    with _coordinator(max_rounds=1) as coordinator:
        callback = FedGrpcCallback(coordinator.address, config=FAST)
        trainer = _trainer([callback], steps=5 * H)

        trainer.fit(Regressor(), DataLoader(_data(5 * H), batch_size=BATCH))

    assert trainer.global_step == H
    assert callback.client.finished
    assert callback.client.model_version == 1


def test_a_module_without_trainable_parameters_is_refused_naming_it(
    coordinator: CoordinatorThread,
) -> None:
    module = Regressor()
    module.requires_grad_(False)
    trainer = _trainer([FedGrpcCallback(coordinator.address, config=FAST)], steps=H)

    with pytest.raises(
        ConfigError, match="Regressor has no parameter that requires grad"
    ):
        trainer.fit(module, DataLoader(_data(H), batch_size=BATCH))
    assert coordinator.status().model_version == 0


def test_a_wrong_target_is_refused_when_the_callback_is_made() -> None:
    with pytest.raises(ConfigError, match=r"target='localhost' is invalid"):
        FedGrpcCallback("localhost")


class _Failing(Regressor):
    """Raises in its second training step, as a user's bug would."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if batch_idx == 1:
            raise RuntimeError("a bug in training_step")
        return super().training_step(batch, batch_idx)


def test_a_failing_fit_leaves_the_federation_at_once(
    coordinator: CoordinatorThread,
) -> None:
    # Arrange
    callback = FedGrpcCallback(coordinator.address, config=FAST)
    trainer = _trainer([callback], steps=H)

    # Act
    with pytest.raises(RuntimeError, match="a bug in training_step"):
        trainer.fit(_Failing(), DataLoader(_data(H), batch_size=BATCH))

    # Assert: joined, then left (a throwaway key's leave is final), so no
    # round waits round_timeout_s for it.
    assert callback.client.client_id
    assert [c.client_id for c in coordinator.status().clients] == []
