"""A push whose acknowledgement is lost still counts exactly once.

The coordinator commits the update, then the reply never arrives (the
`DropAck` fault hook answers UNAVAILABLE after the commit, as a
connection lost at that moment would). The client re-joins and learns from
JoinResponse that its update landed: it must neither push it again nor put
it back into its error-feedback residual, or the update would count twice.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import structlog
import torch

import fedgrpc
from fedgrpc.config import ClientConfig, CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import serve_in_thread
from fedgrpc.wire.tensors import flatten_fp32, spec_from_module
from tests.helpers.faults import DropAck


def _flat(model: torch.nn.Module) -> np.ndarray:
    spec = spec_from_module(model)
    return flatten_fp32(list(model.parameters()), spec).numpy().copy()


@pytest.mark.parametrize(
    "still_open", [True, False], ids=["round-open", "round-closed"]
)
def test_update_with_lost_ack_counts_once(still_open: bool) -> None:
    """Round 1's ack to the first client is dropped.

    round-open: a second client is still to push, so the round is open when
    the first re-joins (it waits for the close). round-closed: it is the only
    client, so the round has been applied by the time it re-joins.
    """
    config = CoordinatorConfig(
        seed_from_first_client=True,
        listen="127.0.0.1:0",
        open_enrollment=True,
        min_clients=1 if not still_open else 2,
        inner_steps=1,
        outer_optimizer="fedavg",  # lr 1: global -= mean of what was sent
        codec="topk:0.25:fp32",  # lossless values: only selection loses mass
    )
    retry = ClientConfig(reconnect_initial_s=0.05, reconnect_max_s=20.0)
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 32)
    with serve_in_thread(config, faults=DropAck("c00001", 1)) as coordinator:
        first = fedgrpc.DiLoCoClient(coordinator.address, model, config=retry)
        global_before = _flat(model)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn_like(param))
        delta = global_before - _flat(model)
        second = None
        if still_open:  # loads the global weights at Join: pushes a zero update
            other = torch.nn.Linear(64, 32)
            second = fedgrpc.DiLoCoClient(coordinator.address, other, config=retry)
        try:
            with structlog.testing.capture_logs() as logs:
                if second is not None:
                    pushing = threading.Thread(target=second.step)
                    pushing.start()
                assert first.step() is True
                if second is not None:
                    pushing.join(timeout=60)
                    assert not pushing.is_alive()
            assert first.model_version == 1
            settled = [e for e in logs if e["event"] == "update_in_flight_settled"]
            lost = [e for e in logs if e["event"] == "coordinator_lost"]
            assert lost, "the dropped acknowledgement never reached the client"
            if not still_open:
                assert settled[-1]["committed"] is True
                assert settled[-1]["applied"] is True
            refused = [e for e in logs if e["event"] == "update_refused"]
            assert not refused, "the update was pushed a second time"
            global_after = _flat(model)
            residual = first._sync.compressed.feedback.residual  # type: ignore[union-attr]
            mean_sent = global_before - global_after
            clients = 2 if still_open else 1
            sent = mean_sent * clients  # the second client's update is zero
            assert np.count_nonzero(sent) > 0
            # Exactly once: what was applied plus what waits in the residual
            # is the pseudo-gradient, not the pseudo-gradient plus what was sent.
            np.testing.assert_allclose(sent + residual, delta, rtol=1e-5, atol=1e-5)
        finally:
            first.close()
            if second is not None:
                second.close()
