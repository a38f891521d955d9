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

from pathlib import Path

import torch

from fedgrpc.coordinator.services.in_thread import serve_in_thread
from tests.helpers.tree import (
    base_config,
    close_all,
    init_file,
    join,
    leaf_config,
    master_of,
    run_round,
    scripted,
    version_of,
    weights_of,
)

ROUNDS = 20
SAMPLES = (1, 2, 3, 6)
"""Unequal claims: a tree that weighted leaves equally would be caught."""
TIGHT = {"rtol": 1e-5, "atol": 1e-6}
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

    with serve_in_thread(base_config(init_model=str(init), min_clients=2)) as root:
        with (
            serve_in_thread(leaf_config(root, min_clients=2)) as left,
            serve_in_thread(leaf_config(root, min_clients=2)) as right,
        ):
            members = join(left.address, SAMPLES[:2], seed=10)
            members += join(right.address, SAMPLES[2:], seed=12)
            try:
                assert torch.equal(master_of(left), initial)  # the root's version 0
                for r in range(ROUNDS):
                    outcomes = run_round(members, [s[r] for s in steps])
                    assert outcomes == ["applied"] * 4, (r, outcomes)
                    torch.testing.assert_close(
                        master_of(root), flat_weights[r], **TIGHT
                    )
                    for leaf in (left, right):  # each serves the root's weights
                        assert torch.equal(master_of(leaf), master_of(root))
                tree_clients = weights_of(members)
            finally:
                close_all(members)
            assert version_of(root) == version_of(left) == ROUNDS
            assert version_of(right) == ROUNDS
            leaf_status = left.status()

    assert leaf_status.model_version == ROUNDS
    for weights in tree_clients:  # what the clients loaded last
        torch.testing.assert_close(weights, flat_weights[-1], **TIGHT)
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
