#!/usr/bin/env python3
"""Relay benchmark: ``sanic service.app`` in its own process, two python-socketio clients.

    .venv/bin/python benchmarks/relay.py [--count 5000] [--transport websocket|polling]

Prints, per transport: the round trip of an acknowledged relay (p50/p99, one at a time),
relays/s when the sender does not wait for acks, and the service's CPU time per relay (read
from /proc for the Sanic processes, so the clients' own cost is excluded).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import socketio
from engineio.payload import Payload

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from calls import open_call  # noqa: E402

from service.auth import mint  # noqa: E402
from service.config import Secret, Settings  # noqa: E402

SECRET = "benchmark-secret-0123456789-0123456789-0123456789"
CANDIDATE = {"candidate": "candidate:842163049 1 udp 1677729535 203.0.113.7 46154 typ srflx "
             "raddr 10.0.0.2 rport 46154 generation 0", "sdpMid": "0", "sdpMLineIndex": 0}
# python-engineio's client drops a long-poll response of more than 16 packets (see
# docs/development.md, "Notes on the stack")
Payload.max_decode_packets = 1_000_000
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User+system CPU of ``pid`` and its children (the Sanic worker), from /proc."""
    total = 0.0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


#: a benchmark sends far more than a client may: rate limits are lifted (0 = no limit)
NO_LIMITS = {f"SIGNAL_LIMIT_{name}": "0" for name in (
    "RELAYS", "USER_RELAYS", "ROOMS", "REFRESHES", "OTHER", "IP_CONNECTS", "USER_CONNECTS",
    "IP_AUTH_FAILURES", "PACKETS", "IP_PACKETS")}


async def start_service(extra_env: dict[str, str] | None = None,
                        ) -> tuple[asyncio.subprocess.Process, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SIGNAL_JWT_SECRET": SECRET, "SIGNAL_LOG_LEVEL": "WARNING",
           "SIGNAL_ENV_FILE": "/dev/null", **NO_LIMITS, **(extra_env or {})}
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("sanic")), "service.app", "--host", "127.0.0.1",
        "--port", str(port), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            try:
                async with http.get(f"{url}/healthz") as response:
                    if response.status == 200:
                        return proc, url
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
    raise SystemExit("the service did not start")


async def bench(url: str, pid: int, transport: str, count: int) -> dict[str, float]:
    settings = Settings(jwt_secret=Secret(SECRET))
    alice = socketio.AsyncClient(reconnection=False)
    bob = socketio.AsyncClient(reconnection=False)
    received = 0
    all_in = asyncio.Event()

    async def on_candidate(msg: dict[str, object]) -> None:
        nonlocal received
        if msg.get("phase") == "burst":
            received += 1
            if received == count:
                all_in.set()

    bob.on("candidate", on_candidate)
    for client, user in ((alice, "alice"), (bob, "bob")):
        await client.connect(url, auth={"token": mint(settings, user)}, transports=[transport])
        await client.call("JoinSocket", user)
    await open_call(alice, bob, "bob", "alice")
    message = {"to": "bob", "candidate": CANDIDATE}

    rounds = min(count, 2000)
    latencies = []
    for _ in range(rounds):
        start = time.perf_counter()
        await alice.call("candidate", message)
        latencies.append(time.perf_counter() - start)
    await asyncio.sleep(0.2)

    burst = {**message, "phase": "burst"}
    cpu_before = cpu_seconds(pid)
    start = time.perf_counter()
    for i in range(count):
        await alice.emit("candidate", burst)
        if i % 50 == 49:
            await asyncio.sleep(0)  # let the client's writer flush, as an app's event loop would
    try:
        await asyncio.wait_for(all_in.wait(), 30)
    except TimeoutError:
        raise SystemExit(f"only {received} of {count} relays arrived") from None
    elapsed = time.perf_counter() - start
    cpu = cpu_seconds(pid) - cpu_before
    for client in (alice, bob):
        await client.disconnect()
        if client.eio.http is not None:  # python-socketio leaves its aiohttp session open
            await client.eio.http.close()
    latencies.sort()
    return {
        "ack_p50_ms": statistics.median(latencies) * 1000,
        "ack_p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "relays_per_s": count / elapsed,
        "server_cpu_us_per_relay": cpu / count * 1e6,
    }


async def main_async(transports: Sequence[str], count: int,
                     extra_env: dict[str, str] | None = None) -> dict[str, dict[str, float]]:
    proc, url = await start_service(extra_env)
    results: dict[str, dict[str, float]] = {}
    try:
        print(f"{count} relays of one ICE candidate, alice -> bob, service pid {proc.pid}")
        print(f"{'transport':<10} {'ack p50':>9} {'ack p99':>9} {'relays/s':>10} "
              f"{'server CPU/relay':>17}")
        for transport in transports:
            r = results[transport] = await bench(url, proc.pid, transport, count)
            print(f"{transport:<10} {r['ack_p50_ms']:>7.2f}ms {r['ack_p99_ms']:>7.2f}ms "
                  f"{r['relays_per_s']:>10.0f} {r['server_cpu_us_per_relay']:>15.0f}us")
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 10)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--transport", choices=["websocket", "polling"], action="append")
    args = parser.parse_args(argv)
    asyncio.run(main_async(args.transport or ["websocket", "polling"], args.count))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
