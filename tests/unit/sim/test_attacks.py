"""The attacks' math on fixed inputs, their grammar, the choice of attackers."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import pytest
import torch

from fedgrpc.client.transform import UpdateContext
from fedgrpc.errors import ConfigError
from fedgrpc.sim.attack_spec import AttackSpec, assign_attackers, parse_attack
from fedgrpc.sim.attacks import (
    AttackPlan,
    alie,
    alie_z_max,
    build_transform,
    gaussian,
    ipm,
    scale,
    sign_flip,
)
from fedgrpc.sim.collusion import Colluders


def _context(round_id: int = 1) -> UpdateContext:
    return UpdateContext("c1", round_id, 0, 32)


def _plan(text: str, index: int = 0, members: tuple[int, ...] = (0,)) -> AttackPlan:
    return AttackPlan(parse_attack(text), index, 8, members, 0, "")


@pytest.mark.parametrize(
    ("n", "f", "z"),
    [
        (8, 2, 0.318639),  # s = 5 - 2 = 3, Phi^-1(5/8)
        (10, 3, 0.524401),  # s = 6 - 3 = 3, Phi^-1(7/10)
        (50, 24, 1.750686),  # s = 26 - 24 = 2, Phi^-1(48/50)
        (4, 1, 0.0),  # s = 3 - 1 = 2, Phi^-1(1/2): no room to move
    ],
)
def test_alie_z_max_follows_baruch_et_al_formula(n: int, f: int, z: float) -> None:
    assert alie_z_max(n, f) == pytest.approx(z, abs=1e-6)


def test_alie_z_max_refuses_attacker_counts_with_no_finite_z() -> None:
    with pytest.raises(ConfigError, match="give Z explicitly"):
        alie_z_max(5, 3)
    with pytest.raises(ConfigError, match="1 <= f < n"):
        alie_z_max(4, 0)


def test_alie_sends_the_mean_minus_z_sample_standard_deviations() -> None:
    honest = torch.tensor([[1.0, 2.0, 0.0], [3.0, 6.0, 0.0]])
    # mean [2, 4, 0], sample std [sqrt 2, 2 sqrt 2, 0]
    expected = torch.tensor([2 - 1.5 * math.sqrt(2), 4 - 3 * math.sqrt(2), 0.0])
    torch.testing.assert_close(alie(honest, 1.5), expected)


def test_alie_with_one_colluder_degenerates_to_its_honest_update() -> None:
    honest = torch.tensor([[1.0, -2.0]])
    torch.testing.assert_close(alie(honest, 3.0), honest[0])


def test_ipm_sends_minus_epsilon_times_the_benign_mean() -> None:
    honest = torch.tensor([[1.0, 2.0], [3.0, -6.0]])
    torch.testing.assert_close(ipm(honest, 0.5), torch.tensor([-1.0, 1.0]))


def test_sign_flip_and_scaling_rewrite_the_update_in_place() -> None:
    update = torch.tensor([1.0, -2.0])
    assert sign_flip(update) is update
    torch.testing.assert_close(update, torch.tensor([-1.0, 2.0]))
    torch.testing.assert_close(scale(update, 10.0), torch.tensor([-10.0, 20.0]))


def test_gaussian_noise_is_scaled_to_the_honest_update_and_seeded() -> None:
    honest = torch.full((40_000,), 0.5)  # rms 0.5
    noise = gaussian(honest.clone(), 4.0, torch.Generator().manual_seed(3))
    again = gaussian(honest.clone(), 4.0, torch.Generator().manual_seed(3))
    assert torch.equal(noise, again)
    assert float(noise.std()) == pytest.approx(2.0, rel=0.02)
    assert abs(float(noise.mean())) < 0.05


def test_grammar_reads_kind_fraction_and_parameter() -> None:
    assert parse_attack("signflip:0.25") == AttackSpec("signflip", 0.25)
    assert parse_attack("scaling:0.25:x10") == AttackSpec("scaling", 0.25, 10.0)
    assert parse_attack("Scaling:0.25:-3") == AttackSpec("scaling", 0.25, -3.0)
    assert parse_attack("alie:0.3").value is None  # derived from n and f
    assert parse_attack("ipm:0.3").value == 0.5
    assert str(parse_attack("backdoor:0.25:x5")) == "backdoor:0.25:x5"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("flood:0.2", "unknown"),
        ("signflip", "expected KIND:FRACTION"),
        ("signflip:1", r"\(0, 1\)"),
        ("signflip:nan", r"\(0, 1\)"),
        ("signflip:0.2:3", "takes no parameter"),
        ("scaling:0.2:lots", "not a number"),
        ("gaussian:0.2:0", "must be > 0"),
        ("ipm:0.2:inf", "must be finite"),
    ],
)
def test_grammar_refuses_bad_values_naming_the_problem(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_attack(text)


def test_attackers_depend_on_the_seed_only_and_mixed_attacks_are_disjoint() -> None:
    specs = (parse_attack("signflip:0.25"), parse_attack("alie:0.3"))
    chosen = assign_attackers(specs, 10, seed=7)
    assert chosen == assign_attackers(specs, 10, seed=7)
    assert sorted(s.kind for s in chosen.values()).count("signflip") == 2
    assert sorted(s.kind for s in chosen.values()).count("alie") == 3
    seeds = {tuple(sorted(assign_attackers(specs, 10, seed=s))) for s in range(8)}
    assert len(seeds) > 1  # the seed does choose


def test_fraction_counts_floor_with_float_noise_forgiven() -> None:
    assert AttackSpec("signflip", 0.29).count(100) == 29
    assert AttackSpec("signflip", 0.3).count(10) == 3
    assert AttackSpec("signflip", 0.49).count(4) == 1


def test_assignment_refuses_no_attacker_and_no_honest_client() -> None:
    with pytest.raises(ConfigError, match=r"at least 0\.25"):
        assign_attackers((parse_attack("signflip:0.1"),), 4, seed=0)
    both = (parse_attack("signflip:0.5"), parse_attack("ipm:0.5"))
    with pytest.raises(ConfigError, match="at least one honest client"):
        assign_attackers(both, 4, seed=0)


def test_transforms_of_each_kind() -> None:
    update = torch.tensor([1.0, 2.0])
    flip = build_transform(_plan("signflip:0.25"))
    assert flip is not None
    torch.testing.assert_close(flip(update.clone(), _context()), -update)
    boosted = build_transform(_plan("backdoor:0.25:x4"))
    assert boosted is not None
    torch.testing.assert_close(boosted(update.clone(), _context()), 4 * update)
    assert build_transform(_plan("backdoor:0.25")) is None  # training is the attack
    assert build_transform(_plan("labelflip:0.25")) is None
    noisy = build_transform(_plan("gaussian:0.25"))
    assert noisy is not None
    first, again, other = (noisy(update.clone(), _context(r)) for r in (1, 1, 2))
    assert first is not None
    assert again is not None
    assert other is not None
    assert torch.equal(first, again)  # seeded by the round
    assert not torch.equal(first, other)


def test_colluders_compute_alie_from_every_members_honest_update(
    tmp_path: Path,
) -> None:
    members = (2, 5)
    honest = {2: torch.tensor([1.0, 2.0]), 5: torch.tensor([3.0, 6.0])}
    sent: dict[int, torch.Tensor] = {}

    def attacker(index: int) -> None:
        plan = AttackPlan(
            parse_attack("alie:0.25:1"), index, 8, members, 0, str(tmp_path)
        )
        transform = build_transform(plan)
        assert transform is not None
        result = transform(honest[index].clone(), _context(3))
        assert result is not None
        sent[index] = result

    threads = [threading.Thread(target=attacker, args=(i,)) for i in members]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    expected = torch.tensor([2 - math.sqrt(2), 4 - 2 * math.sqrt(2)])
    torch.testing.assert_close(sent[2], expected)
    assert torch.equal(sent[2], sent[5])  # colluders send the same vector


def test_a_colluder_that_never_shares_is_left_out_after_the_wait(
    tmp_path: Path,
) -> None:
    colluders = Colluders(tmp_path, 0, (0, 1), wait_s=0.1)
    rows = colluders.exchange(1, torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(rows, torch.tensor([[1.0, 2.0]]))


def test_colluders_delete_their_shares_once_nobody_can_read_them(
    tmp_path: Path,
) -> None:
    colluders = Colluders(tmp_path, 0, (0,), wait_s=0.1)
    for round_id in (1, 2, 3):
        colluders.exchange(round_id, torch.zeros(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r2-c0.pt", "r3-c0.pt"]
