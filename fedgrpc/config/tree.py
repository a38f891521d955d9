"""Aggregation trees: the settings that make a coordinator a leaf of a root.

A section of `CoordinatorConfig` (a mixin, like `config.http`, so TOML keys
and `--flags` stay flat). With `upstream` set, the coordinator serves its
own group of clients as usual, but instead of stepping an outer optimizer
it presents the group's weighted mean upward as ONE update of the root
(`coordinator.tree`), then serves the root's new weights to its group.

What a leaf does not do, and why it is refused at start rather than
silently ignored: its own outer optimizer never runs (the root steps once
for everyone), so there is no state of its own to checkpoint, no initial
model of its own (the root owns it), and central DP at a leaf would spend
a budget no one accounts for at the root (put DP on the root, or use
secure aggregation inside the group to hide each client from its leaf).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedgrpc.errors import check_config as _check

LEAF_AGGREGATORS = ("mean",)
"""Aggregators a leaf may run: the weighted mean, whose group means recombine
exactly (sum of group weight x group mean = the flat weighted sum)."""


@dataclass(frozen=True, kw_only=True)
class TreeSettings:
    """Where a leaf's root is, and how the leaf proves who it is to it."""

    upstream: str = ""
    """host:port of the root coordinator; "" (default): this coordinator is
    a root or a flat one. Set, it is a leaf: see the module docstring."""
    upstream_identity_key: str = ""
    """The leaf's private key file when it joins the root (the root's
    `allowed_client_keys` lists its public key); "" uses a throwaway key."""
    upstream_coordinator_key: str = ""
    """The root's public key (PEM or fingerprint) the leaf pins; "" trusts
    the key the root presents at Join (as a client does)."""
    upstream_tls_ca: str = ""
    """CA bundle verifying the root's TLS certificate; "" dials in plain text
    (loopback and private networks only)."""
    upstream_timeout_s: float = 10.0
    """Seconds the leaf waits on the root for one call (join, push, pull)
    before it reports the root unreachable and skips its group's round.
    Keep it below the clients' `rpc_timeout_s` (30 s by default): a leaf's
    first Join waits this long for the root before it answers UNAVAILABLE,
    which clients retry."""
    upstream_round_wait_s: float = 3600.0
    """Seconds the leaf waits for the root's round to open and then close
    (the other leaves' groups may train that long)."""

    def _check_tree(self, listen: str, checks: dict[str, bool]) -> None:
        """Refuse leaf settings that cannot work, naming the conflicting one.

        `checks` maps each setting a leaf cannot honour to whether it is set.

        Raises:
            ConfigError: a malformed `upstream`, a timeout <= 0, `upstream`
                equal to `listen` (a leaf of itself would wait on its own
                round forever), or a leaf with a setting it cannot honour.
        """
        _check(self.upstream_timeout_s > 0, "upstream_timeout_s",
               self.upstream_timeout_s, "> 0 (seconds)")  # fmt: skip
        _check(self.upstream_round_wait_s > 0, "upstream_round_wait_s",
               self.upstream_round_wait_s, "> 0 (seconds)")  # fmt: skip
        if not self.upstream:
            return
        _check(":" in self.upstream, "upstream", self.upstream, "host:port or empty")
        _check(self.upstream != listen, "upstream", self.upstream,
               f"the root's address, not this coordinator's own (listen = "
               f"{listen!r}): a leaf of itself waits on its own round forever",
               )  # fmt: skip
        for name, is_set in checks.items():
            value = getattr(self, name)
            _check(not is_set, name, value, f"unset on a leaf (upstream = "
                   f"{self.upstream!r}): {_WHY_NOT[name]}")  # fmt: skip


_WHY_NOT = {
    "privacy": "the root steps the model, so central DP belongs there (a leaf's "
    "noise and epsilon would be accounted by no one); secure aggregation inside "
    "the group hides each client from its leaf",
    "init_model": "the root owns the initial model; a leaf serves the root's",
    "seed_from_first_client": "the root owns the initial model; a leaf serves "
    "the root's (give the root init_model)",
    "checkpoint_dir": "a leaf holds no state of its own (no outer optimizer): "
    "the root checkpoints, and a restarted leaf pulls the root's version",
    "aggregator": "a leaf forwards its group's weighted mean; only 'mean' "
    "recombines exactly at the root (run robust aggregators at the root)",
    "round_mode": "a leaf runs sync rounds (one group update per root round); "
    "deadline, buffered_async and streaming are not supported on a leaf",
}
