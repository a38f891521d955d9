"""What one committed update adds to its round's and its client's counters.

Apart from the engine's state machine because these counters are what a
lying client steers (sample counts, losses, timing): status, metrics,
selection (power-of-choice reads the loss, throughput the rate) and the
checkpoint all read them, so how they are bounded belongs in one place.
"""

from __future__ import annotations

import time

from fedgrpc.coordinator.rounds.records import OpenRound
from fedgrpc.coordinator.rounds.registry import ClientRecord, ClientRegistry
from fedgrpc.coordinator.rounds.weighting import saturating_add
from fedgrpc.domain.requests import UpdateHeaderInfo


def credit_update(
    current: OpenRound,
    client: ClientRecord,
    header: UpdateHeaderInfo,
    payload_bytes: int,
    *,
    weight: float,
    now_s: float,
    opened_s: float,
    round_timeout_s: float,
) -> None:
    """Count `client`'s committed update in `current` and in its record.

    The round's deadline starts at its first commit (`round_timeout_s`
    later). Only round updates are credited: the seeding upload is the
    initial weights, not training. The round's mean loss is weighted like
    its mean update (`weight`, from `SampleWeighting`), so a claim the
    weighting caps cannot steer the loss it reports either. Integer
    counters saturate (`weighting.saturating_add`): status and checkpoints
    must always fit them.
    """
    current.contributors.add(client.client_id)
    current.loss_weighted_sum += header.train_loss * weight
    current.loss_weight += weight
    current.samples = saturating_add(current.samples, header.num_samples)
    current.claims.append(header.num_samples)
    current.bytes_received += payload_bytes
    current.compute_s += header.compute_s or 0.0
    if header.eval_loss is not None and header.eval_version == current.base_version:
        current.eval_loss_sum += header.eval_loss
        current.eval_reports += 1
    current.last_commit_s = now_s
    current.last_commit_cpu_s = time.process_time()
    if current.deadline_s is None:
        current.deadline_s = current.last_commit_s + round_timeout_s
    client.last_round = current.round_id
    client.updates_accepted = saturating_add(client.updates_accepted, 1)
    client.samples_contributed = saturating_add(
        client.samples_contributed, header.num_samples
    )
    client.bytes_received = saturating_add(client.bytes_received, payload_bytes)
    client.last_train_loss = header.train_loss
    client.last_samples = header.num_samples
    seconds = current.last_commit_s - opened_s
    if seconds > 0:
        client.throughput_bps = payload_bytes / seconds


def credit_applied(closing: OpenRound, registry: ClientRegistry) -> None:
    """`closing` was applied: note it, and each update's base, on its clients.

    The base is what `pacing.accepts_lag` compares a later stale update
    with, so the same progress cannot be applied twice.
    """
    for client_id in closing.contributors:
        record = registry.get(client_id)
        if record is not None:
            record.last_applied_round = closing.round_id
            record.last_applied_base = closing.contributor_bases.get(
                client_id, closing.base_version
            )
