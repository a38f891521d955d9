"""Codec configs users write, and the one-line spec strings the CLI and TOML use.

A codec config is part of the round config the coordinator announces; every
client builds the same codec from it with `fedgrpc.compress.make_codec`. It is
a setting, not a codec, so it lives with the domain types: `config` parses it
and `compress` (which re-exports these names) builds from it, and neither
imports the other. (Was `compress/spec.py`.)

Spec grammar (lower case, no spaces), as accepted by `parse_codec`::

    spec    = "dense" [ ":" format ]  |  "topk" ":" density [ ":" values ]
    format  = "fp32" | "bf16" | "fp16" | "int8" | "int4" | "int2"  (default fp32)
    values  = "int8" | "int4" | "int2" | "bf16" | "fp32"    (default int8)
    density = a decimal in (0, 1], e.g. 0.01 or 1e-2

Examples: ``dense``, ``dense:bf16``, ``topk:0.01:int8``, ``topk:0.025:int2``.
`format_codec` writes the canonical form (format always spelled out), and
``parse_codec(format_codec(c)) == c`` holds for every valid config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, TypeAlias

from fedgrpc.errors import ConfigError
from fedgrpc.errors import check_config as _check

ValueFormat = Literal["fp32", "bf16", "fp16", "int8", "int4", "int2"]
"""How one coordinate's value is written: raw little-endian floats, or integer
codes times a per-group float32 scale (int8: one byte, int4: two per byte,
int2: four per byte, the 2-bit statistical quantisation of SparseLoCo)."""
VALUE_FORMATS: tuple[ValueFormat, ...] = (
    "fp32", "bf16", "fp16", "int8", "int4", "int2"
)  # fmt: skip
TopKBits = Literal[2, 4, 8, 16, 32]
TOPK_BITS: dict[TopKBits, ValueFormat] = {
    2: "int2", 4: "int4", 8: "int8", 16: "bf16", 32: "fp32"
}  # fmt: skip
"""Top-k value bits → format. 16 means bf16, not fp16: the selected values are
the largest of the block, exactly where fp16's 65504 ceiling would bite."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Dense:
    """Send every coordinate, in `values` format (`fedgrpc.Dense(values="int8")`)."""

    values: ValueFormat = "fp32"
    """Value format. fp32 is lossless; bf16/fp16 halve the bytes (round to
    nearest); int8/int4/int2 cut them 4/8/16x (per-group scale, stochastic
    rounding, so the rounding error is unbiased and error feedback can carry it)."""

    def __post_init__(self) -> None:
        _check(self.values in VALUE_FORMATS, "values", self.values,
               " | ".join(VALUE_FORMATS))  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class TopK:
    """Send the `density` largest-magnitude coordinates of every 4,096.

    Written `fedgrpc.TopK(density=0.01, bits=8)`. What is not sent stays in
    the client's error-feedback residual (`fedgrpc.compress.ErrorFeedback`)
    and competes again next round, so nothing is lost, only delayed.
    """

    density: float
    """Fraction of coordinates sent, in (0, 1]: ceil(density * 4096) of each
    group of 4,096, so every tensor gets its share of the slots. DiLoCo-scale
    runs use 0.01-0.1; no default, the choice trades loss against bytes."""
    bits: TopKBits = 8
    """Bits per sent value: 8 → int8, 4 → int4, 2 → int2 (per-group scale,
    stochastic rounding), 16 → bf16, 32 → fp32. 8 is the default because a pilot found
    int8 costs no loss while sparsity does."""

    def __post_init__(self) -> None:
        density = self.density
        is_number = isinstance(density, int | float) and not isinstance(density, bool)
        _check(is_number and math.isfinite(density) and 0 < density <= 1,
               "density", density, "a number in (0, 1]")  # fmt: skip
        _check(self.bits in TOPK_BITS and not isinstance(self.bits, bool),
               "bits", self.bits, "2, 4, 8, 16 or 32")  # fmt: skip
        # One canonical type, so TopK(density=1) and its spec round-trip equal.
        object.__setattr__(self, "density", float(density))

    @property
    def values(self) -> ValueFormat:
        """The value format `bits` stands for."""
        return TOPK_BITS[self.bits]


CodecConfig: TypeAlias = Dense | TopK
"""Any codec config; `make_codec` turns one into a `BlockCodec`."""


def parse_codec(spec: str) -> CodecConfig:
    """Parse a spec string (grammar in the module docstring) into a config.

    Raises:
        ConfigError: naming the bad part and what the grammar allows.
    """
    kind, _, rest = spec.strip().partition(":")
    if kind == "dense":
        return Dense(values=_parse_format(spec, rest or "fp32", VALUE_FORMATS))
    if kind == "topk":
        density_text, _, values_text = rest.partition(":")
        by_format = {v: bits for bits, v in TOPK_BITS.items()}
        values = _parse_format(spec, values_text or "int8", tuple(by_format))
        return TopK(density=_parse_density(spec, density_text), bits=by_format[values])
    raise ConfigError(
        f"codec spec {spec!r} is invalid: expected 'dense[:FORMAT]' or "
        "'topk:DENSITY[:VALUES]', e.g. 'dense:bf16' or 'topk:0.01:int8'"
    )


def format_codec(config: CodecConfig) -> str:
    """The canonical spec string of `config` (inverse of `parse_codec`)."""
    if isinstance(config, Dense):
        return f"dense:{config.values}"
    return f"topk:{config.density!r}:{config.values}"


def _parse_format(spec: str, text: str, allowed: tuple[str, ...]) -> ValueFormat:
    for name in VALUE_FORMATS:
        if text == name and name in allowed:
            return name
    raise ConfigError(
        f"codec spec {spec!r} is invalid: value format {text!r} is not one of "
        f"{' | '.join(allowed)}"
    )


def _parse_density(spec: str, text: str) -> float:
    try:
        density = float(text)
    except ValueError:
        raise ConfigError(
            f"codec spec {spec!r} is invalid: density {text!r} is not a number "
            "in (0, 1], e.g. 0.01"
        ) from None
    return density
