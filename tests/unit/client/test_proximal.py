"""FedProx: the optimizer pre-step adds exactly mu * (w - w_global) to gradients.

Closed form (Li et al. 2020, eq. 2): grad h(w) = grad F(w) + mu * (w - w^t).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from fedgrpc.client.proximal import ProximalTerm
from fedgrpc.client.weights import LocalRun
from fedgrpc.config import ClientConfig
from fedgrpc.errors import ConfigError
from fedgrpc.wire.tensors import flatten_fp32, pack_native

MU = 0.3


@pytest.fixture
def model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2))


@pytest.fixture
def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    data = torch.Generator().manual_seed(1)
    return torch.randn(6, 5, generator=data), torch.randn(6, 2, generator=data)


def _loss(model: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = inputs
    loss: torch.Tensor = (model(x) - y).pow(2).mean()
    return loss


def _plain_grads(
    model: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor]
) -> list[torch.Tensor]:
    model.zero_grad()
    _loss(model, inputs).backward()
    return [
        torch.zeros(0) if p.grad is None else p.grad.clone() for p in model.parameters()
    ]


def _global_weights(model: nn.Module, seed: int) -> list[torch.Tensor]:
    data = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=data) for p in model.parameters()]


@pytest.fixture
def term(model: nn.Module) -> Iterator[ProximalTerm]:
    proximal = ProximalTerm(list(model.parameters()), MU)
    yield proximal
    proximal.close()


def test_the_step_sees_the_plain_gradient_plus_mu_times_the_distance_to_global(
    model: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor], term: ProximalTerm
) -> None:
    anchors = _global_weights(model, seed=2)
    term.anchor_to(anchors)
    plain = _plain_grads(model, inputs)
    before = [p.detach().clone() for p in model.parameters()]
    lr = 0.1

    torch.optim.SGD(model.parameters(), lr=lr).step()

    for param, w, g, w_t in zip(
        model.parameters(), before, plain, anchors, strict=True
    ):
        expected_grad = g + MU * (w - w_t)
        torch.testing.assert_close(param.grad, expected_grad, atol=1e-6, rtol=0)
        torch.testing.assert_close(
            param.detach(), w - lr * expected_grad, atol=1e-6, rtol=0
        )


def test_gradient_accumulation_gets_the_term_once_per_step(
    model: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor], term: ProximalTerm
) -> None:
    anchors = _global_weights(model, seed=3)
    term.anchor_to(anchors)
    plain = _plain_grads(model, inputs)
    model.zero_grad()

    for _ in range(2):  # two micro-batches accumulate into .grad
        _loss(model, inputs).backward()
    torch.optim.SGD(model.parameters(), lr=0.0).step()

    for param, g, w_t in zip(model.parameters(), plain, anchors, strict=True):
        expected = 2 * g + MU * (param.detach() - w_t)
        torch.testing.assert_close(param.grad, expected, atol=1e-6, rtol=0)


def test_under_a_grad_scaler_the_term_meets_unscaled_gradients(
    model: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor], term: ProximalTerm
) -> None:
    anchors = _global_weights(model, seed=4)
    term.anchor_to(anchors)
    plain = _plain_grads(model, inputs)
    model.zero_grad()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)

    scaler.scale(_loss(model, inputs)).backward()
    scaler.step(optimizer)

    for param, g, w_t in zip(model.parameters(), plain, anchors, strict=True):
        expected = g + MU * (param.detach() - w_t)
        torch.testing.assert_close(param.grad, expected, atol=1e-6, rtol=1e-6)


def test_frozen_parameters_and_other_optimizers_are_left_alone(
    model: nn.Sequential, inputs: tuple[torch.Tensor, torch.Tensor], term: ProximalTerm
) -> None:
    term.anchor_to(_global_weights(model, seed=5))
    first, last = model[0], model[2]
    assert isinstance(first, nn.Linear)
    assert isinstance(last, nn.Linear)
    first.weight.requires_grad_(False)
    plain = _plain_grads(model, inputs)
    other = nn.Linear(5, 2)
    other(inputs[0]).sum().backward()
    other_grad = other.weight.grad.clone()  # type: ignore[union-attr]

    torch.optim.SGD(model.parameters(), lr=0.0).step()
    torch.optim.SGD(other.parameters(), lr=0.0).step()

    assert first.weight.grad is None
    assert last.weight.grad is not None
    assert not torch.equal(last.weight.grad, plain[2])  # ours got the term
    assert torch.equal(other.weight.grad, other_grad)  # type: ignore[arg-type]


def test_after_close_the_optimizer_steps_plain_again(
    model: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor], term: ProximalTerm
) -> None:
    term.anchor_to(_global_weights(model, seed=6))
    term.close()
    plain = _plain_grads(model, inputs)

    torch.optim.SGD(model.parameters(), lr=0.0).step()

    for param, g in zip(model.parameters(), plain, strict=True):
        assert torch.equal(param.grad, g)  # type: ignore[arg-type]


def _load(local: LocalRun, weights: list[torch.Tensor], version: int) -> None:
    flat = torch.cat([w.reshape(-1) for w in weights])
    local.load(pack_native(flat, local.spec), version)


def test_the_term_follows_the_global_weights_of_each_load(
    model: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor]
) -> None:
    local = LocalRun(model, ClientConfig(proximal_mu=MU))
    try:
        _load(local, _global_weights(model, seed=7), version=1)
        newer = _global_weights(model, seed=8)
        _load(local, newer, version=2)  # a sync point pulled version 2
        with torch.no_grad():
            for param in model.parameters():
                param.add_(0.5)  # local training moved every weight by +0.5
        plain = _plain_grads(model, inputs)

        torch.optim.SGD(model.parameters(), lr=0.0).step()

        for param, g in zip(model.parameters(), plain, strict=True):
            torch.testing.assert_close(param.grad, g + MU * 0.5, atol=1e-6, rtol=0)
        assert local.proximal is not None
    finally:
        local.close()


def test_a_rebase_on_local_weights_keeps_the_global_anchor(
    model: nn.Module, inputs: tuple[torch.Tensor, torch.Tensor]
) -> None:
    local = LocalRun(model, ClientConfig(proximal_mu=MU))
    try:
        global_weights = _global_weights(model, seed=9)
        _load(local, global_weights, version=1)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(0.25)
        local.rebase_on_local()  # a compressed round that was not applied
        plain = _plain_grads(model, inputs)

        torch.optim.SGD(model.parameters(), lr=0.0).step()

        for param, g in zip(model.parameters(), plain, strict=True):
            torch.testing.assert_close(param.grad, g + MU * 0.25, atol=1e-6, rtol=0)
    finally:
        local.close()


def test_mu_zero_installs_nothing_and_gradients_stay_bit_identical(
    inputs: tuple[torch.Tensor, torch.Tensor],
) -> None:
    torch.manual_seed(0)
    plain_model = nn.Linear(5, 2)
    fedprox_model = nn.Linear(5, 2)
    fedprox_model.load_state_dict(plain_model.state_dict())
    local = LocalRun(fedprox_model, ClientConfig())
    weights = [torch.randn(p.shape) for p in fedprox_model.parameters()]
    _load(local, weights, version=1)
    plain_model.load_state_dict(fedprox_model.state_dict())
    grads = []
    for candidate in (plain_model, fedprox_model):
        with torch.no_grad():
            for param in candidate.parameters():
                param.add_(0.5)
        _loss_2 = (candidate(inputs[0]) - inputs[1]).pow(2).mean()
        _loss_2.backward()
        torch.optim.SGD(candidate.parameters(), lr=0.0).step()
        grads.append(
            flatten_fp32(
                [p.grad for p in candidate.parameters() if p.grad is not None],
                local.spec,  # type: ignore[misc]
            )
        )

    assert local.proximal is None
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("mu", [-0.1, math.nan, math.inf, -math.inf, True, "0.1"])
def test_a_bad_proximal_mu_is_refused_naming_the_field(mu: object) -> None:
    with pytest.raises(ConfigError, match="proximal_mu"):
        ClientConfig(proximal_mu=mu)  # type: ignore[arg-type]


def test_the_term_itself_refuses_a_non_positive_mu(model: nn.Module) -> None:
    with pytest.raises(ConfigError, match="proximal_mu"):
        ProximalTerm(list(model.parameters()), 0.0)


def test_a_sparse_gradient_is_left_alone_and_the_dense_ones_still_get_the_term() -> (
    None
):
    torch.manual_seed(0)
    embedding = nn.Embedding(10, 3, sparse=True)
    head = nn.Linear(3, 1)
    params = [embedding.weight, head.weight, head.bias]
    term = ProximalTerm(params, MU)
    try:
        term.anchor_to([p.detach() + 1.0 for p in params])  # w - w_global = -1
        head(embedding(torch.tensor([1, 2]))).sum().backward()
        sparse_before = embedding.weight.grad.to_dense().clone()  # type: ignore[union-attr]
        dense_before = head.weight.grad.clone()  # type: ignore[union-attr]

        torch.optim.SGD(params, lr=0.0).step()

        assert torch.equal(embedding.weight.grad.to_dense(), sparse_before)  # type: ignore[union-attr]
        torch.testing.assert_close(head.weight.grad, dense_before - MU)
    finally:
        term.close()
