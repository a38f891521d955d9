"""The client's side of secure aggregation (SecAgg+), held as a round mode.

    mode          `SecureMode`: what `DiLoCoClient` holds when Join says the
                  rounds are masked; outlives reconnects
    participant   `SecureParticipant`: one link's key exchange on the Session
    updates       `SecureUpdates`: quantise, keep the rest in e, mask, push

Only `client.diloco` imports this package; the connection layer knows it
only through `connection.link.Attach` and `connection.session.SessionEvents`.
"""

from fedgrpc.client.secure.mode import SecureMode
from fedgrpc.client.secure.participant import SecureParticipant
from fedgrpc.client.secure.updates import SecureUpdates

__all__ = ("SecureMode", "SecureParticipant", "SecureUpdates")
