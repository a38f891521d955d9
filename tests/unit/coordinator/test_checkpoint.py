"""Checkpoint files: round trip, atomic writes, corruption fallback, keep K, locking."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch
from structlog.testing import capture_logs

from fedgrpc.coordinator.ops import checkpoint_file as ckpt
from fedgrpc.coordinator.ops.checkpoint_file import CheckpointDir, read_checkpoint
from fedgrpc.errors import CheckpointError, ConfigError

STATE = {"run_id": "abc", "model_version": 7, "nested": {"xs": [1.5, 2.5]}}


def _tensors(seed: int = 0, n: int = 1000) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "master": torch.randn(n, generator=generator),
        "optimizer.momentum_buffer": torch.randn(n, generator=generator),
        "empty": torch.empty(0),
    }


@pytest.fixture
def directory(tmp_path: Path):  # type: ignore[no-untyped-def]
    opened = CheckpointDir(tmp_path / "ckpt", keep=3)
    yield opened
    opened.close()


def test_round_trip_is_bit_exact_and_private(directory: CheckpointDir) -> None:
    tensors = _tensors()

    path = directory.write(4, STATE, tensors)

    assert path.name == "round-4.ckpt"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # weights are the user's data
    loaded = read_checkpoint(path)
    assert loaded.round_id == 4
    assert loaded.state == STATE
    assert loaded.tensors.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert torch.equal(loaded.tensors[name], tensor), name
    assert directory.load_newest() is not None


def test_failed_write_leaves_no_partial_file_and_keeps_the_old_one(
    directory: CheckpointDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory.write(1, STATE, _tensors(1))

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(CheckpointError, match="No space left"):
        directory.write(2, STATE, _tensors(2))
    monkeypatch.undo()

    assert sorted(p.name for p in directory.path.iterdir()) == [".lock", "round-1.ckpt"]
    newest = directory.load_newest()
    assert newest is not None
    assert newest.round_id == 1
    assert torch.equal(newest.tensors["master"], _tensors(1)["master"])


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [
        _flip_last_byte,
        lambda p: p.write_bytes(p.read_bytes()[:-100]),  # torn write
        lambda p: p.write_bytes(p.read_bytes()[:30]),  # torn inside the preamble
        lambda p: p.write_bytes(b"x" + p.read_bytes()[1:]),  # bad magic
        lambda p: p.write_bytes(p.read_bytes() + b"\0"),  # trailing garbage
    ],
    ids=[
        "flipped-bit",
        "truncated-body",
        "truncated-preamble",
        "bad-magic",
        "trailing",
    ],
)
def test_corrupt_newest_falls_back_to_the_previous_one(
    directory: CheckpointDir, damage
) -> None:  # type: ignore[no-untyped-def]
    directory.write(1, STATE, _tensors(1))
    newest = directory.write(2, STATE, _tensors(2))
    damage(newest)

    with capture_logs() as logs:
        loaded = directory.load_newest()

    assert loaded is not None
    assert loaded.round_id == 1
    assert torch.equal(loaded.tensors["master"], _tensors(1)["master"])
    assert [e["event"] for e in logs] == ["checkpoint_corrupt"]
    assert (directory.path / "round-2.ckpt.corrupt").exists()  # kept for a person
    assert directory.rounds() == [1]


def test_a_flipped_header_byte_is_caught_by_the_header_digest(
    directory: CheckpointDir,
) -> None:
    path = directory.write(3, STATE, _tensors())
    data = bytearray(path.read_bytes())
    data[ckpt._PREAMBLE.size + 5] ^= 0x20  # inside the JSON header
    path.write_bytes(bytes(data))

    with pytest.raises(CheckpointError, match="header"):
        read_checkpoint(path)


def test_newer_format_refuses_instead_of_falling_back(directory: CheckpointDir) -> None:
    directory.write(1, STATE, _tensors(1))
    path = directory.write(2, STATE, _tensors(2))
    data = bytearray(path.read_bytes())
    data[8:12] = (ckpt.FORMAT_VERSION + 1).to_bytes(4, "little")
    path.write_bytes(bytes(data))

    with pytest.raises(CheckpointError, match="format 2"):
        directory.load_newest()


def test_keeps_only_the_newest_k(directory: CheckpointDir) -> None:
    for round_id in range(6):
        directory.write(round_id, {**STATE, "round": round_id}, _tensors(round_id, 10))

    assert directory.rounds() == [3, 4, 5]
    newest = directory.load_newest()
    assert newest is not None
    assert newest.state["round"] == 5


def test_rewriting_a_round_replaces_it(directory: CheckpointDir) -> None:
    directory.write(2, {"v": 1}, _tensors(1, 10))
    directory.write(2, {"v": 2}, _tensors(2, 10))

    newest = directory.load_newest()
    assert newest is not None
    assert newest.state == {"v": 2}


def test_a_second_coordinator_cannot_share_the_directory(
    directory: CheckpointDir,
) -> None:
    with pytest.raises(ConfigError, match="in use by another running coordinator"):
        CheckpointDir(directory.path, keep=3)

    directory.close()
    CheckpointDir(directory.path, keep=3).close()  # free again once closed


def test_stale_temp_files_of_a_crashed_write_are_removed(tmp_path: Path) -> None:
    first = CheckpointDir(tmp_path, keep=3)
    first.write(1, STATE, _tensors(1, 10))
    stale = tmp_path / ".round-2.ckpt.k3j4h5"
    stale.write_bytes(b"half a checkpoint")
    first.close()

    second = CheckpointDir(tmp_path, keep=3)

    assert not stale.exists()
    assert second.rounds() == [1]
    second.close()


def test_unusable_directory_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")

    with pytest.raises(ConfigError, match="checkpoint_dir"):
        CheckpointDir(blocker / "ckpt", keep=3)


def test_empty_directory_has_nothing_to_resume(directory: CheckpointDir) -> None:
    assert directory.load_newest() is None
    assert os.listdir(directory.path) == [".lock"]
