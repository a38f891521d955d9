"""`LocalRun`'s buffers one streaming fragment at a time.

Streaming DiLoCo (Douillard et al. 2025, arXiv 2501.18512) syncs a
coordinate range [c0, c1) of the flat model while the rest keeps training.
These functions do to that range what `LocalRun.pseudo_gradient` and
`LocalRun.load` do to the whole vector, touching only the tensors that
intersect it (a loop over tensors, never elements): a fragment sync costs
O(n/P), not O(n).

The merge is the paper's equation (Algorithm 1, "merge"):

    θ_local[f] ← alpha·θ_local[f] + (1 - alpha)·θ_global[f]

where θ_local[f] has trained τ more steps since its pseudo-gradient left;
the snapshot (the next pseudo-gradient's base) becomes θ_global[f].
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from fedgrpc.client.weights import LocalRun
from fedgrpc.domain.fragments import Fragment
from fedgrpc.errors import InvalidUpdateError
from fedgrpc.wire.tensors import unpack_native


def _pieces(
    local: LocalRun, fragment: Fragment
) -> Iterator[tuple[int, torch.Tensor, int, int]]:
    """(tensor index, the tensor, lo, hi): its elements [lo, hi) in the fragment."""
    c0, c1 = fragment.coord_start, fragment.coord_stop
    for i, slot in enumerate(local.spec.slots):
        start, stop = slot.coord_offset, slot.coord_offset + slot.spec.numel
        if stop <= c0 or start >= c1:
            continue
        yield i, local.params[i], max(c0, start) - start, min(c1, stop) - start


def fragment_pseudo_gradient(local: LocalRun, fragment: Fragment) -> torch.Tensor:
    """`snapshot - local` over the fragment, in `local.delta`'s slice (a view).

    Raises:
        InvalidUpdateError: NaN or Inf (local training diverged; nothing sent).
    """
    c0, c1 = fragment.coord_start, fragment.coord_stop
    out = local.delta[c0:c1]
    for i, tensor, lo, hi in _pieces(local, fragment):
        at = local.spec.slots[i].coord_offset + lo - c0
        piece = out[at : at + hi - lo]
        if tensor.is_floating_point():
            piece.copy_(tensor.detach().reshape(-1)[lo:hi])
            piece.sub_(local.snapshot[c0 + at : c0 + at + hi - lo]).neg_()
        else:
            piece.zero_()  # counters never move the global model
    if not bool(torch.isfinite(out.sum())):
        raise InvalidUpdateError(
            f"the pseudo-gradient of fragment {fragment.index} contains NaN or Inf: "
            "local training diverged (check the learning rate and the loss); "
            "nothing was sent"
        )
    return out


def merge_fragment(local: LocalRun, fragment: Fragment, alpha: float) -> None:
    """Mix the pulled fragment (in `local.downlink`) into the model; rebase it.

    θ[f] ← alpha·θ[f] + (1 - alpha)·g[f], and snapshot[f] ← g[f] as the model holds
    it (cast to the model's dtype and back, so a bfloat16 model does not
    send its rounding back as a change). alpha = 0 loads g[f] as is.
    """
    c0 = fragment.coord_start
    views = unpack_native(local.downlink, local.spec)
    with torch.no_grad():
        for i, tensor, lo, hi in _pieces(local, fragment):
            if not tensor.is_floating_point():
                continue  # a counter keeps counting
            pulled = views[i].reshape(-1)[lo:hi]
            flat = tensor.data.view(-1) if tensor.is_contiguous() else None
            target = flat[lo:hi] if flat is not None else None
            mixed = pulled.to(tensor.device, tensor.dtype)
            if alpha:
                current = tensor.data.reshape(-1)[lo:hi]
                mixed = current * alpha + mixed * (1 - alpha)
            if target is not None:
                target.copy_(mixed)
            else:  # a non-contiguous parameter: write it back whole
                whole = tensor.data.reshape(-1).clone()
                whole[lo:hi] = mixed
                tensor.data.copy_(whole.view_as(tensor))
            at = c0 + local.spec.slots[i].coord_offset + lo - c0
            local.snapshot[at : at + hi - lo].copy_(
                pulled.to(tensor.dtype).to(torch.float32)
            )


def rebase_fragment(local: LocalRun, fragment: Fragment) -> None:
    """snapshot[f] ← the local weights when the fragment left (snapshot - Δ).

    After a round that did not apply a compressed update, its blocks went
    back into the error-feedback residual; the next pseudo-gradient must
    not count them again. The pushed Δ is still in `local.delta`'s slice
    (nothing else writes there until the next sync of that fragment).
    """
    c0, c1 = fragment.coord_start, fragment.coord_stop
    local.snapshot[c0:c1].sub_(local.delta[c0:c1])
