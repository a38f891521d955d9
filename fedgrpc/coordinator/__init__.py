"""The coordinator: a round pipeline behind a gRPC daemon (DESIGN.md).

* `services/`: gRPC servicers and the server (translation only). The
  error -> StatusCode table (`services.status`) lives here, not in `ops/`:
  it is the gRPC edge's job, and nothing below it knows a status code;
* `ingest/`: one owner of an update's life, from header to commit;
* `rounds/`: the plain-Python round state machine and its rules, and the
  run's lifecycle (`max_rounds`, the initial model from `init_model`);
* `secure/`: secure aggregation, a round mode the runtime holds;
* `ops/`: checkpoints, metrics, model export, reading `init_model`.

`runtime` builds the pipeline and runs it on one event loop; `inprocess`
is `fedgrpc.Coordinator`, the same server run from a Python program; `sessions` owns
the Session streams and the events sent down them (the runtime's channel to
clients, so beside it rather than in `ops/`); `waiters` holds who waits on the
runtime (PullModel for a durable version, `wait_until`); `enrollment` decides who may
join; `round_mode` is the interface a mode implements; `faults` holds the
hooks tests fail a real coordinator with. The strategy stages (Selector,
Accumulator, Aggregator, OuterOptimizer) come next: an Accumulator slots in
at `ingest.sinks.UpdateSink.add_chunk`.
"""
