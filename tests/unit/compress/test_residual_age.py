"""The "residual_age" ranking of the shared index set (compress.residual_age)."""

from __future__ import annotations

import pytest
import torch

from fedgrpc.compress.residual_age import ResidualAge
from fedgrpc.errors import InvalidUpdateError


def _at(*positions: int) -> torch.Tensor:
    return torch.tensor(positions, dtype=torch.int64)


def test_nothing_recorded_scores_zero_so_the_first_set_is_all_random() -> None:
    assert torch.equal(ResidualAge(5).scores(), torch.zeros(5))


def test_a_sent_coordinate_scores_its_rate_and_unseen_ones_the_median_rate() -> None:
    age = ResidualAge(6)

    age.record(_at(0, 1, 2), torch.tensor([0.3, -0.1, 0.2]))

    # Sent: rate |m| / 1 round, then one round of training ahead: x 1.
    # Never seen: the median known rate (0.2) x (1 round waited + 1).
    expected = torch.tensor([0.3, 0.1, 0.2, 0.4, 0.4, 0.4])
    torch.testing.assert_close(age.scores(), expected)


def test_a_coordinate_left_unsent_rises_until_it_outranks_a_louder_one() -> None:
    """Rotation: score = rate x (rounds waited + 1), so a quiet one gets its turn."""
    age = ResidualAge(2)
    age.record(_at(0, 1), torch.tensor([1.0, 0.25]))  # both seen, rates 1, 0.25
    overtaken_after = None
    for rounds in range(1, 10):
        age.record(_at(0), torch.tensor([1.0]))  # only the loud one is sent
        scores = age.scores()
        if scores[1] > scores[0]:
            overtaken_after = rounds
            break

    # 0.25 x (a + 1) > 1 x 1 from a = 4 rounds waited on.
    assert overtaken_after == 4


def test_a_late_arrival_is_spread_over_the_rounds_it_waited() -> None:
    age = ResidualAge(2)
    age.record(_at(0), torch.tensor([0.5]))
    age.record(_at(0), torch.tensor([0.5]))

    age.record(_at(1), torch.tensor([-0.9]))  # coordinate 1 waited 3 rounds

    torch.testing.assert_close(age.rate, torch.tensor([0.5, 0.3]))
    torch.testing.assert_close(age.age, torch.tensor([1.0, 0.0]))


def test_a_zero_arrival_keeps_the_rate_and_a_dense_round_sends_everything() -> None:
    age = ResidualAge(3)
    age.record(_at(0, 1), torch.tensor([0.4, 0.2]))

    age.record(None, torch.tensor([0.0, 0.6, 0.9]))  # dense: every coordinate

    torch.testing.assert_close(age.rate, torch.tensor([0.4, 0.6, 0.45]))
    assert torch.equal(age.age, torch.zeros(3))


@pytest.mark.parametrize(
    ("positions", "values", "match"),
    [
        (_at(0, 1), torch.tensor([0.1]), "1 torch.float32 values for 2 positions"),
        (_at(0), torch.tensor([1], dtype=torch.int64), "expected float32"),
        (_at(0, 4), torch.tensor([0.1, 0.2]), r"outside \[0, 4\)"),
        (_at(-1), torch.tensor([0.1]), r"outside \[0, 4\)"),
        (None, torch.tensor([0.1]), "for 4 positions"),
    ],
)
def test_a_record_that_does_not_fit_the_model_is_refused_untouched(
    positions: torch.Tensor | None, values: torch.Tensor, match: str
) -> None:
    age = ResidualAge(4)

    with pytest.raises(InvalidUpdateError, match=match):
        age.record(positions, values)

    assert torch.equal(age.age, torch.zeros(4))
    assert torch.equal(age.rate, torch.zeros(4))
