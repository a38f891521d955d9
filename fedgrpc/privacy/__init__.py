"""Differential privacy: the budget ledger, and the mechanisms that spend it.

A leaf package (it imports only `errors` and, lazily, `dp-accounting`):
the coordinator's privacy stage, the client's record-level DP-SGD and the
benches all account through `PrivacyLedger`, so one ε means one thing
everywhere. Install with `pip install 'fedgrpc[dp]'`.
"""

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

__all__ = [
    "ACCOUNTANTS",
    "NEIGHBOURINGS",
    "AccountantName",
    "LedgerState",
    "Neighbouring",
    "PrivacyLedger",
    "Release",
    "noise_for_budget",
]
