"""The gRPC edge: servicers, status mapping and the server that hosts them.

Each RPC is translation only (proto in -> one domain call -> proto out); proto
names stop here. `server` builds and runs the grpc.aio server and is where a
round mode is composed into the runtime.
"""
