"""RecordDP: Opacus DP-SGD in the user's own loop, accounted by our ledger.

Real Opacus on a tiny MLP (no mocks): every DPOptimizer step is one
Poisson-subsampled Gaussian release in the ledger, the ε the ledger reports
agrees with Opacus' own RDP accountant (the cross-check the design allows),
the model keeps its own parameter names, and a step past `max_epsilon` is
refused before it moves the model.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import pytest
import torch
from opacus import PrivacyEngine
from torch.utils.data import DataLoader, TensorDataset

from fedgrpc.errors import ConfigError, PrivacyBudgetExceededError
from fedgrpc.privacy import PrivacyLedger, RecordDP, Release
from fedgrpc.privacy.record import unwrap_module

RECORDS, BATCH = 240, 24  # q = 0.1, 10 batches per epoch


@pytest.fixture(autouse=True)
def _quiet_accountant() -> None:
    """dp-accounting warns per fractional RDP order at small noise; not ours."""
    logging.getLogger("absl").setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)


def _training(
    seed: int = 0,
) -> tuple[torch.nn.Module, torch.optim.Optimizer, DataLoader[Any]]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
    )
    data = TensorDataset(torch.randn(RECORDS, 8), torch.randint(0, 3, (RECORDS,)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, optimizer, DataLoader(data, batch_size=BATCH)


def _train(
    model: torch.nn.Module, optimizer: object, loader: DataLoader[Any], steps: int
) -> int:
    """The user's unchanged loop, for at most `steps` steps; returns steps taken."""
    taken = 0
    while taken < steps:
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()  # type: ignore[attr-defined]
            optimizer.zero_grad()  # type: ignore[attr-defined]
            taken += 1
            if taken == steps:
                break
    return taken


def test_each_step_is_one_poisson_release_and_epsilon_matches_opacus_accountant() -> (
    None
):
    model, optimizer, loader = _training()
    names = [(n, tuple(p.shape)) for n, p in model.named_parameters()]
    private = RecordDP(noise_multiplier=1.1, max_grad_norm=1.0, delta=1e-5)
    model_out, dp_optimizer, dp_loader = private.make_private(model, optimizer, loader)
    assert model_out is model  # the federation sees the user's own module
    assert [(n, tuple(p.shape)) for n, p in model_out.named_parameters()] == names
    assert private.sample_rate == pytest.approx(BATCH / RECORDS)

    _train(model, dp_optimizer, dp_loader, 25)

    assert private.steps == 25
    assert private.ledger.releases == (Release(1.1, BATCH / RECORDS, 25),)
    reference = PrivacyLedger("rdp")
    reference.record(Release(1.1, 0.1, 25))
    assert private.epsilon == pytest.approx(reference.epsilon(1e-5), rel=1e-12)
    # Opacus' own accountant (RDP, its own orders and conversion) agrees to 5 %:
    # same mechanism, slightly different order grids.
    assert private.opacus_epsilon() == pytest.approx(private.epsilon, rel=0.05)
    claim = private.claim()
    assert (claim.epsilon, claim.delta, claim.steps) == (private.epsilon, 1e-5, 25)


def test_a_target_is_calibrated_to_the_planned_epochs_and_reached_not_passed() -> None:
    model, optimizer, loader = _training()
    private = RecordDP(target_epsilon=2.0, delta=1e-5, max_grad_norm=1.0, epochs=3)
    model, dp_optimizer, dp_loader = private.make_private(model, optimizer, loader)
    assert private.planned_steps == 30
    assert private.max_epsilon == 2.0  # defaults to the target

    _train(model, dp_optimizer, dp_loader, 30)  # the whole plan fits
    assert private.epsilon <= 2.0
    assert private.epsilon == pytest.approx(2.0, rel=0.01)  # and spends it

    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(
        PrivacyBudgetExceededError, match=r"step 31 would take ε.*max_epsilon=2"
    ):
        _train(model, dp_optimizer, dp_loader, 1)
    assert private.steps == 30  # the refused step released nothing ...
    for old, new in zip(before, model.parameters(), strict=True):
        assert torch.equal(old, new.detach())  # ... and did not move the model


def test_max_epsilon_below_the_plan_stops_training_early() -> None:
    model, optimizer, loader = _training()
    private = RecordDP(
        noise_multiplier=2.0, max_grad_norm=1.0, delta=1e-5, max_epsilon=1.0
    )
    model, dp_optimizer, dp_loader = private.make_private(model, optimizer, loader)
    with pytest.raises(PrivacyBudgetExceededError):
        _train(model, dp_optimizer, dp_loader, 10_000)
    spent, steps = private.epsilon, private.steps
    assert 0 < spent <= 1.0
    one_more = PrivacyLedger("rdp", releases=[Release(2.0, 0.1, steps + 1)])
    assert one_more.epsilon(1e-5) > 1.0  # the refused step was the first one too many


def test_a_resumed_ledger_keeps_counting_from_where_it_stopped() -> None:
    model, optimizer, loader = _training()
    first = RecordDP(noise_multiplier=1.0, max_grad_norm=1.0)
    model, dp_optimizer, dp_loader = first.make_private(model, optimizer, loader)
    _train(model, dp_optimizer, dp_loader, 5)
    saved = first.state()

    model2, optimizer2, loader2 = _training(seed=1)
    second = RecordDP(noise_multiplier=1.0, max_grad_norm=1.0)
    second.resume(saved)
    model2, dp_optimizer2, dp_loader2 = second.make_private(model2, optimizer2, loader2)
    _train(model2, dp_optimizer2, dp_loader2, 5)
    assert second.steps == 10
    assert second.epsilon > first.epsilon


def test_an_opacus_grad_sample_module_is_unwrapped_to_the_users_names() -> None:
    model, optimizer, loader = _training()
    wrapped, _, _ = PrivacyEngine().make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
    )
    assert next(iter(dict(wrapped.named_parameters()))).startswith("_module.")
    assert unwrap_module(wrapped) is model
    assert unwrap_module(model) is model


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"max_grad_norm": 0.0, "noise_multiplier": 1.0}, "max_grad_norm"),
        ({"max_grad_norm": 1.0}, "target_epsilon"),
        (
            {
                "max_grad_norm": 1.0,
                "noise_multiplier": 1.0,
                "target_epsilon": 1.0,
                "epochs": 1,
            },
            "target_epsilon",
        ),
        ({"max_grad_norm": 1.0, "target_epsilon": 1.0}, "epochs"),
        ({"max_grad_norm": 1.0, "noise_multiplier": 1.0, "delta": 1.0}, "delta"),
        ({"max_grad_norm": 1.0, "noise_multiplier": math.nan}, "noise_multiplier"),
        (
            {"max_grad_norm": 1.0, "noise_multiplier": 1.0, "max_epsilon": -1.0},
            "max_epsilon",
        ),
    ],
)
def test_settings_that_cannot_hold_are_refused_by_name(
    settings: dict[str, float], field: str
) -> None:
    with pytest.raises(ConfigError, match=field):
        RecordDP(**settings)  # type: ignore[arg-type]


def test_a_target_out_of_reach_names_itself() -> None:
    model, optimizer, loader = _training()
    private = RecordDP(target_epsilon=1e-4, delta=1e-5, max_grad_norm=1.0, epochs=50)
    with pytest.raises(ConfigError, match="out of reach"):
        private.make_private(model, optimizer, loader)
