"""Join challenges and proofs without a server: expiry, reuse, bounds, allow-lists."""

from __future__ import annotations

import pytest

from fedgrpc._proto.v1 import common_pb2
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator import enrollment
from fedgrpc.coordinator.enrollment import Enrollment, load_allowed_keys
from fedgrpc.crypto.allowlist import AllowedKeys
from fedgrpc.crypto.keys import PrivateKey
from fedgrpc.errors import ConfigError, UnknownClientError
from fedgrpc.wire.signed import JoinProof, key_to_proto

CLIENT = PrivateKey.generate()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _enrollment(allowed: AllowedKeys | None = None) -> tuple[Enrollment, Clock]:
    clock = Clock()
    return Enrollment(PrivateKey.generate(), allowed, "run", clock), clock


def _proof(registrar: Enrollment, nonce: bytes, key: PrivateKey = CLIENT) -> JoinProof:
    unsigned = JoinProof(key_to_proto(key.public_key), nonce, b"", "c", b"d")
    statement = unsigned.statement("run", registrar.public_key, key.public_key)
    return JoinProof(unsigned.client_key, nonce, key.sign(statement), "c", b"d")


def test_a_fresh_proof_admits_the_key_once() -> None:
    registrar, _ = _enrollment()
    proof = _proof(registrar, registrar.challenge().nonce)
    assert registrar.admit(proof) == CLIENT.public_key
    with pytest.raises(UnknownClientError, match="already used or expired"):
        registrar.admit(proof)


def test_an_expired_challenge_is_refused() -> None:
    registrar, clock = _enrollment()
    proof = _proof(registrar, registrar.challenge().nonce)
    clock.now += enrollment.CHALLENGE_TTL_S + 1
    with pytest.raises(UnknownClientError, match="expired"):
        registrar.admit(proof)


def test_open_challenges_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(enrollment, "MAX_OPEN_CHALLENGES", 3)
    registrar, _ = _enrollment()
    first = registrar.challenge().nonce
    later = [registrar.challenge().nonce for _ in range(3)]
    with pytest.raises(UnknownClientError):
        registrar.admit(_proof(registrar, first))  # dropped to make room
    assert registrar.admit(_proof(registrar, later[-1])) == CLIENT.public_key


def test_a_listed_key_is_admitted_and_a_stranger_named_by_fingerprint() -> None:
    allowed = AllowedKeys([CLIENT.public_key.fingerprint], "test list")
    registrar, _ = _enrollment(allowed)
    assert registrar.admit(_proof(registrar, registrar.challenge().nonce))
    stranger = PrivateKey.generate()
    with pytest.raises(UnknownClientError) as refused:
        registrar.admit(_proof(registrar, registrar.challenge().nonce, stranger))
    assert stranger.public_key.fingerprint in str(refused.value)
    assert "allowed_client_keys" in str(refused.value)
    assert "test list" not in str(refused.value)  # the source (a path) stays home


def test_malformed_or_missing_keys_are_unauthenticated() -> None:
    registrar, _ = _enrollment()
    nonce = registrar.challenge().nonce
    with pytest.raises(UnknownClientError, match="carries no client key"):
        registrar.admit(JoinProof(None, nonce, b"", "c", b""))
    short = common_pb2.PublicKeyRecord(
        algorithm=common_pb2.SIGNATURE_ALGORITHM_ED25519, public_key=b"x"
    )
    with pytest.raises(UnknownClientError, match="32 bytes"):
        registrar.admit(JoinProof(short, nonce, b"", "c", b""))
    unknown = common_pb2.PublicKeyRecord(public_key=CLIENT.public_key.raw)
    with pytest.raises(UnknownClientError, match="algorithm 0 is unknown"):
        registrar.admit(JoinProof(unknown, nonce, b"", "c", b""))


def test_a_coordinator_nobody_could_join_refuses_to_start() -> None:
    with pytest.raises(ConfigError, match="no client could join"):
        load_allowed_keys(CoordinatorConfig())
