"""`fedgrpc simulate`: a small model and a corpus every machine already has.

The simulator trains a byte-level transformer (`fedgrpc.sim.models`) on the
Python standard library's own sources (`fedgrpc.sim.corpus`), so a federation
of client processes can be exercised end to end with nothing to download.

`--task digits` trains a small BatchNorm CNN on scikit-learn's bundled 8x8
digits instead; `tasks` holds both workloads behind one interface, and
`--partition` splits either task's data across clients non-IID
(`fedgrpc.data`).

`--attack` makes some of those clients Byzantine: `attack_spec` (the flag's
grammar and the seeded choice of attackers), `attacks` (what they send),
`poison` (what they train on), `collusion` (how ALIE and IPM attackers share
their honest updates). `summary` and `report` are what the run prints.

`--speeds` and `--crash-rate` make clients slow and mortal: `pace` (the
slowdown and the compute ledger behind goodput), `churn` (the seeded crash
draws and the flags' checks). `launcher` starts the run, `fleet` the client
processes (and restarts them), `monitor` watches them while they train.
"""

DEFAULT_CORPUS_BYTES = 8_000_000
"""Bytes of stdlib source `fedgrpc simulate` trains on unless told otherwise.

~8 MB, nearly all of a CPython 3.11 standard library after the skips in
`corpus`: a 1.8 MB shard per client at 4 clients, so the ~2M tokens a client
samples in 1000 steps of 32 x 64 cover its shard about once. Reading it takes
~40 ms. It lives here, not in `corpus`, so the CLI can show it in --help
without importing torch (which costs every `fedgrpc` command ~1.5 s)."""
