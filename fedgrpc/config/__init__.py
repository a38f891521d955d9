"""Configuration objects: frozen, validated at construction, loadable from TOML.

One module per job: `coordinator` (what `fedgrpc serve` and
`fedgrpc.Coordinator` need, with its sections `robustness`, `limits` and
`access`), `client` (the knobs of `DiLoCoClient`), `outer`
(the outer optimizer's names, defaults and rules), `files` (TLS pairs,
readable paths, TOML tables, shared by both objects). Import from here:
`from fedgrpc.config import CoordinatorConfig, ClientConfig`.

A base package: it imports only `errors` and `domain` (tests/unit/test_layering.py).
"""

from fedgrpc.config.access import UpdateHash, UpdateSignatures
from fedgrpc.config.client import ClientConfig
from fedgrpc.config.coordinator import CoordinatorConfig
from fedgrpc.config.files import load_table
from fedgrpc.config.outer import (
    ADAPTIVE_OPTIMIZERS,
    OUTER_OPTIMIZERS,
    OuterOptimizerName,
)
from fedgrpc.config.secure import SECAGG_MIN_CLIENTS, SECAGG_VALUES

__all__ = [
    "ADAPTIVE_OPTIMIZERS",
    "OUTER_OPTIMIZERS",
    "SECAGG_MIN_CLIENTS",
    "SECAGG_VALUES",
    "ClientConfig",
    "CoordinatorConfig",
    "OuterOptimizerName",
    "UpdateHash",
    "UpdateSignatures",
    "load_table",
]
