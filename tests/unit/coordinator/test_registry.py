"""Joining twice with one key keeps the client's id and credit."""

from __future__ import annotations

import pytest

from fedgrpc.coordinator.rounds.registry import ClientRegistry
from fedgrpc.crypto.keys import PrivateKey
from fedgrpc.errors import TooLargeError, UnknownClientError


def test_a_key_that_joins_again_keeps_its_id_and_credit_with_a_new_token() -> None:
    # Arrange
    registry = ClientRegistry(max_clients=1)
    key = PrivateKey.generate().public_key
    first = registry.admit("worker", 1.0, key)
    first.samples_contributed, old_token = 640, first.session_token

    # Act
    again = registry.admit("worker-restarted", 2.0, key)

    # Assert
    assert again.client_id == first.client_id
    assert again.samples_contributed == 640
    assert again.name == "worker-restarted"
    assert again.session_token != old_token
    assert registry.authenticate(again.client_id, again.session_token) is again
    with pytest.raises(UnknownClientError):
        registry.authenticate(again.client_id, old_token)
    assert len(registry.all()) == 1


def test_a_new_key_still_counts_against_max_clients() -> None:
    registry = ClientRegistry(max_clients=1)
    registry.admit("a", 1.0, PrivateKey.generate().public_key)

    with pytest.raises(TooLargeError):
        registry.admit("b", 1.0, PrivateKey.generate().public_key)


def test_restored_clients_are_found_by_key_and_new_ids_continue_after_them() -> None:
    # Arrange: a registry as a checkpoint left it (ids c00001 and c00007)
    before = ClientRegistry(max_clients=10)
    keys = [PrivateKey.generate().public_key for _ in range(3)]
    kept = [before.admit(f"w{i}", 1.0, keys[i]) for i in range(2)]
    kept[1].client_id, kept[1].samples_contributed = "c00007", 96
    restored = ClientRegistry(max_clients=10)

    # Act
    restored.restore(kept)
    again = restored.admit("w1-restarted", 2.0, keys[1])
    newcomer = restored.admit("w2", 2.0, keys[2])

    # Assert
    assert again.client_id == "c00007"
    assert again.samples_contributed == 96
    assert newcomer.client_id == "c00008"
    assert [c.client_id for c in restored.all()] == ["c00001", "c00007", "c00008"]


def _left_for_good(registry: ClientRegistry, name: str) -> str:
    record = registry.admit(name, 1.0, PrivateKey.generate().public_key)
    record.leaves_for_good = True  # its SessionLeave said final
    registry.left(record)
    return record.client_id


def test_a_final_leave_frees_the_record_and_its_max_clients_slot() -> None:
    # Arrange: a full registry whose only client left for good.
    registry = ClientRegistry(max_clients=1)
    gone = _left_for_good(registry, "passer-by")

    # Act
    forgotten = registry.forget_departed(needed=set())
    newcomer = registry.admit("newcomer", 2.0, PrivateKey.generate().public_key)

    # Assert
    assert forgotten == [gone]
    assert [c.client_id for c in registry.all()] == [newcomer.client_id]
    assert registry.get(gone) is None
    assert registry.forgotten == 1


def test_a_record_the_open_round_counts_is_kept_until_the_round_is_done() -> None:
    # Forgetting a contributor early would let its key re-join under a new id
    # and update the same round twice: a hostile client must not get that.
    registry = ClientRegistry(max_clients=4)
    gone = _left_for_good(registry, "contributor")

    assert registry.forget_departed(needed={gone}) == []
    assert registry.get(gone) is not None
    assert registry.forget_departed(needed=set()) == [gone]


def test_a_key_that_comes_back_before_it_is_forgotten_keeps_its_record() -> None:
    registry = ClientRegistry(max_clients=4)
    key = PrivateKey.generate().public_key
    record = registry.admit("worker", 1.0, key)
    record.leaves_for_good = True
    registry.left(record)

    again = registry.admit("worker", 2.0, key)  # it came back after all

    assert again is record
    assert not again.leaves_for_good
    assert registry.forget_departed(needed=set()) == []


def test_a_session_end_without_a_final_leave_keeps_the_record() -> None:
    registry = ClientRegistry(max_clients=4)
    record = registry.admit("worker", 1.0, PrivateKey.generate().public_key)

    registry.left(record)  # a broken stream or a reconnect: it may come back

    assert registry.forget_departed(needed=set()) == []
    assert registry.get(record.client_id) is record
