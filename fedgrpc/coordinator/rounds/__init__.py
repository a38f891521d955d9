"""The round state machine, in plain Python (no grpc, no asyncio, no protobuf).

`engine.RoundEngine` makes the transitions; `rules` says what is refused and
when a round closes; `participants` who takes part in a round and from which
base (the `Participation` the engine holds); `records` holds the round and run
data; `registry` the clients; `global_model` the weights and the outer
optimizer; `initial_model` the run's initial weights from `init_model`.
"""
