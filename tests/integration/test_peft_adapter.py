"""LoRA adapters through a real coordinator: only the adapter travels, and
`save_adapter` writes the global one in PEFT's format.

Two clients on threads, each a 2-layer Llama built from the same config and
seed (no hub), LoRA rank 8 on the attention projections, against an
in-thread coordinator. The saved directory must load with
`PeftModel.from_pretrained(base_model, directory)` into a fresh base model
and hold exactly the federated adapter.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
import transformers
from torch import nn

from fedgrpc.client import DiLoCoClient
from fedgrpc.config import ClientConfig, CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import serve_in_thread
from fedgrpc.errors import ConfigError
from fedgrpc.integrations.peft import (
    adapter_parameters,
    save_adapter,
    save_init_adapter,
)

H, ROUNDS, BATCH, SEQ, VOCAB, RANK = 2, 2, 4, 8, 50, 8
FAST = ClientConfig(rpc_timeout_s=10, round_wait_s=30, connect_timeout_s=10)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def _base() -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)  # every client and the loader: the same frozen base
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=SEQ,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config)


def _lora() -> nn.Module:
    config = peft.LoraConfig(r=RANK, target_modules=TARGETS, lora_dropout=0.0)
    model: nn.Module = peft.get_peft_model(_base(), config)
    return model


def _lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors, keyed without PEFT's adapter name."""
    return {
        k.replace(".default", ""): v.clone()
        for k, v in model.state_dict().items()
        if "lora_" in k
    }


def _train(
    address: str, index: int, model: nn.Module, out: dict[str, Any], tmp_path: Path
) -> None:
    try:
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-2)
        data = torch.Generator().manual_seed(10 + index)  # each its own data

        def one_step() -> torch.Tensor:
            ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=data)
            loss: torch.Tensor = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            return loss

        with DiLoCoClient(address, model, config=FAST) as client:
            for _ in range(ROUNDS * H):
                client.step(one_step(), num_samples=BATCH)
            out["global"] = _lora_state(model)  # just after a sync point
            out["bytes_received"] = client.bytes_received
            one_step()  # local progress past the last round
            out["local"] = _lora_state(model)
            out["saved_global"] = save_adapter(
                model, tmp_path / f"global{index}", client=client
            )
            out["saved_local"] = save_adapter(model, tmp_path / f"local{index}")
        out["adapter_numel"] = sum(
            t.numel() for t in adapter_parameters(model).values()
        )
        out["numel"] = sum(p.numel() for p in model.parameters())
    except BaseException as exc:
        out["error"] = exc


def _loaded(directory: Path) -> nn.Module:
    model: nn.Module = peft.PeftModel.from_pretrained(_base(), str(directory))
    return model


def test_only_the_adapter_travels_and_the_saved_global_adapter_loads_in_peft(
    tmp_path: Path,
) -> None:
    # Arrange
    config = CoordinatorConfig(
        seed_from_first_client=True, listen="127.0.0.1:0", open_enrollment=True,
        min_clients=2, inner_steps=H, round_timeout_s=30.0,
    )  # fmt: skip
    outs: list[dict[str, Any]] = [{}, {}]
    # Built here, not in the threads: the base's init draws from torch's global
    # RNG, and interleaved draws would give the clients different frozen bases
    # (which Join refuses: the frozen digest).
    models = [_lora(), _lora()]

    # Act: two LoRA clients federate ROUNDS rounds, then save.
    with serve_in_thread(config) as coordinator:
        threads = [
            threading.Thread(
                target=_train,
                args=(coordinator.address, i, models[i], outs[i], tmp_path),
            )
            for i in (0, 1)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    a, b = outs
    assert "error" not in a, repr(a.get("error"))
    assert "error" not in b, repr(b.get("error"))

    # Assert: the adapter alone travelled (rank 8 on 4 projections x 2 layers).
    assert a["adapter_numel"] == 2 * 4 * RANK * (16 + 16)
    assert a["bytes_received"] == (1 + ROUNDS) * a["adapter_numel"] * 4
    assert a["adapter_numel"] < 0.25 * a["numel"]
    # Both clients ended the rounds on one global adapter, then moved on locally.
    for key, tensor in a["global"].items():
        assert torch.equal(tensor, b["global"][key]), key
    assert any(not torch.equal(a["local"][k], a["global"][k]) for k in a["global"])
    # Saved with the client: the global adapter, loadable by PEFT, bit-exact.
    loaded = _lora_state(_loaded(a["saved_global"]))
    assert loaded.keys() == a["global"].keys()
    for key, tensor in a["global"].items():
        assert torch.equal(loaded[key], tensor), key
    # Saved without it: what the model held, here the local progress.
    local = _lora_state(_loaded(a["saved_local"]))
    for key, tensor in a["local"].items():
        assert torch.equal(local[key], tensor), key


def test_the_loaded_adapter_computes_what_the_federated_model_did(
    tmp_path: Path,
) -> None:
    # A freshly wrapped model's adapter (B = 0) round-trips through the files.
    model = _lora()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    ids = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(3))

    loaded = _loaded(save_adapter(model, tmp_path / "adapter"))

    torch.testing.assert_close(
        loaded(input_ids=ids).logits, model(input_ids=ids).logits
    )


def test_save_adapter_refuses_a_model_that_is_not_a_peft_model(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"needs the peft\.PeftModel .* got a LlamaForCausalLM"
    ):
        save_adapter(_base(), tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()


def test_a_coordinator_started_from_save_init_adapter_hands_that_adapter_to_joiners(
    tmp_path: Path,
) -> None:
    # Arrange: the operator's adapter (B randomised so it is not LoRA's zero
    # init), written as --init-model; a client whose own adapter differs.
    operator = _lora()
    with torch.no_grad():
        for name, param in operator.named_parameters():
            if "lora_B" in name:
                param.normal_()
    path = save_init_adapter(operator, tmp_path / "init.safetensors")
    client_model = _lora()
    with torch.no_grad():
        for tensor in adapter_parameters(client_model).values():
            tensor.fill_(0.5)  # anything but the operator's
    config = CoordinatorConfig(
        init_model=str(path), listen="127.0.0.1:0", open_enrollment=True,
        min_clients=1, inner_steps=H, round_timeout_s=30.0,
    )  # fmt: skip

    # Act: join, which loads the global weights in place.
    with (
        serve_in_thread(config) as coordinator,
        DiLoCoClient(coordinator.address, client_model, config=FAST) as client,
    ):
        joined = _lora_state(client_model)
        received = client.bytes_received

    # Assert: the operator's adapter, and only the adapter came down.
    expected = _lora_state(operator)
    assert joined.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(joined[key], tensor), key
    assert received == 4 * sum(t.numel() for t in expected.values())


def test_save_init_adapter_refuses_a_plain_model(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"save_init_adapter needs the peft\.PeftModel"
    ):
        save_init_adapter(_base(), tmp_path / "init.safetensors")
