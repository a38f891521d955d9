"""Codec configs users write, and the one-line spec strings the CLI and TOML use.

A codec config is part of the round config the coordinator announces; every
client builds the same codec from it with `fedgrpc.compress.make_codec`. It is
a setting, not a codec, so it lives with the domain types: `config` parses it
and `compress` (which re-exports these names) builds from it, and neither
imports the other. (Was `compress/spec.py`.)

Spec grammar (lower case, no spaces), as accepted by `parse_codec`::

    spec    = "dense" [ ":" format ]
            | "topk" ":" density [ ":" values [ ":" block ] ]
    format  = "fp32" | "bf16" | "fp16" | "int8" | "int4" | "int2"  (default fp32)
    values  = "int8" | "int4" | "int2" | "bf16" | "fp32"    (default int8)
    density = a decimal in (0, 1], e.g. 0.01 or 1e-2
    block   = "b" a divisor of 4096: 1, 2, 4, ..., 4096   (default b1)

Examples: ``dense``, ``dense:bf16``, ``topk:0.01:int8``, ``topk:0.025:int2``,
``topk:0.1:int2:b16`` (whole blocks of 16 coordinates, 10 % of them).
`format_codec` writes the canonical form (format always spelled out; the
block only when it is not 1, so every pre-block spec is unchanged), and
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
SELECTION_GROUP = 4096
"""Coordinates per top-k selection group (`fedgrpc.compress.topk.TOPK_GROUP`)."""
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

    block: int = 1
    """Selection unit, in coordinates: 1 picks single coordinates; b > 1
    picks the ceil(density * 4096 / b) contiguous runs of b with the largest
    L2 norm in every group of 4,096 and sends all b values of each, with one
    position per run. At ~3 % density most of a top-k payload is positions
    (7 of 9.2 bits a value at int2), so a run buys several times the
    coordinates for the same bytes (issue 18). Must divide 4,096."""

    def __post_init__(self) -> None:
        density = self.density
        is_number = isinstance(density, int | float) and not isinstance(density, bool)
        _check(is_number and math.isfinite(density) and 0 < density <= 1,
               "density", density, "a number in (0, 1]")  # fmt: skip
        _check(self.bits in TOPK_BITS and not isinstance(self.bits, bool),
               "bits", self.bits, "2, 4, 8, 16 or 32")  # fmt: skip
        block = self.block
        is_int = isinstance(block, int) and not isinstance(block, bool)
        _check(is_int and 1 <= block <= SELECTION_GROUP and
               SELECTION_GROUP % block == 0,
               "block", block, "a divisor of 4096: 1, 2, 4, ..., 4096")  # fmt: skip
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
        density_text, _, tail = rest.partition(":")
        values_text, _, block_text = tail.partition(":")
        by_format = {v: bits for bits, v in TOPK_BITS.items()}
        values = _parse_format(spec, values_text or "int8", tuple(by_format))
        return TopK(
            density=_parse_density(spec, density_text),
            bits=by_format[values],
            block=_parse_block(spec, block_text) if block_text else 1,
        )
    raise ConfigError(
        f"codec spec {spec!r} is invalid: expected 'dense[:FORMAT]' or "
        "'topk:DENSITY[:VALUES[:bBLOCK]]', e.g. 'dense:bf16', 'topk:0.01:int8' "
        "or 'topk:0.1:int2:b16'"
    )


def format_codec(config: CodecConfig) -> str:
    """The canonical spec string of `config` (inverse of `parse_codec`)."""
    if isinstance(config, Dense):
        return f"dense:{config.values}"
    block = f":b{config.block}" if config.block != 1 else ""
    return f"topk:{config.density!r}:{config.values}{block}"


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


def _parse_block(spec: str, text: str) -> int:
    digits = text[1:]
    if not (text.startswith("b") and digits.isascii() and digits.isdigit()):
        raise ConfigError(
            f"codec spec {spec!r} is invalid: block {text!r} is not 'b' and a "
            "divisor of 4096, e.g. b16"
        )
    block = int(digits)
    if not 1 <= block <= SELECTION_GROUP or SELECTION_GROUP % block:
        raise ConfigError(
            f"codec spec {spec!r} is invalid: block {text!r} does not divide "
            "4096: expected b1, b2, b4, ..., b4096"
        )
    return block
