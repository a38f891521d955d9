"""`DistributedDiLoCoClient`: a torch.distributed worker that is one DiLoCo client.

A data-parallel worker (DDP under `torchrun --nproc-per-node N`) keeps
identical replicas on its ranks, so one pseudo-gradient speaks for all of
them and the federation should count the worker once. Rank 0 of the group
wraps a `DiLoCoClient`, the only gRPC channel; the other ranks take part in
collectives at join and at the H boundary only, never in between:

1. join: rank 0 joins (seeding or pulling), then broadcasts a small header
   (H, version, or the error that stopped it) and the weights;
2. inner steps: each rank counts its own steps, losses and samples; the
   ranks agree on the boundary without talking because they call `step()`
   equally often (DDP requires that already);
3. boundary: one all-reduce sums samples and losses (what rank 0 reports),
   rank 0 runs the sync point, then broadcasts the header and, only if it
   loaded new weights, the weights: one flat buffer per (device, dtype).

Data path: model -> this (group -> rank 0) -> DiLoCoClient -> wire -> gRPC.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from fedgrpc import errors
from fedgrpc.client.diloco import DiLoCoClient
from fedgrpc.client.proximal import ProximalTerm
from fedgrpc.client.rank_weights import RankWeights
from fedgrpc.client.sync import SyncOutcome
from fedgrpc.compress import CodecConfig
from fedgrpc.config import ClientConfig
from fedgrpc.errors import ConfigError, IncompatibleClientError
from fedgrpc.log import get_logger

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class _Header:
    """What rank 0 tells the group after joining or after a sync point."""

    client_id: str = ""
    inner_steps: int = 0
    model_version: int = 0
    outcome: SyncOutcome | None = None
    loaded: bool = False
    """Rank 0 loaded global weights; the weights broadcast follows."""
    bytes_sent: int = 0
    bytes_received: int = 0
    finished: bool = False
    """The run ended (`max_rounds`); every rank holds the final weights."""
    error: tuple[str, str] | None = None
    """(exception class name, message) when rank 0 failed; nothing follows."""


def _rebuild(error: tuple[str, str]) -> Exception:
    """Rank 0's exception for the other ranks: same fedgrpc class if it has one."""
    name, message = error
    cls = getattr(errors, name, None)
    text = f"rank 0 failed: {message}"
    if isinstance(cls, type) and issubclass(cls, errors.FedGrpcError):
        return cls(text)
    return RuntimeError(f"rank 0 failed with {name}: {message}")


class DistributedDiLoCoClient:
    """`DiLoCoClient` for a torch.distributed data-parallel worker (one client).

    Usage, on every rank after `init_process_group`::

        model = DDP(model)
        with DistributedDiLoCoClient("coord:7070", model) as client:
            for batch in loader:
                loss = loss_fn(model(batch)); loss.backward()
                opt.step(); opt.zero_grad()
                client.step(loss, num_samples=len(batch))

    Contract:

    * Every rank constructs it and calls `step()` equally often, and the
      ranks hold identical replicas (DDP, or anything that all-reduces
      gradients): only rank 0's weights are pushed.
    * The group's timeout must exceed `ClientConfig.round_wait_s` (and a
      join's `connect_timeout_s`): the other ranks wait in a broadcast while
      rank 0 waits for the coordinator.
    * If rank 0 fails (coordinator gone, shutdown, NaN update) it still
      broadcasts the header, so every rank raises the same `FedGrpcError`
      subclass instead of hanging; the client is unusable afterwards.
    * With NCCL, call `torch.cuda.set_device(local_rank)` first: the header
      is a pickled object broadcast on the current device.

    Thread safety: as `DiLoCoClient`, call it from the training thread only.
    """

    def __init__(
        self,
        target: str,
        model: torch.nn.Module,
        inner_steps: int | None = None,
        *,
        compression: CodecConfig | None = None,
        config: ClientConfig | None = None,
        process_group: dist.ProcessGroup | None = None,
    ) -> None:
        """Join on rank 0, then give every rank the global weights (a collective).

        Args:
            target: Coordinator address ("host:port"), used by rank 0 only.
            model: The replica on this rank; a `DistributedDataParallel`
                wrapper is unwrapped, so parameter names match clients that
                do not use DDP. Parameters are overwritten in place.
            inner_steps: H, as for `DiLoCoClient` (None follows the coordinator).
            compression: As for `DiLoCoClient`.
            config: As for `DiLoCoClient`; only rank 0 uses it, except
                `proximal_mu`, which every rank applies to its replica (the
                other ranks anchor FedProx to the weights rank 0 broadcasts).
            process_group: The ranks that form this client (default: the
                world). Its rank 0 talks to the coordinator.

        Raises:
            ConfigError: torch.distributed is not initialised, or this rank
                is not in `process_group`; also anything `DiLoCoClient`
                raises, on every rank.
        """
        if not dist.is_available() or not dist.is_initialized():
            raise ConfigError(
                "DistributedDiLoCoClient needs torch.distributed: call "
                "torch.distributed.init_process_group() first (torchrun sets "
                "the environment it reads)"
            )
        self._group = process_group
        self._rank = dist.get_rank(process_group)
        if self._rank < 0:
            raise ConfigError("this rank is not a member of process_group")
        self._src = (
            0 if process_group is None else dist.get_global_rank(process_group, 0)
        )
        if isinstance(model, DistributedDataParallel):
            model = model.module
        self._weights = RankWeights(model, config)
        self._device = next(iter(model.parameters()), torch.empty(0)).device
        self._client: DiLoCoClient | None = None
        self._header = _Header()
        self._steps = self._rounds_completed = 0
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=self._device)
        self._losses = self._samples = 0
        self._closed = self._failed = False
        self._proximal: ProximalTerm | None = None
        mu = config.proximal_mu if config is not None else 0.0
        if self._rank != 0 and mu > 0:  # rank 0's DiLoCoClient has its own
            self._proximal = ProximalTerm(self._weights.parameters, mu)
        if self._rank == 0:
            self._join(
                lambda: DiLoCoClient(
                    target, model, inner_steps, compression=compression, config=config
                )
            )
        else:
            self._receive()
        log.info(
            "distributed_client_joined",
            client=self._header.client_id,
            rank=self._rank,
            world_size=dist.get_world_size(process_group),
            inner_steps=self._header.inner_steps,
        )

    def _join(self, connect: Callable[[], DiLoCoClient]) -> None:
        """Rank 0: join as a `DiLoCoClient`, then publish what it loaded."""
        try:
            self._client = connect()
            _check_round_mode(self._client)
        except Exception as exc:
            self._fail(exc)
            raise
        try:
            self._publish(self._status(loaded=True))
        except BaseException:
            self._client.close()  # a broken group must not leak the channel
            raise

    def _status(self, loaded: bool) -> _Header:
        client = self._client
        assert client is not None  # rank 0 only, after a successful join
        return _Header(
            client_id=client.client_id,
            inner_steps=client.inner_steps,
            model_version=client.model_version,
            outcome=client.last_round_outcome,
            loaded=loaded,
            bytes_sent=client.bytes_sent,
            bytes_received=client.bytes_received,
            finished=client.finished,
        )

    def step(
        self, loss: float | torch.Tensor | None = None, num_samples: int = 1
    ) -> bool:
        """Count one inner step on this rank; every H-th call syncs the group.

        Call on every rank after each `optimizer.step()`. Between boundaries
        nothing is communicated; a tensor loss is summed on its device, so
        unlike `DiLoCoClient.step` it costs no CUDA synchronisation.

        Args:
            loss: This rank's loss; the coordinator sees the mean over all
                ranks and steps of the round.
            num_samples: This rank's samples in the step; the coordinator
                sees the sum over all ranks.

        Returns:
            True on every rank if this call ran a sync point.

        Raises:
            RuntimeError: the client is closed, or an earlier sync failed.
            FedGrpcError: what rank 0's sync point raised, on every rank.
        """
        if self._closed or self._failed:
            state = "close()" if self._closed else "a failed sync point"
            raise RuntimeError(f"DistributedDiLoCoClient.step() called after {state}")
        if loss is not None:
            self._loss_sum += loss.detach() if isinstance(loss, torch.Tensor) else loss
            self._losses += 1
        self._samples += num_samples
        self._steps += 1
        if self._steps < self._header.inner_steps:
            if self._client is not None:  # keep rank 0's client in step; no sync
                self._client.step(None, num_samples=0)
            return False
        self._steps = 0
        self._sync()
        self._rounds_completed += 1
        return True

    def _sync(self) -> None:
        """The boundary: sum the round's stats, sync on rank 0, share the result."""
        totals = torch.zeros(3, dtype=torch.float64, device=self._device)
        totals[0] = self._loss_sum
        totals[1], totals[2] = self._losses, self._samples
        dist.all_reduce(totals, group=self._group)
        self._loss_sum.zero_()
        self._losses = self._samples = 0
        if self._client is None:
            self._receive()
            return
        loss_sum, losses, samples = totals.tolist()
        received = self._client.bytes_received
        try:
            self._client.step(
                loss_sum / losses if losses else None, num_samples=round(samples)
            )
        except Exception as exc:
            self._fail(exc)
            raise
        # Any pull (applied, stale, or a missed push whose round applied) is
        # counted in bytes_received; skipped rounds keep the local weights.
        self._publish(self._status(self._client.bytes_received != received))

    def _fail(self, exc: Exception) -> None:
        """Rank 0: tell the other ranks to raise `exc` too, instead of waiting."""
        self._failed = True
        self._broadcast_header(_Header(error=(type(exc).__name__, str(exc))))

    def _publish(self, header: _Header) -> None:
        """Rank 0: broadcast the header, then the weights if it loaded any."""
        self._header = self._broadcast_header(header)
        if header.loaded:
            self._broadcast_weights()

    def _receive(self) -> None:
        """Other ranks: take rank 0's header, then its weights if it loaded any."""
        header = self._broadcast_header(None)
        if header.error is not None:
            self._failed = True
            log.warning("rank0_failed", rank=self._rank, error=header.error[0])
            raise _rebuild(header.error)
        self._header = header
        if header.loaded:
            self._broadcast_weights()

    def _broadcast_header(self, header: _Header | None) -> _Header:
        box: list[object] = [header]
        dist.broadcast_object_list(box, src=self._src, group=self._group)
        received = box[0]
        assert isinstance(received, _Header)  # rank 0 only ever sends headers
        return received

    def _broadcast_weights(self) -> None:
        """Rank 0's loaded weights to every rank (`rank_weights.RankWeights`).

        With FedProx, the other ranks keep their received buffers as w^t
        (rank 0 anchors to its own downlink).
        """
        anchors = self._weights.broadcast(self._rank, self._src, self._group)
        if self._proximal is not None:
            self._proximal.anchor_to(anchors)

    def close(self) -> None:
        """Leave the federation (rank 0); no collective, so any rank may call it.

        Idempotent; safe while unwinding from an error on one rank only.
        """
        if self._closed:
            return
        self._closed = True
        if self._proximal is not None:
            self._proximal.close()
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def client_id(self) -> str:
        """Id the coordinator assigned to the worker (the same on every rank)."""
        return self._header.client_id

    @property
    def model_version(self) -> int:
        """Global model version the local weights started from (the base)."""
        return self._header.model_version

    @property
    def inner_steps(self) -> int:
        """H: inner steps per round, as announced by the coordinator."""
        return self._header.inner_steps

    @property
    def finished(self) -> bool:
        """True on every rank once the run ended (`max_rounds`); stop the loop."""
        return self._header.finished

    @property
    def rounds_completed(self) -> int:
        """Sync points this worker has finished (any outcome)."""
        return self._rounds_completed

    @property
    def bytes_sent(self) -> int:
        """Update payload bytes rank 0 pushed (initial weights included)."""
        return self._header.bytes_sent

    @property
    def bytes_received(self) -> int:
        """Model payload bytes rank 0 pulled (the broadcasts are not counted)."""
        return self._header.bytes_received

    @property
    def last_round_outcome(self) -> SyncOutcome | None:
        """How the last sync point ended (see `sync.SyncOutcome`); None before."""
        return self._header.outcome


def _check_round_mode(client: DiLoCoClient) -> None:
    """Refuse round modes whose sync points are not every H steps.

    The group syncs at every H-th step on all ranks at once; a deadline
    round (time-based) or a streaming one (every H/P steps) would sync rank
    0 alone, and the ranks' weights would drift apart.

    Raises:
        IncompatibleClientError: the coordinator runs such a mode (the
            client is closed).
    """
    if client.round_mode in ("deadline", "streaming"):
        client.close()
        raise IncompatibleClientError(
            f"DistributedDiLoCoClient syncs every inner_steps steps on all ranks, "
            f"but the coordinator runs round_mode = {client.round_mode!r}; use one "
            "DiLoCoClient per process, or a sync or buffered_async coordinator"
        )
