"""Throwaway keys cannot fill the registry, before or after a restart (issue 13, A.5).

Under open enrollment 1,023 throwaway keys filled `max_clients` in 1.4 s,
the checkpoint kept them so the lockout survived a restart, and GetStatus
grew past 1 MiB. Here an attacker joins 1,100 fresh keys with 1,000-char
names through raw stubs against a real coordinator (max_clients 1,024,
the default), and an honest client that trained a round must still get in,
keep its credit across a restart, and status must stay readable. On main
the honest Join got RESOURCE_EXHAUSTED, before and after the restart.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from safetensors.torch import save_file

from fedgrpc._proto.v1 import admin_pb2, admin_pb2_grpc
from fedgrpc.client.admin import fetch_status
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import serve_in_thread
from fedgrpc.crypto.keys import PrivateKey
from fedgrpc.domain.model_spec import ModelSpec
from tests.helpers import eventually
from tests.helpers.metrics import scrape
from tests.helpers.raw import Service, join, stub, tiny_spec, update_messages

N = 10
THROWAWAY_KEYS = 1_100
"""More than max_clients (1,024): the flood of the issue, and then some."""
LONG_NAME = "x" * 1_000
ONE_MIB = 1 << 20


@pytest.fixture
def config(tmp_path: Path) -> CoordinatorConfig:
    import torch

    init = tmp_path / "init.safetensors"
    save_file({"w": torch.zeros(N)}, str(init))
    return CoordinatorConfig(
        listen="127.0.0.1:0", open_enrollment=True, min_clients=1,
        init_model=str(init), checkpoint_dir=str(tmp_path / "ckpt"),
        metrics_listen="127.0.0.1:0",
    )  # fmt: skip


def _flood(service: Service, spec: ModelSpec) -> list[grpc.StatusCode]:
    """Join THROWAWAY_KEYS fresh keys (bounded loop); the refusals' codes."""
    refused = []
    for _ in range(THROWAWAY_KEYS):
        try:
            join(service, spec, LONG_NAME)
        except grpc.RpcError as exc:
            refused.append(exc.code())
    return refused


def _status_pages(address: str) -> list[admin_pb2.GetStatusResponse]:
    """Every GetStatus page, through a channel that accepts at most 1 MiB."""
    options = [("grpc.max_receive_message_length", ONE_MIB)]
    pages: list[admin_pb2.GetStatusResponse] = []
    with grpc.insecure_channel(address, options=options) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        request = admin_pb2.GetStatusRequest()
        for _ in range(100):  # bounded: 1,024 clients need a handful of pages
            pages.append(admin.GetStatus(request, timeout=10))
            if not pages[-1].next_page_token:
                break
            request.page_token = pages[-1].next_page_token
    return pages


def test_throwaway_keys_cannot_lock_out_an_honest_client_before_or_after_a_restart(
    config: CoordinatorConfig,
) -> None:
    honest_key = PrivateKey.generate()
    spec = tiny_spec(N)
    with serve_in_thread(config) as running:
        channel, service = stub(running.address)
        with channel:
            honest = join(service, spec, "honest", key=honest_key)
            service.PushUpdate(
                update_messages(honest, np.ones(N, np.float32), round_id=1,
                                base_version=0),
                timeout=10,
            )  # fmt: skip
            eventually(lambda: running.status().model_version == 1)

            assert _flood(service, spec) == []  # idle throwaway keys make room
            again = join(service, spec, "honest", key=honest_key)
            assert again.client_id == honest.client_id  # credit kept its slot
            newcomer = join(service, spec, "late-but-honest")
            assert newcomer.client_id

            pages = _status_pages(running.address)
        assert all(page.ByteSize() < ONE_MIB for page in pages)
        assert len(pages) > 1  # 1,024 long names do not fit one message
        listed = [c.client_id for page in pages for c in page.clients]
        assert len(listed) == len(set(listed)) == pages[0].total_clients == 1024
        everyone = fetch_status(running.address)
        assert [c.client_id for c in everyone.clients] == listed
        # 1 + 1,100 + 1 records for 1,024 places: 78 idle throwaways went.
        assert scrape(running)[1]["fedgrpc_clients_evicted_total"] == 78

    # Restart from the checkpoint: only the client with credit comes back.
    with serve_in_thread(config) as running:
        status = running.status()
        assert [c.client_id for c in status.clients] == [honest.client_id]
        channel, service = stub(running.address)
        with channel:
            back = join(service, spec, "honest", key=honest_key)
            assert _flood(service, spec) == []
            late = join(service, spec, "after-restart")
        assert back.client_id == honest.client_id
        assert late.client_id not in {c.client_id for c in everyone.clients}
        mine = next(
            c for c in running.status().clients if c.client_id == honest.client_id
        )
        assert mine.updates_accepted == 1
