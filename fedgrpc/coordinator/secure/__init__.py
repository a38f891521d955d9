"""Secure aggregation as a round mode the runtime holds (`mode.SecureMode`).

Nothing on the plain path imports this package; `services.server` composes
it into the runtime when `secure_aggregation` is on.
"""
