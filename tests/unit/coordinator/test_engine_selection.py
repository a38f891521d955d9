"""Client selection in the round engine: who may push, what a round waits for.

Plain Python, real tensors; the Selector's choice is checked against the
built-in selector run on the same candidates and nonce (reproducible).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.rounds.engine import RoundEngine
from fedgrpc.coordinator.rounds.records import Outcome
from fedgrpc.coordinator.rounds.registry import ClientRegistry
from fedgrpc.coordinator.strategy import Candidate, RandomSelector
from fedgrpc.errors import ConfigError, WrongRoundError
from tests.unit.coordinator.test_round_engine import SPEC, _close, _commit, _header


class Federation:
    def __init__(self, clients: int = 4, **settings: object) -> None:
        values: dict[str, object] = {"min_clients": 2, "selection": "random",
                                     "clients_per_round": 2,
                                     "outer_optimizer": "fedavg"}  # fmt: skip
        config = CoordinatorConfig(**{**values, **settings})  # type: ignore[arg-type]
        self.registry = ClientRegistry(max_clients=8)
        self.ids = [self.registry.add(f"n{i}", 0.0).client_id for i in range(clients)]
        for client_id in self.ids:
            record = self.registry.get(client_id)
            assert record is not None
            record.connected = True
        self.engine = RoundEngine(config, self.registry)
        self.engine.model.adopt_spec(SPEC)
        self.push(self.ids[0], 0.0, 0, 0, initial=True)

    def push(
        self, cid: str, value: float, round_id: int, base: int, initial: bool = False
    ) -> None:
        _commit(self.engine, self.registry, cid, torch.full((4,), value), round_id,
                base, initial)  # fmt: skip

    def selected(self) -> tuple[str, ...]:
        assert self.engine.current is not None
        assert self.engine.current.selected is not None
        return self.engine.current.selected


def test_the_choice_is_the_selector_run_on_the_connected_clients_and_nonce() -> None:
    fed = Federation()
    current = fed.engine.current
    assert current is not None
    expected = RandomSelector(2).select(
        [Candidate(client_id=cid) for cid in fed.ids], current.nonce
    )
    assert fed.selected() == expected
    assert len(set(expected)) == 2


def test_a_round_waits_only_for_its_selected_clients_and_refuses_the_others() -> None:
    fed = Federation()
    chosen = fed.selected()
    other = next(c for c in fed.ids if c not in chosen)
    record = fed.registry.get(other)
    assert record is not None
    with pytest.raises(WrongRoundError, match="not selected"):
        fed.engine.admit(record, _header(other, 1, 0))
    fed.push(chosen[0], 1.0, 1, 0)
    assert fed.engine.close_reason() is None  # the second chosen one is awaited
    fed.push(chosen[1], 3.0, 1, 0)
    assert fed.engine.close_reason() == "all connected clients committed"
    assert _close(fed.engine) is Outcome.APPLIED
    assert fed.engine.history[-1].selected == chosen


def _first_round_sitting_out(fed: Federation, cid: str) -> None:
    """Close rounds with their selected clients until one selects `cid`."""
    for _ in range(20):
        current = fed.engine.current
        assert current is not None
        if cid in fed.selected():
            return
        for chosen in fed.selected():
            fed.push(chosen, 1.0, current.round_id, current.base_version)
        assert _close(fed.engine) is Outcome.APPLIED
    raise AssertionError(f"{cid} was never selected in 20 rounds")


def test_an_update_spanning_rounds_it_sat_out_is_accepted_from_its_old_base() -> None:
    fed = Federation()
    sitter = next(c for c in fed.ids if c not in fed.selected())
    _first_round_sitting_out(fed, sitter)
    current = fed.engine.current
    assert current is not None
    assert current.base_version >= 1  # the model moved while it sat out
    fed.push(sitter, 5.0, current.round_id, 0)  # from version 0: spans them
    assert fed.registry.get(sitter).updates_accepted == 1  # type: ignore[union-attr]


def test_an_old_base_from_a_client_selected_in_between_is_refused() -> None:
    fed = Federation()
    chosen = fed.selected()
    for cid in chosen:
        fed.push(cid, 1.0, 1, 0)
    assert _close(fed.engine) is Outcome.APPLIED
    _first_round_sitting_out(fed, chosen[0])
    current = fed.engine.current
    assert current is not None
    record = fed.registry.get(chosen[0])
    assert record is not None
    with pytest.raises(WrongRoundError, match="pull the latest model"):
        fed.engine.admit(record, _header(chosen[0], current.round_id, 0))


def test_selection_all_refuses_an_older_base_as_before() -> None:
    fed = Federation(selection="all", clients_per_round=None, min_clients=4)
    for cid in fed.ids:
        fed.push(cid, 1.0, 1, 0)
    assert _close(fed.engine) is Outcome.APPLIED
    record = fed.registry.get(fed.ids[0])
    assert record is not None
    with pytest.raises(WrongRoundError, match="version"):
        fed.engine.admit(record, _header(fed.ids[0], 2, 0))


def test_a_round_opened_before_its_clients_connected_is_drawn_again() -> None:
    fed = Federation()
    for cid in fed.ids:
        fed.registry.get(cid).connected = False  # type: ignore[union-attr]
    fed.engine.reselect()
    assert fed.selected() == ()
    for cid in fed.ids:
        fed.registry.get(cid).connected = True  # type: ignore[union-attr]
    fed.engine.reselect(only_if_short=True)
    assert len(fed.selected()) == 2


def test_selection_with_secure_aggregation_is_refused_naming_both() -> None:
    config = CoordinatorConfig(
        secure_aggregation=True, codec="dense:int8", min_clients=3,
        selection="random", clients_per_round=3,
    )  # fmt: skip
    with pytest.raises(ConfigError, match="secure_aggregation = true"):
        RoundEngine(config, ClientRegistry(max_clients=8))


def _loss_rounds(fed: Federation, losses: dict[str, float], rounds: int) -> list[str]:
    """Run `rounds` rounds; each chosen client reports its loss. All picks."""
    picks: list[str] = []
    for _ in range(rounds):
        current = fed.engine.current
        assert current is not None
        for cid in fed.selected():
            record = fed.registry.get(cid)
            assert record is not None
            header = _header(cid, current.round_id, current.base_version)
            header = dataclasses.replace(header, train_loss=losses[cid])
            ticket = fed.engine.admit(record, header)
            fed.engine.add_chunk(ticket, 0, np.zeros(4, dtype=np.float32))
            fed.engine.commit(ticket, 16)
            picks.append(cid)
        assert _close(fed.engine) is Outcome.APPLIED
    return picks


def test_the_loss_selector_prefers_high_loss_clients() -> None:
    fed = Federation(clients=8, selection="loss")
    losses = {cid: float(i) for i, cid in enumerate(fed.ids)}  # last: highest
    picks = _loss_rounds(fed, losses, 40)
    counts = {cid: picks.count(cid) for cid in fed.ids}
    high, low = fed.ids[-2:], fed.ids[:2]
    assert sum(counts[c] for c in high) > 2 * sum(counts[c] for c in low), counts


def test_a_client_claiming_a_huge_loss_is_not_picked_every_round() -> None:
    fed = Federation(clients=8, selection="loss")
    liar = fed.ids[0]
    losses = dict.fromkeys(fed.ids, 1.0) | {liar: 1e30}
    rounds = 40
    picks = _loss_rounds(fed, losses, rounds)
    assert picks.count(liar) < rounds  # the candidate set is drawn before loss
    assert len(set(picks)) == len(fed.ids)  # and everyone still takes part
