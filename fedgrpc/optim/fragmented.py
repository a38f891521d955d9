"""One outer optimizer per Streaming DiLoCo fragment, behind the usual contract.

Streaming DiLoCo (Douillard et al. 2025, arXiv 2501.18512, Algorithm 1)
applies the outer optimizer to a fragment only when that fragment syncs:
fragment p's momentum sees fragment p's pseudo-gradients, one per H inner
steps, exactly as plain DiLoCo's would. Stepping the whole vector with a
zero gradient outside the fragment would be wrong for every stateful
optimizer (Nesterov's look-ahead moves weights by μ·b even where g = 0,
and Adam's step counts and bias corrections would run P times too fast),
so each fragment owns an independent optimizer over its own slice.

The fragment ranges are the cuts ⌊k·n/P⌋ (`domain.fragments`), computed
from the parameter count at the first step. The state dict is flat, as a
checkpoint stores it: fragment k's entries under the prefix "fragment{k}.".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from fedgrpc.errors import ConfigError, InvalidUpdateError
from fedgrpc.optim.outer import OuterOptimizer, StateDict, check_step_args


class FragmentedOptimizer:
    """P independent outer optimizers, fragment k stepping only its slice."""

    def __init__(self, build: Callable[[], OuterOptimizer], fragments: int) -> None:
        """Build one optimizer per fragment with `build` (called P times).

        Raises:
            ConfigError: fewer than 2 fragments, or `build` returned one
                object twice (an optimizer instance, not a class or factory:
                fragments would share one state).
        """
        if fragments < 2:
            raise ConfigError(f"fragments={fragments}: expected >= 2")
        parts = [build() for _ in range(fragments)]
        if len({id(part) for part in parts}) != fragments:
            raise ConfigError(
                "round_mode = 'streaming' keeps one outer optimizer per fragment; "
                "the outer_optimizer given is an instance shared by all of them: "
                "pass its class (or a factory) instead"
            )
        self.parts: Sequence[OuterOptimizer] = parts

    @property
    def name(self) -> str:
        """The fragments' optimizer's name (a checkpoint checks it)."""
        return self.parts[0].name

    def step_fragment(
        self, index: int, params: torch.Tensor, pseudo_gradient: torch.Tensor
    ) -> None:
        """Fragment `index`'s outer step on its slice `params` (a view, in place)."""
        if not 0 <= index < len(self.parts):
            raise InvalidUpdateError(
                f"fragment {index} does not exist (0..{len(self.parts) - 1})"
            )
        self.parts[index].step(params, pseudo_gradient)

    def step(self, params: torch.Tensor, pseudo_gradient: torch.Tensor) -> None:
        """Every fragment's step at once (the whole vector synced together)."""
        check_step_args(params, pseudo_gradient)
        n, count = params.numel(), len(self.parts)
        for k in range(count):  # P slices, never elements
            start, stop = k * n // count, (k + 1) * n // count
            self.step_fragment(k, params[start:stop], pseudo_gradient[start:stop])

    def state_dict(self) -> StateDict:
        """Each fragment's state under "fragment{k}.", plus the fragment count."""
        state: StateDict = {"fragments": len(self.parts)}
        for k, part in enumerate(self.parts):
            for key, value in part.state_dict().items():
                state[f"fragment{k}.{key}"] = value
        return state

    def load_state_dict(self, state: StateDict) -> None:
        """Restore what `state_dict` returned.

        Raises:
            InvalidUpdateError: written for another fragment count (or by a
                run that was not streaming).
        """
        saved = state.get("fragments")
        if saved != len(self.parts):
            raise InvalidUpdateError(
                f"the outer optimizer state was saved for {saved or 'no'} "
                f"fragments, this run has {len(self.parts)}: resume with the same "
                "round_mode and fragments, or use a new checkpoint_dir"
            )
        for k, part in enumerate(self.parts):
            prefix = f"fragment{k}."
            part.load_state_dict(
                {
                    key.removeprefix(prefix): value
                    for key, value in state.items()
                    if key.startswith(prefix)
                }
            )
