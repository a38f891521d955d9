"""The gRPC edge: servicers, status mapping and the server that hosts them.

Each RPC is translation only (proto in -> one domain call -> proto out); proto
names stop here. `server` builds and runs the grpc.aio server and is where a
round mode is composed into the runtime. `admin_access` is the one check
every AdminService call passes (an interceptor): who may read status.
"""
