#!/usr/bin/env python3
"""What the rate limiter costs per event.

    .venv/bin/python benchmarks/limiter.py [--count 5000] [--rounds 3]

1. In-process: the time of one ``Guard.allow`` (a relay: the connection's bucket and the
   user's bucket) and of the address lookups, over a million calls.
2. End to end: the relay benchmark (benchmarks/relay.py) against a service whose limits are
   off, then one whose limits are on but too high to refuse anything, so the difference in
   service CPU per relay is what checking the limits costs. Rounds alternate to spread noise.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from relay import main_async as relay_bench  # noqa: E402

from service.config import Rate, Secret, Settings  # noqa: E402
from service.policy import RELAY, Guard  # noqa: E402

HIGH = "1000000:1000000"
LIMITS_ON_NEVER_REFUSING = {f"SIGNAL_LIMIT_{name}": HIGH for name in (
    "RELAYS", "USER_RELAYS", "ROOMS", "REFRESHES", "OTHER", "IP_CONNECTS", "USER_CONNECTS",
    "IP_AUTH_FAILURES")}


def per_call_ns(fn: Callable[[], object], n: int = 1_000_000) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - started)
    return best / n * 1e9


def micro() -> None:
    high = Rate(1e9, 1e9)
    guard = Guard(Settings(jwt_secret=Secret("s" * 40), limit_relays=high,
                           limit_user_relays=high, trusted_proxies=("10.0.0.0/8",)))
    budget = guard.budget()
    rows = [
        ("Guard.allow (relay: connection + user bucket), per event",
         per_call_ns(lambda: guard.allow(budget, "alice", RELAY))),
        ("Guard.client_ip, no proxy, per connection",
         per_call_ns(lambda: guard.client_ip("198.51.100.7", None))),
        ("Guard.client_ip, via a trusted proxy, per connection",
         per_call_ns(lambda: guard.client_ip("10.0.0.2", "198.51.100.7"), 200_000)),
    ]
    print("in-process, best of 3 runs:")
    for name, ns in rows:
        print(f"  {name:<58} {ns:8.0f} ns")


async def end_to_end(count: int, rounds: int) -> None:
    off: list[float] = []
    on: list[float] = []
    key = "server_cpu_us_per_relay"
    for _ in range(rounds):
        off.append((await relay_bench(["websocket"], count))["websocket"][key])
        on.append((await relay_bench(["websocket"], count, LIMITS_ON_NEVER_REFUSING)
                   )["websocket"][key])
    print(f"\nservice CPU per relay over {rounds} rounds (median): limits off "
          f"{statistics.median(off):.0f} us, limits on {statistics.median(on):.0f} us, "
          f"difference {statistics.median(on) - statistics.median(off):+.0f} us")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    micro()
    asyncio.run(end_to_end(args.count, args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
