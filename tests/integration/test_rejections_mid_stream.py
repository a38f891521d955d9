"""Refusals after genuine chunks reached the round cost the round nothing.

The coordinator stages each chunk once it has verified it (chain link,
payload SHA-256, signature, values), so forged bytes never get in, and it
folds an update into the round's sum only at its commit. When an update
fails after authentic chunks arrived (a bad commit signature, a chunk lost
or tampered mid-stream, one chunk too many, a stream cut short), it is
refused and dropped whole: the round stays open, and applies exactly the
complete updates as if the broken one never came (issue 13, A.3).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedgrpc.wire.signed import commit_message
from tests.helpers.federation import (
    CHUNK,
    Fed,
    N,
    closed_federation,
    complete_a_round,
    expect_status,
)
from tests.helpers.raw import PB, UpdateParams, signed_chunk, signed_header

Code = grpc.StatusCode
Messages = list[PB.PushUpdateRequest]


@pytest.fixture
def fed(tmp_path: Path) -> Iterator[Fed]:
    with closed_federation(tmp_path) as running:
        yield running


def _update(fed: Fed, extra_chunk: bool = False) -> Messages:
    """a's signed update for the open round: header, 3 chunks, commit."""
    status = fed.status()
    params = UpdateParams(status.round_id, status.model_version)
    header, signer = signed_header(fed.a, N, params)
    values = np.full(N, 0.25, "<f4")
    messages = [header]
    for seq, start in enumerate(range(0, N, CHUNK)):
        part = values[start : start + CHUNK].tobytes()
        messages.append(signed_chunk(signer, seq, start, len(part) // 4, part))
    if extra_chunk:  # validly signed, but past the end of the vector
        messages.append(signed_chunk(signer, 3, N, 1, b"\0" * 4))
    messages.append(commit_message(signer))
    return messages


def bad_commit_signature(fed: Fed) -> Messages:
    m = _update(fed)
    m[-1].commit.signature = bytes(64)
    return m


def chunks_lost_at_the_end(fed: Fed) -> Messages:
    m = _update(fed)
    return [*m[:3], m[-1]]  # chunk 2 never arrives; the commit says 3


def chunk_lost_in_the_middle(fed: Fed) -> Messages:
    m = _update(fed)
    return [m[0], m[1], *m[3:]]


def tampered_last_chunk(fed: Fed) -> Messages:
    m = _update(fed)
    m[3].chunk.payload = np.full(N - 2 * CHUNK, 1e6, "<f4").tobytes()
    return m


def one_chunk_too_many(fed: Fed) -> Messages:
    return _update(fed, extra_chunk=True)


def stream_cut_before_the_commit(fed: Fed) -> Messages:
    return _update(fed)[:-1]


@dataclass(frozen=True)
class Case:
    build: Callable[[Fed], Messages]
    code: grpc.StatusCode
    message: str


CASES = {
    "bad commit signature": Case(
        bad_commit_signature, Code.PERMISSION_DENIED, "commit signature"
    ),
    "chunks lost at the end": Case(
        chunks_lost_at_the_end, Code.DATA_LOSS, "commit says 3 chunks but 2"
    ),
    "chunk lost in the middle": Case(
        chunk_lost_in_the_middle, Code.DATA_LOSS, "chunk 2 arrived where chunk 1"
    ),
    "tampered last chunk": Case(
        tampered_last_chunk, Code.PERMISSION_DENIED, "altered in transit"
    ),
    "one chunk too many": Case(
        one_chunk_too_many, Code.RESOURCE_EXHAUSTED, "one too many"
    ),
    "stream cut before the commit": Case(
        stream_cut_before_the_commit, Code.DATA_LOSS, "without a commit"
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_refusal_after_chunks_reached_the_round_leaves_it_open_and_exact(
    fed: Fed, case: Case
) -> None:
    # Arrange
    messages = case.build(fed)
    before = fed.status()

    # Act
    expect_status(lambda: fed.push(messages), case.code, case.message)

    # Assert: the round is still open, nothing moved, nobody was credited...
    after = fed.status()
    assert (after.round_id, after.round_nonce) == (before.round_id, before.round_nonce)
    assert len(after.recent_rounds) == len(before.recent_rounds)
    assert (after.model_version, after.model_sha256) == (
        before.model_version,
        before.model_sha256,
    )
    assert [c.updates_accepted for c in after.clients] == [
        c.updates_accepted for c in before.clients
    ]
    # ...and the same round applies exactly the mean of the complete updates
    # (the refused client pushing again in it).
    complete_a_round(fed)
    applied = fed.status().recent_rounds[-1]
    assert applied.round_id == before.round_id
    assert applied.outcome == PB.ROUND_OUTCOME_APPLIED
