"""The local run: the client's model buffers and what it did since the last load.

Three CPU buffers, allocated once per client and reused every round:

* `snapshot`: the global weights the current local run started from, float32
  (4 bytes per parameter);
* `delta`: the pseudo-gradient, float32 (4 bytes per parameter);
* `downlink`: the pulled weights in their native dtypes, uint8
  (`spec.num_bytes`); with FedProx also its w_global (`proximal`), since
  only a pull rewrites it. A pull that fails midway leaves it part old, part
  new version until the next pull succeeds: the term then pulls toward that
  mix of two consecutive global models, which costs no buffer to avoid.

Every operation is one vectorised copy or subtraction per tensor; nothing
loops over elements, and the model's own parameters are updated in place so
optimizers holding references to them keep working. Alongside the buffers it
counts the samples and mean loss since the snapshot, which the next update
reports; all of it resets together when new global weights are loaded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from fedgrpc.client.proximal import ProximalTerm
from fedgrpc.client.tensors import select_tensors
from fedgrpc.config.client import ClientConfig
from fedgrpc.domain.model_spec import ModelSpec
from fedgrpc.errors import InvalidUpdateError
from fedgrpc.wire.tensors import flatten_fp32, load_flat_fp32, unpack_native


class LocalRun:
    """A model's parameters, its three buffers, and the run since the snapshot.

    Not thread-safe: the training thread owns it, between optimizer steps.
    """

    def __init__(
        self, model: torch.nn.Module, config: ClientConfig | None = None
    ) -> None:
        """Describe `model`'s federated tensors and allocate the buffers.

        Which tensors travel follows `config` (`federate`, `buffers`,
        `local_modules`; see `client.tensors`). With `config.proximal_mu` > 0
        the run also installs FedProx's gradient term (`proximal.ProximalTerm`)
        on the federated parameters, anchored at every `load` to the weights
        just loaded: views of `downlink`, so it costs no buffer on a CPU model.

        Raises:
            ConfigError: a parameter is not float16/bfloat16/float32/float64,
                nothing would travel, or a `local_modules` entry matches nothing.
        """
        config = config or ClientConfig()
        self.model = model
        federated = select_tensors(model, config)
        self.spec = federated.spec
        self.params = list(federated.tensors)
        """The federated tensors: parameters, then buffers (live objects)."""
        self.local_names = federated.local
        self.frozen_sha256 = federated.frozen_digest()
        """Join's check that every client starts from the same frozen base."""
        """`state_dict` names that never travel (frozen, local, skipped)."""
        proximal_mu = config.proximal_mu
        self.snapshot = torch.empty(self.spec.num_coordinates, dtype=torch.float32)
        self.delta = torch.empty(self.spec.num_coordinates, dtype=torch.float32)
        self.downlink = torch.empty(self.spec.num_bytes, dtype=torch.uint8)
        self.downlink_version: int | None = None
        """The model version `downlink` holds intact (None: none, or unsure):
        a pull names it, so the coordinator may send compressed steps from it."""
        self._casts = False
        """Pulled dtypes differ from the model's (`adopt_wire_spec`)."""
        self._counters = [
            (slot.coord_offset, slot.coord_offset + slot.spec.numel)
            for slot in self.spec.slots
            if not slot.spec.dtype.is_float
        ]
        """Coordinates of integer buffers (`num_batches_tracked`): counters of
        this client's own batches. They travel so that the federation's model
        (and its export) has every buffer, but with a zero pseudo-gradient, and
        a load does not overwrite them: an average of counters means nothing,
        and a constant H in every update would dominate the norms that the
        divergence guard, norm bounds and DP clipping measure."""
        self.base_version = 0
        """Global model version of `snapshot`."""
        self.samples = 0
        """Training samples since the snapshot (weights the coordinator's mean)."""
        self.loss_mean = 0.0
        """Mean of the losses reported since the snapshot (0 if none were)."""
        self._losses = 0
        self._num_parameters = len(federated.parameters)
        self.proximal = (
            ProximalTerm(federated.parameters, proximal_mu) if proximal_mu else None
        )
        """FedProx's term, if `proximal_mu` > 0; removed by `close`."""

    def adopt_wire_spec(self, spec: ModelSpec) -> None:
        """Pull and export in the federation's dtypes (`spec`), cast on load.

        Join accepted this model into a federation whose spec differs only
        in float dtypes (`ModelSpec.casts_to`): a bfloat16 model in a
        float32 federation. Pulled bytes follow `spec`; each `load` casts
        them into the model, and the float32 pseudo-gradient is applied to
        the coordinator's float32 master as usual: the same split as mixed
        precision training's low-precision working copy and float32 master.
        """
        if spec == self.spec:
            return
        self.spec.check_same_as(spec, allow_casts=True)
        self.spec = spec
        self.downlink = torch.empty(spec.num_bytes, dtype=torch.uint8)
        self.downlink_version = None
        self._casts = True

    def record(self, loss: float | None, num_samples: int) -> None:
        """Count one inner step's samples and fold its loss into the mean."""
        self.samples += num_samples
        if loss is not None:
            self._losses += 1
            self.loss_mean += (loss - self.loss_mean) / self._losses

    def local_weights(self) -> torch.Tensor:
        """The local weights as one float32 vector, written into `snapshot`.

        For seeding the federation; the load that follows overwrites it.
        """
        return flatten_fp32(self.params, self.spec, out=self.snapshot)

    def pseudo_gradient(self) -> torch.Tensor:
        """`snapshot - local weights` in `delta` (DiLoCo's sign), in place.

        The outer optimizer subtracts the mean of these like a gradient, so a
        client that moved its weights up sends a negative pseudo-gradient.
        """
        flatten_fp32(self.params, self.spec, out=self.delta)
        delta = torch.sub(self.snapshot, self.delta, out=self.delta)
        for start, stop in self._counters:
            delta[start:stop] = 0  # counters never move the global model
        # One reduction instead of a model-sized mask; a finite vector whose sum
        # overflows float32 would need entries near 1e30, garbage anyway.
        if not bool(torch.isfinite(delta.sum())):
            raise InvalidUpdateError(
                "the pseudo-gradient contains NaN or Inf: local training diverged "
                "(check the learning rate and the loss). Nothing was sent: the "
                "coordinator would discard the whole round for every client"
            )
        return delta

    def rebase_on_local(self) -> None:
        """Snapshot := local weights, base version unchanged.

        After a compressed round that delivered nothing, its progress is back
        in the error-feedback residual; rebasing keeps the next
        pseudo-gradient from counting it a second time.
        """
        flatten_fp32(self.params, self.spec, out=self.snapshot)

    def load(self, native: torch.Tensor, version: int) -> None:
        """Copy pulled weights (native-byte layout) into the model and snapshot.

        Each parameter keeps its dtype and device. The snapshot is taken from
        the CPU buffer, not the parameters, so a GPU model costs one
        host-to-device copy and no copy back.
        """
        views = unpack_native(native, self.spec)
        with torch.no_grad():
            for param, view in zip(self.params, views, strict=True):
                if param.is_floating_point():  # a counter keeps counting
                    param.data.copy_(view)
        # Cast on load (a bfloat16 model in a float32 federation): measure the
        # pseudo-gradient from the weights as the model holds them, or the
        # rounding of every load would be sent back as a change each round.
        source = self.params if self._casts else views
        flatten_fp32(source, self.spec, out=self.snapshot)
        if self.proximal is not None:
            # w^t of FedProx: the global weights just loaded. Not the snapshot,
            # which `rebase_on_local` moves to the local weights.
            self.proximal.anchor_to(views[: self._num_parameters])
        self.base_version = version
        self.restart_counts()

    def restart_counts(self) -> None:
        """Samples and mean loss start again: the next update counts from here."""
        self.samples = self._losses = 0
        self.loss_mean = 0.0

    @contextlib.contextmanager
    def holding_global(self) -> Iterator[None]:
        """The model holds the last pulled global weights inside; local ones after.

        Streaming rounds merge fragments into weights that keep training, so
        the model never equals the global one by itself: evaluating the
        federation's model swaps it in (one model-sized float32 copy).
        """
        saved = flatten_fp32(self.params, self.spec)
        views = unpack_native(self.downlink, self.spec)
        with torch.no_grad():
            for param, view in zip(self.params, views, strict=True):
                if param.is_floating_point():
                    param.data.copy_(view)
        try:
            yield
        finally:
            load_flat_fp32(self.params, self.spec, saved)

    def global_state_dict(self) -> dict[str, torch.Tensor]:
        """The last loaded global model as a full `state_dict` (copies, CPU).

        In `model.state_dict()`'s order and dtypes: federated tensors (and
        every alias of a tied one) from the pulled bytes, tensors that never
        travel (frozen, `local_modules`, unaveraged buffers) from the model
        as it is now. So `fresh_model.load_state_dict(sd, strict=True)` works,
        whatever the local training did since the pull.
        """
        pulled = {
            slot.spec.name: view.clone()
            for slot, view in zip(
                self.spec.slots, unpack_native(self.downlink, self.spec), strict=True
            )
        }
        for alias, target in self.spec.aliases:
            pulled[alias] = pulled[target]
        out = {}
        for name, tensor in self.model.state_dict().items():
            if name in pulled:
                out[name] = pulled[name].to(tensor.dtype)
            else:
                out[name] = tensor.detach().to("cpu", copy=True)
        return out

    def close(self) -> None:
        """Remove the FedProx hook, if any: the user's optimizer steps plain again."""
        if self.proximal is not None:
            self.proximal.close()
