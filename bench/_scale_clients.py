"""Client processes for bench/clients_scale.py: many light clients per process.

Not a benchmark itself (see clients_scale.py). Each spawned child runs its
share of the clients as asyncio tasks over one grpc.aio channel, each doing
the real protocol with fedgrpc's own signing code: challenge + signed Join,
a Session stream kept open with heartbeats, one signed update for the first
round after seeding, then waiting for that round's RoundClosed.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from _signing_clients import _frames, _join, _spec

from fedgrpc._proto.v1 import admin_pb2, admin_pb2_grpc, coordinator_pb2
from fedgrpc.crypto.keys import PrivateKey
from fedgrpc.wire.frames import serialize_or_pass

PB = coordinator_pb2
SERVICE = "/fedgrpc.v1.CoordinatorService/"
HEARTBEAT_S = 5.0
JOIN_CONCURRENCY = 32
"""Joins in flight per process (each is two RPCs and one Ed25519 sign)."""


@dataclass
class Client:
    """One light client: its key, join reply and what it saw."""

    name: str
    key: PrivateKey = field(default_factory=PrivateKey.generate)
    joined: PB.JoinResponse | None = None
    join_started: float = 0.0
    join_done: float = 0.0
    round_id: int = 0
    started: float | None = None
    pushed: float | None = None
    closed: float | None = None
    outcome: int = 0
    num_updates: int = 0
    leave: asyncio.Event = field(default_factory=asyncio.Event)


class Process:
    """The clients of one process and their shared channel."""

    def __init__(self, address: str, names: list[str], coords: int) -> None:
        self.channel = grpc.aio.insecure_channel(
            address, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        self.clients = [Client(name) for name in names]
        self.spec = _spec(coords)
        self.values = np.full(coords, 1e-3, "<f4")
        self.admin = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.status: dict[int, asyncio.Future[admin_pb2.GetStatusResponse]] = {}
        self.session = self.channel.stream_stream(
            SERVICE + "Session",
            request_serializer=PB.SessionRequest.SerializeToString,
            response_deserializer=PB.SessionResponse.FromString,
        )
        self.push_rpc = self.channel.stream_unary(
            SERVICE + "PushUpdate",
            request_serializer=serialize_or_pass,
            response_deserializer=PB.PushUpdateResponse.FromString,
        )
        self.streams: list[Any] = []

    async def join_all(self) -> None:
        gate = asyncio.Semaphore(JOIN_CONCURRENCY)

        async def one(client: Client) -> None:
            async with gate:
                client.join_started = time.time()
                client.joined = await _join(
                    self.channel, self.spec, client.key, client.name
                )
                client.join_done = time.time()

        await asyncio.gather(*(one(c) for c in self.clients))

    async def round_status(self, round_id: int) -> admin_pb2.GetStatusResponse:
        """GetStatus once per round for the whole process (nonce, base digest)."""
        if round_id not in self.status:
            future: asyncio.Future[admin_pb2.GetStatusResponse] = (
                asyncio.get_running_loop().create_future()
            )
            self.status[round_id] = future
            try:
                reply = await self.admin.GetStatus(
                    admin_pb2.GetStatusRequest(), timeout=60
                )
                future.set_result(reply)
            except BaseException as exc:
                future.set_exception(exc)
        return await self.status[round_id]

    async def push(self, client: Client, values: np.ndarray, round_id: int) -> None:
        assert client.joined is not None
        status = await self.round_status(round_id)
        if round_id and status.round_id != round_id:
            raise RuntimeError(f"status round {status.round_id} != {round_id}")
        frames = _frames(client.joined, client.key, status, values, True)

        async def messages() -> Any:
            for frame in frames:
                yield frame

        await self.push_rpc(messages(), timeout=600)
        client.pushed = time.time()

    async def seed(self) -> None:
        """Client 0 seeds the model (round 0, initial weights)."""
        await self.push(self.clients[0], np.zeros_like(self.values), 0)

    def open_sessions(self) -> None:
        for client in self.clients:
            self.streams.append(asyncio.ensure_future(self.run_session(client)))

    async def run_session(self, client: Client) -> None:
        """Session stream: push for the first round after seeding, await its close."""
        assert client.joined is not None
        joined = client.joined

        async def requests() -> Any:
            yield PB.SessionRequest(
                open=PB.SessionOpen(
                    client_id=joined.client_id, session_token=joined.session_token
                )
            )
            while not client.leave.is_set():
                try:
                    await asyncio.wait_for(client.leave.wait(), HEARTBEAT_S)
                except TimeoutError:
                    beat = PB.Heartbeat(sent_unix_s=time.time())
                    yield PB.SessionRequest(heartbeat=beat)
            yield PB.SessionRequest(leave=PB.SessionLeave(reason="bench done"))

        call = self.session(requests())
        push: asyncio.Task[None] | None = None
        async for event in call:
            push = self.on_event(client, event, push)
            if push is not None and client.leave.is_set():
                await push  # its round closed: its push has returned too
                break
            if event.WhichOneof("event") == "shutdown":
                break
        call.cancel()
        if push is not None and not push.done():
            push.cancel()

    def on_event(
        self, client: Client, event: PB.SessionResponse, push: asyncio.Task[None] | None
    ) -> asyncio.Task[None] | None:
        """Start the push on round 1's RoundStarted; note its RoundClosed."""
        kind = event.WhichOneof("event")
        if kind == "round_started" and event.round_started.round_id >= 1 and not push:
            client.round_id = event.round_started.round_id
            client.started = time.time()
            return asyncio.ensure_future(
                self.push(client, self.values, client.round_id)
            )
        closed = event.round_closed
        if kind == "round_closed" and push and closed.round_id == client.round_id:
            client.closed = time.time()
            client.outcome, client.num_updates = closed.outcome, closed.num_updates
            client.leave.set()
        return push

    def report(self) -> list[dict[str, Any]]:
        keys = ("join_started", "join_done", "round_id", "started", "pushed",
                "closed", "outcome", "num_updates")  # fmt: skip
        return [{k: getattr(c, k) for k in keys} for c in self.clients]


async def _run(
    address: str, names: list[str], coords: int, seeder: bool, go: Any, out: Any
) -> dict[str, Any]:
    proc = Process(address, names, coords)
    await proc.join_all()
    proc.open_sessions()
    for stream in proc.streams:
        stream.add_done_callback(lambda task: _report_failure(task, out))
    out.put({"joined": len(names)})
    # The parent sets `go` once every session is open (bounded by its timeout).
    if not await asyncio.to_thread(go.wait, 600):
        raise TimeoutError("no go from the parent")
    if seeder:
        await proc.seed()
    await asyncio.gather(*proc.streams)
    await proc.channel.close()
    return {"clients": proc.report()}


def _report_failure(task: asyncio.Future[None], out: Any) -> None:
    """A session that died reports at once: the parent must not wait for it.

    Until the last session opens, the parent only polls the coordinator's
    count, and the round waits for every client; a failure kept in its task
    until the final gather would look like a hang (issue 6).
    """
    if not task.cancelled() and (exc := task.exception()) is not None:
        out.put({"error": "".join(traceback.format_exception(exc))})


def clients_main(
    address: str, names: list[str], coords: int, seeder: bool, go: Any, out: Any
) -> None:
    """Child process: `names` light clients; reports `joined`, then results."""
    try:
        out.put(asyncio.run(_run(address, names, coords, seeder, go, out)))
    except BaseException:
        out.put({"error": traceback.format_exc()})
