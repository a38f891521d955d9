"""Partitioners: which client gets which sample, reproducible by seed.

Every partitioner maps a 1-D array of integer labels (one per sample) to a
client per sample; `Partition` then holds each client's sample indices and
its label counts. All of it is vectorised numpy: one draw of the
Dirichlet proportions per attempt and one comparison table, never a
Python loop over samples.

* IID: a seeded permutation cut into `num_clients` near-equal slices.
* Dirichlet label skew (Hsu, Qi and Brown 2019, "Measuring the Effects of
  Non-Identical Data Distribution for Federated Visual Classification",
  sec. 3): for each label k, the clients' shares p_k ~ Dir(alpha 1_N), and
  label k's samples (in a seeded random order) are cut at
  floor(cumsum(p_k) · n_k), as NIID-Bench (Li et al. 2022, "Federated
  Learning on Non-IID Data Silos: An Experimental Study", sec. 4.1) does.
* Quantity skew (NIID-Bench, sec. 4.3): the clients' shares of all samples
  q ~ Dir(alpha 1_N), the samples (any label) in a seeded random order cut at
  floor(cumsum(q) · n). Dirichlet rather than a power law, so one alpha means
  "how concentrated" in both skews and alpha -> ∞ is IID in both.

A small alpha can leave a client (nearly) empty. Like the common
implementations (NIID-Bench, FedLab), the partitioner redraws until every
client holds at least `min_size` samples, at most `max_attempts` times,
and then refuses with a message saying what to change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedgrpc.data.spec import PartitionSpec
from fedgrpc.errors import ConfigError

IntArray = npt.NDArray[np.int64]
MAX_ATTEMPTS = 1000
"""Redraws of the Dirichlet proportions before giving up on `min_size`: at
alpha 0.1 over 10 labels and 4 clients about 1 draw in 3 leaves a client
empty, so 1000 fail only when the request is all but impossible."""


@dataclass(frozen=True, slots=True, eq=False)
class Partition:
    """The split: each client's sample indices and its label counts.

    `eq=False`: arrays have no boolean equality; compare `assignment`.
    """

    spec: PartitionSpec
    assignment: IntArray
    """Client of each sample, shape [n], values 0..num_clients-1."""
    labels: IntArray
    """Label of each sample, shape [n], values 0..len(label_names)-1."""
    label_names: tuple[str, ...]
    """Display name of each label (the table's and the SVG's columns)."""
    num_clients: int
    attempts: int = 1
    """Dirichlet draws it took to meet `min_size` (1 for iid)."""

    @property
    def counts(self) -> IntArray:
        """Samples per (client, label), shape [num_clients, num_labels]."""
        k = len(self.label_names)
        # One bincount over the flattened (client, label) pair index.
        flat = np.bincount(
            self.assignment * k + self.labels, minlength=self.num_clients * k
        )
        return flat.reshape(self.num_clients, k).astype(np.int64)

    @property
    def sizes(self) -> IntArray:
        """Samples per client, shape [num_clients]."""
        return np.bincount(self.assignment, minlength=self.num_clients).astype(np.int64)

    def indices(self, client: int) -> IntArray:
        """Client `client`'s sample indices, ascending (so data order is stable).

        Raises:
            ConfigError: `client` outside 0..num_clients-1.
        """
        if not 0 <= client < self.num_clients:
            raise ConfigError(
                f"client={client!r} is invalid: expected 0..{self.num_clients - 1}"
            )
        return np.flatnonzero(self.assignment == client).astype(np.int64)

    def label_entropy(self) -> npt.NDArray[np.float64]:
        """Entropy of each client's label mix in nats, shape [num_clients].

        H_i = -Σ_k p_ik ln p_ik with p_ik = counts_ik / size_i (0 ln 0 = 0):
        ln(num_labels) for a uniform mix, 0 for a single-label client.
        """
        counts = self.counts.astype(np.float64)
        shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
        logs = np.log(np.where(shares > 0, shares, 1.0))  # 0 ln 0 = 0
        entropy: npt.NDArray[np.float64] = -(shares * logs).sum(axis=1)
        return entropy


def partition_labels(
    labels: Sequence[int] | npt.NDArray[np.integer],
    num_clients: int,
    spec: PartitionSpec,
    *,
    seed: int,
    min_size: int = 1,
    label_names: Sequence[str] | None = None,
) -> Partition:
    """Split the samples whose labels are `labels` across `num_clients` clients.

    Same arguments, same split, on every machine and in every process
    (numpy's PCG64 seeded with `seed`): a simulated client recomputes
    the whole partition and keeps its own slice, no message needed.

    Args:
        labels: One integer label >= 0 per sample.
        num_clients: Clients to split across (>= 1).
        spec: The partition kind and alpha (`parse_partition`).
        seed: Seeds the permutation and the Dirichlet draws.
        min_size: Fewest samples any client may get (Dirichlet kinds redraw
            until met, up to `MAX_ATTEMPTS`; iid always meets it if possible).
        label_names: Display names, one per label value (default: "0", "1", ...).

    Raises:
        ConfigError: bad arguments, or `min_size` not met after `MAX_ATTEMPTS`
            draws; each message names the value and what to change.
    """
    array = _check(labels, num_clients, min_size)
    names = _names(array, label_names)
    rng = np.random.default_rng(seed)
    if spec.kind == "iid":
        even = np.full(num_clients, 1.0 / num_clients)  # slices differ by <= 1
        assignment, attempts = _cut(rng.permutation(array.size), even), 1
    else:
        assert spec.alpha is not None  # PartitionSpec guarantees it
        assignment, attempts = _redraw(array, num_clients, spec, rng, min_size)
    return Partition(spec, assignment, array, names, num_clients, attempts)


def _check(
    labels: Sequence[int] | npt.NDArray[np.integer], num_clients: int, min_size: int
) -> IntArray:
    array = np.asarray(labels)
    if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
        raise ConfigError(
            f"labels must be a non-empty 1-D integer array, got dtype {array.dtype} "
            f"and shape {list(array.shape)}"
        )
    if array.min() < 0:
        raise ConfigError(f"labels must be >= 0, got {int(array.min())}")
    if num_clients < 1:
        raise ConfigError(f"num_clients={num_clients!r} is invalid: expected >= 1")
    if min_size < 0:
        raise ConfigError(f"min_size={min_size!r} is invalid: expected >= 0")
    if num_clients * min_size > array.size:
        raise ConfigError(
            f"cannot give {num_clients} clients {min_size} samples each from "
            f"{array.size} samples; use fewer clients or a smaller min_size"
        )
    return array.astype(np.int64)


def _names(array: IntArray, label_names: Sequence[str] | None) -> tuple[str, ...]:
    count = int(array.max()) + 1
    if label_names is None:
        return tuple(str(k) for k in range(count))
    if len(label_names) < count:
        raise ConfigError(
            f"label_names has {len(label_names)} names but the labels go up to "
            f"{count - 1}; give one name per label value"
        )
    return tuple(label_names)


def _cut(order: IntArray, shares: npt.NDArray[np.float64]) -> IntArray:
    """Client per sample: `order` (a permutation) cut at floor(cumsum(shares) · n).

    Sample order[r] goes to the first client j with r < bound_j: the client
    is the number of bounds at or below r.
    """
    n = order.size
    bounds = np.floor(np.cumsum(shares) * n).astype(np.int64)
    bounds[-1] = n  # cumsum may end at 0.9999999: the last client takes the rest
    # [n] ranks vs [N] bounds -> client index by binary search, no [n, N] table.
    clients = np.searchsorted(bounds, np.arange(n), side="right")
    assignment = np.empty(n, dtype=np.int64)
    assignment[order] = clients
    return assignment


def _draw(
    labels: IntArray, num_clients: int, spec: PartitionSpec, rng: np.random.Generator
) -> IntArray:
    """One Dirichlet draw of the client per sample (no size guarantee)."""
    alpha = np.full(num_clients, spec.alpha)
    if spec.kind == "quantity":
        return _cut(rng.permutation(labels.size), rng.dirichlet(alpha))
    num_labels = int(labels.max()) + 1
    shares = rng.dirichlet(alpha, size=num_labels)  # [K, N]: row k is p_k
    # Samples grouped by label, each label's samples in a random order.
    order = np.lexsort((rng.random(labels.size), labels))
    per_label = np.bincount(labels, minlength=num_labels)  # n_k
    starts = np.concatenate(([0], np.cumsum(per_label)[:-1]))
    sorted_labels = labels[order]
    rank = np.arange(labels.size) - starts[sorted_labels]  # r: rank within label
    # bound_kj = floor(cumsum_j(p_k) · n_k), the last bound of each label = n_k.
    bounds = np.floor(np.cumsum(shares, axis=1) * per_label[:, None]).astype(np.int64)
    bounds[:, -1] = per_label
    # Client = number of label-k bounds at or below r: [n, N] comparisons.
    clients = (rank[:, None] >= bounds[sorted_labels]).sum(axis=1)
    assignment = np.empty(labels.size, dtype=np.int64)
    assignment[order] = clients
    return assignment


def _redraw(
    labels: IntArray,
    num_clients: int,
    spec: PartitionSpec,
    rng: np.random.Generator,
    min_size: int,
) -> tuple[IntArray, int]:
    """Draw until every client holds >= `min_size` samples; (assignment, attempts)."""
    smallest = 0
    for attempt in range(1, MAX_ATTEMPTS + 1):
        assignment = _draw(labels, num_clients, spec, rng)
        smallest = int(np.bincount(assignment, minlength=num_clients).min())
        if smallest >= min_size:
            return assignment, attempt
    raise ConfigError(
        f"partition {spec}: no draw in {MAX_ATTEMPTS} gave each of {num_clients} "
        f"clients >= {min_size} of {labels.size} samples (the last gave one "
        f"client {smallest}); raise alpha, use fewer clients or lower min_size"
    )
