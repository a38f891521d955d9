"""The top-k codec's bytes, pinned: refactors of its selection must not move them."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from fedgrpc.compress import make_codec, parse_codec


@pytest.mark.parametrize(
    ("spec", "digest"),
    [  # sha256 prefixes computed with main before runs existed (2e14906)
        ("topk:0.03:int2", "114db879a4688ac1aaf34deba06145df"),
        ("topk:0.01:int8", "392c7d76bc591a745678000241ce2dc2"),
        ("topk:0.1:fp32", "01247799ccc3ff7f03cf96645070df5c"),
    ],
)
def test_topk_payloads_are_those_of_2e14906_byte_for_byte(
    spec: str, digest: str
) -> None:
    rng = np.random.default_rng(7)
    scales = np.exp(rng.standard_normal(140_000 // 512 + 1)).repeat(512)[:140_000]
    block = (rng.standard_normal(140_000) * scales).astype(np.float32)
    block[::97] = 0
    codec = make_codec(parse_codec(spec), rng=np.random.default_rng(3))
    h = hashlib.sha256()
    for offset in range(0, block.size, 65536):
        payload = codec.encode(block[offset : offset + 65536]).payload
        h.update(payload)

    assert h.hexdigest()[:32] == digest
