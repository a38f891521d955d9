"""The round engine's stages (aggregator, accumulator, outer optimizer) over real stubs.

A real coordinator on 127.0.0.1 port 0 and raw generated stubs: a robust
aggregator spools each update to disk, so a push that breaks half-way loses
only its own file; a user's Aggregator and OuterOptimizer plug in through
the Python API or `module:Class`, and the plugin optimizer's state is
checkpointed and restored like a built-in's.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from fedgrpc._proto.v1 import admin_pb2, admin_pb2_grpc
from fedgrpc.aggregate import HeldUpdates, Holding, WeightedMean
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import CoordinatorThread, serve_in_thread
from fedgrpc.coordinator.strategy.wiring import StagePlugins
from fedgrpc.optim import StateDict
from tests.helpers import eventually
from tests.helpers.raw import PB, join, pull, stub, tiny_spec, update_messages

N = 10


def _config(tmp_path: Path, **overrides: object) -> CoordinatorConfig:
    base = CoordinatorConfig(
        listen="127.0.0.1:0",
        open_enrollment=True,
        min_clients=2,
        inner_steps=5,
        chunk_bytes=1024,
        outer_optimizer="fedavg",  # w <- w - 1.0 x aggregate: easy to check
        seed_from_first_client=True,
    )
    return base.replace(**overrides)


def _status(channel: grpc.Channel) -> admin_pb2.GetStatusResponse:
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    return admin.GetStatus(admin_pb2.GetStatusRequest(), timeout=10)


def test_a_median_round_drops_a_push_that_broke_half_way_and_applies_the_rest(
    tmp_path: Path,
) -> None:
    spool = tmp_path / "spool"
    config = _config(tmp_path, aggregator="median", spool_dir=str(spool), min_clients=3)
    with serve_in_thread(config) as coordinator:
        channel, service = stub(coordinator.address)
        with channel:
            a, b, c = (join(service, tiny_spec(N), name) for name in "abc")
            initial = np.zeros(N, dtype=np.float32)
            service.PushUpdate(
                update_messages(a, initial, round_id=0, base_version=0, initial=True),
                timeout=10,
            )
            ones = np.ones(N, dtype=np.float32)
            broken = ones.copy()
            broken[7] = np.nan  # chunk 1 of 3: chunk 0 is already spooled
            with pytest.raises(grpc.RpcError) as failed:
                service.PushUpdate(
                    update_messages(a, broken, round_id=1, base_version=0), timeout=10
                )
            assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            # With the streaming sum this push would have voided round 1; the
            # spool dropped its file, so the round takes three good updates.
            for joined, scale in ((a, 1.0), (b, 2.0), (c, 100.0)):  # c: an outlier
                service.PushUpdate(
                    update_messages(joined, scale * ones, round_id=1, base_version=0),
                    timeout=10,
                )
            version, weights = pull(service, b, min_version=1)
            assert version == 1
            # median(1, 2, 100) = 2 per coordinate; the mean would be 34.3.
            np.testing.assert_array_equal(weights, initial - 2.0)
            (done,) = _status(channel).recent_rounds
            assert done.outcome == PB.ROUND_OUTCOME_APPLIED
            assert done.num_updates == 3
            assert list(spool.glob("run-*"))  # the run's spool is live ...
            assert not list(spool.glob("run-*/round-*"))  # ... its round deleted
    assert not list(spool.glob("run-*"))  # shutdown removed the run's directory


class HalfMean:
    """A user's Aggregator: half the weighted mean (needs only the sum)."""

    name = "half_mean"

    @property
    def needs(self) -> Holding:
        return "sum"

    def aggregate(self, held: HeldUpdates, out: torch.Tensor) -> None:
        WeightedMean().aggregate(held, out)
        out.mul_(0.5)


class CountingSGD:
    """A user's OuterOptimizer: w <- w - lr x g, counting its steps (its state)."""

    name = "counting_sgd"

    def __init__(self, lr: float = 1.0) -> None:
        self.lr = lr
        self.steps = 0

    def step(self, params: torch.Tensor, pseudo_gradient: torch.Tensor) -> None:
        params.sub_(pseudo_gradient, alpha=self.lr)
        self.steps += 1

    def state_dict(self) -> StateDict:
        return {"steps": self.steps}

    def load_state_dict(self, state: StateDict) -> None:
        self.steps = int(state["steps"])


def _one_round(address: str, values: np.ndarray, *, seed: bool) -> np.ndarray:
    channel, service = stub(address)
    with channel:
        a, b = join(service, tiny_spec(N), "a"), join(service, tiny_spec(N), "b")
        version = _status(channel).model_version
        if seed:
            service.PushUpdate(
                update_messages(
                    a, np.zeros(N, np.float32), round_id=0, base_version=0, initial=True
                ),
                timeout=10,
            )
        round_id = _status(channel).round_id
        for joined, scale in ((a, 1.0), (b, 3.0)):
            service.PushUpdate(
                update_messages(
                    joined, scale * values, round_id=round_id, base_version=version
                ),
                timeout=10,
            )
        _, weights = pull(service, a, min_version=version + 1)
        return weights


def test_plugin_aggregator_and_optimizer_run_and_the_optimizer_state_is_checkpointed(
    tmp_path: Path,
) -> None:
    spec = f"{__name__}:CountingSGD"
    config = _config(
        tmp_path,
        outer_optimizer=spec,
        outer_optimizer_params={"lr": 0.5},
        checkpoint_dir=str(tmp_path / "ckpt"),
    )
    plugins = StagePlugins(aggregator=HalfMean)
    ones = np.ones(N, dtype=np.float32)
    with serve_in_thread(config, plugins=plugins) as coordinator:
        weights = _one_round(coordinator.address, ones, seed=True)
        # mean(1, 3) = 2, halved = 1, times lr 0.5: w = 0 - 0.5.
        np.testing.assert_allclose(weights, -0.5 * ones)
        optimizer = coordinator.running.runtime.engine.model.optimizer
        assert isinstance(optimizer, CountingSGD)
        assert optimizer.steps == 1
        eventually(lambda: any((tmp_path / "ckpt").glob("round-*.ckpt")), timeout_s=10)
    with serve_in_thread(config, plugins=plugins) as resumed:
        restored = resumed.running.runtime.engine.model.optimizer
        assert isinstance(restored, CountingSGD)
        assert restored.steps == 1  # load_state_dict got the checkpointed state
        assert resumed.status().model_version == 1


def test_a_plugin_outer_optimizer_under_another_name_cannot_resume_a_run(
    tmp_path: Path,
) -> None:
    from fedgrpc.errors import FedGrpcError

    config = _config(tmp_path, checkpoint_dir=str(tmp_path / "ckpt"))
    with serve_in_thread(config) as coordinator:
        _one_round(coordinator.address, np.ones(N, np.float32), seed=True)
    plugin = config.replace(outer_optimizer=f"{__name__}:CountingSGD")
    coordinator = CoordinatorThread(plugin)
    try:
        with pytest.raises(FedGrpcError, match="'fedavg'"):
            coordinator.start()
    finally:
        coordinator.stop()
