"""The digits task: a small BatchNorm CNN on scikit-learn's bundled 8x8 digits.

scikit-learn ships the 1,797 UCI handwritten digits (8x8 pixels, 16 grey
levels, 10 classes) inside the package, so the task needs no download.
A fixed stratified 80/20 split (seed 0, whatever the run's seed) holds out
360 images for validation; the 1,437 training images are what
`--partition` splits, by digit.

The model is deliberately small but has BatchNorm, the layer whose running
statistics (buffers, not parameters) a federation must decide what to do
with: conv3x3(16)-BN-ReLU, conv3x3(32)-BN-ReLU, 2x2 max-pool, linear(10),
~10k parameters. Trained centrally it passes 95 % validation accuracy in
a few hundred Adam steps.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F  # noqa: N812 (torch's own convention)
from torch import nn

from fedgrpc.data import Partition, PartitionSpec, partition_labels
from fedgrpc.errors import ConfigError
from fedgrpc.sim.tasks.base import Batch, Sampler

VALIDATION_FRACTION = 0.2
"""Share of the images held out (stratified), as client/dp_sgd_digits.py does."""
SPLIT_SEED = 0
"""The held-out split never changes with the run's seed: every run, every
method and every partition is scored on the same 360 images."""
BATCH_SIZE = 32
LR = 3e-3
"""Adam's step size: high for a short run of a ~10k-parameter model."""
MIN_CLIENT_SAMPLES = 8
"""Fewest training images a client may get under a skewed partition."""


class DigitsCNN(nn.Module):
    """[B, 1, 8, 8] images in [0, 1] -> [B, 10] logits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False),  # BN's shift is the bias
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),  # [B, 32, 8, 8] -> [B, 32, 4, 4]
        )
        self.head = nn.Linear(32 * 4 * 4, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images."""
        logits: torch.Tensor = self.head(self.features(images).flatten(1))
        return logits


@cache
def load_digits_split() -> tuple[
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor
]:
    """(train_x, train_y, val_x, val_y): images [n, 1, 8, 8] float32 in [0, 1].

    Cached per process: every evaluation and sampler shares one copy.

    Raises:
        ConfigError: scikit-learn is not installed (it holds the data).
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise ConfigError(
            "the digits task needs scikit-learn, which ships the 8x8 digits: "
            "pip install 'fedgrpc[digits]'"
        ) from None
    data = load_digits()
    images = torch.tensor(data.data / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    labels = torch.tensor(data.target, dtype=torch.long)
    train_x, val_x, train_y, val_y = train_test_split(
        images, labels, test_size=VALIDATION_FRACTION, random_state=SPLIT_SEED,
        stratify=labels,
    )  # fmt: skip
    return train_x, train_y, val_x, val_y


class DigitsTask:
    """`Task` for the digits CNN; label = the digit."""

    batch_size = BATCH_SIZE

    def __init__(self) -> None:
        self.train_x, self.train_y, self.val_x, self.val_y = load_digits_split()

    def build_model(self, seed: int) -> nn.Module:
        """The default torch init under `seed`, without touching the caller's RNG."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return DigitsCNN()

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """Adam over the trainable parameters (no decay: the run is short)."""
        return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], LR)

    def partition(self, num_clients: int, spec: PartitionSpec, seed: int) -> Partition:
        """The training images split by digit (`fedgrpc.data.partition_labels`)."""
        return partition_labels(
            self.train_y.numpy(), num_clients, spec, seed=seed,
            min_size=MIN_CLIENT_SAMPLES, label_names=[str(d) for d in range(10)],
        )  # fmt: skip

    def sampler(self, partition: Partition, client: int) -> Sampler:
        """Uniform batches, with replacement, from the client's images."""
        mine = torch.from_numpy(partition.indices(client))

        def sample(generator: torch.Generator) -> Batch:
            pick = mine[torch.randint(len(mine), (BATCH_SIZE,), generator=generator)]
            return self.train_x[pick], self.train_y[pick]

        return sample

    def train_step(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch
    ) -> torch.Tensor:
        """Cross-entropy, backward, one optimizer step; the detached loss."""
        model.train()
        images, labels = batch
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        optimizer.step()
        return loss.detach()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, seed: int) -> dict[str, float]:
        """Loss (nats) and accuracy on all 360 held-out images (`seed` unused)."""
        was_training = model.training
        model.eval()  # BatchNorm uses its running statistics
        try:
            logits = model(self.val_x)
        finally:
            model.train(was_training)
        return {
            "val_loss": float(F.cross_entropy(logits, self.val_y)),
            "val_accuracy": float((logits.argmax(dim=1) == self.val_y).float().mean()),
        }
