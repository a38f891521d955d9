"""Which tensors travel, end to end: real coordinator, real DiLoCo clients, gRPC.

BatchNorm statistics are averaged (and exported), frozen parameters never
travel, tied weights travel once and export under both names, local modules
stay home, clients that disagree on any of it are refused at Join naming the
tensor, and the global model can be read and evaluated from the client.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from fedgrpc.client import DiLoCoClient
from fedgrpc.config import ClientConfig, CoordinatorConfig
from fedgrpc.coordinator.ops.model_export import export_model
from fedgrpc.coordinator.services.in_thread import CoordinatorThread, serve_in_thread
from fedgrpc.errors import ConfigError, ModelMismatchError
from tests.helpers.scripted import FAST

ROUNDS = 3
H = 2


class BatchNormNet(nn.Module):
    """Linear -> BatchNorm1d -> ReLU -> Linear, with an optional frozen stem."""

    def __init__(self, frozen_stem: bool = False) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 4)
        self.stem.requires_grad_(not frozen_stem)
        self.body = nn.Linear(4, 8)
        self.norm = nn.BatchNorm1d(8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(torch.relu(self.norm(self.body(self.stem(x)))))
        return out


class TiedLM(nn.Module):
    """A language-model shape whose output projection *is* the embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.mix = nn.Linear(6, 6)
        self.lm_head = nn.Linear(6, 11, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.lm_head(torch.tanh(self.mix(self.embed(tokens))))
        return out


def _coordinator(tmp_path: Path, clients: int = 2) -> CoordinatorConfig:
    return CoordinatorConfig(
        listen="127.0.0.1:0", open_enrollment=True, min_clients=clients,
        inner_steps=H, round_timeout_s=20.0, seed_from_first_client=True,
        checkpoint_dir=str(tmp_path / "ckpt"), max_rounds=ROUNDS,
    )  # fmt: skip


def _train_bn(
    coordinator: CoordinatorThread,
    seed: int,
    config: ClientConfig,
    out: dict[int, tuple[Any, DiLoCoClient]],
    model_factory: Callable[[], nn.Module] = BatchNormNet,
) -> None:
    """Train on data shifted by the seed, so each client's statistics differ."""
    torch.manual_seed(seed)
    model = model_factory()
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.05
    )
    client = DiLoCoClient(coordinator.address, model, config=config)
    for _ in range(ROUNDS * H + H):
        if client.finished:
            break
        if isinstance(model, TiedLM):
            loss = model(torch.randint(0, 11, (16, 5))).logsumexp(-1).mean()
        else:
            x = torch.randn(16, 4) * (1 + seed) + 3 * seed
            dtype = next(model.parameters()).dtype
            loss = model(x.to(dtype)).float().pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        client.step(loss.item(), num_samples=16)
    out[seed] = (model, client)


def _run_two(
    tmp_path: Path,
    config: ClientConfig,
    model_factory: Callable[[], nn.Module] = BatchNormNet,
) -> tuple[dict[int, tuple[Any, DiLoCoClient]], CoordinatorThread]:
    out: dict[int, tuple[Any, DiLoCoClient]] = {}
    with serve_in_thread(_coordinator(tmp_path)) as coordinator:
        threads = [
            threading.Thread(
                target=_train_bn, args=(coordinator, seed, config, out, model_factory)
            )
            for seed in (0, 1)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(t.is_alive() for t in threads)
        assert coordinator.status().model_version == ROUNDS
    for _, client in out.values():
        client.close()
    return out, coordinator


def test_batchnorm_statistics_are_averaged_and_the_export_loads_strictly(
    tmp_path: Path,
) -> None:
    out, _ = _run_two(tmp_path, FAST)

    (model_a, client_a), (model_b, client_b) = out[0], out[1]
    assert client_a.finished
    assert client_b.finished
    # Both hold the final global model: statistics included, counters integers.
    for name in ("norm.running_mean", "norm.running_var"):
        a, b = model_a.state_dict()[name], model_b.state_dict()[name]
        assert torch.equal(a, b), name
    assert model_a.norm.num_batches_tracked.dtype == torch.int64
    assert int(model_a.norm.num_batches_tracked) == ROUNDS * H  # its own count
    assert float(model_a.norm.running_var.min()) > 0  # averaged, never stepped
    # The coordinator's export holds them too and loads strictly, in float32.
    exported = export_model(tmp_path / "ckpt", tmp_path / "global.pt")
    state = torch.load(exported.path, weights_only=True)
    fresh = BatchNormNet()
    fresh.load_state_dict(state, strict=True)
    torch.testing.assert_close(fresh.norm.running_mean, model_a.norm.running_mean)
    assert state["norm.running_mean"].dtype == torch.float32
    # The counter travels (strict loads need it) but never moves: the seed's.
    assert state["norm.num_batches_tracked"].dtype == torch.int64
    assert int(state["norm.num_batches_tracked"]) == 0
    # And the client's own view of the global model is the same state.
    from_client = client_a.global_state_dict()
    assert from_client.keys() == model_a.state_dict().keys()
    torch.testing.assert_close(from_client["head.weight"], state["head.weight"])


def test_local_buffers_stay_each_clients_own(tmp_path: Path) -> None:
    out, _ = _run_two(tmp_path, dataclasses.replace(FAST, buffers="local"))

    mean_a = out[0][0].norm.running_mean
    mean_b = out[1][0].norm.running_mean
    assert not torch.allclose(mean_a, mean_b)  # data shifted by 3: they differ
    torch.testing.assert_close(out[0][0].head.weight, out[1][0].head.weight)


def _shared_base(base_seed: int = 99) -> BatchNormNet:
    """A model whose frozen stem is the same on every client (a shared base)."""
    model = BatchNormNet(frozen_stem=True)
    generator = torch.Generator().manual_seed(base_seed)
    with torch.no_grad():
        for param in model.stem.parameters():
            param.copy_(torch.randn(param.shape, generator=generator))
    return model


def test_frozen_parameters_never_travel_and_stay_as_they_were(tmp_path: Path) -> None:
    frozen, _ = _run_two(tmp_path / "frozen", FAST, _shared_base)
    everything, _ = _run_two(
        tmp_path / "all", dataclasses.replace(FAST, federate="all"), _shared_base
    )

    stem = 4 * 4 + 4
    sent_frozen = frozen[0][1].bytes_received
    sent_all = everything[0][1].bytes_received
    assert sent_all - sent_frozen >= (ROUNDS + 1) * stem * 4  # 4 pulls of 20 floats
    # The stem is the shared base, untouched; the rest is global.
    torch.testing.assert_close(frozen[0][0].stem.weight, _shared_base().stem.weight)
    torch.testing.assert_close(frozen[0][0].body.weight, frozen[1][0].body.weight)


def test_a_client_with_another_frozen_base_is_refused(tmp_path: Path) -> None:
    with (
        serve_in_thread(_coordinator(tmp_path, clients=1)) as coordinator,
        DiLoCoClient(coordinator.address, _shared_base(), config=FAST),
    ):
        with pytest.raises(ModelMismatchError, match="frozen parameters"):
            DiLoCoClient(coordinator.address, _shared_base(base_seed=7), config=FAST)
        # A client with the same base joins.
        with DiLoCoClient(coordinator.address, _shared_base(), config=FAST):
            pass


def test_clients_that_disagree_on_what_travels_are_refused_naming_the_tensor(
    tmp_path: Path,
) -> None:
    with (
        serve_in_thread(_coordinator(tmp_path, clients=1)) as coordinator,
        DiLoCoClient(coordinator.address, _shared_base(), config=FAST),
    ):
        everything = dataclasses.replace(FAST, federate="all")
        with pytest.raises(ModelMismatchError, match=r"'stem.weight'.*federate"):
            DiLoCoClient(coordinator.address, _shared_base(), config=everything)
        no_buffers = dataclasses.replace(FAST, buffers="local")
        with pytest.raises(ModelMismatchError, match=r"'norm.running_mean'"):
            DiLoCoClient(coordinator.address, _shared_base(), config=no_buffers)


def test_a_bfloat16_client_trains_in_a_float32_federation(tmp_path: Path) -> None:
    def factory_for(seed: int) -> nn.Module:
        model = BatchNormNet()
        return model if seed == 0 else model.to(torch.bfloat16)

    out: dict[int, tuple[Any, DiLoCoClient]] = {}
    with serve_in_thread(_coordinator(tmp_path)) as coordinator:
        # The float32 client joins first, so the federation is float32.
        first = threading.Thread(
            target=_train_bn, args=(coordinator, 0, FAST, out, lambda: factory_for(0))
        )
        first.start()
        deadline = time.monotonic() + 30
        while not coordinator.status().clients and time.monotonic() < deadline:
            time.sleep(0.02)
        _train_bn(coordinator, 1, FAST, out, lambda: factory_for(1))
        first.join(timeout=120)
        assert coordinator.status().model_version == ROUNDS

    (full, _), (half, half_client) = out[0], out[1]
    assert half.head.weight.dtype == torch.bfloat16  # kept its own dtype
    assert torch.equal(half.head.weight, full.head.weight.to(torch.bfloat16))
    assert torch.equal(
        half.norm.num_batches_tracked, full.norm.num_batches_tracked
    )  # both ran 6 batches: the mean is exact
    pulled = half_client.global_state_dict()
    assert pulled["head.weight"].dtype == torch.bfloat16
    master = torch.load(
        export_model(tmp_path / "ckpt", tmp_path / "m.pt", dtype="native").path,
        weights_only=True,
    )
    assert master["head.weight"].dtype == torch.float32  # the federation's dtype
    torch.testing.assert_close(master["head.weight"], full.head.weight.detach())


def test_tied_weights_travel_once_and_export_under_both_names(tmp_path: Path) -> None:
    out, _ = _run_two(tmp_path, FAST, TiedLM)

    model, client = out[0]
    assert client._local.spec.aliases == (("lm_head.weight", "embed.weight"),)
    assert [t.name for t in client._local.spec.tensors] == [
        "embed.weight", "mix.weight", "mix.bias",
    ]  # fmt: skip
    state = torch.load(
        export_model(tmp_path / "ckpt", tmp_path / "lm.pt").path, weights_only=True
    )
    fresh = TiedLM()
    fresh.load_state_dict(state, strict=True)
    assert fresh.lm_head.weight is fresh.embed.weight
    torch.testing.assert_close(fresh.embed.weight, model.embed.weight)
    from_client = client.global_state_dict()
    assert torch.equal(from_client["lm_head.weight"], from_client["embed.weight"])


def test_local_modules_stay_personal(tmp_path: Path) -> None:
    config = dataclasses.replace(FAST, local_modules=("head",))
    out, _ = _run_two(tmp_path, config)

    (model_a, client_a), (model_b, _) = out[0], out[1]
    assert not torch.equal(model_a.head.weight, model_b.head.weight)
    torch.testing.assert_close(model_a.body.weight, model_b.body.weight)
    assert "head.weight" in client_a._local.local_names
    personal = client_a.global_state_dict()
    torch.testing.assert_close(personal["head.weight"], model_a.head.weight.detach())


def test_a_local_module_that_matches_nothing_is_a_config_error(tmp_path: Path) -> None:
    typo = dataclasses.replace(FAST, local_modules=("haed",))
    with (
        serve_in_thread(_coordinator(tmp_path, clients=1)) as coordinator,
        pytest.raises(ConfigError, match=r"local_modules entry 'haed'"),
    ):
        DiLoCoClient(coordinator.address, BatchNormNet(), config=typo)


def test_evaluate_runs_on_every_new_global_version_in_eval_mode(tmp_path: Path) -> None:
    seen: list[tuple[int, bool, bool]] = []

    def evaluate(model: nn.Module, version: int) -> dict[str, float]:
        seen.append((version, model.training, torch.is_grad_enabled()))
        return {"version_squared": float(version**2)}

    with serve_in_thread(_coordinator(tmp_path, clients=1)) as coordinator:
        model = BatchNormNet()
        with DiLoCoClient(
            coordinator.address, model, config=FAST, evaluate=evaluate
        ) as client:
            for _ in range(ROUNDS * H):
                model(torch.randn(8, 4)).pow(2).mean().backward()
                client.step(num_samples=8)
            history = client.eval_history

    assert [v for v, _, _ in seen] == list(range(ROUNDS + 1))
    assert not any(training or grad for _, training, grad in seen)
    assert model.training  # restored
    assert [(e.model_version, e.metrics) for e in history][-1] == (
        ROUNDS, {"version_squared": float(ROUNDS**2)},
    )  # fmt: skip


def test_only_the_seeding_client_sets_the_frozen_base_so_none_can_squat_it(
    tmp_path: Path,
) -> None:
    # With an initial model from the operator no client seeds, so a first
    # joiner with another base (a hostile one, say) cannot lock the rest out.
    from safetensors.torch import save_file

    honest = _shared_base()
    init = tmp_path / "init.safetensors"
    save_file({n: p.detach() for n, p in honest.named_parameters() if p.requires_grad}
              | dict(honest.named_buffers()), str(init))  # fmt: skip
    config = dataclasses.replace(
        _coordinator(tmp_path, clients=1), seed_from_first_client=False,
        init_model=str(init),
    )  # fmt: skip
    with (
        serve_in_thread(config) as coordinator,
        DiLoCoClient(coordinator.address, _shared_base(base_seed=7), config=FAST),
        DiLoCoClient(coordinator.address, _shared_base(), config=FAST) as client,
    ):
        assert client.model_version == 0  # joined and pulled the operator's model
