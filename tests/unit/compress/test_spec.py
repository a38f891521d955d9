"""Codec configs: validation at construction and the spec-string round trip."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import fedgrpc.compress as compress
from fedgrpc.compress import Dense, TopK, format_codec, parse_codec
from fedgrpc.errors import ConfigError


@pytest.mark.parametrize(
    ("spec", "config"),
    [
        ("dense", Dense()),
        ("dense:bf16", Dense(values="bf16")),
        ("dense:int4", Dense(values="int4")),
        ("dense:int2", Dense(values="int2")),
        ("topk:0.025:int2", TopK(density=0.025, bits=2)),
        ("topk:0.01:int8", TopK(density=0.01, bits=8)),
        ("topk:0.01", TopK(density=0.01)),
        ("topk:1e-3:int4", TopK(density=0.001, bits=4)),
        ("topk:0.1:bf16", TopK(density=0.1, bits=16)),
        ("topk:1:fp32", TopK(density=1.0, bits=32)),
        (" topk:0.5:int8 ", TopK(density=0.5, bits=8)),
    ],
)
def test_parse_codec_reads_the_documented_grammar(spec: str, config: object) -> None:
    assert parse_codec(spec) == config


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "expected 'dense"),
        ("sparse:0.1", "expected 'dense"),
        ("dense:int16", "value format 'int16'"),
        ("dense:fp32:x", "value format 'fp32:x'"),
        ("topk", "density '' is not a number"),
        ("topk:abc:int8", "density 'abc' is not a number"),
        ("topk:0:int8", "density=0.0 is invalid"),
        ("topk:1.5", "density=1.5 is invalid"),
        ("topk:nan", "density=nan is invalid"),
        (
            "topk:0.1:fp16",
            "value format 'fp16' is not one of int2 | int4 | int8 | bf16",
        ),
    ],
)
def test_parse_codec_names_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("|", r"\|")):
        parse_codec(spec)


@given(
    st.one_of(
        st.builds(Dense, values=st.sampled_from(compress.VALUE_FORMATS)),
        st.builds(
            TopK,
            density=st.floats(min_value=1e-9, max_value=1.0, exclude_min=True),
            bits=st.sampled_from([2, 4, 8, 16, 32]),
        ),
    )
)
def test_format_then_parse_is_the_identity(config: Dense | TopK) -> None:
    assert parse_codec(format_codec(config)) == config


def test_configs_validate_at_construction() -> None:
    with pytest.raises(ConfigError, match=r"values='int3' is invalid"):
        Dense(values="int3")  # type: ignore[arg-type]  # the point of the test
    with pytest.raises(ConfigError, match=r"bits=12 is invalid: expected 2, 4, 8"):
        TopK(density=0.1, bits=12)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"density=True is invalid"):
        TopK(density=True)
    with pytest.raises(ConfigError, match=r"density=-0.1 is invalid.*\(0, 1\]"):
        TopK(density=-0.1)


def test_topk_bits_map_to_value_formats_and_density_is_a_float() -> None:
    assert [TopK(density=1, bits=b).values for b in (2, 4, 8, 16, 32)] == [
        "int2",
        "int4",
        "int8",
        "bf16",
        "fp32",
    ]
    assert isinstance(TopK(density=1).density, float)
    assert format_codec(TopK(density=0.01, bits=8)) == "topk:0.01:int8"
    assert format_codec(Dense()) == "dense:fp32"
