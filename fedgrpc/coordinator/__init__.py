"""The coordinator: a gRPC daemon around a plain-Python round state machine.

`rounds` and `registry` know nothing of gRPC or asyncio; `runtime` adds the
asyncio waiting and fan-out; `servicer` and `admin` translate messages;
`server` builds and runs the grpc.aio server.
"""
