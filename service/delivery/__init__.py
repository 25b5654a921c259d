"""Delivery: who is connected and joined, and how a message reaches a user's room or one of
its devices.

- :mod:`service.delivery.interfaces`: the ``Presence`` and ``Delivery`` interfaces, their
  errors, and ``user_room``;
- :mod:`service.delivery.local`: both in memory, for one process.

The Redis implementations are in :mod:`service.cluster`; the handlers and the call path see
only these interfaces.
"""

from __future__ import annotations

from service.delivery.interfaces import (
    Delivery,
    DeliveryUnavailable,
    Device,
    Presence,
    PresenceUnavailable,
    describe,
    device_of,
    user_room,
)
from service.delivery.local import LocalDelivery, LocalPresence

__all__ = ["Delivery", "DeliveryUnavailable", "Device", "LocalDelivery", "LocalPresence",
           "Presence", "PresenceUnavailable", "describe", "device_of", "user_room"]
