"""The raw loopback gRPC ceiling bench/round_latency.py rates rounds against.

Not a benchmark itself: a grpc.aio server that only counts the bytes of a
client-streaming call of bare 1 MiB messages (the coordinator's message
limits), a client in its own spawned process, and the ratios of a measured
case to that rate. The rate of this shared 2-core machine swings by a
third within minutes, so round_latency measures it around every case.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import grpc
from _util import CTX, MB, READY_TIMEOUT_S, log, stop_all

from fedgrpc.domain.chunks import DEFAULT_CHUNK_BYTES

RAW_METHOD = "/fedgrpc.bench.v1.RawSink/Push"
RAW_MESSAGES = 400


def _max_message_bytes() -> int:
    from fedgrpc.config import CoordinatorConfig

    return CoordinatorConfig(seed_from_first_client=True).max_message_bytes


async def _count_bytes(requests: Any, context: Any) -> bytes:
    total = 0
    async for message in requests:
        total += len(message)
    return total.to_bytes(8, "little")


async def _serve_raw(port_queue: Any) -> None:
    limit = _max_message_bytes()
    # The coordinator's own limits (see coordinator.server.server_options).
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),
        ]
    )
    # No (de)serializers: grpc hands the handler the raw bytes (identity).
    handler: Any = grpc.stream_unary_rpc_method_handler(_count_bytes)
    service, method = RAW_METHOD.strip("/").split("/")
    generic = grpc.method_handlers_generic_handler(service, {method: handler})
    server.add_generic_rpc_handlers((generic,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_queue.put(port)
    await server.wait_for_termination()


def _raw_server_main(port_queue: Any) -> None:
    asyncio.run(_serve_raw(port_queue))


async def _stream_raw(address: str, repeats: int) -> list[float]:
    options = [("grpc.max_send_message_length", _max_message_bytes())]
    payload = bytes(DEFAULT_CHUNK_BYTES)

    async def messages() -> Any:
        for _ in range(RAW_MESSAGES):
            yield payload

    rates: list[float] = []
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        push: Any = channel.stream_unary(RAW_METHOD)
        for _ in range(repeats + 1):  # the first stream is a warm-up
            started = time.perf_counter()
            reply = await push(messages(), timeout=120)
            seconds = time.perf_counter() - started
            if int.from_bytes(reply, "little") != RAW_MESSAGES * len(payload):
                raise RuntimeError("raw sink counted the wrong number of bytes")
            rates.append(RAW_MESSAGES * len(payload) / seconds / MB)
    return rates[1:]


def _raw_client_main(address: str, repeats: int, out: Any) -> None:
    out.put(asyncio.run(_stream_raw(address, repeats)))


def measure_raw_grpc_mb_s(repeats: int = 3) -> tuple[float, list[float]]:
    """Client-streaming MB/s of bare 1 MiB messages over loopback: (median, all).

    Server and client each run in their own spawned process, as the
    coordinator and its clients do.
    """
    ports, rates = CTX.Queue(), CTX.Queue()
    procs = [CTX.Process(target=_raw_server_main, args=(ports,), daemon=True)]
    try:
        procs[0].start()
        address = f"127.0.0.1:{ports.get(timeout=READY_TIMEOUT_S)}"
        client = CTX.Process(target=_raw_client_main, args=(address, repeats, rates))
        procs.append(client)
        client.start()
        measured: list[float] = rates.get(timeout=60 + 60 * repeats)
    finally:
        stop_all(procs)
    return statistics.median(measured), measured


def measure_raw() -> list[float]:
    """One measurement of the raw gRPC ceiling (3 streams, after a warm-up)."""
    _, rates = measure_raw_grpc_mb_s()
    log("round_latency", f"raw gRPC MB/s: {[round(r) for r in rates]}")
    return rates


def with_raw_ratios(case: dict[str, Any], around: list[float]) -> dict[str, Any]:
    """`case` rated against the median of the raw rates measured `around` it."""
    raw_mb_s = statistics.median(around)
    model_bytes = case["model_mb"] * MB
    limit_s = raw_limit_s(case["clients"], model_bytes, raw_mb_s)
    return case | {
        "raw_grpc_mb_s": raw_mb_s,
        "raw_grpc_mb_s_around": around,
        "ingest_over_raw": case["ingest_mb_s"] / raw_mb_s,
        "round_over_raw_limit": case["round_s_median"] / limit_s,
    }


def raw_limit_s(clients: int, model_bytes: float, raw_mb_s: float) -> float:
    """Seconds a dense round's bytes take at the raw gRPC rate.

    Every client pulls the model and pushes an update of the model's size:
    2 x clients x model bytes cross the wire, one stream after another at
    best (the raw rate is one stream's, and the machine's cores are shared).
    """
    return 2 * clients * model_bytes / MB / raw_mb_s
