"""Wire framing: model specs, the flat coordinate space, chunking, proto conversion.

On the data path this sits between the model (and later `compress`) and gRPC:
tensors become one flat vector, the vector becomes ~1 MiB chunks, chunks
become protobuf messages, and back. It never imports grpc.
"""
