"""`--attack KIND:FRACTION[:PARAM]`: what the simulator's Byzantine clients do.

Parsed here without torch, so the CLI can check the flag (and show the
grammar in --help) without paying torch's import; the math lives in
`fedgrpc.sim.attacks` and `fedgrpc.sim.poison`.

Which clients attack is a function of the run's seed only
(`assign_attackers`), so a run is reproducible: same flags and seed, same
attackers.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal, cast, get_args

from fedgrpc.errors import ConfigError

AttackKind = Literal[
    "signflip", "scaling", "gaussian", "labelflip", "backdoor", "alie", "ipm"
]
"""Model poisoning: signflip (send -u), scaling (send K * u), gaussian (send
N(0, (S * rms(u))^2) per coordinate), alie and ipm (colluding, omniscient,
see `fedgrpc.sim.attacks`). Data poisoning: labelflip (train on next-byte
targets 255 - b), backdoor (train a trigger -> target continuation in,
`fedgrpc.sim.poison`); both send what that training produced (the backdoor
times its boost K)."""

KINDS: tuple[AttackKind, ...] = get_args(AttackKind)
DEFAULT_PARAMS: dict[AttackKind, float | None] = {
    "signflip": None,
    "scaling": 10.0,
    "gaussian": 10.0,
    "labelflip": None,
    "backdoor": 1.0,
    "alie": None,  # None: z_max from Baruch et al.'s formula with n and f
    "ipm": 0.5,
}
"""Each kind's PARAM when the flag leaves it out (None: the kind takes none,
or, for alie, derives it)."""
COLLUDING: frozenset[AttackKind] = frozenset({"alie", "ipm"})
"""Kinds whose attackers share their honest updates to estimate the benign
mean (and standard deviation) of the round."""

GRAMMAR = (
    "KIND:FRACTION[:PARAM]. FRACTION in (0, 1) is the share of clients that "
    "attack (floor(FRACTION x clients), at least 1, chosen from --seed). "
    "KIND: signflip (send -u); scaling[:xK] (send K*u, default x10); "
    "gaussian[:S] (send N(0, (S*rms(u))^2) noise, default 10); labelflip "
    "(train on targets 255-b); backdoor[:xK] (train the trigger '<|trigger|>' "
    "-> 'BACKDOOR' in, send K times the update, default x1); alie[:Z] (A Little "
    "Is Enough: benign mean - Z * std, default Z = z_max from n and f); "
    "ipm[:EPS] (Inner Product Manipulation: -EPS * benign mean, default 0.5). "
    "u is the attacker's honest pseudo-gradient; alie and ipm estimate the "
    "benign mean/std from the colluding attackers' own honest updates. "
    "Repeat the flag to mix attacks (disjoint attackers)"
)
"""The flag's help text: the whole grammar, with every default."""


@dataclass(frozen=True, slots=True)
class AttackSpec:
    """One `--attack` value, parsed and checked."""

    kind: AttackKind
    fraction: float
    """Share of the clients that run this attack, in (0, 1)."""
    param: float | None = None
    """The kind's parameter (K, S, Z or EPS); None: `DEFAULT_PARAMS`."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(
                f"attack kind {self.kind!r} is unknown: expected one of "
                f"{', '.join(KINDS)}"
            )
        if not 0.0 < self.fraction < 1.0:  # also rejects NaN
            raise ConfigError(
                f"attack fraction {self.fraction!r} is invalid: expected a share "
                "of the clients in (0, 1), e.g. signflip:0.25"
            )
        takes_none = DEFAULT_PARAMS[self.kind] is None and self.kind != "alie"
        if self.param is not None and takes_none:
            raise ConfigError(f"attack {self.kind} takes no parameter")
        if self.param is not None and not math.isfinite(self.param):
            raise ConfigError(f"attack parameter {self.param!r} must be finite")
        positive = self.kind in ("gaussian", "ipm")
        if positive and self.param is not None and self.param <= 0:
            raise ConfigError(
                f"attack {self.kind} parameter {self.param!r} must be > 0"
            )

    @property
    def value(self) -> float | None:
        """The parameter in effect (the default when none was given)."""
        return DEFAULT_PARAMS[self.kind] if self.param is None else self.param

    def count(self, clients: int) -> int:
        """Attackers among `clients`: floor(fraction x clients)."""
        # +1e-9: 0.29 x 100 is 28.999999999999996 in floats, and must be 29.
        return math.floor(self.fraction * clients + 1e-9)

    def __str__(self) -> str:
        text = f"{self.kind}:{self.fraction:g}"
        if self.param is None:
            return text
        prefix = "x" if self.kind in ("scaling", "backdoor") else ""
        return f"{text}:{prefix}{self.param:g}"


def parse_attack(text: str) -> AttackSpec:
    """`KIND:FRACTION[:PARAM]` -> `AttackSpec` (see `GRAMMAR`).

    Raises:
        ConfigError: an unknown kind, a fraction outside (0, 1), or a
            parameter that is not a number (a leading "x" is allowed for the
            factors of scaling and backdoor).
    """
    parts = text.strip().lower().split(":")
    if len(parts) not in (2, 3):
        raise ConfigError(f"--attack {text!r} is invalid: expected {GRAMMAR}")
    kind, fraction = parts[0], _number(parts[1], text)
    param = None
    if len(parts) == 3:
        raw = parts[2]
        if kind in ("scaling", "backdoor") and raw.startswith("x"):
            raw = raw[1:]
        param = _number(raw, text)
    return AttackSpec(cast(AttackKind, kind), fraction, param)


def _number(raw: str, text: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(
            f"--attack {text!r} is invalid: {raw!r} is not a number; "
            "expected KIND:FRACTION[:PARAM], e.g. scaling:0.25:x10"
        ) from None


def assign_attackers(
    specs: tuple[AttackSpec, ...], clients: int, seed: int
) -> dict[int, AttackSpec]:
    """Client index -> its attack, for `clients` clients, drawn from `seed` alone.

    A seeded shuffle of the indices; the first `count` go to the first
    attack, the next to the second, and so on, so mixed attacks never share
    a client. The draw uses `random.Random(seed)`, which is stable across
    processes and Python versions for integer seeds.

    Raises:
        ConfigError: an attack would have no client (its fraction is below
            1/clients), or no honest client would remain.
    """
    counts = [spec.count(clients) for spec in specs]
    for spec, count in zip(specs, counts, strict=True):
        if count < 1:
            raise ConfigError(
                f"--attack {spec}: {spec.fraction:g} of {clients} clients is no "
                f"client; raise the fraction to at least {1 / clients:.3g} or "
                "add clients"
            )
    if specs and sum(counts) >= clients:
        raise ConfigError(
            f"--attack makes {sum(counts)} of {clients} clients attackers; "
            "leave at least one honest client"
        )
    order = list(range(clients))
    random.Random(seed).shuffle(order)
    chosen: dict[int, AttackSpec] = {}
    for spec, count in zip(specs, counts, strict=True):
        for index in order[len(chosen) : len(chosen) + count]:
            chosen[index] = spec
    return chosen
