"""Parameter sharding: the settings that make a coordinator one of N shards.

A section of `CoordinatorConfig` (a mixin, like `config.tree`, so TOML keys
and `--flags` stay flat). With `shard = "I/N"` (N > 1) this coordinator
owns the I-th contiguous range of the flat parameter vector
(`domain.shards`): its own ingest, sum, outer-optimizer state and
checkpoints. Shard 0 (the first of `shard_peers`) is the leader: at each
round's close every shard proposes its set of committed clients to it over
`ShardService`, and the round applies only if all N proposed the same set
(`coordinator.shards`).

What a shard refuses at start, rather than silently doing wrong: settings
whose math needs the whole vector in one place (central DP's clip and
noise, robust aggregators that rank whole updates, secure aggregation's
shared sparse index sets, downlink steps over the whole model), and
round modes other than sync (their pacing would let shards close
different sets). Each is named with the reason in the error.

Secure aggregation itself works per shard: masks are addressed by
position, so each shard runs its own masked round over its own range
(setup, key exchange, masked input, unmasking, dropout recovery) and the
commit protocol compares the survivor sets (`coordinator.secure`).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedgrpc.domain.shards import parse_shard
from fedgrpc.errors import ConfigError
from fedgrpc.errors import check_config as _check


@dataclass(frozen=True, kw_only=True)
class ShardSettings:
    """Which shard this is, where its peers are, and the secret they share."""

    shard: str = ""
    """"I/N": this coordinator is shard I (from 0) of N; "" (default) or
    "0/1": unsharded. Shard 0 is the leader, which decides every round."""
    shard_peers: tuple[str, ...] = ()
    """host:port of every shard, in shard order (index 0: the leader), this
    one included: N entries. Clients learn them at Join and dial each."""
    shard_token_file: str = ""
    """File holding the secret the shards share (one line, >= 32 printable
    characters; `fedgrpc certs --admin` writes one): every ShardService call
    carries it, and a call without it is UNAUTHENTICATED."""
    shard_tls_ca: str = ""
    """PEM CA bundle verifying the leader's TLS certificate when the shards
    vote over TLS: required on every shard of a coordinator serving TLS
    (`tls_cert`), whose ShardService shares the TLS port."""
    shard_tls_cert: str = ""
    """PEM client certificate (with `shard_tls_key`) a shard presents to the
    leader when the leader requires client certificates (`tls_client_ca`):
    one issued by that CA, e.g. `fedgrpc certs --client-name shard-1`."""
    shard_tls_key: str = ""
    """PEM private key of `shard_tls_cert` (unencrypted; keep it 0600)."""
    shard_commit_timeout_s: float = 30.0
    """Seconds the leader waits for every shard's proposal at a round's
    close (and a follower for the leader's answer, plus a margin) before the
    round is skipped: a shard that crashed makes the round skip everywhere."""

    @property
    def shard_index(self) -> int:
        """I of `shard` (0 unsharded)."""
        return parse_shard(self.shard)[0]

    @property
    def shard_count(self) -> int:
        """N of `shard` (1 unsharded)."""
        return parse_shard(self.shard)[1]

    def _check_shards(
        self, checks: dict[str, bool], tls: tuple[bool, bool] = (False, False)
    ) -> None:
        """Refuse shard settings that cannot work, naming the conflicting one.

        `checks` maps each setting a shard cannot honour to whether it is set;
        `tls` is (serves TLS, requires client certificates).

        Raises:
            ConfigError: a malformed `shard`, a peer list of the wrong length,
                no token file, a timeout <= 0, or a setting a shard cannot honour.
        """
        peers: object = self.shard_peers
        if isinstance(peers, list):  # TOML arrays arrive as lists
            object.__setattr__(self, "shard_peers", tuple(peers))
        try:
            index, count = parse_shard(self.shard)
        except ValueError as exc:
            raise ConfigError(f"shard={self.shard!r} is invalid: {exc}") from None
        _check(self.shard_commit_timeout_s > 0, "shard_commit_timeout_s",
               self.shard_commit_timeout_s, "> 0 (seconds)")  # fmt: skip
        if count == 1:
            _check(not self.shard_peers, "shard_peers", list(self.shard_peers),
                   "empty unless shard = \"I/N\" with N > 1")  # fmt: skip
            return
        _check(len(self.shard_peers) == count, "shard_peers", list(self.shard_peers),
               f"{count} host:port addresses (one per shard of shard = "
               f"{self.shard!r}, in shard order, this one at index {index})",
               )  # fmt: skip
        for peer in self.shard_peers:
            _check(":" in peer, "shard_peers", list(self.shard_peers),
                   "host:port addresses")  # fmt: skip
        _check(bool(self.shard_token_file), "shard_token_file",
               self.shard_token_file, "set with shard (the shards' shared "
               "secret: commit decisions must come from a peer)")  # fmt: skip
        self._check_shard_tls(*tls)
        for name, is_set in checks.items():
            value = getattr(self, name)
            _check(not is_set, name, value, f"unset on a shard (shard = "
                   f"{self.shard!r}): {_WHY_NOT[name]}")  # fmt: skip

    def _check_shard_tls(self, serves_tls: bool, mutual: bool) -> None:
        """The votes dial the leader's TLS port: a CA, and a certificate for mTLS."""
        _check(not serves_tls or bool(self.shard_tls_ca), "shard_tls_ca",
               self.shard_tls_ca, "set on a shard serving TLS (tls_cert): its "
               "votes dial the leader's TLS port and must verify its "
               "certificate")  # fmt: skip
        _check(serves_tls or not (self.shard_tls_ca or self.shard_tls_cert),
               "shard_tls_ca", self.shard_tls_ca, "unset without tls_cert (the "
               "shards speak plaintext)")  # fmt: skip
        _check(not mutual or bool(self.shard_tls_cert), "shard_tls_cert",
               self.shard_tls_cert, "set on a shard requiring client "
               "certificates (tls_client_ca): the leader requires one from its "
               "votes too")  # fmt: skip
        _check(bool(self.shard_tls_cert) == bool(self.shard_tls_key),
               "shard_tls_key", self.shard_tls_key, "set exactly when "
               "shard_tls_cert is")  # fmt: skip


_WHY_NOT = {
    "secagg_density": "a shared sparse index set is chosen from the whole "
    "update's magnitudes and guarded against divergence over the whole model; "
    "each shard masks its own range densely (secagg_density = 1; sparse masked "
    "rounds are not supported with shards yet)",
    "round_mode": "shards run sync rounds; deadline, buffered_async and "
    "streaming pacing are not supported with shards yet",
    "downlink_codec": "compressed downlink steps cover the whole model; shards "
    "serve their range as weights (not supported with shards yet)",
    "privacy": "central DP clips and noises the whole update at one place "
    "(not supported with shards yet)",
    "aggregator": "only 'mean' is coordinate-wise over ranges that every shard "
    "averages alone (robust aggregators rank whole updates)",
    "upstream": "a shard cannot also be a tree leaf (not supported yet)",
    "selection": "each shard would pick its own clients, so their sets would "
    "differ and every round would skip; shards take every client ('all')",
}
