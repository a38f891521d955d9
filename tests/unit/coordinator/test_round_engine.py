"""The round state machine on its own: plain Python, a fake clock, real tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.rounds.engine import RoundEngine
from fedgrpc.coordinator.rounds.records import Outcome, Phase
from fedgrpc.coordinator.rounds.registry import ClientRegistry
from fedgrpc.domain.model_spec import DType, ModelSpec, TensorSpec
from fedgrpc.domain.requests import UpdateHeaderInfo
from fedgrpc.errors import ModelMismatchError, WrongRoundError

SPEC = ModelSpec((TensorSpec("w", (4,), DType.FLOAT32),))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _header(
    client_id: str, round_id: int, base: int, initial: bool = False
) -> UpdateHeaderInfo:
    return UpdateHeaderInfo(
        client_id=client_id,
        session_token=b"",
        round_id=round_id,
        base_version=base,
        is_initial_weights=initial,
        codec="dense-fp32",
        num_coordinates=4,
        num_samples=1,
        train_loss=2.0,
    )


def _engine(
    min_clients: int = 2, fraction: float = 0.0
) -> tuple[RoundEngine, ClientRegistry, Clock]:
    clock = Clock()
    registry = ClientRegistry(max_clients=8)
    config = CoordinatorConfig(
        min_clients=min_clients, round_timeout_s=10.0, min_client_fraction=fraction
    )
    return RoundEngine(config, registry, clock), registry, clock


def _commit(
    engine: RoundEngine,
    registry: ClientRegistry,
    cid: str,
    values: torch.Tensor,
    round_id: int,
    base: int,
    initial: bool = False,
) -> int:
    client = registry.authenticate(cid, registry._clients[cid].session_token)
    ticket = engine.admit(client, _header(cid, round_id, base, initial))
    engine.add_chunk(ticket, 0, values.numpy().copy())
    return engine.commit(ticket, 16)


def _close(engine: RoundEngine) -> Outcome:
    reason = engine.close_reason()
    assert reason is not None
    closing = engine.begin_close()
    assert engine.phase is Phase.APPLYING
    applied = engine.apply(closing, copy_on_write=False)
    return engine.finish_close(closing, applied, reason).outcome


def test_seed_then_collect_until_all_connected_have_committed() -> None:
    engine, registry, _clock = _engine()
    engine.model.adopt_spec(SPEC)
    a, b, c = (registry.add(n, 0.0) for n in "abc")
    assert engine.model.claim_seeding(a.client_id) is True
    assert engine.model.claim_seeding(b.client_id) is False  # a holds the lease
    for record in (a, b, c):
        record.connected = True
    _commit(engine, registry, a.client_id, torch.ones(4), 0, 0, initial=True)
    assert engine.phase is Phase.COLLECTING
    assert engine.current is not None
    assert engine.model.claim_seeding(c.client_id) is False  # seeded: joiners pull
    _commit(engine, registry, a.client_id, torch.ones(4), 1, 0)
    _commit(engine, registry, b.client_id, torch.ones(4), 1, 0)
    assert engine.close_reason() is None  # c is connected and has not pushed
    c.connected = False  # c leaves: the round no longer waits for it
    assert engine.close_reason() == "all connected clients committed"
    assert _close(engine) is Outcome.APPLIED
    assert engine.model.version == 1
    assert engine.current is not None
    assert engine.current.base_version == 1


def test_deadline_counts_from_first_commit_and_skips_below_quorum() -> None:
    engine, registry, clock = _engine(min_clients=2)
    engine.model.adopt_spec(SPEC)
    a = registry.add("a", 0.0)
    _commit(engine, registry, a.client_id, torch.zeros(4), 0, 0, initial=True)
    master_before = engine.model.require_master().clone()
    clock.now = 100.0  # no update yet: an empty round never times out
    assert engine.close_reason() is None
    _commit(engine, registry, a.client_id, torch.ones(4), 1, 0)
    clock.now = 109.9
    assert engine.close_reason() is None
    clock.now = 110.0
    assert engine.close_reason() == "deadline"
    assert _close(engine) is Outcome.SKIPPED
    assert engine.model.version == 0
    assert engine.history[-1].reason.startswith("1 update(s) by the deadline")
    torch.testing.assert_close(engine.model.master, master_before)


def test_seeding_earns_no_credit_and_round_updates_do() -> None:
    engine, registry, _ = _engine(min_clients=1)
    engine.model.adopt_spec(SPEC)
    a = registry.add("a", 0.0)
    a.connected = True
    _commit(engine, registry, a.client_id, torch.zeros(4), 0, 0, initial=True)
    assert (a.updates_accepted, a.samples_contributed) == (0, 0)
    _commit(engine, registry, a.client_id, torch.ones(4), 1, 0)
    assert (a.updates_accepted, a.samples_contributed) == (1, 1)


def test_a_round_marked_complete_closes_with_its_own_reason_not_deadline() -> None:
    # What a secure round does once its masked sum is recovered: the engine
    # cannot see why it is complete, so the mode says it.
    engine, registry, clock = _engine(min_clients=1)
    engine.model.adopt_spec(SPEC)
    a, b = registry.add("a", 0.0), registry.add("b", 0.0)
    a.connected = b.connected = True
    _commit(engine, registry, a.client_id, torch.zeros(4), 0, 0, initial=True)
    _commit(engine, registry, a.client_id, torch.ones(4), 1, 0)
    current = engine.current
    assert current is not None
    assert engine.close_reason() is None  # b is connected and has not pushed
    current.complete_reason = "masked sum of the survivors recovered"
    current.deadline_s = clock.now  # set too, as SecureRuntime does

    assert engine.close_reason() == "masked sum of the survivors recovered"
    assert _close(engine) is Outcome.APPLIED
    assert engine.history[-1].reason == "masked sum of the survivors recovered"


def test_wrong_round_duplicate_and_second_seed_are_refused() -> None:
    engine, registry, _ = _engine()
    engine.model.adopt_spec(SPEC)
    a, b = registry.add("a", 0.0), registry.add("b", 0.0)
    _commit(engine, registry, a.client_id, torch.zeros(4), 0, 0, initial=True)
    with pytest.raises(WrongRoundError, match="already seeded"):
        engine.admit(b, _header(b.client_id, 0, 0, initial=True))
    with pytest.raises(WrongRoundError, match="round 1 is collecting"):
        engine.admit(b, _header(b.client_id, 2, 0))
    _commit(engine, registry, a.client_id, torch.ones(4), 1, 0)
    with pytest.raises(WrongRoundError, match="already sent"):
        engine.admit(a, _header(a.client_id, 1, 0))
    with pytest.raises(ModelMismatchError):
        engine.model.adopt_spec(ModelSpec((TensorSpec("w", (5,), DType.FLOAT32),)))


def test_commit_after_close_is_refused() -> None:
    engine, registry, _ = _engine(min_clients=1)
    engine.model.adopt_spec(SPEC)
    a, b = registry.add("a", 0.0), registry.add("b", 0.0)
    _commit(engine, registry, a.client_id, torch.zeros(4), 0, 0, initial=True)
    late = engine.admit(b, _header(b.client_id, 1, 0))  # b starts streaming...
    _commit(engine, registry, a.client_id, torch.ones(4), 1, 0)
    assert engine.close_reason() is None  # ...and the round waits for it
    engine.abandon(late, "connection lost")  # it never touched the sum
    assert _close(engine) is Outcome.APPLIED
    with pytest.raises(WrongRoundError):
        engine.commit(late, 16)


def test_a_push_that_fails_after_its_first_chunk_costs_the_round_nothing() -> None:
    engine, registry, _ = _engine(min_clients=1)
    engine.model.adopt_spec(SPEC)
    a, b = registry.add("a", 0.0), registry.add("b", 0.0)
    _commit(engine, registry, a.client_id, torch.zeros(4), 0, 0, initial=True)
    broken = engine.admit(b, _header(b.client_id, 1, 0))
    engine.add_chunk(broken, 0, np.full(2, 5.0, dtype=np.float32))
    assert engine.abandon(broken, "stream reset") is False
    assert engine.current is not None
    assert engine.current.void_reason is None
    _commit(engine, registry, a.client_id, torch.ones(4), 1, 0)
    assert _close(engine) is Outcome.APPLIED
    assert engine.model.version == 1
    # A second run where b never pushed lands on the same weights, bit for bit.
    twin, twin_registry, _ = _engine(min_clients=1)
    twin.model.adopt_spec(SPEC)
    t = twin_registry.add("a", 0.0)
    _commit(twin, twin_registry, t.client_id, torch.zeros(4), 0, 0, initial=True)
    _commit(twin, twin_registry, t.client_id, torch.ones(4), 1, 0)
    assert _close(twin) is Outcome.APPLIED
    assert torch.equal(engine.model.master, twin.model.master)  # type: ignore[arg-type]


def test_updates_streaming_at_the_deadline_get_a_grace_period() -> None:
    engine, registry, clock = _engine(min_clients=1)
    engine.model.adopt_spec(SPEC)
    a, b, c = (registry.add(n, 0.0) for n in "abc")
    _commit(engine, registry, a.client_id, torch.zeros(4), 0, 0, initial=True)
    _commit(engine, registry, a.client_id, torch.ones(4), 1, 0)
    slow = engine.admit(b, _header(b.client_id, 1, 0))
    clock.now = 10.0  # the deadline: b is still streaming, c has not started
    assert engine.close_reason() is None
    with pytest.raises(WrongRoundError, match="passed its deadline"):
        engine.admit(c, _header(c.client_id, 1, 0))
    engine.add_chunk(slow, 0, np.ones(4, dtype=np.float32))
    assert engine.commit(slow, 16) == 2  # finished within the grace period
    assert _close(engine) is Outcome.APPLIED
    stuck = engine.admit(b, _header(b.client_id, 2, 1))
    _commit(engine, registry, a.client_id, torch.ones(4), 2, 1)
    engine.add_chunk(stuck, 0, np.ones(2, dtype=np.float32))
    clock.now += 20.0  # deadline (10 s) plus grace (10 s) with b still streaming
    assert engine.close_reason() == "deadline (late pushes dropped)"
    assert _close(engine) is Outcome.APPLIED  # b's half push never counted
    assert engine.model.version == 2


def test_seeding_lease_passes_on_when_the_seeder_stalls() -> None:
    engine, registry, clock = _engine()
    engine.model.adopt_spec(SPEC)
    a, b = registry.add("a", 0.0), registry.add("b", 0.0)
    assert engine.model.claim_seeding(a.client_id)
    clock.now = engine.config.session_timeout_s + 1
    assert engine.model.claim_seeding(b.client_id)


def test_divergence_guard_skips_a_round_that_would_blow_up() -> None:
    engine, registry, _ = _engine(min_clients=1)
    engine.model.adopt_spec(SPEC)
    a = registry.add("a", 0.0)
    _commit(engine, registry, a.client_id, torch.zeros(4), 0, 0, initial=True)
    for round_id in (1, 2, 3):  # three ordinary rounds calibrate the guard
        _commit(
            engine, registry, a.client_id, torch.ones(4) * 0.1, round_id, round_id - 1
        )
        assert _close(engine) is Outcome.APPLIED
    before = engine.model.require_master().clone()
    _commit(engine, registry, a.client_id, torch.ones(4) * 50.0, 4, 3)
    assert _close(engine) is Outcome.SKIPPED
    assert engine.history[-1].reason.startswith("divergence guard")
    torch.testing.assert_close(engine.model.require_master(), before)
    _commit(engine, registry, a.client_id, torch.ones(4) * 0.1, 5, 3)
    assert _close(engine) is Outcome.APPLIED  # the next sane round goes through


@pytest.mark.parametrize(
    ("pushed", "outcome"), [(3, Outcome.SKIPPED), (4, Outcome.APPLIED)]
)
def test_quorum_fraction_of_connected_clients_decides_at_the_deadline(
    pushed: int, outcome: Outcome
) -> None:
    # Arrange: 6 connected clients, quorum max(1, ceil(0.6 x 6)) = 4.
    engine, registry, clock = _engine(min_clients=1, fraction=0.6)
    engine.model.adopt_spec(SPEC)
    clients = [registry.add(n, 0.0) for n in "abcdef"]
    for record in clients:
        record.connected = True
    first = clients[0].client_id
    _commit(engine, registry, first, torch.zeros(4), 0, 0, initial=True)
    master_before = engine.model.require_master().clone()

    # Act: some push, the rest stay silent until the deadline.
    for record in clients[:pushed]:
        _commit(engine, registry, record.client_id, torch.ones(4), 1, 0)
    assert engine.close_reason() is None  # connected clients are still missing
    clock.now = 10.0

    # Assert
    assert engine.close_reason() == "deadline"
    assert _close(engine) is outcome
    if outcome is Outcome.SKIPPED:
        assert "the quorum is 4" in engine.history[-1].reason
        torch.testing.assert_close(engine.model.master, master_before)
    else:
        assert engine.model.version == 1
