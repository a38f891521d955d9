"""Domain types every layer shares, with no protobuf and no gRPC below them.

The round engine, the strategy stages and the client's training side speak in
these types; `fedgrpc.wire` translates them to and from `fedgrpc.v1` messages.
Keeping them here (not in `wire/`) is what lets the engine be imported and
tested without loading a single `_pb2` module.

* `model_spec`: which tensors a federation carries and their flat layouts.
* `chunks`: chunk sizes, cutting buffers into chunks, checking chunk order.
* `requests`: a validated Join request and update header.
* `codecs`: codec configs (`Dense`, `TopK`) and their spec strings.
"""
