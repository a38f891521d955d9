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


def test_a_connected_client_still_counts_against_max_clients() -> None:
    registry = ClientRegistry(max_clients=1)
    registry.admit("a", 1.0, PrivateKey.generate().public_key).connected = True

    with pytest.raises(TooLargeError):
        registry.admit("b", 1.0, PrivateKey.generate().public_key)


def test_a_contributor_keeps_its_slot_after_it_disconnects() -> None:
    registry = ClientRegistry(max_clients=1)
    a = registry.admit("a", 1.0, PrivateKey.generate().public_key)
    a.updates_accepted = 1
    registry.left(a)

    with pytest.raises(TooLargeError):
        registry.admit("b", 1.0, PrivateKey.generate().public_key)
    assert registry.get(a.client_id) is a


def test_a_full_registry_evicts_the_longest_idle_client_without_credit() -> None:
    registry = ClientRegistry(max_clients=3)
    keys = [PrivateKey.generate().public_key for _ in range(5)]
    first, second, third = (registry.admit(f"k{i}", 1.0, keys[i]) for i in range(3))
    registry.admit("k1-again", 2.0, keys[1])  # seen again: last in line now

    fourth = registry.admit("k3", 3.0, keys[3])
    fifth = registry.admit("k4", 3.0, keys[4])

    assert registry.get(first.client_id) is None  # idle longest
    assert registry.get(third.client_id) is None
    assert registry.get(second.client_id) is second
    assert [c.client_id for c in registry.all()] == [
        second.client_id, fourth.client_id, fifth.client_id
    ]  # fmt: skip
    assert registry.evicted == 2
    assert fifth.client_id == "c00005"  # ids are never reused


def test_a_client_the_open_round_uses_is_not_evicted() -> None:
    registry = ClientRegistry(max_clients=2)
    keys = [PrivateKey.generate().public_key for _ in range(3)]
    a, b = (registry.admit(f"k{i}", 1.0, keys[i]) for i in range(2))

    registry.admit("k2", 2.0, keys[2], in_use=lambda: {a.client_id})

    assert registry.get(a.client_id) is a
    assert registry.get(b.client_id) is None


def test_only_clients_with_standing_are_durable_and_their_ids_are_not_reissued() -> (
    None
):
    registry = ClientRegistry(max_clients=4)
    keys = [PrivateKey.generate().public_key for _ in range(3)]
    credited, excluded, idle = (registry.admit(f"k{i}", 1.0, keys[i]) for i in range(3))
    credited.updates_accepted = 1
    excluded.excluded_until_round = 9

    assert registry.durable() == [credited, excluded]
    restored = ClientRegistry(max_clients=4)
    restored.restore(registry.durable(), registry.next_id)
    newcomer = restored.admit("new", 2.0, PrivateKey.generate().public_key)
    assert idle.client_id == "c00003"
    assert newcomer.client_id == "c00004"  # the idle one's id is not reissued


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
