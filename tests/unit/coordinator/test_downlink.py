"""The coordinator's downlink error feedback: nothing lost, steps kept within budget."""

from __future__ import annotations

import numpy as np
import torch

from fedgrpc.compress import make_codec
from fedgrpc.coordinator.rounds.downlink import (
    MAX_TRANSITIONS,
    DownlinkCompressor,
    transitions_from,
)
from fedgrpc.domain.codecs import Dense, TopK

N = 5000


def _proposals(count: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return [torch.randn(N, generator=generator) * 0.1 for _ in range(count)]


def test_sent_steps_plus_the_residual_add_up_to_the_proposed_steps() -> None:
    downlink = DownlinkCompressor(TopK(density=0.05, bits=8), N, 1 << 20)
    start = torch.randn(N, generator=torch.Generator().manual_seed(1))
    master, proposed_total = start.clone(), torch.zeros(N)
    for version, step in enumerate(_proposals(5), start=1):
        proposed = master + step
        proposed_total += step
        previous = master.clone()
        downlink.apply(proposed, previous, version)
        sent = proposed - previous
        assert 0 < int(torch.count_nonzero(sent)) < 0.1 * N  # top-k 5 % per block
        master = proposed
    residual = torch.from_numpy(downlink._feedback.residual.copy())
    torch.testing.assert_close(master - start + residual, proposed_total)


def test_the_master_is_what_decoding_the_kept_payloads_rebuilds() -> None:
    config = TopK(density=0.05, bits=8)
    downlink = DownlinkCompressor(config, N, 1 << 20)
    master = torch.randn(N, generator=torch.Generator().manual_seed(1))
    held = master.numpy().copy()  # a client's copy of version 0
    for version, step in enumerate(_proposals(3), start=1):
        previous = master.clone()
        master = master + step
        downlink.apply(master, previous, version)
    codec = make_codec(config)
    for transition in downlink.recent:
        for block in transition.blocks:
            view = held[block.offset : block.offset + block.count]
            codec.decode(block.payload, block.count).add_into(view)
    assert held.tobytes() == master.numpy().tobytes()  # bit for bit


def test_kept_steps_stay_below_one_model_of_bytes() -> None:
    # bf16 steps are half the model each: at most two fit the budget.
    downlink = DownlinkCompressor(Dense(values="bf16"), N, 1 << 20)
    master = torch.zeros(N)
    for version, step in enumerate(_proposals(4), start=1):
        previous = master.clone()
        master = master + step
        downlink.apply(master, previous, version)
    recent = downlink.recent
    assert [t.version for t in recent] == [3, 4]
    assert sum(t.num_bytes for t in recent) <= N * 4
    assert transitions_from(2, 4, recent) == recent
    assert transitions_from(1, 4, recent) is None  # step 2 is gone: pull whole
    assert transitions_from(4, 4, recent) == ()
    assert transitions_from(5, 4, recent) is None


def test_at_most_max_transitions_are_kept() -> None:
    downlink = DownlinkCompressor(TopK(density=0.01, bits=8), N, 1 << 20)
    master = torch.zeros(N)
    for version, step in enumerate(_proposals(MAX_TRANSITIONS + 3), start=1):
        previous = master.clone()
        master = master + step
        downlink.apply(master, previous, version)
    versions = [t.version for t in downlink.recent]
    assert versions == list(range(4, MAX_TRANSITIONS + 4))
    assert np.all(np.diff(versions) == 1)
