"""The coordinator: a round pipeline behind a gRPC daemon (DESIGN.md).

* `services/`: gRPC servicers and the server (translation only);
* `ingest/`: one owner of an update's life, from header to commit;
* `rounds/`: the plain-Python round state machine and its rules;
* `secure/`: secure aggregation, a round mode the runtime holds;
* `ops/`: checkpoints, metrics, model export.

`runtime` builds the pipeline and runs it on one event loop; `sessions` owns
the Session streams; `enrollment` who may join; `round_mode` the interface a
mode implements; `faults` the hooks tests fail a real coordinator with.
"""
