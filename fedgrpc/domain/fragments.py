"""Streaming DiLoCo's fragments: P contiguous ranges of the flat parameter vector.

Streaming DiLoCo (Douillard et al. 2025, arXiv 2501.18512, section 2.1)
syncs the model one fragment at a time so that a sync moves 1/P of it.
The paper groups whole layers; here a fragment is a contiguous range of
the flat coordinate space cut at equal sizes (⌊k·n/P⌋ for k = 0..P), so
fragments are equal to within one coordinate whatever the model's tensor
sizes (a model of one big embedding and small layers would otherwise get
one huge fragment). Codecs, sums and the outer optimizer already work on
flat vectors, so a cut inside a tensor costs nothing.

Coordinator and clients compute the same ranges from the federation's
`ModelSpec` and P (announced at Join), and which fragment a round syncs
from its base version (`fragment_of_version`), so nothing about the
layout travels per round.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from fedgrpc.domain.model_spec import ModelSpec


@dataclass(frozen=True, slots=True)
class Fragment:
    """One fragment: its coordinates and its bytes in the native (pull) layout."""

    index: int
    coord_start: int
    coord_stop: int
    byte_start: int
    byte_stop: int

    @property
    def num_coordinates(self) -> int:
        """Coordinates in the fragment (the length of its updates)."""
        return self.coord_stop - self.coord_start

    @property
    def num_bytes(self) -> int:
        """Bytes of the fragment in the model's native dtypes (its pull)."""
        return self.byte_stop - self.byte_start


def fragment_of_version(version: int, fragments: int) -> int:
    """Which fragment the round based on `version` syncs: v mod P.

    A round that is skipped leaves the version, and so the fragment, as it
    was: the retry syncs the same fragment, and no fragment is passed over.
    """
    return version % fragments


def split_fragments(spec: ModelSpec, fragments: int) -> tuple[Fragment, ...]:
    """The `fragments` equal contiguous ranges of `spec`'s coordinates.

    Raises:
        ValueError: fewer coordinates than fragments (a fragment would be
            empty), or fragments < 1.
    """
    n = spec.num_coordinates
    if fragments < 1 or n < fragments:
        raise ValueError(
            f"cannot split a model of {n} parameters into {fragments} fragments: "
            "every fragment needs at least one parameter"
        )
    cuts = [k * n // fragments for k in range(fragments + 1)]
    return tuple(
        Fragment(
            k,
            cuts[k],
            cuts[k + 1],
            byte_of_coordinate(spec, cuts[k]),
            byte_of_coordinate(spec, cuts[k + 1]),
        )
        for k in range(fragments)
    )


def byte_of_coordinate(spec: ModelSpec, coordinate: int) -> int:
    """Byte offset of `coordinate` in the native layout (n maps to num_bytes)."""
    if coordinate >= spec.num_coordinates:
        return spec.num_bytes
    slots = [slot for slot in spec.slots if slot.spec.numel]
    starts = [slot.coord_offset for slot in slots]
    slot = slots[bisect.bisect_right(starts, coordinate) - 1]
    itemsize = slot.spec.dtype.itemsize
    return slot.byte_offset + (coordinate - slot.coord_offset) * itemsize
