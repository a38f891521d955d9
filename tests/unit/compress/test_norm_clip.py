"""The client-side norm bound against its closed form x · min(1, B/‖x‖₂)."""

from __future__ import annotations

import numpy as np
import pytest

from fedgrpc.compress import Dense, ErrorFeedback, make_codec
from fedgrpc.compress.norm_clip import clip_to_norm, l2_norm
from fedgrpc.config import ClientConfig
from fedgrpc.errors import ConfigError

D = (1 << 20) + 4097  # over one float64 slice of the norm, the last one short


def _vector(seed: int, scale: float) -> np.ndarray:
    return (scale * np.random.default_rng(seed).standard_normal(D)).astype(np.float32)


def test_l2_norm_matches_float64_numpy() -> None:
    x = _vector(0, 3.0)
    assert l2_norm(x) == pytest.approx(np.linalg.norm(x.astype(np.float64)), rel=1e-12)


@pytest.mark.parametrize("bound", [0.5, 100.0, 5000.0])
def test_clip_to_norm_matches_the_closed_form(bound: float) -> None:
    x = _vector(1, 2.0)
    x64 = x.astype(np.float64)
    norm = float(np.linalg.norm(x64))
    want = x64 * min(1.0, bound / norm)

    before = clip_to_norm(x, bound)

    assert before == pytest.approx(norm, rel=1e-12)
    np.testing.assert_allclose(x, want, rtol=1e-6, atol=1e-9)
    assert l2_norm(x) <= bound * (1 + 1e-6)


def test_error_feedback_clips_residual_plus_delta_and_drops_the_excess() -> None:
    bound, decay = 10.0, 0.5
    feedback = ErrorFeedback(D, decay=decay, max_norm=bound)
    first, second = _vector(2, 1.0), _vector(3, 1.0)  # norms ~1024 >> bound

    feedback.accumulate(first)
    after_first = first.astype(np.float64) * bound / np.linalg.norm(first)
    np.testing.assert_allclose(feedback.residual, after_first, rtol=1e-5, atol=1e-7)

    feedback.accumulate(second)
    folded = decay * after_first + second.astype(np.float64)
    want = folded * bound / np.linalg.norm(folded)
    np.testing.assert_allclose(feedback.residual, want, rtol=1e-5, atol=1e-7)
    assert feedback.norm_before_clip == pytest.approx(np.linalg.norm(folded), rel=1e-5)


def test_what_a_bounded_client_encodes_has_at_most_the_bound() -> None:
    bound = 4.0
    feedback = ErrorFeedback(D, max_norm=bound)
    feedback.accumulate(_vector(4, 5.0))
    sent = np.zeros(D, dtype=np.float32)
    codec = make_codec(Dense(values="fp32"))
    for block in feedback.encode_blocks(codec, 1 << 20):
        block.encoded.sent.add_into(sent[block.offset : block.offset + block.count])
    assert l2_norm(sent) <= bound * (1 + 1e-6)
    assert l2_norm(np.asarray(feedback.residual)) < 1e-3  # fp32: all of e was sent


def test_no_bound_leaves_error_feedback_unclipped() -> None:
    feedback = ErrorFeedback(D)
    x = _vector(5, 1.0)
    feedback.accumulate(x)
    np.testing.assert_array_equal(feedback.residual, x)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_a_bad_bound_is_refused_naming_the_setting(bad: float) -> None:
    with pytest.raises(ConfigError, match="max_update_norm"):
        ClientConfig(max_update_norm=bad)
    with pytest.raises(ConfigError, match="max_update_norm"):
        ErrorFeedback(4, max_norm=bad)
