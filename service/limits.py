"""Rate limits and client addresses: pure logic, no I/O.

A :class:`Rate` is "``rate`` events per second sustained, bursts of up to ``burst``"; a
:class:`TokenBucket` enforces one; a :class:`KeyedBuckets` holds one bucket per key (user,
IP address) and forgets buckets that have refilled, so idle keys cost no memory.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

Network = IPv4Network | IPv6Network


@dataclass(frozen=True, slots=True)
class Rate:
    """``rate`` tokens per second, at most ``burst`` saved up. ``rate == 0`` means unlimited."""

    rate: float
    burst: float

    @classmethod
    def parse(cls, text: str) -> Rate:
        """``"RATE:BURST"`` (``"30:120"``), ``"RATE"`` (burst = rate) or ``"0"`` (no limit)."""
        rate_text, _, burst_text = text.partition(":")
        rate = float(rate_text)
        burst = float(burst_text) if burst_text else rate
        if not (math.isfinite(rate) and math.isfinite(burst) and rate >= 0 and burst >= 0):
            raise ValueError("rate and burst must be finite numbers >= 0")
        if rate > 0 and burst < 1:
            raise ValueError("burst must be at least 1")
        return cls(rate, burst)

    @property
    def unlimited(self) -> bool:
        return self.rate == 0

    def __str__(self) -> str:
        return "unlimited" if self.unlimited else f"{self.rate:g}/s, bursts of {self.burst:g}"


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

    def has(self, now: float, cost: float = 1.0) -> bool:
        """Whether ``cost`` tokens are there, without spending them."""
        if self._rate == 0:
            return True
        self._refill(now)
        return self.tokens >= cost

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self._burst


class KeyedBuckets:
    """One bucket per key; buckets that have refilled completely are dropped on a sweep
    (a full bucket and a new one behave the same)."""

    def __init__(self, rate: Rate, *, clock: Callable[[], float] = time.monotonic,
                 sweep_every: float = 10.0) -> None:
        self.rate = rate
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._sweep_every = sweep_every
        self._swept = clock()

    def take(self, key: str, cost: float = 1.0) -> bool:
        if self.rate.unlimited:
            return True
        return self._bucket(key).take(self._clock(), cost)

    def has(self, key: str, cost: float = 1.0) -> bool:
        if self.rate.unlimited:
            return True
        bucket = self._buckets.get(key)
        return bucket is None or bucket.has(self._clock(), cost)

    def __len__(self) -> int:
        return len(self._buckets)

    def _bucket(self, key: str) -> TokenBucket:
        now = self._clock()
        if now - self._swept >= self._sweep_every:
            self._swept = now
            for stale in [k for k, b in self._buckets.items() if b.full(now)]:
                del self._buckets[stale]
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, now)
        return bucket


def parse_networks(items: Iterable[str]) -> tuple[Network, ...]:
    """CIDR networks (a bare address is a /32 or /128)."""
    return tuple(ip_network(item.strip(), strict=False) for item in items if item.strip())


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
