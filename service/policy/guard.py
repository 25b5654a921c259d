"""Who may connect and how fast anyone may talk: the limit policy, without I/O.

Per address: new sessions (``limit_ip_connects``) and failed authentications
(``limit_ip_auth_failures``; an address out of failures may not try again until it refills).
A session that authenticates gives its address's token back and spends its user's instead
(``limit_user_connects``): thousands of phones behind one carrier-grade NAT reconnect at the
pace of their users' budgets, while sessions without a valid token stay at the address's.
Per Engine.IO session and per address: packets of any kind, below Socket.IO (``limit_packets``,
``limit_ip_packets``): pings, upgrades and noops cost the server too.
Per user: relays across all of the user's connections on this node (``limit_user_relays``).
Per connection: one bucket per event class, and a bucket of strikes: each refused event
spends one, and a connection out of strikes is disconnected. (The per-user connection cap is
counted by the presence of :mod:`service.delivery`, cluster-wide when there is a cluster.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from service.config import Network, Rate, Settings, parse_networks
from service.policy.limits import KeyedBuckets, TokenBucket, address_key, client_address
from service.protocol import CLAIM, ICE_SERVERS, JOIN, LEAVE, REFRESH, RELAY_EVENTS

#: a message costs one token per this many bytes, on top of one
COST_BYTES: Final = 8192
#: ... and never more than this many (a full-size relay still fits a burst)
MAX_COST: Final = 8
RELAY: Final = "relay"
ROOM: Final = "room"
REFRESH_CLASS: Final = "refresh"
OTHER: Final = "other"


def event_class(event: str) -> str:
    """The limit class an event counts against."""
    if event in RELAY_EVENTS:
        return RELAY
    if event in (JOIN, LEAVE, ICE_SERVERS, CLAIM):
        return ROOM
    if event == REFRESH:
        return REFRESH_CLASS
    return OTHER


@dataclass(slots=True)
class ConnectionBudget:
    """One connection's buckets."""

    buckets: dict[str, TokenBucket]
    strikes: TokenBucket
    refused: int = field(default=0)


class Guard:
    """The limit policy of one service process."""

    def __init__(self, settings: Settings, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._rates: dict[str, Rate] = {
            RELAY: settings.limit_relays, ROOM: settings.limit_rooms,
            REFRESH_CLASS: settings.limit_refreshes, OTHER: settings.limit_other,
        }
        self._strikes = settings.limit_strikes
        self._user_relays = KeyedBuckets(settings.limit_user_relays, clock=clock)
        self._ip_connects = KeyedBuckets(settings.limit_ip_connects, clock=clock)
        self._user_connects = KeyedBuckets(settings.limit_user_connects, clock=clock)
        self._ip_failures = KeyedBuckets(settings.limit_ip_auth_failures, clock=clock)
        self._packets = settings.limit_packets
        self._ip_packets = KeyedBuckets(settings.limit_ip_packets, clock=clock)
        self._trusted: tuple[Network, ...] = parse_networks(settings.trusted_proxies)
        self.max_per_user = settings.max_connections_per_user

    # ---- addresses ----

    def client_ip(self, peer: str, forwarded_for: str | None) -> str:
        return client_address(peer, forwarded_for, self._trusted)

    def admit_session(self, ip: str) -> bool:
        """A new Engine.IO session from ``ip``: within its connection rate, and not out of
        authentication failures. (IPv6 addresses count per /64: :func:`address_key`.)"""
        key = address_key(ip)
        return self._ip_failures.has(key) and self._ip_connects.take(key)

    def authenticated(self, ip: str, user: str) -> bool:
        """A session from ``ip`` presented a valid token of ``user``: the session counts
        against the user's connect budget, not the address's (the address's token is given
        back); False when the user is over its own."""
        if not self._user_connects.take(user):
            return False
        self._ip_connects.give(address_key(ip))
        return True

    def may_authenticate(self, ip: str) -> bool:
        return self._ip_failures.has(address_key(ip))

    def authentication_failed(self, ip: str) -> None:
        self._ip_failures.take(address_key(ip))

    # ---- Engine.IO packets ----

    def packet_bucket(self) -> TokenBucket:
        """A new Engine.IO session's budget of packets of any kind."""
        return TokenBucket(self._packets, self._clock())

    def allow_packets(self, bucket: TokenBucket, address: str, count: int) -> bool:
        """Spend ``count`` packets of a session (``bucket``) and of its address (``address``:
        the :func:`address_key` of its IP, worked out once per session). An address out of
        packets stops only its busy sessions (those that spent over half their own burst): a
        quiet client behind the same NAT as a flooder is not cut off for it."""
        now = self._clock()
        if not bucket.take(now, count):
            return False
        if self._ip_packets.take(address, count):
            return True
        return bucket.tokens >= self._packets.burst / 2

    # ---- connections ----

    def budget(self) -> ConnectionBudget:
        """Fresh buckets for a new connection."""
        now = self._clock()
        return ConnectionBudget({name: TokenBucket(rate, now)
                                 for name, rate in self._rates.items()},
                                TokenBucket(self._strikes, now))

    # ---- events ----

    def allow(self, budget: ConnectionBudget, user: str, kind: str, size: int = 0) -> bool:
        """Spend tokens for one ``kind`` event of ``user`` on this connection: one, plus one
        per :data:`COST_BYTES` of the raw message (a big message costs the server more to
        decode, check and send on), at most :data:`MAX_COST`."""
        now = self._clock()
        cost = min(1 + size // COST_BYTES, MAX_COST)
        if not budget.buckets[kind].take(now, cost):
            return False
        return kind != RELAY or self._user_relays.take(user, cost)

    def strike(self, budget: ConnectionBudget) -> bool:
        """Record a refused event; False when the connection is out of strikes."""
        budget.refused += 1
        return budget.strikes.take(self._clock())
