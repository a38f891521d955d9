"""Each built-in robust rule matches an independent numpy reference on random inputs.

The rules read a real disk spool in blocks narrower than the model (three
blocks, the last one short), the references hold the whole matrix in
float64 (`reference_rules`, written from the papers).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from fedgrpc.aggregate import SpoolAccumulator, passes
from fedgrpc.aggregate.iterative import CenteredClipping, GeometricMedian
from fedgrpc.aggregate.krum import MultiKrum, krum, max_byzantine
from fedgrpc.aggregate.norm_bound import NormBounded, hybrid
from fedgrpc.aggregate.passes import distances_to, pairwise_squared_distances
from fedgrpc.aggregate.robust import TrimmedMean
from fedgrpc.aggregate.stages import Aggregator
from fedgrpc.errors import ConfigError
from tests.unit.aggregate import reference_rules as ref

D = 2500  # > 2 blocks of 1024 coordinates
SMALL_BLOCKS = 1  # below the minimum: blocks of 1024 coordinates
SEEDS = range(4)
MakeSpool = Callable[..., SpoolAccumulator]
"""(updates n x d float32, weights or None) -> a committed spool."""


@pytest.fixture
def spools(tmp_path: Path) -> Iterator[list[SpoolAccumulator]]:
    made: list[SpoolAccumulator] = []
    yield made
    for spool in made:
        spool.discard()


@pytest.fixture
def spool_of(spools: list[SpoolAccumulator], tmp_path: Path) -> MakeSpool:
    def make(
        updates: np.ndarray, weights: list[float] | None = None
    ) -> SpoolAccumulator:
        spool = SpoolAccumulator(tmp_path / f"r{len(spools)}", updates.shape[1], 64)
        spools.append(spool)
        for key, update in enumerate(updates):
            weight = 1.0 if weights is None else weights[key]
            spool.add_values(key, 0, update, weight, np.empty(0, np.float32))
            spool.commit_update(key, weight)
        return spool

    return make


def _updates(seed: int, n: int, attackers: int = 0) -> np.ndarray:
    """n honest Gaussian updates around a common mean; `attackers` rows far off."""
    rng = np.random.default_rng(seed)
    honest = rng.normal(0.5, 1.0, (n, D))
    honest[:attackers] = rng.normal(-40.0, 5.0, (attackers, D))
    return honest.astype(np.float32)


def _run(rule: Aggregator, spool: SpoolAccumulator) -> np.ndarray:
    out = torch.full((spool.num_coordinates,), float("nan"))
    rule.aggregate(spool.held(), out)
    return out.numpy().astype(np.float64)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("n", "f", "m"), [(5, 1, 1), (8, 2, 1), (8, 2, 6), (11, 3, 4)])
def test_multi_krum_matches_the_reference(
    seed: int, n: int, f: int, m: int, spool_of: MakeSpool
) -> None:
    updates = _updates(seed, n)
    got = _run(MultiKrum(f=f, m=m, block_bytes=SMALL_BLOCKS), spool_of(updates))
    want = ref.multi_krum(updates.astype(np.float64), f, m)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gram_columns", [1000, 1 << 16])
def test_pairwise_distances_match_the_reference_despite_a_large_common_offset(
    gram_columns: int, spool_of: MakeSpool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(passes, "GRAM_COLUMNS", gram_columns)  # slices of a block
    # 1e3 shared by all rows: ‖a‖² + ‖b‖² - 2a·b would cancel badly in float32.
    updates = (_updates(7, 6) + 1e3).astype(np.float32)
    got = pairwise_squared_distances(spool_of(updates).held(), SMALL_BLOCKS)
    x = updates.astype(np.float64)
    want = ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_krum_ignores_a_minority_of_far_updates_and_picks_an_honest_one(
    seed: int, spool_of: MakeSpool
) -> None:
    updates = _updates(seed, 8, attackers=2)
    got = _run(krum(block_bytes=SMALL_BLOCKS), spool_of(updates))
    assert any(np.array_equal(got, row) for row in updates[2:].astype(np.float64))


def test_krum_with_too_few_updates_for_f_uses_the_largest_f_that_fits(
    spool_of: MakeSpool,
) -> None:
    updates = _updates(3, 5)
    rule = MultiKrum(f=4, m=1, block_bytes=SMALL_BLOCKS)
    assert rule.round_f_m(5) == (max_byzantine(5), 1) == (1, 1)
    got = _run(rule, spool_of(updates))
    np.testing.assert_allclose(got, ref.multi_krum(updates.astype(np.float64), 1, 1))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n", [3, 7, 10])
def test_geometric_median_matches_the_reference(
    seed: int, n: int, spool_of: MakeSpool
) -> None:
    updates = _updates(seed, n, attackers=n // 3)
    rule = GeometricMedian(iters=50, eps=1e-6, block_bytes=SMALL_BLOCKS)
    got = _run(rule, spool_of(updates))
    want = ref.geometric_median(updates.astype(np.float64), 50, 1e-6)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    honest, hostile = updates[n // 3 :].mean(axis=0), updates[: n // 3].mean(axis=0)
    # Far nearer the honest centre than the attackers' (they sit ~2000 away).
    assert np.linalg.norm(got - honest) < 0.1 * np.linalg.norm(got - hostile)


def test_geometric_median_is_not_moved_by_a_huge_claimed_sample_count(
    spool_of: MakeSpool,
) -> None:
    updates = _updates(1, 5, attackers=1)
    equal = _run(GeometricMedian(block_bytes=SMALL_BLOCKS), spool_of(updates))
    claimed = _run(
        GeometricMedian(block_bytes=SMALL_BLOCKS),
        spool_of(updates, weights=[1e18, 1, 1, 1, 1]),
    )
    np.testing.assert_array_equal(equal, claimed)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("tau", "iters"), [(None, 1), (None, 3), (2.0, 3), (50.0, 2)])
def test_centered_clipping_matches_the_reference_over_two_rounds(
    seed: int, tau: float | None, iters: int, spool_of: MakeSpool
) -> None:
    rule = CenteredClipping(tau=tau, iters=iters, block_bytes=SMALL_BLOCKS)
    first, second = _updates(seed, 7, attackers=2), _updates(seed + 100, 7, attackers=2)

    got_first = _run(rule, spool_of(first))
    got_second = _run(rule, spool_of(second))

    want_first = ref.centered_clipping(
        first.astype(np.float64), np.zeros(D), tau, iters
    )
    want_second = ref.centered_clipping(
        second.astype(np.float64), want_first, tau, iters
    )
    np.testing.assert_allclose(got_first, want_first, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got_second, want_second, rtol=1e-4, atol=1e-4)


def test_centered_clipping_state_round_trips_through_state_dict(
    spool_of: MakeSpool,
) -> None:
    first, second = _updates(5, 6, attackers=1), _updates(6, 6, attackers=1)
    running = CenteredClipping(iters=2, block_bytes=SMALL_BLOCKS)
    assert running.state_dict() == {}
    _run(running, spool_of(first))
    restored = CenteredClipping(iters=2, block_bytes=SMALL_BLOCKS)
    restored.load_state_dict({k: v.clone() for k, v in running.state_dict().items()})

    np.testing.assert_array_equal(
        _run(running, spool_of(second)),
        _run(restored, spool_of(second)),
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_hybrid_matches_norm_clip_then_trimmed_mean(
    seed: int, spool_of: MakeSpool
) -> None:
    updates = _updates(seed, 9)
    updates[0] *= 1000.0  # a scaling attacker
    x = updates.astype(np.float64)
    bound = float(np.median(np.linalg.norm(x, axis=1)))

    got = _run(hybrid(beta=0.2, block_bytes=SMALL_BLOCKS), spool_of(updates))

    want = ref.trimmed_mean(ref.norm_clip(x, bound), 0.2)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_a_fixed_norm_bound_caps_the_mean_of_a_scaled_update(
    spool_of: MakeSpool,
) -> None:
    updates = _updates(2, 4)
    updates[0] *= 1e6
    rule = NormBounded(TrimmedMean(beta=0.0, block_bytes=SMALL_BLOCKS), bound=10.0)

    got = _run(rule, spool_of(updates))

    want = ref.norm_clip(updates.astype(np.float64), 10.0).mean(axis=0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert np.linalg.norm(got) <= 10.0 * (1 + 1e-5)


def test_distances_to_an_aggregate_match_the_reference(spool_of: MakeSpool) -> None:
    updates = _updates(4, 5)
    center = updates.mean(axis=0)
    got = distances_to(spool_of(updates).held(), center, SMALL_BLOCKS)
    want = np.linalg.norm(updates.astype(np.float64) - center, axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize(
    ("build", "setting"),
    [
        (lambda: MultiKrum(f=-1), "krum_f"),
        (lambda: MultiKrum(m=0), "multi_krum_m"),
        (lambda: GeometricMedian(iters=0), "geomedian_iters"),
        (lambda: GeometricMedian(eps=0.0), "geomedian_eps"),
        (lambda: CenteredClipping(tau=-1.0), "clipping_tau"),
        (lambda: CenteredClipping(iters=0), "clipping_iters"),
        (lambda: NormBounded(TrimmedMean(), bound=1.0, multiple=1.0), "norm_bound"),
        (
            lambda: NormBounded(TrimmedMean(), multiple=float("nan")),
            "norm_bound_multiple",
        ),
    ],
)
def test_bad_rule_parameters_are_refused_naming_the_setting(
    build: Callable[[], object], setting: str
) -> None:
    with pytest.raises(ConfigError, match=setting):
        build()


@pytest.mark.parametrize("huge", [3.0e38, 1.0e30, 1.0e15])
@pytest.mark.parametrize(
    "rule",
    [
        CenteredClipping(iters=5, block_bytes=SMALL_BLOCKS),
        GeometricMedian(block_bytes=SMALL_BLOCKS),
        krum(block_bytes=SMALL_BLOCKS),
        MultiKrum(block_bytes=SMALL_BLOCKS),
    ],
    ids=lambda rule: rule.name,
)
def test_one_update_of_huge_finite_floats_does_not_blind_the_distance_rules(
    rule: Aggregator, huge: float, spool_of: MakeSpool
) -> None:
    """A hostile client's finite ±huge update is rejected by no ingest check,
    and must not drown the honest updates' distances in its rounding error:
    the rule still lands within the honest spread of the honest mean.

    The geometric median is in since it starts at the medoid: from RFA's
    start (the mean, ~huge/n away) Weiszfeld needed ~log₇(huge) steps and
    RFA's relative `ftol` stopped it first.
    """
    updates = _updates(5, 8)
    updates[3] = np.float32(huge) * np.sign(updates[3])
    honest = np.delete(updates, 3, axis=0).astype(np.float64)
    got = _run(rule, spool_of(updates))
    spread = np.linalg.norm(honest - honest.mean(axis=0), axis=1).max()
    assert np.isfinite(got).all()
    assert np.linalg.norm(got - honest.mean(axis=0)) < spread
