"""The round state machine, in plain Python (no grpc, no asyncio, no protobuf).

`engine.RoundEngine` makes the transitions; `rules` says what is refused and
when a round closes; `records` holds the round and run data; `registry` the
clients; `global_model` the weights and the outer optimizer.
"""
