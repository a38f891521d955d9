"""`fedgrpc.integrations.hf.FedGrpcCallback` in a stock `transformers.Trainer`.

Real in-thread coordinators, a 2-layer Llama built from a config (no hub),
CPU. The reference is the plain loop `DiLoCoClient` documents, on the same
seeds, data order (sequential sampler) and optimizer, dropout off: the
Trainer's final weights must match it to 1e-6, with and without gradient
accumulation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
import transformers

from fedgrpc.client import DiLoCoClient
from fedgrpc.config import ClientConfig, CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import CoordinatorThread, serve_in_thread
from fedgrpc.errors import ConfigError
from fedgrpc.integrations.hf import FedGrpcCallback

H, ROUNDS, BATCH, SEQ, VOCAB = 2, 2, 4, 8, 50
FAST = ClientConfig(rpc_timeout_s=10, round_wait_s=30, connect_timeout_s=10)


def _coordinator(**overrides: Any) -> AbstractContextManager[CoordinatorThread]:
    config = CoordinatorConfig(
        seed_from_first_client=True, listen="127.0.0.1:0", open_enrollment=True,
        min_clients=1, inner_steps=H, round_timeout_s=30.0,
    ).replace(**overrides)  # fmt: skip
    return serve_in_thread(config)


@pytest.fixture
def coordinator() -> Iterator[CoordinatorThread]:
    with _coordinator() as running:
        yield running


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=SEQ,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )  # fmt: skip
    model: torch.nn.Module = transformers.LlamaForCausalLM(config)
    return model


def _dataset(batches: int) -> list[dict[str, torch.Tensor]]:
    seeded = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (batches * BATCH, SEQ), generator=seeded)
    return [{"input_ids": row, "labels": row} for row in tokens]


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _plain_loop(address: str, accumulation: int) -> torch.Tensor:
    """The documented loop: SGD, `accumulation` micro-batches per optimizer step.

    Each step reports the mean of its micro-batches' losses.
    """
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = _dataset(ROUNDS * H * accumulation)
    with DiLoCoClient(address, model, config=FAST) as client:
        for step in range(ROUNDS * H):
            losses = []
            for micro in range(accumulation):
                rows = data[(step * accumulation + micro) * BATCH :][:BATCH]
                ids = torch.stack([row["input_ids"] for row in rows])
                loss = model(input_ids=ids, labels=ids).loss
                (loss / accumulation).backward()
                losses.append(loss.item())
            optimizer.step()
            optimizer.zero_grad()
            client.step(sum(losses) / accumulation, num_samples=BATCH * accumulation)
        assert client.rounds_completed == ROUNDS
    return _flat(model)


def _trainer(
    model: torch.nn.Module,
    tmp_path: Path,
    accumulation: int = 1,
    steps: int = ROUNDS * H,
) -> Any:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    constant = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=steps,
        per_device_train_batch_size=BATCH, gradient_accumulation_steps=accumulation,
        max_grad_norm=0.0, train_sampling_strategy="sequential", report_to="none",
        save_strategy="no", logging_strategy="no", use_cpu=True, seed=0,
    )  # fmt: skip
    return transformers.Trainer(
        model=model, args=args, train_dataset=_dataset(steps * accumulation),
        optimizers=(optimizer, constant),
    )  # fmt: skip


@pytest.mark.parametrize("accumulation", [1, 2])
def test_trainer_with_the_callback_ends_on_the_plain_loops_weights(
    tmp_path: Path, accumulation: int
) -> None:
    # Arrange: the reference run on its own coordinator.
    with _coordinator() as reference:
        expected = _plain_loop(reference.address, accumulation)
        expected_losses = [r.mean_train_loss for r in reference.status().recent_rounds]

    # Act: the same run through a stock Trainer plus the callback (3 lines).
    with _coordinator() as coordinator:
        model = _model()
        trainer = _trainer(model, tmp_path, accumulation)
        callback = FedGrpcCallback(coordinator.address, config=FAST)
        trainer.add_callback(callback)
        probe = _StatusProbe(coordinator)
        trainer.add_callback(probe)
        trainer.train()
        status = coordinator.status()

    # Assert: same weights, rounds, losses and samples as the plain loop.
    torch.testing.assert_close(_flat(model), expected, rtol=0, atol=1e-6)
    assert callback.client.rounds_completed == ROUNDS
    assert callback.client.model_version == ROUNDS
    assert status.model_version == ROUNDS
    losses = [r.mean_train_loss for r in status.recent_rounds]
    assert losses == pytest.approx(expected_losses, rel=1e-5)
    assert probe.last is not None
    (row,) = probe.last.clients  # taken after the last step, before leaving
    assert row.samples_contributed == ROUNDS * H * BATCH * accumulation


class _StatusProbe(transformers.TrainerCallback):
    """Runs after `FedGrpcCallback`: the coordinator's view after each step."""

    def __init__(self, coordinator: CoordinatorThread) -> None:
        self.coordinator = coordinator
        self.last: Any = None

    def on_step_end(self, *args: Any, **kwargs: Any) -> None:
        self.last = self.coordinator.status()


def test_the_trainer_stops_when_the_federations_run_ends(tmp_path: Path) -> None:
    # Arrange: the coordinator ends its run after one round; the Trainer asks for 5.
    with _coordinator(max_rounds=1) as coordinator:
        model = _model()
        trainer = _trainer(model, tmp_path, steps=5 * H)
        callback = FedGrpcCallback(coordinator.address, config=FAST)
        trainer.add_callback(callback)

        # Act
        trainer.train()

    # Assert: stopped at the first sync point, holding the final global model.
    assert trainer.state.global_step == H
    assert callback.client.finished
    assert callback.client.model_version == 1


@pytest.mark.parametrize("target", ["", "7070", None, ("127.0.0.1", 7070)])
def test_a_target_that_is_no_host_port_string_is_refused_at_once(target: Any) -> None:
    with pytest.raises(
        ConfigError, match=r'target=.* is invalid: expected .*"host:port"'
    ):
        FedGrpcCallback(target)


def test_the_client_is_readable_only_once_training_began(
    coordinator: CoordinatorThread,
) -> None:
    callback = FedGrpcCallback(coordinator.address, config=FAST)

    with pytest.raises(RuntimeError, match="joins when training starts"):
        _ = callback.client


def test_a_model_without_trainable_parameters_is_refused_naming_it(
    coordinator: CoordinatorThread, tmp_path: Path
) -> None:
    # Arrange: every parameter frozen, as a LoRA setup that forgot its adapters.
    model = _model()
    model.requires_grad_(False)
    trainer = _trainer(model, tmp_path)
    trainer.add_callback(FedGrpcCallback(coordinator.address, config=FAST))

    # Act / Assert: refused before any round, naming the model class.
    with pytest.raises(
        ConfigError, match="LlamaForCausalLM has no parameter that requires grad"
    ):
        trainer.train()
    assert coordinator.status().model_version == 0


class _Crash(transformers.TrainerCallback):
    """Runs after `FedGrpcCallback` and raises, as a bug in the loop would."""

    def on_step_end(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug in the training script")


def test_after_a_failed_train_close_leaves_the_federation(
    coordinator: CoordinatorThread, tmp_path: Path
) -> None:
    # Arrange: the Trainer has no callback for a train() that raised.
    trainer = _trainer(_model(), tmp_path)
    callback = FedGrpcCallback(coordinator.address, config=FAST)
    trainer.add_callback(callback)
    trainer.add_callback(_Crash())
    with pytest.raises(RuntimeError, match="a bug in the training script"):
        trainer.train()
    assert [c.client_id for c in coordinator.status().clients] == [
        callback.client.client_id
    ]

    # Act
    callback.close()
    callback.close()  # idempotent

    # Assert: gone (a throwaway key's leave is final); status still readable.
    assert [c.client_id for c in coordinator.status().clients] == []
    assert callback.client.rounds_completed == 0


def test_a_lora_model_in_the_trainer_federates_only_its_adapter(
    coordinator: CoordinatorThread, tmp_path: Path
) -> None:
    # Arrange: PEFT's LoRA on the Trainer's model; the base is frozen.
    lora = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    model = peft.get_peft_model(_model(), lora)
    base = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    adapter = sum(p.numel() for p in model.parameters() if p.requires_grad)
    trainer = _trainer(model, tmp_path)
    callback = FedGrpcCallback(coordinator.address, config=FAST)
    trainer.add_callback(callback)

    # Act
    trainer.train()

    # Assert: the adapter alone came down (join + each round); the base stayed.
    assert callback.client.rounds_completed == ROUNDS
    assert callback.client.bytes_received == (1 + ROUNDS) * 4 * adapter
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items())
