"""The simulator's training text: the Python standard library's own sources.

Every Python installation ships its standard library as `.py` files, so every
process of `fedgrpc simulate` (and every CI machine, offline or not) can build
the same corpus with no download and no dataset package. Tokens are raw bytes
(vocabulary 256), so client processes have no vocabulary to agree on: the same
files read in the same order give the same tensor everywhere.

This module sits before the model on the data path: corpus -> shard per
client -> `sample_batch` -> `fedgrpc.sim.models.CharTransformer`.
"""

from __future__ import annotations

import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

from fedgrpc.errors import ConfigError
from fedgrpc.sim import DEFAULT_CORPUS_BYTES

VOCAB_SIZE = 256
"""Byte-level tokens: one token per byte value, nothing to train or share."""
VALIDATION_FRACTION = 0.1
"""The last 10 % of the corpus is held out for validation loss."""
_SKIP_DIRS = frozenset(
    {
        "__pycache__",
        "dist-packages",
        "encodings",  # generated codec tables: lines of '\uXXXX', not code
        "ensurepip",  # bundled wheels, no sources worth learning
        "idlelib",
        "lib-dynload",
        "lib2to3",  # grammar fixers and a copy of the tokenizer
        "pydoc_data",  # one 750 kB string of prose
        "site-packages",  # third-party code: differs between machines
        "test",
        "tests",
        "turtledemo",
    }
)
"""Directory names pruned anywhere in the tree: tests, vendored or generated
text that would dominate the corpus or differ between installations."""


def stdlib_root() -> Path:
    """The running interpreter's standard library directory (the base one in a venv)."""
    return Path(sysconfig.get_paths()["stdlib"])


def _wanted_dir(name: str) -> bool:
    return name not in _SKIP_DIRS and not name.startswith("config-")


def _wanted_file(name: str) -> bool:
    # _sysconfigdata_* records this build's compiler flags: data, not code.
    return name.endswith(".py") and not name.startswith("_sysconfigdata")


def source_files(root: Path) -> list[Path]:
    """Every wanted `.py` under `root`, sorted by POSIX relative path.

    Sorting relative paths (not `os.walk` order, which follows the
    filesystem) is what makes the corpus identical in every process.
    """
    found: list[str] = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if _wanted_dir(d)]
        relative = Path(directory).relative_to(root)
        found.extend((relative / f).as_posix() for f in files if _wanted_file(f))
    return [root / name for name in sorted(found)]


def load_stdlib_corpus(max_bytes: int = DEFAULT_CORPUS_BYTES) -> bytes:
    """Concatenate standard-library sources, in sorted path order, up to `max_bytes`.

    Deterministic across processes on one machine (same interpreter, same
    files). Only the files needed to reach `max_bytes` are read; the last one
    is cut so the result is exactly `max_bytes` long unless the library is
    smaller.

    Raises:
        ConfigError: `max_bytes` < 1, or no sources were found (a stripped
            Python with only `.pyc` files).
    """
    return b"".join(data for _, data in stdlib_documents(max_bytes))


def stdlib_documents(max_bytes: int = DEFAULT_CORPUS_BYTES) -> list[tuple[str, bytes]]:
    """(path under the stdlib, bytes) of each file `load_stdlib_corpus` joins.

    The same files in the same order, the last one cut the same way, so
    offsets into the corpus map back to the file (and package) they came
    from: the char-LM's non-IID partitions label text by package.

    Raises:
        ConfigError: as `load_stdlib_corpus`.
    """
    if max_bytes < 1:
        raise ConfigError(f"max_bytes={max_bytes!r} is invalid: expected >= 1")
    root = stdlib_root()
    parts: list[tuple[str, bytes]] = []
    size = 0
    for path in source_files(root):
        if size >= max_bytes:
            break
        data = path.read_bytes()[: max_bytes - size]
        parts.append((path.relative_to(root).as_posix(), data))
        size += len(data)
    if not parts:
        raise ConfigError(
            f"no .py sources under {root}; the simulator needs a Python "
            "installation that ships its standard library as source"
        )
    return parts


@dataclass(frozen=True, slots=True, eq=False)
class TextSplits:
    """Byte tokens split into a train part and a held-out validation part.

    Both tensors are 1-D uint8 (token ids 0..255); cast batches to int64 with
    `sample_batch`. `eq=False` because tensors have no boolean equality.
    """

    train: torch.Tensor
    validation: torch.Tensor

    def __post_init__(self) -> None:
        for name in ("train", "validation"):
            tokens = getattr(self, name)
            if tokens.dtype != torch.uint8 or tokens.dim() != 1 or tokens.numel() == 0:
                raise ConfigError(
                    f"{name} must be a non-empty 1-D uint8 tensor, got "
                    f"{tokens.dtype} with shape {list(tokens.shape)}"
                )

    @classmethod
    def from_bytes(cls, data: bytes) -> TextSplits:
        """Tokenise `data` byte by byte: the first 90 % trains, the last 10 % validates.

        The split is contiguous rather than random so validation text is
        never a shifted copy of a training window.
        """
        if len(data) < 2:
            raise ConfigError(f"the corpus has {len(data)} bytes; expected at least 2")
        # bytearray: torch.frombuffer wants a writable buffer; the copy is one memcpy.
        tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        cut = min(len(data) - 1, max(1, round(len(data) * (1 - VALIDATION_FRACTION))))
        return cls(train=tokens[:cut], validation=tokens[cut:])

    def shard(self, client_index: int, num_clients: int) -> torch.Tensor:
        """Client `client_index` of `num_clients`'s contiguous slice of train.

        Shards are disjoint, cover the train split in order and differ in
        length by at most one token; the result is a view, not a copy.
        Contiguous slices are not IID (each holds different modules), which
        is the realistic federated case and still one style of Python source.

        Raises:
            ConfigError: `num_clients` < 1, `client_index` outside
                [0, num_clients), or more shards than train tokens.
        """
        if num_clients < 1:
            raise ConfigError(f"num_clients={num_clients!r} is invalid: expected >= 1")
        if not 0 <= client_index < num_clients:
            raise ConfigError(
                f"client_index={client_index!r} is invalid: expected "
                f"0..{num_clients - 1}"
            )
        if num_clients > self.train.numel():
            raise ConfigError(
                f"num_clients={num_clients} is invalid: the train split has only "
                f"{self.train.numel()} tokens"
            )
        return torch.tensor_split(self.train, num_clients)[client_index]


def sample_batch(
    tokens: torch.Tensor, batch_size: int, context: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw `batch_size` random windows of `context + 1` tokens from `tokens`.

    Windows start uniformly at random (with replacement), so a batch may
    overlap itself; over a 1.8 MB shard that is rare and harmless. Only
    `generator` is consumed, never the global RNG, so sampling is
    reproducible per client. Keep `tokens` on the CPU and move the batch to
    the model's device: the gather is microseconds either way.

    Returns:
        (inputs, targets), both int64 [batch_size, context] on `tokens`'s
        device and contiguous; targets are inputs shifted left by one
        (next-byte prediction).

    Raises:
        ConfigError: `tokens` is not 1-D, `batch_size` or `context` < 1, or
            `tokens` is shorter than one window.
    """
    if tokens.dim() != 1:
        raise ConfigError(f"tokens must be 1-D, got shape {list(tokens.shape)}")
    if batch_size < 1 or context < 1:
        raise ConfigError(
            f"batch_size={batch_size!r}, context={context!r} are invalid: "
            "expected both >= 1"
        )
    if tokens.numel() < context + 1:
        raise ConfigError(
            f"{tokens.numel()} tokens cannot fill a window of context + 1 = "
            f"{context + 1}; use fewer clients or a bigger corpus"
        )
    # Starts in [0, n - context): the last window ends exactly at token n - 1.
    # Drawn on the generator's device, so a CUDA generator works too.
    starts = torch.randint(
        0,
        tokens.numel() - context,
        (batch_size, 1),
        generator=generator,
        device=generator.device,
    )
    # [B, 1] + [T + 1] -> [B, T + 1] token positions: one gather, no Python loop.
    index = starts + torch.arange(context + 1, device=starts.device)
    window = tokens[index.to(tokens.device)].long()
    return window[:, :-1].contiguous(), window[:, 1:].contiguous()
