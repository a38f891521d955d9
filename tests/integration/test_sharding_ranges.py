"""A parameter shard holds, steps, checkpoints and serves only its own range.

Two in-process shards over real gRPC (`tests.helpers.shards`: 930
parameters, cut at 256): after two applied rounds every tensor a shard keeps
for the model (master weights, the outer optimizer's momentum, the published
bytes, the checkpoint's tensors) is its range's size, the checkpoint says
which range it holds, and a pull that reaches past the shard's bytes is
INVALID_ARGUMENT naming them (the client pulls each range from its shard).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedgrpc.client.sharded import ShardedSync
from fedgrpc.coordinator.ops.model_export import newest_checkpoint
from fedgrpc.errors import InvalidUpdateError
from tests.helpers.shards import SIZE, join, running_shards, scripted, shard_configs
from tests.helpers.tree import close_all, run_round

RANGES = [(0, 256), (256, SIZE)]
"""Coordinates of shard 0 and shard 1 (256-coordinate blocks at 1 KiB chunks)."""


def test_each_shard_steps_and_checkpoints_only_its_own_range(tmp_path: Path) -> None:
    configs = [
        config.replace(checkpoint_dir=str(tmp_path / f"ckpt{k}"))
        for k, config in enumerate(shard_configs(tmp_path, 2))
    ]
    steps = scripted(2, 2, seed=6)
    with running_shards(configs) as shards:
        members = join(shards[0].address, (1, 2), seed=30)
        try:
            for r in range(2):
                assert run_round(members, [s[r] for s in steps]) == ["applied"] * 2
        finally:
            close_all(members)
        models = [s.running.runtime.engine.model for s in shards]

    for k, model in enumerate(models):
        held = model.require_held()
        start, stop = RANGES[k]
        assert (held.coord_start, held.coord_stop) == (start, stop)
        assert model.version == 2
        assert model.require_master().numel() == stop - start
        momentum = [
            t
            for t in model.optimizer.state_dict().values()
            if isinstance(t, torch.Tensor)
        ]
        assert momentum  # Nesterov keeps a buffer: the range's, not the model's
        assert all(t.numel() == stop - start for t in momentum)
        published = model.require_published()
        assert (published.byte_start, published.data.numel()) == (
            4 * start,
            4 * (stop - start),
        )
        checkpoint = newest_checkpoint(tmp_path / f"ckpt{k}")
        assert checkpoint.state["master_range"] == [start, stop]
        assert checkpoint.state["model_version"] == 2
        sizes = {name: t.numel() for name, t in checkpoint.tensors.items()}
        assert set(sizes.values()) == {stop - start}, sizes


@pytest.mark.parametrize(
    ("shard", "byte_range", "asked"),
    [
        (1, None, "0..3720"),  # the whole model from one shard
        (0, (0, 2048), "0..2048"),  # shard 0's bytes and some of shard 1's
        (1, (0, 1024), "0..1024"),  # the other shard's range
    ],
)
def test_a_pull_past_a_shards_bytes_is_invalid_argument_naming_them(
    tmp_path: Path, shard: int, byte_range: tuple[int, int] | None, asked: str
) -> None:
    with running_shards(shard_configs(tmp_path, 2)) as shards:
        members = join(shards[0].address, (1,), seed=31)
        try:
            sync = members[0][0]._sync
            assert isinstance(sync, ShardedSync)
            buffer = torch.zeros(4 * SIZE, dtype=torch.uint8)
            held = [f"{4 * a}..{4 * b}" for a, b in RANGES][shard]
            with pytest.raises(
                InvalidUpdateError,
                match=rf"bytes {asked}, but this coordinator is a parameter "
                rf"shard holding bytes {held} only",
            ):
                sync.links[shard].pull(0, buffer, 10.0, 1024, byte_range)
            r = sync.ranges[shard]  # its own range still pulls, and verifies
            pulled = sync.links[shard].pull(
                0, buffer, 10.0, 1024, (r.byte_start, r.byte_stop)
            )
            assert pulled.version == 0
        finally:
            close_all(members)
