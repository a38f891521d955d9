"""Build the outer optimizer a coordinator config names.

One place maps `outer_optimizer` names to classes and refuses settings the
named algorithm does not have, so a typo'd combination fails at start, not
silently (a momentum given to FedAdam, which has β1 instead).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedgrpc.config import OuterOptimizerName
from fedgrpc.errors import ConfigError
from fedgrpc.optim.adaptive import (
    FedAdagradOuterOptimizer,
    FedAdamOuterOptimizer,
    FedYogiOuterOptimizer,
)
from fedgrpc.optim.momentum import (
    FedAvgMOuterOptimizer,
    FedAvgOuterOptimizer,
    NesterovOuterOptimizer,
)
from fedgrpc.optim.outer import OuterOptimizer


@dataclass(frozen=True, slots=True, kw_only=True)
class AdaptiveSettings:
    """β1, β2 and τ of the adaptive family (Reddi et al. 2021's defaults)."""

    beta1: float = 0.9
    """First-moment decay, in [0, 1)."""
    beta2: float = 0.99
    """Second-moment decay of fedadam and fedyogi, in [0, 1); fedadagrad has none."""
    tau: float = 1e-3
    """Adaptivity τ > 0: v starts at τ² and the step divides by √v + τ."""


def build_outer_optimizer(
    name: OuterOptimizerName,
    lr: float,
    momentum: float,
    adaptive: AdaptiveSettings | None = None,
) -> OuterOptimizer:
    """Build the outer optimizer a coordinator config names.

    `momentum` is β of nesterov and fedavgm and must be 0 for the others;
    `adaptive` (default: the paper's values) is read by fedadagrad, fedadam
    and fedyogi only.

    Raises:
        ConfigError: unknown `name`, a value out of range, or momentum > 0
            for an optimizer without it (fedavg, sparseloco, the adaptive
            family: use `nesterov`/`fedavgm`, or β1).
    """
    if name == "nesterov":
        return NesterovOuterOptimizer(lr=lr, momentum=momentum)
    if name == "fedavgm":
        return FedAvgMOuterOptimizer(lr=lr, momentum=momentum)
    if name in ("fedavg", "sparseloco"):  # SparseLoCo's outer step is plain SGD
        _refuse_momentum(momentum, "fedavg", "use outer_optimizer = 'nesterov'")
        return FedAvgOuterOptimizer(lr=lr)
    settings = adaptive or AdaptiveSettings()
    if name == "fedadagrad":
        _refuse_momentum(momentum, name, "its momentum is outer_beta1")
        return FedAdagradOuterOptimizer(lr, settings.beta1, settings.tau)
    if name == "fedadam":
        _refuse_momentum(momentum, name, "its momentum is outer_beta1")
        return FedAdamOuterOptimizer(lr, settings.beta1, settings.beta2, settings.tau)
    if name == "fedyogi":
        _refuse_momentum(momentum, name, "its momentum is outer_beta1")
        return FedYogiOuterOptimizer(lr, settings.beta1, settings.beta2, settings.tau)
    raise ConfigError(
        f"unknown outer optimizer {name!r}; expected 'nesterov', 'fedavg', "
        "'fedavgm', 'fedadagrad', 'fedadam', 'fedyogi' or 'sparseloco'"
    )


def _refuse_momentum(momentum: float, name: str, hint: str) -> None:
    if momentum != 0:
        raise ConfigError(
            f"outer momentum {momentum} was given for {name}, which has no "
            f"momentum; set it to 0 or {hint}"
        )
