"""The `--partition` grammar: `iid | dirichlet:ALPHA | quantity:ALPHA`.

Parsed once at the edge (CLI, bench) into a `PartitionSpec`, so the
partitioners never see text and a bad value fails before any process
starts, with a message naming the part that is wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from fedgrpc.errors import ConfigError

PartitionKind = Literal["iid", "dirichlet", "quantity"]
"""* iid: every client draws from the same label mix, equal sizes (±1);
* dirichlet: label skew, per label the clients' shares ~ Dir(alpha);
* quantity: size skew, the clients' shares of all samples ~ Dir(alpha), labels IID."""
KINDS: tuple[PartitionKind, ...] = ("iid", "dirichlet", "quantity")
GRAMMAR = "iid | dirichlet:ALPHA | quantity:ALPHA (ALPHA > 0, e.g. dirichlet:0.3)"


@dataclass(frozen=True, slots=True)
class PartitionSpec:
    """How to split: the kind and, for the Dirichlet kinds, the concentration alpha.

    Small alpha concentrates (a client holds few labels, or a few clients hold
    most samples); alpha -> ∞ approaches IID.
    """

    kind: PartitionKind = "iid"
    alpha: float | None = None
    """Dirichlet concentration; None for iid, a finite float > 0 otherwise."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(
                f"partition kind {self.kind!r} is unknown: expected {GRAMMAR}"
            )
        if self.kind == "iid":
            if self.alpha is not None:
                raise ConfigError(f"partition 'iid' takes no alpha: expected {GRAMMAR}")
            return
        if self.alpha is None or not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ConfigError(
                f"partition {self.kind!r} alpha={self.alpha!r} is invalid: "
                f"expected a finite number > 0 ({GRAMMAR})"
            )

    def __str__(self) -> str:
        return self.kind if self.alpha is None else f"{self.kind}:{self.alpha:g}"


def parse_partition(text: str) -> PartitionSpec:
    """`text` in the `--partition` grammar -> a `PartitionSpec`.

    Raises:
        ConfigError: an unknown kind, a missing, extra, non-numeric or
            non-positive alpha; the message quotes the grammar.
    """
    kind, _, rest = text.strip().partition(":")
    if kind not in KINDS:
        raise ConfigError(
            f"partition {text!r}: unknown kind {kind!r}; expected {GRAMMAR}"
        )
    if kind == "iid":
        if rest:
            raise ConfigError(
                f"partition {text!r}: iid takes no alpha; expected {GRAMMAR}"
            )
        return PartitionSpec("iid")
    if not rest:
        raise ConfigError(
            f"partition {text!r}: {kind} needs an alpha; expected {GRAMMAR}"
        )
    try:
        alpha = float(rest)
    except ValueError:
        raise ConfigError(
            f"partition {text!r}: alpha {rest!r} is not a number; expected {GRAMMAR}"
        ) from None
    return PartitionSpec(kind, alpha)
