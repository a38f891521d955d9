"""Differential privacy: the budget ledger, and the mechanisms that spend it.

A leaf package (it imports only `errors` and, lazily, `dp-accounting`):
the coordinator's privacy stage, the client's record-level DP-SGD
(`RecordDP`, over Opacus) and the benches all account through
`PrivacyLedger`, so one ε means one thing everywhere. Install with
`pip install 'fedgrpc[dp]'`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedgrpc.privacy.ledger import (
    ACCOUNTANTS,
    NEIGHBOURINGS,
    AccountantName,
    LedgerState,
    Neighbouring,
    PrivacyLedger,
    Release,
    noise_for_budget,
)

if TYPE_CHECKING:
    from fedgrpc.privacy.record import RecordDP

__all__ = [
    "ACCOUNTANTS",
    "NEIGHBOURINGS",
    "AccountantName",
    "LedgerState",
    "Neighbouring",
    "PrivacyLedger",
    "RecordDP",
    "Release",
    "noise_for_budget",
]


def __getattr__(name: str) -> Any:
    """`RecordDP` on first use: it imports torch, the ledger does not."""
    if name == "RecordDP":
        from fedgrpc.privacy.record import RecordDP

        return RecordDP
    raise AttributeError(f"module 'fedgrpc.privacy' has no attribute {name!r}")
