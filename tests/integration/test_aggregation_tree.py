"""Aggregation trees over real gRPC: a root, two leaves, scripted clients.

A leaf serves its group and presents the group's weighted mean upward as
ONE update claiming the group's total weight; the root's sample-weighted
mean of the leaves' means is then the flat weighted mean. The tests run
the same clients (same scripted pseudo-gradients, same sample counts)
under a flat coordinator and under a root with two leaves, and compare
the weights after every round; then secure aggregation inside one group,
and a leaf whose root goes away.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
import torch
from torch import nn

from fedgrpc.client import DiLoCoClient
from fedgrpc.config import ClientConfig
from fedgrpc.coordinator.services.in_thread import serve_in_thread
from fedgrpc.errors import (
    CoordinatorUnavailableError,
    FedGrpcError,
    IncompatibleClientError,
)
from tests.helpers.eventually import eventually
from tests.helpers.scripted import FAST, GIVE_UP_FAST
from tests.helpers.tree import (
    IN,
    OUT,
    base_config,
    close_all,
    init_file,
    join,
    leaf_config,
    master_of,
    run_round,
    running_tree,
    scripted,
    version_of,
    weights_of,
)

ROUNDS = 20
SAMPLES = (1, 2, 3, 6)
"""Unequal claims: a tree that weighted leaves equally would be caught."""
RTOL, ATOL = 1e-5, 1e-6
"""float32 rounding of a two-level sum, accumulated over 20 Nesterov steps."""


def test_a_two_leaf_tree_matches_the_flat_coordinator_over_20_rounds(
    tmp_path: Path,
) -> None:
    init = init_file(tmp_path)
    steps = scripted(ROUNDS, len(SAMPLES), seed=3)

    flat_weights: list[torch.Tensor] = []
    with serve_in_thread(base_config(init_model=str(init), min_clients=4)) as flat:
        members = join(flat.address, SAMPLES, seed=10)
        try:
            initial = master_of(flat)
            for r in range(ROUNDS):
                assert run_round(members, [s[r] for s in steps]) == ["applied"] * 4
                flat_weights.append(master_of(flat))
        finally:
            close_all(members)

    with running_tree(init, {"min_clients": 2}, {"min_clients": 2}) as tree:
        root, (left, right) = tree
        members = join(left.address, SAMPLES[:2], seed=10)
        members += join(right.address, SAMPLES[2:], seed=12)
        try:
            assert torch.equal(master_of(left), initial)  # the root's version 0
            for r in range(ROUNDS):
                outcomes = run_round(members, [s[r] for s in steps])
                assert outcomes == ["applied"] * 4, (r, outcomes)
                torch.testing.assert_close(
                    master_of(root), flat_weights[r], rtol=RTOL, atol=ATOL
                )
                for leaf in (left, right):  # each serves the root's weights
                    assert torch.equal(master_of(leaf), master_of(root))
            tree_clients = weights_of(members)
        finally:
            close_all(members)
        assert version_of(root) == version_of(left) == version_of(right) == ROUNDS
        leaf_status = left.status()

    assert leaf_status.model_version == ROUNDS
    for weights in tree_clients:  # what the clients loaded last
        torch.testing.assert_close(weights, flat_weights[-1], rtol=RTOL, atol=ATOL)
    # The runs moved far beyond the tolerance, and sample weighting mattered:
    # equal weights (1:1:1:1) end elsewhere.
    assert float((flat_weights[-1] - initial).abs().max()) > 0.1
    with serve_in_thread(base_config(init_model=str(init), min_clients=4)) as equal:
        members = join(equal.address, (1, 1, 1, 1), seed=10)
        try:
            for r in range(ROUNDS):
                run_round(members, [s[r] for s in steps])
            unweighted = master_of(equal)
        finally:
            close_all(members)
    assert float((unweighted - flat_weights[-1]).abs().max()) > 1e-2


SECURE_LEAF = {
    "secure_aggregation": True,
    "codec": "dense:int8",
    "min_clients": 3,
    "secagg_clip": 1.0,
}
"""SecAgg+ inside the group: the leaf learns only its group's sum."""


def test_secure_aggregation_inside_a_group_gives_the_mean_within_quantisation(
    tmp_path: Path,
) -> None:
    rounds = 3
    steps = scripted(rounds, 4, seed=5, scale=0.1)  # |x| < 1: nothing is clipped
    fedavg = {"outer_optimizer": "fedavg", "outer_lr": 1.0, "outer_momentum": 0.0}
    init = init_file(tmp_path)
    with running_tree(init, SECURE_LEAF, {"min_clients": 1}, **fedavg) as tree:
        root, (masked, plain) = tree
        members = join(masked.address, (1, 1, 1), seed=20)  # the ring weighs 1 each
        members += join(plain.address, (2,), seed=23)
        try:
            initial = master_of(root)
            for r in range(rounds):
                assert run_round(members, [s[r] for s in steps]) == ["applied"] * 4
            result = master_of(root)
        finally:
            close_all(members)
        history = list(masked.running.runtime.engine.history)

    # FedAvg at lr 1: w_R = w_0 - sum over rounds of the root's mean, and the
    # root's mean is (3 x masked group mean + 2 x the plain client) / 5.
    total = sum((s[r] for s in steps[:3] for r in range(rounds)), torch.zeros(1))
    plain_total = sum((steps[3][r] for r in range(rounds)), torch.zeros(1))
    expected = initial - (total + 2 * plain_total) / 5
    # int8 codes: step C / 127; error feedback keeps each client's cumulative
    # error within one step, so the group's share (3/5 of a mean of 3) too.
    quantum = SECURE_LEAF["secagg_clip"] / 127  # type: ignore[operator]
    error = float((result - expected).abs().max())
    assert error <= quantum, (error, quantum)
    equal_leaves = initial - (total / 3 + plain_total) / 2  # leaves weighted 1:1
    assert float((result - equal_leaves).abs().max()) > quantum
    assert [h.num_updates for h in history[:rounds]] == [3] * rounds


def test_a_leaf_whose_root_went_away_skips_its_round_and_says_why(
    tmp_path: Path,
) -> None:
    steps = scripted(2, 2, seed=9)
    with running_tree(init_file(tmp_path), {"min_clients": 2}) as tree:
        root, (leaf,) = tree
        members = join(leaf.address, (1, 1), seed=30)
        try:
            assert run_round(members, [s[0] for s in steps]) == ["applied"] * 2
            before, root_address = master_of(leaf), root.address
            root.stop()
            assert run_round(members, [s[1] for s in steps]) == ["skipped"] * 2
            closed = leaf.running.runtime.engine.history[-1]
            assert torch.equal(master_of(leaf), before)  # weights unchanged
            assert version_of(leaf) == 1
        finally:
            close_all(members)
    assert closed.outcome.value == "skipped"
    assert f"the root {root_address} failed this round" in closed.reason


def test_a_leaf_without_a_reachable_root_answers_join_unavailable_naming_it() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{probe.getsockname()[1]}"
    config = base_config(upstream=nowhere, upstream_timeout_s=0.5, min_clients=1)
    impatient = ClientConfig(rpc_timeout_s=10, connect_timeout_s=1.5)
    with serve_in_thread(config) as leaf:
        with pytest.raises(
            CoordinatorUnavailableError,
            match=f"this leaf cannot reach its root at {nowhere}",
        ):
            DiLoCoClient(leaf.address, nn.Linear(IN, OUT), config=impatient)
        assert leaf.running.runtime.engine.model.spec is None  # nothing adopted


def test_a_root_without_an_initial_model_is_refused_at_the_leafs_first_join() -> None:
    root_config = base_config(seed_from_first_client=True, min_clients=1)
    with serve_in_thread(root_config) as root:
        leaf = serve_in_thread(leaf_config(root, min_clients=1))
        with (
            leaf as running,
            pytest.raises(
                IncompatibleClientError, match="start the root with init_model"
            ),
        ):
            DiLoCoClient(running.address, nn.Linear(IN, OUT), config=FAST)


def test_a_leaf_stopping_while_it_waits_on_its_root_round_is_not_held_by_it(
    tmp_path: Path,
) -> None:
    # Two leaves, one of them without clients: the root's round waits for a
    # second update (its deadline far away), and leaf A's apply waits on it.
    init = init_file(tmp_path)
    leaves = ({"min_clients": 1}, {"min_clients": 1})
    with running_tree(init, *leaves, round_timeout_s=600.0) as (root, (leaf, _)):
        runtime = leaf.running.runtime
        client = DiLoCoClient(leaf.address, nn.Linear(IN, OUT), config=GIVE_UP_FAST)
        outcome: list[object] = []

        def sync() -> None:
            try:
                client.step(None)
                outcome.append(client.last_round_outcome)
            except FedGrpcError as exc:  # the leaf went away for good
                outcome.append(exc)

        syncing = threading.Thread(target=sync)
        syncing.start()
        root_engine = root.running.runtime.engine
        eventually(lambda: root_engine.current and root_engine.current.contributors)
        leaf.stop()  # wakes the apply thread: it does not wait for the root's round
        syncing.join(timeout=60)
        client.close()
        current = root.running.runtime.engine.current
        assert current is not None
        assert current.round_id == 1  # the root's round is still open
    assert not syncing.is_alive()
    assert outcome  # the client's sync point ended (skipped, or the leaf gone)
    closed = runtime.engine.history[-1]
    assert closed.round_id == 1
    assert closed.outcome.value == "skipped"
    assert "failed this round" in closed.reason
