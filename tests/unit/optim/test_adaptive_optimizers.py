"""FedAdagrad, FedAdam, FedYogi and FedAvgM against their papers' formulas.

The references below are written out independently in float64 numpy, in
the papers' own notation and sign: Reddi et al. 2021 (arXiv 2003.00295),
Algorithm 2, where Δ_t is the mean *model difference* x_i - x_t = -g (our
pseudo-gradient g = θ_global - θ_local is gradient-like), and x moves by
+η m / (√v + τ). Our float32 in-place code must agree to float32 rounding.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import fedgrpc.optim.adaptive as adaptive_module
from fedgrpc.errors import ConfigError, InvalidUpdateError
from fedgrpc.optim import (
    AdaptiveSettings,
    FedAdagradOuterOptimizer,
    FedAdamOuterOptimizer,
    FedAvgMOuterOptimizer,
    FedAvgOuterOptimizer,
    FedYogiOuterOptimizer,
    NesterovOuterOptimizer,
    OuterOptimizer,
    build_outer_optimizer,
)

D = 1_000
STEPS = 6
ETA, BETA1, BETA2, TAU = 0.03, 0.9, 0.99, 1e-3


def _rounds(seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Start weights and pseudo-gradients whose scale varies by round.

    Scales 0.05 .. 0.4 make Yogi's sign(v - Δ²) take both values across
    coordinates and rounds (checked in the Yogi test).
    """
    rng = np.random.default_rng(seed)
    start = rng.standard_normal(D).astype(np.float32)
    scales = [0.05, 0.4, 0.1, 0.3, 0.02, 0.2]
    grads = [(s * rng.standard_normal(D)).astype(np.float32) for s in scales]
    return start, grads


def _paper_reference(
    rule: str, start: np.ndarray, grads: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Algorithm 2 in float64: (x, m_paper, v, yogi_sign_flips) after all rounds."""
    x = start.astype(np.float64)
    m = np.zeros(D)  # m_{-1} = 0
    v = np.full(D, TAU**2)  # v_{-1} = τ² (the paper asks v_{-1} ≥ τ²)
    flips = 0
    for g in grads:
        delta = -g.astype(np.float64)  # the paper's Δ_t: model difference
        m = BETA1 * m + (1 - BETA1) * delta
        if rule == "adagrad":
            v = v + delta**2
        elif rule == "adam":
            v = BETA2 * v + (1 - BETA2) * delta**2
        else:  # yogi
            sign = np.sign(v - delta**2)
            flips += int((sign > 0).any() and (sign < 0).any())
            v = v - (1 - BETA2) * delta**2 * sign
        x = x + ETA * m / (np.sqrt(v) + TAU)
    return x, m, v, flips


def _ours(rule: str) -> OuterOptimizer:
    if rule == "adagrad":
        return FedAdagradOuterOptimizer(lr=ETA, beta1=BETA1, tau=TAU)
    if rule == "adam":
        return FedAdamOuterOptimizer(lr=ETA, beta1=BETA1, beta2=BETA2, tau=TAU)
    return FedYogiOuterOptimizer(lr=ETA, beta1=BETA1, beta2=BETA2, tau=TAU)


@pytest.mark.parametrize("rule", ["adagrad", "adam", "yogi"])
def test_adaptive_steps_follow_reddi_algorithm_2(rule: str) -> None:
    # Arrange
    start, grads = _rounds(seed=5)
    params = torch.from_numpy(start.copy())
    optimizer = _ours(rule)

    # Act: the caller's buffer may be overwritten, so each step gets a copy.
    for g in grads:
        optimizer.step(params, torch.from_numpy(g.copy()))

    # Assert: weights and both moments (ours stores m = -m_paper).
    x, m_paper, v, flips = _paper_reference(rule, start, grads)
    state = optimizer.state_dict()
    np.testing.assert_allclose(params.numpy(), x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state["momentum_buffer"], -m_paper, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(state["second_moment"], v, rtol=1e-5, atol=1e-10)
    assert state["steps"] == STEPS
    if rule == "yogi":
        assert flips >= 2  # both branches of sign(v - Δ²) were exercised


def test_yogi_chunked_update_matches_reference_across_chunk_edges(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Arrange: chunks of 7 coordinates, so 1000 ends in a partial chunk.
    monkeypatch.setattr(adaptive_module, "_YOGI_CHUNK", 7)
    start, grads = _rounds(seed=6)
    params = torch.from_numpy(start.copy())
    optimizer = _ours("yogi")

    # Act
    for g in grads:
        optimizer.step(params, torch.from_numpy(g.copy()))

    # Assert
    x, _, v, _ = _paper_reference("yogi", start, grads)
    np.testing.assert_allclose(params.numpy(), x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(optimizer.state_dict()["second_moment"], v, rtol=1e-5)


def test_adaptive_first_step_is_sign_like_with_size_eta() -> None:
    # With |Δ| ≫ τ: m_0 = (1 - β1) Δ, √v_0 ≈ √(1 - β2) |Δ|, so
    # x_1 - x_0 = η (1 - β1) / √(1 - β2) · sign(Δ) = η · sign(Δ) for Adam.
    params = torch.zeros(4)
    g = torch.tensor([2.0, -3.0, 0.5, -0.25])  # Δ = -g

    FedAdamOuterOptimizer(lr=0.01, beta1=0.9, beta2=0.99, tau=1e-8).step(params, g)

    torch.testing.assert_close(params, -0.01 * torch.sign(g), rtol=1e-5, atol=1e-9)


def test_fedavgm_matches_torch_heavy_ball_sgd_bitwise() -> None:
    # Arrange: Hsu et al. 2019's server momentum is torch's SGD(nesterov=False).
    gen = torch.Generator().manual_seed(7)
    start = torch.randn(D, generator=gen)
    grads = [torch.randn(D, generator=gen) for _ in range(STEPS)]
    ours_params, ours = start.clone(), FedAvgMOuterOptimizer(lr=0.5, momentum=0.8)
    ref_param = torch.nn.Parameter(start.clone())
    ref = torch.optim.SGD([ref_param], lr=0.5, momentum=0.8)

    for g in grads:
        # Act
        ref_param.grad = g.clone()
        ref.step()
        kept = g.clone()
        ours.step(ours_params, g)

        # Assert: same ops in the same order; FedAvgM leaves g untouched.
        assert torch.equal(ours_params, ref_param.detach())
        assert torch.equal(g, kept)
    buf = ours.state_dict()["momentum_buffer"]
    assert torch.equal(buf, ref.state[ref_param]["momentum_buffer"])  # type: ignore[arg-type]


def test_fedavgm_written_out_independently() -> None:
    # v ← β v + g; θ ← θ - η v, with v_0 = 0, in float64.
    rng = np.random.default_rng(8)
    start = rng.standard_normal(D).astype(np.float32)
    grads = [rng.standard_normal(D).astype(np.float32) for _ in range(STEPS)]
    x, v = start.astype(np.float64), np.zeros(D)
    params, optimizer = torch.from_numpy(start.copy()), FedAvgMOuterOptimizer(0.7, 0.9)
    for g in grads:
        v = 0.9 * v + g
        x = x - 0.7 * v
        optimizer.step(params, torch.from_numpy(g.copy()))
    np.testing.assert_allclose(params.numpy(), x, rtol=1e-5, atol=1e-5)


STATEFUL = [
    lambda: NesterovOuterOptimizer(),
    lambda: FedAvgMOuterOptimizer(),
    lambda: FedAdagradOuterOptimizer(),
    lambda: FedAdamOuterOptimizer(),
    lambda: FedYogiOuterOptimizer(),
]
STATEFUL_IDS = ["nesterov", "fedavgm", "fedadagrad", "fedadam", "fedyogi"]


def _serialized(state: dict[str, object]) -> dict[str, object]:
    """The state as a checkpoint would hand it back: through bytes, not aliases."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded: dict[str, object] = torch.load(buffer, weights_only=True)
    return loaded


@pytest.mark.parametrize("make", STATEFUL, ids=STATEFUL_IDS)
def test_state_dict_round_trip_resumes_bit_identically(make: object) -> None:
    # Arrange: two steps, save, load into a fresh instance.
    gen = torch.Generator().manual_seed(9)
    grads = [0.1 * torch.randn(D, generator=gen) for _ in range(4)]
    first: OuterOptimizer = make()  # type: ignore[operator]  # a factory from STATEFUL
    params_a = torch.randn(D, generator=gen)
    for g in grads[:2]:
        first.step(params_a, g.clone())
    resumed: OuterOptimizer = make()  # type: ignore[operator]
    resumed.load_state_dict(_serialized(first.state_dict()))  # type: ignore[arg-type]
    params_b = params_a.clone()

    # Act: both take the same two further steps.
    for g in grads[2:]:
        first.step(params_a, g.clone())
        resumed.step(params_b, g.clone())

    # Assert: bit-identical weights and state.
    assert torch.equal(params_a, params_b)
    state_a, state_b = first.state_dict(), resumed.state_dict()
    assert state_a.keys() == state_b.keys()
    for key, value in state_a.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, state_b[key]), key  # type: ignore[arg-type]
        else:
            assert value == state_b[key] == 4, key


ALL = [*STATEFUL, lambda: FedAvgOuterOptimizer()]
ALL_IDS = [*STATEFUL_IDS, "fedavg"]


@pytest.mark.parametrize(
    ("pseudo_gradient", "match"),
    [
        (torch.tensor([0.0, float("nan"), 0.0, 0.0]), "NaN"),
        (torch.tensor([0.0, float("-inf"), 0.0, 0.0]), "NaN"),
        (torch.zeros(5), "coordinates"),
        (torch.zeros(2, 2), "1-D float32"),
        (torch.zeros(4, dtype=torch.float64), "1-D float32"),
    ],
)
@pytest.mark.parametrize("make", ALL, ids=ALL_IDS)
def test_bad_step_after_a_good_one_changes_neither_params_nor_state(
    make: object, pseudo_gradient: torch.Tensor, match: str
) -> None:
    # Arrange: one good step, so there is state to protect.
    optimizer: OuterOptimizer = make()  # type: ignore[operator]  # a factory from ALL
    params = torch.tensor([0.5, -0.5, 1.0, 2.0])
    optimizer.step(params, torch.tensor([0.1, -0.2, 0.3, 0.05]))
    params_before = params.clone()
    state_before = {
        k: v.clone() if isinstance(v, torch.Tensor) else v
        for k, v in optimizer.state_dict().items()
    }

    # Act
    with pytest.raises(InvalidUpdateError, match=match):
        optimizer.step(params, pseudo_gradient)

    # Assert
    assert torch.equal(params, params_before)
    state_after = optimizer.state_dict()
    assert state_after.keys() == state_before.keys()
    for key, value in state_before.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(state_after[key], value), key  # type: ignore[arg-type]
        else:
            assert state_after[key] == value, key


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ({"steps": 1, "momentum_buffer": torch.zeros(4), "exp_avg": torch.zeros(4)},
         "another outer optimizer"),
        ({"steps": -1}, "steps"),
        ({"steps": 1, "second_moment": torch.tensor([1.0, -1.0])}, ">= 0"),
        ({"steps": 1, "second_moment": torch.tensor([1.0, float("inf")])}, "finite"),
        ({"steps": 1, "momentum_buffer": torch.zeros(3),
          "second_moment": torch.ones(4)}, "differ in size"),
        ({"steps": 1, "second_moment": torch.ones(2, 2)}, "1-D tensor"),
    ],
)  # fmt: skip
def test_adaptive_load_state_dict_refuses_malformed_state_and_keeps_its_own(
    state: dict[str, object], match: str
) -> None:
    optimizer = FedAdamOuterOptimizer()
    optimizer.step(torch.zeros(4), torch.ones(4))
    before = optimizer.state_dict()["second_moment"]
    assert isinstance(before, torch.Tensor)
    kept = before.clone()

    with pytest.raises(InvalidUpdateError, match=match):
        optimizer.load_state_dict(state)  # type: ignore[arg-type]  # malformed on purpose

    assert optimizer.state_dict()["steps"] == 1
    assert torch.equal(optimizer.state_dict()["second_moment"], kept)  # type: ignore[arg-type]


def test_adaptive_rejects_model_size_change_after_first_step() -> None:
    optimizer = FedYogiOuterOptimizer()
    optimizer.step(torch.zeros(4), torch.ones(4))

    with pytest.raises(InvalidUpdateError, match="first moment"):
        optimizer.step(torch.zeros(5), torch.ones(5))


def test_dropping_the_first_moment_restarts_it_from_zero() -> None:
    # What the secure-aggregation divergence guard does on a trip.
    optimizer, params = FedAdamOuterOptimizer(lr=0.1, tau=1e-8), torch.zeros(2)
    optimizer.step(params, torch.ones(2))
    state = optimizer.state_dict()
    optimizer.load_state_dict(
        {k: v for k, v in state.items() if k != "momentum_buffer"}
    )
    v_before = optimizer.state_dict()["second_moment"]
    assert isinstance(v_before, torch.Tensor)
    v_before = v_before.clone()

    optimizer.step(params, torch.ones(2))

    # m restarts at (1 - β1) g = 0.1; v_t = 0.99 v + 0.01 g²
    m = optimizer.state_dict()["momentum_buffer"]
    torch.testing.assert_close(m, torch.full((2,), 0.1))
    torch.testing.assert_close(
        optimizer.state_dict()["second_moment"], 0.99 * v_before + 0.01
    )


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("fedavgm", FedAvgMOuterOptimizer),
        ("fedadagrad", FedAdagradOuterOptimizer),
        ("fedadam", FedAdamOuterOptimizer),
        ("fedyogi", FedYogiOuterOptimizer),
    ],
)
def test_build_outer_optimizer_returns_the_named_algorithm(
    name: str, cls: type[object]
) -> None:
    momentum = 0.8 if name == "fedavgm" else 0.0
    settings = AdaptiveSettings(beta1=0.5, beta2=0.9, tau=1e-4)

    optimizer = build_outer_optimizer(name, 0.05, momentum, settings)  # type: ignore[arg-type]

    assert isinstance(optimizer, cls)
    assert optimizer.name == name
    if name == "fedavgm":
        assert optimizer.momentum == 0.8  # type: ignore[attr-defined]
    else:
        assert (optimizer.beta1, optimizer.tau) == (0.5, 1e-4)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("name", "momentum", "settings", "match"),
    [
        ("fedadam", 0.9, AdaptiveSettings(), "fedadam, which has no momentum"),
        ("fedyogi", 0.0, AdaptiveSettings(beta1=1.0), "beta1 must be in"),
        ("fedadam", 0.0, AdaptiveSettings(beta2=-0.1), "beta2 must be in"),
        ("fedadagrad", 0.0, AdaptiveSettings(tau=0.0), "tau must be"),
        ("fedyogi", 0.0, AdaptiveSettings(tau=float("nan")), "tau must be"),
        ("fedavgm", 1.0, AdaptiveSettings(), "momentum must be in"),
    ],
)
def test_build_outer_optimizer_refuses_bad_adaptive_settings(
    name: str, momentum: float, settings: AdaptiveSettings, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        build_outer_optimizer(name, 0.01, momentum, settings)  # type: ignore[arg-type]
