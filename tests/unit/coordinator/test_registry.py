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
