"""Aggregation: fold the round's client updates into one pseudo-gradient.

Between `wire` (decoded updates) and `optim` (the outer step) on the
coordinator. A leaf package: it imports only `errors`, never gRPC.
"""

from fedgrpc.aggregate.mean import StreamingSum

__all__ = ["StreamingSum"]
