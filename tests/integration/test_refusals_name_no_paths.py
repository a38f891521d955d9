"""Refusals sent to clients name settings, never the coordinator's file paths.

An unknown key at Join and a model that does not match `init_model` were
refused with messages quoting the allowed-keys file and the init-model path
(issue 13, A.6): a stranger learned the server's directory layout. Real
coordinators on port 0, raw stubs.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import torch
from safetensors.torch import save_file

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import serve_in_thread
from fedgrpc.crypto.files import save_key_pair
from fedgrpc.crypto.keys import PrivateKey
from fedgrpc.domain.model_spec import DType, ModelSpec, TensorSpec
from tests.helpers.raw import join, stub, tiny_spec

SECRET_DIR = "secret-layout-d41d8"
"""A directory name the refusals must not reveal."""


def _refusal(address: str, spec: ModelSpec) -> grpc.RpcError:
    channel, service = stub(address)
    with channel, pytest.raises(grpc.RpcError) as refused:
        join(service, spec, "stranger")
    return refused.value


def test_an_unknown_key_is_refused_without_the_allowed_keys_path(
    tmp_path: Path,
) -> None:
    keys = tmp_path / SECRET_DIR
    save_key_pair(PrivateKey.generate(), keys, "coordinator")
    save_key_pair(PrivateKey.generate(), keys / "allowed", "worker")
    config = CoordinatorConfig(
        seed_from_first_client=True, listen="127.0.0.1:0",
        identity_key=str(keys / "coordinator.key"),
        allowed_client_keys=str(keys / "allowed"),
    )  # fmt: skip
    with serve_in_thread(config) as running:
        refused = _refusal(running.address, tiny_spec())
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "allowed_client_keys" in (refused.details() or "")
    assert SECRET_DIR not in (refused.details() or "")


def test_a_model_unlike_init_model_is_refused_without_its_path(
    tmp_path: Path,
) -> None:
    directory = tmp_path / SECRET_DIR
    directory.mkdir()
    path = directory / "init.safetensors"
    save_file({"w": torch.zeros(10)}, str(path))
    config = CoordinatorConfig(
        listen="127.0.0.1:0", open_enrollment=True, init_model=str(path)
    )
    wrong = ModelSpec((TensorSpec("v", (10,), DType.FLOAT32),))
    with serve_in_thread(config) as running:
        refused = _refusal(running.address, wrong)
        # The file fixed the model: a first joiner cannot squat another spec,
        # and the right model still joins after the refusal.
        channel, service = stub(running.address)
        with channel:
            assert join(service, tiny_spec(), "honest").model_version == 0
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "init_model" in (refused.details() or "")
    assert SECRET_DIR not in (refused.details() or "")
