"""`max_rounds` in the round engine: the last round ends the run; none opens after."""

from __future__ import annotations

import pytest
import torch

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.rounds.engine import RoundEngine
from fedgrpc.coordinator.rounds.records import Phase
from fedgrpc.coordinator.rounds.registry import ClientRecord, ClientRegistry
from fedgrpc.domain.model_spec import DType, ModelSpec, TensorSpec
from fedgrpc.domain.requests import UpdateHeaderInfo
from fedgrpc.errors import ConfigError, WrongRoundError

SPEC = ModelSpec((TensorSpec("w", (4,), DType.FLOAT32),))


def _header(client: ClientRecord, round_id: int, initial: bool) -> UpdateHeaderInfo:
    return UpdateHeaderInfo(
        client_id=client.client_id, session_token=b"", round_id=round_id,
        base_version=round_id - 1 if round_id else 0, is_initial_weights=initial,
        codec="dense-fp32", num_coordinates=4, num_samples=1, train_loss=1.0,
    )  # fmt: skip


def _push(engine: RoundEngine, client: ClientRecord, round_id: int) -> None:
    ticket = engine.admit(client, _header(client, round_id, initial=round_id == 0))
    engine.add_chunk(ticket, 0, torch.ones(4).numpy())
    engine.commit(ticket, 16)


def _close(engine: RoundEngine) -> bool:
    reason = engine.close_reason()
    assert reason is not None
    closing = engine.begin_close()
    applied = engine.apply(closing, copy_on_write=False)
    return engine.finish_close(closing, applied, reason).run_finished


def _seeded(max_rounds: int) -> tuple[RoundEngine, ClientRecord]:
    registry = ClientRegistry(max_clients=4)
    config = CoordinatorConfig(min_clients=1, max_rounds=max_rounds)
    engine = RoundEngine(config, registry, lambda: 0.0)
    engine.model.adopt_spec(SPEC)
    client = registry.add("a", 0.0)
    client.connected = True
    _push(engine, client, 0)
    return engine, client


def test_the_last_round_finishes_the_run_and_opens_no_other() -> None:
    engine, client = _seeded(max_rounds=2)
    _push(engine, client, 1)
    assert _close(engine) is False
    assert engine.current is not None
    _push(engine, client, 2)

    assert _close(engine) is True

    assert engine.phase is Phase.FINISHED
    assert engine.finished
    # Read through getattr: mypy would keep the earlier "is not None" narrowing.
    assert getattr(engine, "current") is None  # noqa: B009
    assert engine.last_closed_round == 2
    assert engine.history[-1].run_finished
    assert engine.model.version == 2
    with pytest.raises(WrongRoundError, match="run finished"):
        engine.admit(client, _header(client, 3, initial=False))


def test_without_max_rounds_the_run_never_finishes() -> None:
    engine, client = _seeded(max_rounds=0)
    for round_id in (1, 2, 3):
        _push(engine, client, round_id)
        assert _close(engine) is False
    assert engine.phase is Phase.COLLECTING
    assert engine.last_closed_round == 3


def test_resuming_a_finished_run_stays_finished_and_a_larger_limit_continues() -> None:
    finished, _client = _seeded(max_rounds=1)
    finished.resume(1, [])
    assert finished.finished
    longer, _client = _seeded(max_rounds=3)
    longer.resume(1, [])
    assert not longer.finished
    assert longer.current is not None
    assert longer.current.round_id == 2


def test_a_negative_max_rounds_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="max_rounds"):
        CoordinatorConfig(max_rounds=-1)
