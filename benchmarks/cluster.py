#!/usr/bin/env python3
"""The cost of scale-out: relays/s and CPU per relay in memory, on Redis, on two workers.

    .venv/bin/python benchmarks/cluster.py [--count 5000] [--redis redis://127.0.0.1:6379/0]

For each mode a fresh ``sanic service.app`` is started (rate limits lifted) and alice sends
``count`` ICE candidates to bob over websocket without waiting for acks; with two workers,
bob is reconnected until he sits on the other worker than alice, so every relay crosses
Redis. Printed per mode: acknowledged round trip (p50), relays/s, CPU per relay of the
service processes and of redis-server, and Redis connections (clients connected during the
run, new connections accepted by Redis during it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import socketio
from engineio.payload import Payload
from redis import asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from calls import open_call  # noqa: E402
from relay import CANDIDATE, NO_LIMITS, SECRET, cpu_seconds  # noqa: E402

from service.auth import mint  # noqa: E402
from service.config import Secret, Settings  # noqa: E402

Payload.max_decode_packets = 1_000_000
REDIS_SECRET = "benchmark-cluster-secret-0123456789-0123456789"
TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class Node:
    """``sanic service.app`` in a process group of its own; rate limits lifted unless
    ``limits`` (the service's defaults then hold)."""

    def __init__(self, env: dict[str, str], workers: int, *, limits: bool = False) -> None:
        self.env, self.workers, self.limits = env, workers, limits
        self.lines: list[str] = []

    async def start(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "SIGNAL_JWT_SECRET": SECRET, "SIGNAL_ENV_FILE": "/dev/null",
               "SIGNAL_LOG_LEVEL": "INFO", **({} if self.limits else NO_LIMITS), **self.env}
        self.proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("sanic")), "service.app", "--host", "127.0.0.1",
            "--port", str(port), "--workers", str(self.workers), cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self._pump = asyncio.ensure_future(self._read())
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{self.url}/readyz") as response:
                        if response.status == 200:
                            await asyncio.sleep(0.3)  # every worker up
                            return
                await asyncio.sleep(0.05)
        raise SystemExit("service did not start:\n" + "\n".join(self.lines[-20:]))

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace"))

    def worker_of(self, sid: str) -> int | None:
        for line in self.lines:
            if line.startswith("{") and sid in line:
                record = json.loads(line)
                if record.get("event") == "connect" and record.get("sid") == sid:
                    return int(record["pid"])
        return None

    async def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)
        await asyncio.wait_for(self.proc.wait(), 30)
        self._pump.cancel()


async def connect(url: str, user: str) -> socketio.AsyncClient:
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(url, auth={"token": mint(Settings(jwt_secret=Secret(SECRET)), user)},
                         transports=["websocket"])
    await client.call("JoinSocket", user)
    return client


async def close(client: socketio.AsyncClient) -> None:
    await client.disconnect()
    if client.eio.http is not None:
        await client.eio.http.close()


async def redis_info(redis_url: str) -> dict[str, Any]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        info: dict[str, Any] = await client.info()
        return info
    finally:
        await client.aclose()


async def run_mode(name: str, count: int, redis_url: str) -> dict[str, float]:
    env: dict[str, str] = {}
    workers = 2 if name == "redis, 2 workers" else 1
    if name != "memory":
        env = {"SIGNAL_REDIS_URL": redis_url, "SIGNAL_REDIS_SECRET": REDIS_SECRET,
               "SIGNAL_REDIS_CHANNEL": f"bench-{uuid.uuid4().hex[:8]}"}
    node = Node(env, workers)
    await node.start()
    try:
        alice = await connect(node.url, "alice")
        await asyncio.sleep(0.1)
        bob = await connect(node.url, "bob")
        if workers > 1:
            for _ in range(40):
                await asyncio.sleep(0.1)
                if node.worker_of(alice.get_sid()) != node.worker_of(bob.get_sid()):
                    break
                await close(bob)
                bob = await connect(node.url, "bob")
            else:
                raise SystemExit("could not place alice and bob on different workers")
        received = 0
        done = asyncio.Event()

        async def on_candidate(message: dict[str, Any]) -> None:
            nonlocal received
            if message.get("burst"):
                received += 1
                if received == count:
                    done.set()

        bob.on("candidate", on_candidate)
        await open_call(alice, bob, "bob", "alice")
        message = {"to": "bob", "candidate": CANDIDATE}
        latencies = []
        for _ in range(500):
            started = time.perf_counter()
            ack = await alice.call("candidate", message)
            latencies.append(time.perf_counter() - started)
            assert ack == {"ok": True, "delivered": True}, ack
        info = await redis_info(redis_url) if env else {}
        redis_pid = int(info["process_id"]) if info else 0
        pids = [node.proc.pid]
        cpu0 = cpu_seconds(node.proc.pid)
        redis_cpu0 = process_cpu(redis_pid) if redis_pid else 0.0
        accepted0 = int(info.get("total_connections_received", 0))
        started = time.perf_counter()
        burst = {**message, "burst": True}
        for n in range(count):
            await alice.emit("candidate", burst)
            if n % 50 == 49:
                await asyncio.sleep(0)
        await asyncio.wait_for(done.wait(), 120)
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(pids[0]) - cpu0
        after = await redis_info(redis_url) if env else {}
        await close(alice)
        await close(bob)
        return {
            "ack_p50_ms": statistics.median(latencies) * 1000,
            "relays_per_s": count / elapsed,
            "service_cpu_us": cpu / count * 1e6,
            "redis_cpu_us": (process_cpu(redis_pid) - redis_cpu0) / count * 1e6
            if redis_pid else 0.0,
            "redis_clients": int(after.get("connected_clients", 0)),
            "redis_new_connections": int(after.get("total_connections_received", 0))
            - accepted0 - (1 if after else 0),
        }
    finally:
        await node.stop()


async def main_async(count: int, redis_url: str) -> None:
    modes = ("memory", "redis", "redis, 2 workers")
    print(f"{count} relays alice -> bob over websocket (rate limits lifted)")
    print(f"{'mode':<18} {'ack p50':>8} {'relays/s':>9} {'service CPU':>12} "
          f"{'redis CPU':>10} {'redis clients':>14} {'new conns':>10}")
    for mode in modes:
        r = await run_mode(mode, count, redis_url)
        print(f"{mode:<18} {r['ack_p50_ms']:>6.2f}ms {r['relays_per_s']:>9.0f} "
              f"{r['service_cpu_us']:>9.0f} us {r['redis_cpu_us']:>7.0f} us "
              f"{r['redis_clients']:>14} {r['redis_new_connections']:>10}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)
    asyncio.run(main_async(args.count, args.redis))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
