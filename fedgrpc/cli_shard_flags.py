"""The `serve` flags of parameter sharding (`config.shards`), one tuple.

Apart from `cli_serve_flags` (which holds every other section) so that
module keeps to its size; `SERVE_FLAGS` there includes `SHARD_FLAGS`.
"""

from __future__ import annotations

from fedgrpc.cli_flags import Flag
from fedgrpc.config import CoordinatorConfig

_D = CoordinatorConfig()


def peer_list(value: str) -> tuple[str, ...]:
    """`--shard-peers a:1,b:2` -> ("a:1", "b:2") (the TOML key is an array)."""
    return tuple(part.strip() for part in value.split(",") if part.strip())


SHARD_FLAGS = (
    Flag("--shard", "run as shard I of N coordinators that split the "
         "parameters into N contiguous ranges (0 is the leader, which decides "
         "every round); needs --shard-peers and --shard-token-file; with "
         "--secure-aggregation each shard masks its own range (dense only) "
         "(default: unsharded)", metavar="I/N"),
    Flag("--shard-peers", "every shard's HOST:PORT in shard order, this one "
         "included, comma-separated; clients learn them at Join", peer_list,
         "HOST:PORT,..."),
    Flag("--shard-token-file", "file holding the secret the shards share (one "
         "line, >= 32 printable characters; `fedgrpc certs --admin` writes "
         "one); ShardService calls without it are UNAUTHENTICATED",
         metavar="PATH"),
    Flag("--shard-commit-timeout-s", "seconds the leader waits for every "
         "shard's proposal at a round's close before the round skips "
         f"everywhere (default: {_D.shard_commit_timeout_s:g})", float, "S"),
    Flag("--shard-tls-ca", "CA bundle verifying the leader's certificate: "
         "required with --tls-cert, since the votes dial the leader's TLS port "
         "(default: plaintext votes)", metavar="PATH"),
    Flag("--shard-tls-cert", "client certificate the votes present when the "
         "leader requires one (--tls-client-ca); needs --shard-tls-key",
         metavar="PATH"),
    Flag("--shard-tls-key", "private key of --shard-tls-cert", metavar="PATH"),
)  # fmt: skip
"""Parameter sharding (`config.shards`)."""
