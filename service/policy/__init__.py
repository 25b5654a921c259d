"""The limit policy: what a client, a user and an address may spend.

- :mod:`service.policy.limits`: token buckets, buckets per key, client addresses (pure,
  clock-injected);
- :mod:`service.policy.guard`: which budget each event, connection and address spends.
"""

from __future__ import annotations

from service.policy.guard import OTHER, RELAY, ROOM, ConnectionBudget, Guard, event_class
from service.policy.limits import KeyedBuckets, TokenBucket, address_key, client_address

__all__ = ["OTHER", "RELAY", "ROOM", "ConnectionBudget", "Guard", "KeyedBuckets",
           "TokenBucket", "address_key", "client_address", "event_class"]
