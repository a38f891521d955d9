"""Everything between the training thread and the coordinator's gRPC service.

`boundary.Connection` is the one sync/async boundary (STYLE.md 3.1): the
training thread calls its synchronous methods, and all asyncio and grpc work
runs behind it on one background thread. Behind it, by job:

    channel       the grpc.aio channel (TLS), retrying an unreachable
                  coordinator, and the backoff of re-joins
    join          who we are, whom we trust, the signed Join, what it said
    link          one connected coordinator: channel + credentials + Session
    session       the Session stream: heartbeats out, round events in
    round_tracker what those events say about rounds, and waiting on them
    push, pull    the data RPCs: updates up, the global model down

What to do at a sync point (wait, push, wait, pull, and resuming after a
fault) is round logic and lives outside, in `client.sync` and
`client.reconnect`; secure aggregation plugs in as a round mode
(`client.secure`) through `link.Attach`.
"""

from fedgrpc.client.connection.boundary import Connection

__all__ = ("Connection",)
