"""Aggregation trees: a leaf coordinator presenting its group to a root.

`RootLink` is the `rounds.upstream.Upstream` the composer plugs into a
leaf's `GlobalModel` when `upstream` is set. The one coordinator package
that reaches the client library (tests/unit/test_layering.py): a leaf IS
a client of its root, so it speaks the protocol through the same code as
every client, never through a second implementation of it.
"""

from fedgrpc.coordinator.tree.root_link import RootLink

__all__ = ("RootLink",)
