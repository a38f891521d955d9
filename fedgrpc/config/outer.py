"""The outer optimizer's settings: names, per-optimizer defaults, and their rules.

One table per family, so adding an optimizer is one line here and one
builder in `fedgrpc.optim`, and `CoordinatorConfig` only asks for the value
in force. Which setting an optimizer reads:

* nesterov, fedavgm: `outer_lr`, `outer_momentum` (heavy-ball / Nesterov);
* fedadagrad, fedadam, fedyogi (Reddi et al. 2021, "Adaptive Federated
  Optimization", Algorithm 2): `outer_lr`, `outer_beta1`, `outer_tau`, and
  `outer_beta2` for fedadam and fedyogi (Adagrad's v is a plain sum);
* fedavg, sparseloco: `outer_lr` only;
* `package.module:Class`: `outer_optimizer_params`, passed to its constructor.

A setting the chosen optimizer does not read is refused rather than
ignored: a user who sets `outer_tau` for nesterov believes it does something.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from fedgrpc.errors import check_config as _check

OuterOptimizerName = Literal[
    "nesterov", "fedavg", "fedavgm", "fedadagrad", "fedadam", "fedyogi", "sparseloco"
]
OUTER_OPTIMIZERS: tuple[OuterOptimizerName, ...] = (
    "nesterov", "fedavg", "fedavgm", "fedadagrad", "fedadam", "fedyogi", "sparseloco"
)  # fmt: skip
ADAPTIVE_OPTIMIZERS: tuple[OuterOptimizerName, ...] = (
    "fedadagrad",
    "fedadam",
    "fedyogi",
)
"""Reddi et al. 2021's family: they read outer_beta1 and outer_tau."""
_WITH_BETA2: tuple[OuterOptimizerName, ...] = ("fedadam", "fedyogi")
# FedAvgM: DiLoCo's effective rate lr / (1 - momentum) on heavy-ball. The
# adaptive family steps ~lr per coordinate (Adam, Yogi) or (1 - beta1) lr at
# first (Adagrad); see fedgrpc.optim.adaptive and bench/outer_optimizers.py.
_DEFAULT_LR = {
    "nesterov": 0.7, "fedavg": 1.0, "fedavgm": 0.7, "fedadagrad": 0.1,
    "fedadam": 0.01, "fedyogi": 0.01, "sparseloco": 1.0,
}  # fmt: skip
_DEFAULT_MOMENTUM = {"nesterov": 0.9, "fedavgm": 0.9}
DEFAULT_BETA1 = 0.9
DEFAULT_BETA2 = 0.99
DEFAULT_TAU = 1e-3
_DEFAULT_FEEDBACK_DECAY = {"sparseloco": 0.95}
"""SparseLoCo's residual is its momentum, so it decays; others keep it all."""


def resolve_lr(name: str, lr: float | None) -> float:
    """The outer learning rate in force: `lr`, else the optimizer's default."""
    return lr if lr is not None else _DEFAULT_LR.get(name, 1.0)


def resolve_momentum(name: str, momentum: float | None) -> float:
    """The outer momentum in force: `momentum`, else the optimizer's default."""
    return momentum if momentum is not None else _DEFAULT_MOMENTUM.get(name, 0.0)


def resolve_feedback_decay(name: str, decay: float | None) -> float:
    """Clients' error-feedback decay in force: `decay`, else the optimizer's."""
    return decay if decay is not None else _DEFAULT_FEEDBACK_DECAY.get(name, 1.0)


def check_settings(
    name: str,
    *,
    params: Mapping[str, Any],
    lr: float,
    momentum: float | None,
    resolved_momentum: float,
    beta1: float | None,
    beta2: float | None,
    tau: float | None,
) -> None:
    """Refuse an unknown optimizer, bad rates, and settings it would not read.

    `lr` and `resolved_momentum` are the values in force; `momentum`,
    `beta1`, `beta2` and `tau` are as the user set them (None: unset).

    Raises:
        ConfigError: naming the setting, its value and what is allowed.
    """
    plugin = ":" in name
    _check(name in OUTER_OPTIMIZERS or plugin, "outer_optimizer", name,
           " or ".join(OUTER_OPTIMIZERS) + " or package.module:Class")  # fmt: skip
    _check(plugin or not params, "outer_optimizer_params", params,
           "empty for a built-in optimizer")  # fmt: skip
    _check(lr > 0, "outer_lr", lr, "> 0")
    _check(0 <= resolved_momentum < 1, "outer_momentum", momentum, "in [0, 1)")
    _check(name not in ADAPTIVE_OPTIMIZERS or not momentum, "outer_momentum",
           momentum, f"unset or 0 for {name}, whose momentum is outer_beta1",
           )  # fmt: skip
    for field, value, users in (
        ("outer_beta1", beta1, ADAPTIVE_OPTIMIZERS),
        ("outer_beta2", beta2, _WITH_BETA2),
        ("outer_tau", tau, ADAPTIVE_OPTIMIZERS),
    ):
        _check(value is None or name in users, field, value, "unset with "
               f"outer_optimizer {name!r}: it applies to {', '.join(users)}",
               )  # fmt: skip
    for field, value in (
        ("outer_beta1", DEFAULT_BETA1 if beta1 is None else beta1),
        ("outer_beta2", DEFAULT_BETA2 if beta2 is None else beta2),
    ):
        _check(math.isfinite(value) and 0 <= value < 1, field, value, "in [0, 1)")
    tau_in_force = DEFAULT_TAU if tau is None else tau
    _check(math.isfinite(tau_in_force) and tau_in_force > 0, "outer_tau",
           tau_in_force, "a finite number > 0 (Reddi et al. search 1e-1 .. 1e-5)",
           )  # fmt: skip
