"""Rate limits and client addresses: pure logic, no I/O.

A :class:`~service.config.Rate` (a setting: "``rate`` events per second sustained, bursts of
up to ``burst``") is enforced by a :class:`TokenBucket`; a :class:`KeyedBuckets` holds one
bucket per key (user, IP address) and forgets buckets that have refilled, so idle keys cost no
memory.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from ipaddress import IPv6Address, ip_address, ip_network
from typing import Final

from service.config import Network, Rate


class TokenBucket:
    """A token bucket that starts full."""

    __slots__ = ("_burst", "_rate", "stamp", "tokens")

    def __init__(self, rate: Rate, now: float) -> None:
        self._rate = rate.rate
        self._burst = rate.burst
        self.tokens = rate.burst
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self._burst, self.tokens + (now - self.stamp) * self._rate)
            self.stamp = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens if there are that many."""
        if self._rate == 0:
            return True
        self._refill(now)
        if self.tokens >= cost:
            self.tokens -= cost
            return True
        return False

    def give(self, now: float, cost: float = 1.0) -> None:
        """Give ``cost`` tokens back (never more than the burst)."""
        self._refill(now)
        self.tokens = min(self._burst, self.tokens + cost)

    def has(self, now: float, cost: float = 1.0) -> bool:
        """Whether ``cost`` tokens are there, without spending them."""
        if self._rate == 0:
            return True
        self._refill(now)
        return self.tokens >= cost

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self._burst


#: takes of known keys per sweep of the oldest (a sweep on every take cost a relay ~2 %)
SWEEP_EVERY: Final = 16


class KeyedBuckets:
    """One bucket per key; buckets that have refilled completely are forgotten (a full
    bucket and a new one behave the same).

    Buckets are kept least recently used first, and each :meth:`take` looks at no more than
    ``sweep_batch`` of the oldest: forgetting costs a few steps per call, never a pass over
    every key inside one handshake. A bucket untouched for ``burst / rate`` seconds is full,
    so memory holds the keys active within that window, plus what the sweep has not reached.
    """

    def __init__(self, rate: Rate, *, clock: Callable[[], float] = time.monotonic,
                 sweep_batch: int = 8) -> None:
        self.rate = rate
        self._clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._sweep_batch = sweep_batch
        self._takes = 0

    def take(self, key: str, cost: float = 1.0) -> bool:
        if self.rate.unlimited:
            return True
        return self._bucket(key).take(self._clock(), cost)

    def give(self, key: str, cost: float = 1.0) -> None:
        """Give ``key`` ``cost`` tokens back (a key already forgotten is full)."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.give(self._clock(), cost)

    def has(self, key: str, cost: float = 1.0) -> bool:
        if self.rate.unlimited:
            return True
        bucket = self._buckets.get(key)
        return bucket is None or bucket.has(self._clock(), cost)

    def __len__(self) -> int:
        return len(self._buckets)

    def _bucket(self, key: str) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            # forgetting is paid for by making (the keys grow only here), and by one take in
            # SWEEP_EVERY of a known key (stale keys go while any traffic flows)
            now = self._clock()
            self._sweep(now)
            bucket = self._buckets[key] = TokenBucket(self.rate, now)
        else:
            self._buckets.move_to_end(key)
            self._takes += 1
            if self._takes >= SWEEP_EVERY:
                self._takes = 0
                self._sweep(self._clock())
        return bucket

    def _sweep(self, now: float) -> None:
        """Forget up to ``sweep_batch`` of the least recently used buckets that are full."""
        for _ in range(self._sweep_batch):
            if not self._buckets:
                return
            oldest = next(iter(self._buckets))
            if not self._buckets[oldest].full(now):
                return  # it was used after all the others before it: they are younger
            del self._buckets[oldest]


def address_key(ip: str) -> str:
    """The key an address is limited under: an IPv4 address itself; an IPv6 address's /64
    (one host is given a whole /64, and would otherwise have billions of budgets); an
    IPv4-mapped IPv6 address as its IPv4 address."""
    try:
        address = ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ip_network(f"{address}/64", strict=False))
    return ip


def client_address(peer: str, forwarded_for: str | None,
                   trusted: tuple[Network, ...]) -> str:
    """The client's address: the TCP peer, unless the peer is a trusted proxy, in which case
    the right-most ``X-Forwarded-For`` entry that is not itself a trusted proxy (entries to its
    left can be forged by the client)."""
    if not trusted or not forwarded_for or not _within(peer, trusted):
        return peer
    for hop in reversed([h.strip() for h in forwarded_for.split(",")]):
        if not hop:
            continue
        try:
            ip_address(hop)
        except ValueError:
            return peer  # a garbled header from a trusted proxy: fall back to the proxy
        if not _within(hop, trusted):
            return hop
    return peer


def _within(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)
