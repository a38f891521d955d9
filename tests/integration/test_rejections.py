"""Every refusal of a join or an update, through a real stub (STYLE.md 3.10).

Each case sends one malformed request to a closed coordinator and asserts
the status code and an actionable message; then that the coordinator still
serves, that the round state is exactly as before, and that two valid
updates still give exactly the expected new weights (so nothing of the
refused request reached the round's sum).

All these refusals happen before the first chunk is added: at Join, at the
header, or at chunk 0. Refusals that come after genuine chunks were added
discard the round instead (tests/integration/test_rejections_mid_stream.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedgrpc.crypto.keys import PrivateKey
from fedgrpc.domain.model_spec import DType, ModelSpec, TensorSpec
from tests.helpers.federation import (
    CHUNK,
    Fed,
    N,
    RoundState,
    closed_federation,
    complete_a_round,
    expect_status,
)
from tests.helpers.raw import (
    PB,
    UpdateParams,
    join,
    join_request,
    resigned_first_chunk,
    signed_header,
    tiny_spec,
    update_messages,
)

Code = grpc.StatusCode
GOOD = np.full(N, 0.5, np.float32)
Messages = list[PB.PushUpdateRequest]


@pytest.fixture
def fed(tmp_path: Path) -> Iterator[Fed]:
    with closed_federation(tmp_path) as running:
        yield running


def _update(fed: Fed, values: np.ndarray = GOOD, joined=None) -> Messages:  # type: ignore[no-untyped-def]
    """A valid, signed update of `joined` (default a) for the open round."""
    status = fed.status()
    return list(
        update_messages(joined or fed.a, values, round_id=status.round_id,
                        base_version=status.model_version, chunk_coords=CHUNK)
    )  # fmt: skip


def _flip(data: bytes, at: int = 0) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


def _resigned(fed: Fed, messages: Messages, payload: bytes) -> Messages:
    """The update with chunk 0 replaced by `payload`, validly signed by a."""
    return [messages[0], resigned_first_chunk(fed.a, messages[0], messages[1], payload)]


# -- the cases: each returns the call that must fail ---------------------------------


def unknown_key(fed: Fed) -> Callable[[], object]:
    return lambda: join(
        fed.service, tiny_spec(N), "stranger", key=PrivateKey.generate()
    )


def join_proof_by_another_key(fed: Fed) -> Callable[[], object]:
    request = join_request(fed.service, tiny_spec(N), fed.a.key, "a2")
    request.join_signature = PrivateKey.generate().sign(b"anything")
    return lambda: fed.service.Join(request, timeout=10)


def join_challenge_reused(fed: Fed) -> Callable[[], object]:
    request = join_request(fed.service, tiny_spec(N), fed.b.key, "b2")
    rejoined = fed.service.Join(request, timeout=10)  # uses the challenge
    # b joined again with its key: same client, and only the new token works.
    assert rejoined.client_id == fed.b.client_id
    fed.b = fed.b.with_token(rejoined.session_token)
    return lambda: fed.service.Join(request, timeout=10)


def join_unknown_tensor(fed: Fed) -> Callable[[], object]:
    spec = ModelSpec((TensorSpec("v", (N,), DType.FLOAT32),))
    return lambda: join(fed.service, spec, "a3", key=fed.a.key)


def bad_header_signature(fed: Fed) -> Callable[[], object]:
    messages = _update(fed)
    messages[0].header.signature = _flip(messages[0].header.signature)
    return lambda: fed.push(messages)


def bad_chunk_signature(fed: Fed) -> Callable[[], object]:
    messages = _update(fed)
    messages[1].chunk.signature = _flip(messages[1].chunk.signature, 10)
    return lambda: fed.push(messages)


def tampered_payload(fed: Fed) -> Callable[[], object]:
    messages = _update(fed)
    messages[1].chunk.payload = _flip(messages[1].chunk.payload, 5)
    return lambda: fed.push(messages)


def chunk_replayed_from_earlier_round(fed: Fed) -> Callable[[], object]:
    messages = _update(fed)
    status = fed.status()  # a's chunk 0 as signed for the round before this one
    earlier = UpdateParams(status.round_id - 1, status.model_version, nonce=b"e" * 16)
    _, signer = signed_header(fed.a, N, earlier)
    old = PB.PushUpdateRequest()
    old.CopyFrom(messages[1])
    proof = signer.sign_chunk(0, 0, CHUNK, old.chunk.payload_sha256)
    old.chunk.prev_sha256, old.chunk.signature = proof.prev_sha256, proof.signature
    return lambda: fed.push([messages[0], old, *messages[2:]])


def chunk_from_another_client(fed: Fed) -> Callable[[], object]:
    mine, theirs = _update(fed), _update(fed, joined=fed.b)
    return lambda: fed.push([mine[0], theirs[1], *mine[2:]])


def reordered_chunks(fed: Fed) -> Callable[[], object]:
    m = _update(fed)
    return lambda: fed.push([m[0], m[2], m[1], *m[3:]])


def missing_first_chunk(fed: Fed) -> Callable[[], object]:
    m = _update(fed)
    return lambda: fed.push([m[0], *m[2:]])


def wrong_shape(fed: Fed) -> Callable[[], object]:
    messages = _update(fed, np.ones(N + 2, np.float32))
    return lambda: fed.push(messages)


def wrong_dtype(fed: Fed) -> Callable[[], object]:
    messages = _update(fed)  # 256 coordinates as float64-sized payload
    payload = np.zeros(CHUNK // 2, np.float64).tobytes() + b"\0" * 3
    return lambda: fed.push(_resigned(fed, messages, payload))


def nan_values(fed: Fed) -> Callable[[], object]:
    values = GOOD.copy()
    values[3] = np.nan
    return lambda: fed.push(_update(fed, values))


def inf_values(fed: Fed) -> Callable[[], object]:
    messages = _update(fed)
    payload = np.full(CHUNK, np.inf, "<f4").tobytes()
    return lambda: fed.push(_resigned(fed, messages, payload))


def oversized_message(fed: Fed) -> Callable[[], object]:
    messages = _update(fed)
    huge = PB.PushUpdateRequest(chunk=PB.UpdateChunk(count=CHUNK, payload=b"\0" * 8192))
    return lambda: fed.push([messages[0], huge])


def push_before_join(fed: Fed) -> Callable[[], object]:
    messages = _update(fed)
    messages[0].header.client_id, messages[0].header.session_token = "", b""
    return lambda: fed.push(messages)


def push_after_round_closed(fed: Fed) -> Callable[[], object]:
    late = _update(fed)  # for the open round, which closes before it is sent
    fed.push(_update(fed))
    fed.push(_update(fed, joined=fed.b))
    return lambda: fed.push(late)


def header_replayed_from_earlier_run(fed: Fed) -> Callable[[], object]:
    status = fed.status()
    stale = UpdateParams(status.round_id, status.model_version, nonce=b"r" * 16)
    header, _ = signed_header(fed.a, N, stale)
    return lambda: fed.push([header, *_update(fed)[1:]])


def stale_base_weights(fed: Fed) -> Callable[[], object]:
    status = fed.status()
    other = UpdateParams(status.round_id, status.model_version, base_sha256=b"s" * 32)
    header, _ = signed_header(fed.a, N, other)
    return lambda: fed.push([header, *_update(fed)[1:]])


@dataclass(frozen=True)
class Case:
    prepare: Callable[[Fed], Callable[[], object]]
    code: grpc.StatusCode
    message: str


CASES = {
    "unknown key": Case(unknown_key, Code.UNAUTHENTICATED, "not allowed to join"),
    "join proof by another key": Case(
        join_proof_by_another_key, Code.UNAUTHENTICATED, "Join signature does not"
    ),
    "join challenge reused": Case(
        join_challenge_reused, Code.UNAUTHENTICATED, "already used or expired"
    ),
    "unknown tensor": Case(join_unknown_tensor, Code.INVALID_ARGUMENT, "'v'"),
    "bad header signature": Case(
        bad_header_signature, Code.PERMISSION_DENIED, "header signature"
    ),
    "bad chunk signature": Case(
        bad_chunk_signature, Code.PERMISSION_DENIED, "chunk 0 signature"
    ),
    "tampered payload": Case(
        tampered_payload, Code.PERMISSION_DENIED, "altered in transit"
    ),
    "chunk replayed from an earlier round": Case(
        chunk_replayed_from_earlier_round, Code.DATA_LOSS, "replayed"
    ),
    "chunk from another client": Case(
        chunk_from_another_client, Code.DATA_LOSS, "does not continue its chain"
    ),
    "reordered chunks": Case(reordered_chunks, Code.DATA_LOSS, "chunk 0 was expected"),
    "missing chunk": Case(missing_first_chunk, Code.DATA_LOSS, "missing or reordered"),
    "wrong shape": Case(wrong_shape, Code.INVALID_ARGUMENT, f"model has {N}"),
    "wrong dtype": Case(wrong_dtype, Code.INVALID_ARGUMENT, "payload bytes"),
    "NaN": Case(nan_values, Code.INVALID_ARGUMENT, "NaN or Inf"),
    "Inf": Case(inf_values, Code.INVALID_ARGUMENT, "NaN or Inf"),
    "oversized message": Case(oversized_message, Code.RESOURCE_EXHAUSTED, ""),
    "push before join": Case(push_before_join, Code.FAILED_PRECONDITION, "before Join"),
    "push after the round closed": Case(
        push_after_round_closed, Code.FAILED_PRECONDITION, "round 2 is collecting"
    ),
    "header replayed from an earlier run": Case(
        header_replayed_from_earlier_run, Code.FAILED_PRECONDITION, "round nonce"
    ),
    "stale base weights": Case(
        stale_base_weights, Code.FAILED_PRECONDITION, "pull the model again"
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_refusal_leaves_the_round_untouched(fed: Fed, case: Case) -> None:
    # Arrange
    call = case.prepare(fed)
    before = RoundState.of(fed)

    # Act
    expect_status(call, case.code, case.message)

    # Assert: still serving, same round, and a clean round still applies exactly.
    assert RoundState.of(fed) == before
    complete_a_round(fed)
