"""Outer optimizers against torch's SGD, the sign convention, FedAvg, rejections."""

from __future__ import annotations

import pytest
import torch

from fedgrpc.errors import ConfigError, InvalidUpdateError
from fedgrpc.optim import (
    FedAvgOuterOptimizer,
    NesterovOuterOptimizer,
    build_outer_optimizer,
)

D = 1_000


def test_nesterov_matches_torch_sgd_over_five_steps() -> None:
    # Arrange: the same start weights for ours and torch's reference.
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(D, generator=gen)
    grads = [torch.randn(D, generator=gen) for _ in range(5)]
    ours_params = start.clone()
    ref_param = torch.nn.Parameter(start.clone())
    ref = torch.optim.SGD([ref_param], lr=0.7, momentum=0.9, nesterov=True)
    ours = NesterovOuterOptimizer(lr=0.7, momentum=0.9)

    for g in grads:
        # Act: torch reads p.grad; ours may clobber its argument, so pass a copy.
        ref_param.grad = g.clone()
        ref.step()
        ours.step(ours_params, g.clone())

        # Assert after every step, so a first-step-only bug cannot hide. The
        # ops are torch's own, in its order, so the results are bitwise equal.
        torch.testing.assert_close(ours_params, ref_param.detach(), rtol=0, atol=0)
    buf = ours.state_dict()["momentum_buffer"]
    assert isinstance(buf, torch.Tensor)
    torch.testing.assert_close(
        buf, ref.state[ref_param]["momentum_buffer"], rtol=0, atol=0
    )


def test_positive_pseudo_gradient_decreases_params() -> None:
    # Arrange: local training lowered every weight, so global - local > 0.
    global_params = torch.zeros(D)
    local_params = global_params - 0.5
    pseudo_gradient = global_params - local_params

    # Act
    NesterovOuterOptimizer().step(global_params, pseudo_gradient)

    # Assert: the global model follows the clients downhill.
    assert bool((global_params < 0).all())


def test_nesterov_first_step_uses_lookahead() -> None:
    params = torch.zeros(3)
    NesterovOuterOptimizer(lr=1.0, momentum=0.5).step(params, torch.ones(3))
    # buf = g = 1; update = g + 0.5 * buf = 1.5; params = -1.5
    torch.testing.assert_close(params, torch.full((3,), -1.5))


def test_fedavg_lr_one_lands_on_mean_of_local_models() -> None:
    # Arrange: integer-valued models whose mean is an integer, so every
    # float32 operation below is exact and the result can be compared bitwise.
    gen = torch.Generator().manual_seed(1)
    global_params = torch.randint(-50, 50, (D,), generator=gen).float()
    a = torch.randint(-50, 50, (D,), generator=gen).float()
    b = torch.randint(-50, 50, (D,), generator=gen).float()
    target = torch.randint(-50, 50, (D,), generator=gen).float()
    c = 3 * target - a - b
    pseudo_gradient = torch.stack([global_params - m for m in (a, b, c)]).mean(0)

    # Act
    FedAvgOuterOptimizer(lr=1.0).step(global_params, pseudo_gradient)

    # Assert
    assert torch.equal(global_params, target)


def test_fedavg_random_models_land_close_to_mean() -> None:
    gen = torch.Generator().manual_seed(2)
    global_params = torch.randn(D, generator=gen)
    locals_ = torch.randn(3, D, generator=gen)
    pseudo_gradient = (global_params - locals_).mean(0)

    FedAvgOuterOptimizer().step(global_params, pseudo_gradient)

    torch.testing.assert_close(global_params, locals_.mean(0), rtol=0, atol=1e-6)


def test_nesterov_state_dict_round_trip_resumes_identically() -> None:
    gen = torch.Generator().manual_seed(3)
    g1, g2 = torch.randn(D, generator=gen), torch.randn(D, generator=gen)
    first, params_a = NesterovOuterOptimizer(), torch.zeros(D)
    first.step(params_a, g1.clone())
    resumed = NesterovOuterOptimizer()
    resumed.load_state_dict(first.state_dict())
    params_b = params_a.clone()

    first.step(params_a, g2.clone())
    resumed.step(params_b, g2.clone())

    assert torch.equal(params_a, params_b)
    assert resumed.state_dict()["steps"] == 2


@pytest.mark.parametrize(
    ("params", "pseudo_gradient", "match"),
    [
        (torch.zeros(4), torch.zeros(5), "coordinates"),
        (torch.zeros(4), torch.zeros(2, 2), "1-D float32"),
        (torch.zeros(2, 2), torch.zeros(2, 2), "1-D float32"),
        (torch.zeros(4), torch.zeros(4, dtype=torch.float64), "1-D float32"),
        (torch.zeros(4, dtype=torch.float16), torch.zeros(4), "1-D float32"),
        (torch.zeros(4), torch.tensor([0.0, float("nan"), 0.0, 0.0]), "NaN"),
        (torch.zeros(4), torch.tensor([0.0, float("inf"), 0.0, 0.0]), "NaN"),
    ],
)
@pytest.mark.parametrize("optimizer", [NesterovOuterOptimizer, FedAvgOuterOptimizer])
def test_step_rejects_bad_arguments_and_changes_nothing(
    optimizer: type[NesterovOuterOptimizer | FedAvgOuterOptimizer],
    params: torch.Tensor,
    pseudo_gradient: torch.Tensor,
    match: str,
) -> None:
    opt = optimizer()
    before = params.clone()

    with pytest.raises(InvalidUpdateError, match=match):
        opt.step(params, pseudo_gradient)

    assert torch.equal(params, before)
    assert opt.state_dict() == {} or opt.state_dict() == {"steps": 0}


def test_nesterov_rejects_model_size_change_after_first_step() -> None:
    opt = NesterovOuterOptimizer()
    opt.step(torch.zeros(4), torch.ones(4))

    with pytest.raises(InvalidUpdateError, match="momentum buffer"):
        opt.step(torch.zeros(5), torch.ones(5))


def test_build_outer_optimizer_returns_configured_algorithm() -> None:
    nesterov = build_outer_optimizer("nesterov", lr=0.5, momentum=0.8)
    fedavg = build_outer_optimizer("fedavg", lr=1.0, momentum=0.0)

    assert isinstance(nesterov, NesterovOuterOptimizer)
    assert (nesterov.name, nesterov.lr, nesterov.momentum) == ("nesterov", 0.5, 0.8)
    assert isinstance(fedavg, FedAvgOuterOptimizer)
    assert fedavg.name == "fedavg"


@pytest.mark.parametrize(
    ("name", "lr", "momentum", "match"),
    [
        ("adam", 0.7, 0.9, "unknown outer optimizer 'adam'"),
        ("fedavg", 1.0, 0.9, "fedavg, which has no momentum"),
        ("nesterov", 0.0, 0.9, "lr must be"),
        ("nesterov", float("nan"), 0.9, "lr must be"),
        ("nesterov", 0.7, 1.0, "momentum must be in"),
        ("nesterov", 0.7, -0.1, "momentum must be in"),
        ("fedavg", -1.0, 0.0, "lr must be"),
    ],
)
def test_build_outer_optimizer_rejects_bad_config(
    name: str, lr: float, momentum: float, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        build_outer_optimizer(name, lr=lr, momentum=momentum)  # type: ignore[arg-type]  # deliberately invalid


def test_load_state_dict_rejects_foreign_state() -> None:
    with pytest.raises(InvalidUpdateError, match="no state"):
        FedAvgOuterOptimizer().load_state_dict({"steps": 3})
    with pytest.raises(InvalidUpdateError, match="steps"):
        NesterovOuterOptimizer().load_state_dict({"steps": -1})
