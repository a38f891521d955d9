"""A small HTTP CONNECT proxy for tests of clients behind a firewall.

It listens on 127.0.0.1 port 0 on its own thread and event loop, records
every CONNECT target it was asked for, and either tunnels the bytes both
ways (200) or refuses with the status it was built with (403, 407, ...),
after `answer_delay_s` (a proxy far away, or slow to reach its upstream).
That is all a forward proxy does for gRPC: gRPC sends `CONNECT host:port`,
waits for a 2xx, then speaks HTTP/2 (or TLS) through the tunnel.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from http import HTTPStatus

READ_BYTES = 1 << 16
HEADER_LIMIT = 8192


class ConnectProxy:
    """Tunnel (or refuse) CONNECTs; `connects` lists the targets asked for."""

    def __init__(
        self, refuse: HTTPStatus | None = None, answer_delay_s: float = 0.0
    ) -> None:
        self.refuse = refuse
        self.answer_delay_s = answer_delay_s
        self.connects: list[str] = []
        self.authorizations: list[str] = []
        """Proxy-Authorization header of each request ("" when it had none)."""
        self.tunnelled_bytes = 0
        self.upstream = bytearray()
        """Every byte tunnelled towards the coordinator (tests send little)."""
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT`: what ClientConfig.proxy or https_proxy take."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ConnectProxy:
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop
        )
        self._server = started.result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            # Open tunnels: cancelled, so each pipe closes its sockets.
            me = asyncio.current_task()
            tunnels = [t for t in asyncio.all_tasks() if t is not me]
            for task in tunnels:
                task.cancel()
            await asyncio.gather(*tunnels, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.close()
            return
        request, *headers = head.decode().split("\r\n")
        method, target, _version = request.split(" ")
        self.connects.append(f"{method} {target}")
        fields = dict(h.split(": ", 1) for h in headers if ": " in h)
        self.authorizations.append(fields.get("Proxy-Authorization", ""))
        await asyncio.sleep(self.answer_delay_s)  # a distant or busy proxy
        if method != "CONNECT":
            await _answer(writer, HTTPStatus.METHOD_NOT_ALLOWED)
            return
        if self.refuse is not None:
            await _answer(writer, self.refuse)
            return
        host, port = target.rsplit(":", 1)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                host.strip("[]"), int(port)
            )
        except OSError:
            await _answer(writer, HTTPStatus.BAD_GATEWAY)
            return
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await asyncio.gather(
            self._pipe(reader, upstream_writer, self.upstream),
            self._pipe(upstream_reader, writer, None),
            return_exceptions=True,
        )

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        record: bytearray | None,
    ) -> None:
        try:
            while data := await reader.read(READ_BYTES):
                self.tunnelled_bytes += len(data)
                if record is not None:
                    record.extend(data)
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


async def _answer(writer: asyncio.StreamWriter, status: HTTPStatus) -> None:
    writer.write(
        f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Length: 0\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    writer.close()


@contextlib.contextmanager
def connect_proxy(
    refuse: HTTPStatus | None = None, answer_delay_s: float = 0.0
) -> Iterator[ConnectProxy]:
    """A started `ConnectProxy`, stopped on exit."""
    proxy = ConnectProxy(refuse, answer_delay_s).start()
    try:
        yield proxy
    finally:
        proxy.stop()
