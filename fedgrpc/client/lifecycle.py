"""A client's start and end outside `DiLoCoClient`: the weak attach and the leave.

Both must work without a strong reference to the client, so that a client
dropped without `close()` is still collected, leaves the coordinator and
stops its thread (`weakref.finalize`).
"""

from __future__ import annotations

import weakref
from typing import Protocol

from fedgrpc.client.connection import Connection
from fedgrpc.client.connection.join import Federation
from fedgrpc.client.connection.link import Attach, CoordinatorLink
from fedgrpc.client.connection.session import SessionEvents
from fedgrpc.client.weights import LocalRun


class Attaching(Protocol):
    """`DiLoCoClient` as the attach callback sees it (no import cycle)."""

    def _attach(
        self, link: CoordinatorLink, federation: Federation
    ) -> SessionEvents | None: ...


def weak_attach(client: weakref.ref[Attaching]) -> Attach:
    """`DiLoCoClient._attach` through a weak reference.

    The connection keeps its `attach` callback for every re-join; a bound
    method would keep the client alive from its own connection, and a client
    dropped without `close()` would then never be collected nor leave.
    """

    def attach(link: CoordinatorLink, federation: Federation) -> SessionEvents | None:
        owner = client()
        return None if owner is None else owner._attach(link, federation)

    return attach


def leave(connection: Connection, local: LocalRun) -> None:
    """Leave the session (final with a throwaway key), stop the loop, unhook FedProx.

    Runs once: from `close()`, or when an unclosed client is collected, or
    at interpreter exit. It must not hold the client itself (weakref.finalize).
    """
    try:
        connection.close()
    finally:
        local.close()
