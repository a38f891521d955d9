"""A shard's checkpoint holds its range: restored only by the same shard.

`held_of_checkpoint` puts a checkpoint's master weights back as the range a
coordinator holds: its own range as saved, or cut from a whole master (a
checkpoint an unsharded run, or a shard before range-only shards, wrote);
another shard's range is refused naming both, and `fedgrpc export` refuses a
shard's checkpoint instead of writing a model that is mostly missing.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from fedgrpc.coordinator.ops.checkpoint_file import CheckpointFile
from fedgrpc.coordinator.ops.model_export import state_dict
from fedgrpc.coordinator.rounds.held_range import held_of_checkpoint
from fedgrpc.domain.fragments import Fragment
from fedgrpc.domain.model_spec import DType, ModelSpec, TensorSpec, spec_rows
from fedgrpc.errors import CheckpointError

SHARD_1 = Fragment(1, 256, 930, 1024, 3720)


def test_a_shards_own_range_comes_back_as_saved() -> None:
    master = torch.arange(674, dtype=torch.float32)

    restored = held_of_checkpoint(master, [256, 930], SHARD_1, "round-3.ckpt")

    assert restored is master


def test_a_whole_master_from_an_older_checkpoint_is_cut_to_the_range() -> None:
    master = torch.arange(930, dtype=torch.float32)

    restored = held_of_checkpoint(master, None, SHARD_1, "round-3.ckpt")

    assert torch.equal(restored, master[256:930])
    assert restored.untyped_storage().data_ptr() != master.data_ptr()  # not a view


@pytest.mark.parametrize(
    ("saved", "numel", "message"),
    [
        ([0, 256], 256, "holds the weights of coordinates 0..256, but this "
         "coordinator holds 256..930: give each shard its own checkpoint_dir"),
        ([0, 465], 465, "holds the weights of coordinates 0..465"),
        ([256, 930], 600, "600 master weights for the range 256..930"),
    ],
)  # fmt: skip
def test_another_shards_range_is_refused_naming_both(
    saved: list[int], numel: int, message: str
) -> None:
    with pytest.raises(CheckpointError, match=re.escape(message)):
        held_of_checkpoint(torch.zeros(numel), saved, SHARD_1, "round-3.ckpt")


def test_export_refuses_a_shards_checkpoint(tmp_path: Path) -> None:
    spec = ModelSpec((TensorSpec("w", (930,), DType.FLOAT32),))
    checkpoint = CheckpointFile(
        tmp_path / "round-3.ckpt",
        3,
        {"spec": spec_rows(spec), "master_range": [256, 930]},
        {"master": torch.zeros(674)},
    )

    with pytest.raises(
        CheckpointError, match=re.escape("only coordinates 256..930 of")
    ):
        state_dict(checkpoint)
