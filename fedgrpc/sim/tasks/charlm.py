"""The char-LM task: `fedgrpc simulate`'s byte-level transformer on stdlib sources.

The model, corpus and training step are `fedgrpc.sim.models` and
`fedgrpc.sim.corpus`, unchanged; this module adds what a partition needs,
a label per piece of training text.

Labels: the training split is cut into `PIECE_BYTES` pieces, and a piece's
label is the top-level package of the source file its first byte comes
from (`asyncio`, `email`, `json`, ...), with every single-file top-level
module (`argparse.py`, `typing.py`, ...) under one label, `(modules)`.
So `dirichlet:ALPHA` skews which *code* each client reads: at small alpha
one client reads mostly asyncio and email, another mostly distutils.

`iid` keeps the split every earlier release used: client i reads the i-th
contiguous slice of the training text (`TextSplits.shard`), so runs and
figures stay comparable. It is the default but not truly IID (each slice
holds other packages, in alphabetical runs); its table shows that. For a
mixed split of pieces use `dirichlet` with a large alpha (e.g. 1000).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedgrpc.data import Partition, PartitionSpec, partition_labels
from fedgrpc.sim.corpus import TextSplits, sample_batch, stdlib_documents
from fedgrpc.sim.models import (
    CharTransformer,
    build_model,
    evaluate,
    make_inner_optimizer,
    train_step,
)
from fedgrpc.sim.tasks.base import Batch, Sampler, TaskSettings

PIECE_BYTES = 4096
"""The unit a skewed partition hands out: ~1,760 pieces in the default 7.2 MB
training split, each big enough for 60 windows of 64 + 1 bytes."""
MODULES_LABEL = "(modules)"
"""The label of single-file top-level modules."""


class CharLMTask:
    """`Task` for the char-LM; label = top-level package of a piece of text."""

    def __init__(self, settings: TaskSettings) -> None:
        self.settings = settings
        self.defaults = settings.defaults
        documents = stdlib_documents(settings.corpus_bytes)
        self.splits = TextSplits.from_bytes(b"".join(data for _, data in documents))
        self._documents = [(path, len(data)) for path, data in documents]

    @property
    def batch_size(self) -> int:
        """Windows per inner step (`TrainDefaults.batch_size`)."""
        return self.defaults.batch_size

    def build_model(self, seed: int) -> nn.Module:
        """`fedgrpc.sim.models.build_model` with the settings' shape."""
        return build_model(self.defaults.model, seed=seed)

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """AdamW, decaying matrices only (`make_inner_optimizer`)."""
        return make_inner_optimizer(model, self.defaults)

    def piece_labels(self) -> tuple[np.ndarray, list[str]]:
        """(label per training piece, label names): see the module docstring."""
        ends = np.cumsum(
            [size for _, size in self._documents]
        )  # file i: [end_{i-1}, end_i)
        tops = np.array(
            [path.split("/")[0] if "/" in path else MODULES_LABEL
             for path, _ in self._documents]
        )  # fmt: skip
        starts = np.arange(0, self.splits.train.numel(), PIECE_BYTES)
        owner = np.searchsorted(ends, starts, side="right")  # file of each start
        # Only packages the training split reaches become labels (the last
        # files alphabetically are validation text).
        names, labels = np.unique(tops[owner], return_inverse=True)
        return labels.astype(np.int64), [str(n) for n in names]

    def partition(self, num_clients: int, spec: PartitionSpec, seed: int) -> Partition:
        """Pieces by package; `iid` reports the contiguous shards it keeps."""
        labels, names = self.piece_labels()
        if spec.kind != "iid":
            return partition_labels(
                labels, num_clients, spec, seed=seed, min_size=1, label_names=names
            )
        # The contiguous shards of `TextSplits.shard`: a piece belongs to the
        # shard holding its first byte (tensor_split: the first n % N shards
        # are one token longer).
        n = self.splits.train.numel()
        sizes = np.full(num_clients, n // num_clients)
        sizes[: n % num_clients] += 1
        starts = np.arange(0, n, PIECE_BYTES)
        owner = np.searchsorted(np.cumsum(sizes), starts, side="right")
        part = partition_labels(labels, num_clients, spec, seed=seed, label_names=names)
        return Partition(spec, owner.astype(np.int64), part.labels, part.label_names,
                         num_clients)  # fmt: skip

    def shard(self, partition: Partition, client: int) -> torch.Tensor:
        """Client `client`'s training text: its slice (iid) or its pieces, in order."""
        if partition.spec.kind == "iid":
            return self.splits.shard(client, partition.num_clients)
        # Byte b belongs to piece b // PIECE_BYTES: keep the client's pieces'
        # bytes, in corpus order (one boolean gather, no loop over pieces).
        piece = np.arange(self.splits.train.numel()) // PIECE_BYTES
        keep = np.isin(piece, partition.indices(client))
        return self.splits.train[torch.from_numpy(keep)]

    def sampler(self, partition: Partition, client: int) -> Sampler:
        """Random windows of the client's text (`sample_batch`)."""
        tokens = self.shard(partition, client)
        size, context = self.defaults.batch_size, self.defaults.context

        def sample(generator: torch.Generator) -> Batch:
            return sample_batch(tokens, size, context, generator)

        return sample

    def train_step(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch
    ) -> torch.Tensor:
        """`fedgrpc.sim.models.train_step` (AdamW, global-norm clip)."""
        assert isinstance(model, CharTransformer)  # built by build_model above
        return train_step(model, optimizer, batch, self.defaults.grad_clip_norm)

    def evaluate(self, model: nn.Module, seed: int) -> dict[str, float]:
        """Next-byte validation loss (nats) on `eval_batches` fixed batches."""
        assert isinstance(model, CharTransformer)
        loss = evaluate(
            model, self.splits.validation, self.defaults.batch_size,
            self.defaults.context, self.settings.eval_batches, seed=seed,
        )  # fmt: skip
        return {"val_loss": loss}
