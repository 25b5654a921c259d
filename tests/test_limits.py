"""The limit policy, without a server: rates, buckets, addresses, and the guard."""

from __future__ import annotations

import pytest

from service.config import Rate, Secret, Settings, parse_networks
from service.delivery import LocalPresence
from service.policy import (
    OTHER,
    RELAY,
    ROOM,
    Guard,
    KeyedBuckets,
    TokenBucket,
    client_address,
    event_class,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("text", "rate", "burst"), [("30:120", 30, 120), ("5", 5, 5),
                                                      ("0.2:3", 0.2, 3), ("0", 0, 0)])
def test_rate_parses(text: str, rate: float, burst: float) -> None:
    """``RATE:BURST``, ``RATE`` and ``0`` (no limit)."""
    parsed = Rate.parse(text)
    assert (parsed.rate, parsed.burst) == (rate, burst)
    assert parsed.unlimited == (rate == 0)


@pytest.mark.parametrize("text", ["", "x", "-1:5", "5:0.5", "inf:10", "nan", "1:2:3"])
def test_bad_rates_are_refused(text: str) -> None:
    """Negative, non-finite, sub-1 bursts and garbage are refused."""
    with pytest.raises(ValueError):
        Rate.parse(text)


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    """A full bucket allows ``burst`` events at once, then ``rate`` per second."""
    bucket = TokenBucket(Rate(2, 5), now=0.0)
    assert [bucket.take(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert bucket.take(0.49) is False
    assert bucket.take(0.5) is True
    assert bucket.take(10.0) and bucket.tokens == 4  # refilled to the burst, minus one


def test_unlimited_bucket_always_allows() -> None:
    bucket = TokenBucket(Rate(0, 0), now=0.0)
    assert all(bucket.take(0.0) for _ in range(10_000))


def test_keyed_buckets_forget_refilled_keys() -> None:
    """Idle keys cost no memory: buckets that have refilled are forgotten as later takes
    pass by, a few per take."""
    clock = Clock()
    buckets = KeyedBuckets(Rate(1, 2), clock=clock, sweep_batch=8)
    for n in range(100):
        buckets.take(f"10.0.0.{n}")
    assert len(buckets) == 100
    clock.now += 11
    for n in range(20):
        buckets.take(f"10.0.1.{n}")
    assert len(buckets) == 20


def test_keyed_bucket_sweep_is_bounded_per_take() -> None:
    """With 100,000 stale keys, one take forgets at most ``sweep_batch`` of them (before: a
    pass over all of them inside one handshake, ~290 ms); the least recently used go first,
    and a key in use is never forgotten while its bucket is not full."""
    clock = Clock()
    buckets = KeyedBuckets(Rate(5, 30), clock=clock, sweep_batch=8)
    for n in range(100_000):
        buckets.take(f"k{n}")
    clock.now += 60  # every bucket has refilled long ago
    assert buckets.take("busy", cost=30)  # "busy" spends its whole burst
    before = len(buckets)
    buckets.take("new")
    assert before - len(buckets) + 1 <= 8 + 1
    while len(buckets) > 2:
        buckets.take("new")
    assert set(buckets._buckets) == {"busy", "new"}
    assert not buckets.has("busy")  # its budget was kept


@pytest.mark.parametrize(("ip", "key"), [
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
    ("::ffff:198.51.100.7", "198.51.100.7"),
    ("198.51.100.7", "198.51.100.7"),
    ("unknown", "unknown"),
])
def test_address_keys_group_ipv6_by_64(ip: str, key: str) -> None:
    from service.policy import address_key

    assert address_key(ip) == key


def test_one_ipv6_host_has_one_budget() -> None:
    """Addresses of one /64 share the per-address session budget: rotating through them
    (a host has billions) gains nothing; another /64 has its own."""
    clock = Clock()
    guard = Guard(Settings(jwt_secret=Secret("s" * 40), limit_ip_connects=Rate(1, 3)),
                  clock=clock)
    admitted = [guard.admit_session(f"2001:db8:0:1::{n:x}") for n in range(1, 6)]
    assert admitted == [True, True, True, False, False]
    assert guard.admit_session("2001:db8:0:2::1")


def test_keyed_buckets_are_independent() -> None:
    clock = Clock()
    buckets = KeyedBuckets(Rate(1, 1), clock=clock)
    assert buckets.take("a") and not buckets.take("a")
    assert buckets.take("b")
    assert not buckets.has("a") and buckets.has("c")


TRUSTED = parse_networks(["10.0.0.0/8", "::1"])


@pytest.mark.parametrize(("peer", "xff", "expected"), [
    ("203.0.113.9", "198.51.100.1", "203.0.113.9"),        # untrusted peer: header ignored
    ("10.0.0.5", "198.51.100.1", "198.51.100.1"),          # trusted proxy
    ("10.0.0.5", "6.6.6.6, 198.51.100.1", "198.51.100.1"),  # client-forged left entry ignored
    ("10.0.0.5", "198.51.100.1, 10.0.0.7", "198.51.100.1"),  # chain of trusted proxies
    ("10.0.0.5", "10.0.0.8, 10.0.0.7", "10.0.0.5"),         # only proxies: the peer
    ("10.0.0.5", "not-an-ip", "10.0.0.5"),                  # garbage: the peer
    ("10.0.0.5", None, "10.0.0.5"),
    ("::1", "2001:db8::1", "2001:db8::1"),
])
def test_client_address(peer: str, xff: str | None, expected: str) -> None:
    """X-Forwarded-For is believed only from trusted proxies, read from the right."""
    assert client_address(peer, xff, TRUSTED) == expected


def test_forwarded_header_ignored_without_trusted_proxies() -> None:
    assert client_address("10.0.0.5", "198.51.100.1", ()) == "10.0.0.5"


def _guard(**limits: object) -> tuple[Guard, Clock]:
    clock = Clock()
    settings = Settings(jwt_secret=Secret("s" * 40), **limits)  # type: ignore[arg-type]
    return Guard(settings, clock=clock), clock


def test_event_classes() -> None:
    assert event_class("offer") == event_class("candidate") == RELAY
    assert event_class("JoinSocket") == event_class("LeaveSocket") == ROOM
    assert event_class("whatever") == OTHER


def test_per_connection_and_per_user_relay_limits() -> None:
    """Each connection has its own relay bucket; the user's bucket caps them together."""
    guard, _ = _guard(limit_relays=Rate(1, 3), limit_user_relays=Rate(1, 5))
    phone, laptop = guard.budget(), guard.budget()
    assert [guard.allow(phone, "alice", RELAY) for _ in range(4)] == [True] * 3 + [False]
    assert [guard.allow(laptop, "alice", RELAY) for _ in range(3)] == [True, True, False]


def test_strikes_run_out() -> None:
    """A connection that keeps sending over its limit runs out of strikes."""
    guard, clock = _guard(limit_strikes=Rate(1, 3))
    budget = guard.budget()
    assert [guard.strike(budget) for _ in range(4)] == [True, True, True, False]
    clock.now += 1
    assert guard.strike(budget)


async def test_connection_cap_per_user() -> None:
    """In-memory presence counts a user's connections against the cap (0: no cap)."""
    presence = LocalPresence()
    assert await presence.add_connection("alice", "s1", 2)
    assert await presence.add_connection("alice", "s2", 2)
    assert not await presence.add_connection("alice", "s3", 2)
    assert await presence.add_connection("bob", "s4", 2)
    await presence.remove_connection("alice", "s1")
    assert await presence.add_connection("alice", "s3", 2)
    assert presence.connections_of("alice") == 2
    assert all([await presence.add_connection("carol", f"c{n}", 0) for n in range(50)])


async def test_local_presence_of_joined_sockets() -> None:
    """``others_present`` counts joined sockets other than the asking one."""
    presence = LocalPresence()
    await presence.join("alice", "s1")
    assert not await presence.others_present("alice", "s1")
    assert await presence.others_present("alice", "s2")
    await presence.leave("alice", "s1")
    assert not await presence.others_present("alice", "s2")


def test_auth_failures_close_the_address() -> None:
    """An address that spent its authentication failures may neither authenticate nor open
    sessions until the bucket refills."""
    guard, clock = _guard(limit_ip_auth_failures=Rate(0.5, 2))
    for _ in range(2):
        assert guard.may_authenticate("198.51.100.1")
        guard.authentication_failed("198.51.100.1")
    assert not guard.may_authenticate("198.51.100.1")
    assert not guard.admit_session("198.51.100.1")
    assert guard.admit_session("198.51.100.2")
    clock.now += 2
    assert guard.may_authenticate("198.51.100.1")
