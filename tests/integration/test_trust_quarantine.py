"""Trust scores over real stubs: a sign-flipping client is quarantined, and stays so.

A real coordinator on 127.0.0.1 port 0 (`aggregator = "median"`, `trust =
"on"`), four honest raw clients and one attacker, all sending validly signed
dense updates. The attacker sends a transformed honest-looking update every
round: sign-flipped, or scaled 10x. It must be hard-quarantined within 5
rounds, its pushes then refused with FAILED_PRECONDITION naming the
quarantine, no honest client ever quarantined, the standing visible in
GetStatus and the metrics, and all of it intact after a restart from the
checkpoint.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedgrpc._proto.v1 import admin_pb2, admin_pb2_grpc
from fedgrpc.cli_ops import format_status
from fedgrpc.client.admin import fetch_status
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.inprocess import build_status
from fedgrpc.coordinator.services.in_thread import CoordinatorThread, serve_in_thread
from fedgrpc.crypto.keys import PrivateKey
from fedgrpc.domain.status import CoordinatorStatus
from tests.helpers.raw import Joined, join, pull, stub, tiny_spec, update_messages

N = 64
HONEST = 4
QUARANTINE_ROUNDS = 5


def _config(tmp_path: Path) -> CoordinatorConfig:
    return CoordinatorConfig(
        listen="127.0.0.1:0",
        open_enrollment=True,
        min_clients=HONEST,  # raw stubs hold no Session: a round closes at 4 commits
        inner_steps=5,
        chunk_bytes=1024,
        outer_optimizer="fedavg",
        seed_from_first_client=True,
        aggregator="median",
        trust="on",
        trust_quarantine_rounds=QUARANTINE_ROUNDS,
        spool_dir=str(tmp_path / "spool"),
        checkpoint_dir=str(tmp_path / "ckpt"),
    )


def _status(channel: grpc.Channel) -> admin_pb2.GetStatusResponse:
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    return admin.GetStatus(admin_pb2.GetStatusRequest(), timeout=10)


def _clients(status: admin_pb2.GetStatusResponse) -> dict[str, admin_pb2.ClientStatus]:
    return {c.client_id: c for c in status.clients}


class Federation:
    """Four honest raw clients and a sign-flipping one, on one channel."""

    def __init__(self, address: str, keys: list[PrivateKey]) -> None:
        self.channel, self.service = stub(address)
        self.joined: list[Joined] = [
            join(self.service, tiny_spec(N), f"c{i}", key=key)
            for i, key in enumerate(keys)
        ]
        self.attacker, self.honest = self.joined[0], self.joined[1:]
        self.rng = np.random.default_rng(13)
        self.direction = np.linspace(0.05, 0.15, N, dtype=np.float32)

    def update(self) -> np.ndarray:
        """An honest pseudo-gradient: a shared direction plus client noise."""
        noise = self.rng.normal(0.0, 0.02, N).astype(np.float32)
        return self.direction + noise

    def push(self, who: Joined, values: np.ndarray) -> grpc.RpcError | None:
        status = _status(self.channel)
        try:
            self.service.PushUpdate(
                update_messages(
                    who,
                    values,
                    round_id=status.round_id,
                    base_version=status.model_version,
                    chunk_coords=16,
                ),
                timeout=10,
            )
        except grpc.RpcError as refused:
            return refused
        return None

    def play_round(
        self, attack: Callable[[np.ndarray], np.ndarray]
    ) -> grpc.RpcError | None:
        """One round: the attacker pushes first, then honest clients up to quorum.

        Returns the attacker's refusal (None: its update was taken).
        """
        version = _status(self.channel).model_version
        refused = self.push(self.attacker, attack(self.update()))
        needed = HONEST - (refused is None)
        for honest in self.honest[:needed]:
            assert self.push(honest, self.update()) is None
        got, _ = pull(self.service, self.honest[0], min_version=version + 1)
        assert got == version + 1
        return refused


def _in_process(coordinator: CoordinatorThread, client_id: str) -> tuple[str, int, int]:
    """`client_id`'s trust state, first quarantined round and exclusion end, as
    the in-process status (`build_status`, run on the loop) reports them."""
    runtime = coordinator.running.runtime

    async def snapshot() -> CoordinatorStatus:
        return build_status(runtime)

    status = asyncio.run_coroutine_threadsafe(snapshot(), coordinator.loop).result(10)
    (row,) = [c for c in status.clients if c.client_id == client_id]
    return row.trust_state, row.first_quarantined_round, row.excluded_until_round


ATTACKS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sign_flip": lambda update: -update,
    "scale_10x": lambda update: 10 * update,
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_an_attacking_client_is_quarantined_within_five_rounds_and_after_restart(
    attack: str, tmp_path: Path
) -> None:
    transform = ATTACKS[attack]
    config = _config(tmp_path)
    keys = [PrivateKey.generate() for _ in range(HONEST + 1)]
    with serve_in_thread(config) as coordinator:
        federation = Federation(coordinator.address, keys)
        with federation.channel:
            first = federation.honest[0]
            federation.service.PushUpdate(
                update_messages(
                    first, np.zeros(N, np.float32), round_id=0, base_version=0,
                    initial=True,
                ),
                timeout=10,
            )  # fmt: skip
            attacker_id = federation.attacker.client_id
            honest_ids = {h.client_id for h in federation.honest}
            quarantined_at = None
            for round_id in range(1, 6):
                assert federation.play_round(transform) is None  # still admitted
                state = _clients(_status(federation.channel))[attacker_id].trust_state
                if state == "quarantined":
                    quarantined_at = round_id
                    break
            assert quarantined_at is not None, "not quarantined within 5 rounds"
            clients = _clients(_status(federation.channel))
            assert clients[attacker_id].quarantined_until_round == (
                quarantined_at + 1 + QUARANTINE_ROUNDS
            )
            assert clients[attacker_id].trust_score < config.trust_hard_threshold
            for client_id in honest_ids:
                assert clients[client_id].trust_state == "trusted"
                assert clients[client_id].trust_weight_factor == 1.0
            # The attacker's next update is refused, naming the quarantine.
            refused = federation.play_round(transform)
            assert refused is not None
            assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "hard quarantine" in (refused.details() or "")
            metrics = coordinator.running.runtime.metrics.registry
            assert metrics.get_sample_value("fedgrpc_trust_quarantined") == 1
            assert metrics.get_sample_value("fedgrpc_trust_quarantines_total") == 1
            before = _clients(_status(federation.channel))[attacker_id]
            shown = fetch_status(coordinator.address)  # what `fedgrpc status` prints
            table = format_status(coordinator.address, shown)
            until = before.quarantined_until_round
            assert f"quarantined until round {until}" in table
            # The in-process status (`Coordinator.status()`) says the same,
            # and when the quarantine began.
            in_process = _in_process(coordinator, attacker_id)
            assert in_process == ("quarantined", quarantined_at, until)
    # A restart from the checkpoint keeps the quarantine: the attacker joins
    # again with its key (same id) and is still refused.
    with serve_in_thread(config) as resumed:
        federation = Federation(resumed.address, keys)
        with federation.channel:
            after = _clients(_status(federation.channel))
            assert federation.attacker.client_id == attacker_id
            assert after[attacker_id].trust_state == "quarantined"
            assert after[attacker_id].trust_score == before.trust_score
            assert after[attacker_id].quarantined_until_round == (
                before.quarantined_until_round
            )
            refused = federation.play_round(transform)
            assert refused is not None
            assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
            for client_id in honest_ids:
                assert after[client_id].trust_state == "trusted"
            # When it began is checkpointed with the standing.
            assert _in_process(resumed, attacker_id)[:2] == (
                "quarantined",
                quarantined_at,
            )


def test_trust_with_secure_aggregation_is_refused_at_start_naming_both(
    tmp_path: Path,
) -> None:
    from fedgrpc.errors import FedGrpcError

    config = _config(tmp_path).replace(
        aggregator="mean", secure_aggregation=True, codec="dense:int8"
    )
    coordinator = CoordinatorThread(config)
    try:
        with pytest.raises(FedGrpcError, match=r"trust = 'on'.*secure_aggregation"):
            coordinator.start()
    finally:
        coordinator.stop()
