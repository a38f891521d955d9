"""`fedgrpc simulate`: a small model and a corpus every machine already has.

The simulator trains a byte-level transformer (`fedgrpc.sim.models`) on the
Python standard library's own sources (`fedgrpc.sim.corpus`), so a federation
of client processes can be exercised end to end with nothing to download.
"""
