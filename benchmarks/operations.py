#!/usr/bin/env python3
"""What an operator checks, against real processes: metrics and TURN.

    .venv/bin/python benchmarks/operations.py [--workers 2 --redis redis://127.0.0.1:6379/0]

Starts Debian's coturn (``turnserver``, use-auth-secret, on a free loopback port) and
``sanic service.app`` with ``SIGNAL_TURN_URLS`` pointing at it (and, with ``--workers 2``,
on Redis), then: connects clients and runs whole calls between them; scrapes ``/metrics``
several times and parses it with prometheus-client's parser, checking that connects, events,
relays and calls equal what was sent, whichever worker answered; fetches the ICE servers
(``GET /ice-servers`` and ``GetIceServers``) and allocates on coturn with the served TURN
credentials (and checks that a tampered credential is refused). Prints one line per check;
exit status 1 when one failed. Independent of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import socketio
from aioice.stun import TransactionFailed
from aioice.turn import create_turn_endpoint
from calls import open_call
from cluster import REDIS_SECRET, Node
from prometheus_client.parser import text_string_to_metric_families
from relay import SECRET

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.auth import mint  # noqa: E402
from service.config import Secret, Settings  # noqa: E402

TURN_SECRET = "operations-harness-turn-secret-0123456789"
TOKENS = Settings(jwt_secret=Secret(SECRET))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        return int(udp.getsockname()[1])


@contextlib.asynccontextmanager
async def coturn() -> Any:
    binary = shutil.which("turnserver")
    if binary is None:
        raise SystemExit("operations: coturn's turnserver is needed (apt-get install coturn)")
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = await asyncio.create_subprocess_exec(
            binary, "-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1",
            f"--listening-port={port}", "--use-auth-secret",
            f"--static-auth-secret={TURN_SECRET}", "--realm=operations.test", "--no-tls",
            "--no-dtls", "--no-cli", "--allow-loopback-peers", f"--pidfile={tmp}/pid",
            f"--userdb={tmp}/db", "--simple-log", f"--log-file={tmp}/log",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            for _ in range(200):
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            yield port
        finally:
            proc.terminate()
            await proc.wait()


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


class Harness:
    def __init__(self, url: str, turn_port: int) -> None:
        self.url, self.turn_port = url, turn_port
        self.results: list[tuple[str, bool, str]] = []

    def record(self, name: str, ok: bool, detail: str = "") -> None:
        self.results.append((name, ok, detail))
        print(f"{'ok' if ok else 'FAILED':<7} {name}{': ' + detail if detail else ''}",
              flush=True)

    async def client(self, user: str) -> socketio.AsyncClient:
        sio = socketio.AsyncClient(reconnection=False)
        await sio.connect(self.url, auth={"token": mint(TOKENS, user, 600)},
                          transports=["websocket"], wait_timeout=10)
        await sio.call("JoinSocket", user)
        return sio

    async def metrics(self, pairs: int) -> None:
        prefix = uuid.uuid4().hex[:6]
        clients = [await self.client(f"{prefix}-{n}") for n in range(2 * pairs)]
        try:
            for n in range(pairs):
                caller, callee = clients[2 * n], clients[2 * n + 1]
                await open_call(caller, callee, f"{prefix}-{2 * n + 1}", f"{prefix}-{2 * n}")
                await caller.call("hangup", {"to": f"{prefix}-{2 * n + 1}"})
            expected = {("signaling_connects_total", (("result", "ok"),)): 2 * pairs,
                        ("signaling_events_total", (("event", "JoinSocket"),
                                                    ("outcome", "ok"))): 2 * pairs,
                        ("signaling_relays_total", (("result", "delivered"),)): 3 * pairs,
                        ("signaling_calls_opened_total", ()): pairs}
            deadline = time.monotonic() + 10
            while True:  # each worker adds its counts (and its gauge) every second
                async with aiohttp.ClientSession() as http, http.get(
                        f"{self.url}/metrics") as response:
                    samples = parse(await response.text())
                gauge = samples.get(("signaling_connections", (("transport", "websocket"),)))
                settled = all(samples.get(k) == v for k, v in expected.items())
                if (gauge == 2 * pairs and settled) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            self.record("metrics: connections now", gauge == 2 * pairs, f"{gauge}")
            wrong = []
            for _ in range(8):  # with several workers, scrapes land on any of them
                async with aiohttp.ClientSession() as http, http.get(
                        f"{self.url}/metrics") as response:
                    samples = parse(await response.text())
                wrong += [f"{k[0]}{dict(k[1])}={samples.get(k)} (sent {v})"
                          for k, v in expected.items() if samples.get(k) != v]
            self.record("metrics: connects, joins, relays, calls equal the traffic, on "
                        "every scrape", not wrong, "; ".join(sorted(set(wrong))))
        finally:
            for sio in clients:
                await sio.disconnect()

    async def turn(self) -> None:
        token = mint(TOKENS, "turn-user", 600)
        async with aiohttp.ClientSession() as http, http.get(
                f"{self.url}/ice-servers",
                headers={"Authorization": f"Bearer {token}"}) as response:
            servers = (await response.json())["iceServers"]
        entry = next((s for s in servers if s.get("username")), None)
        self.record("ice-servers: a TURN entry with minted credentials", entry is not None)
        if entry is None:
            return
        sio = await self.client("turn-user-2")
        ack = await sio.call("GetIceServers")
        await sio.disconnect()
        self.record("GetIceServers: the same, for the socket's user",
                    ack.get("ok") is True and ack["iceServers"][-1]["username"].endswith(
                        ":turn-user-2"))
        for label, credential, should in (("served credentials", entry["credential"], True),
                                          ("tampered credential", "x" + entry["credential"],
                                           False)):
            try:
                transport, _ = await asyncio.wait_for(create_turn_endpoint(
                    asyncio.DatagramProtocol, ("127.0.0.1", self.turn_port),
                    entry["username"], credential), 10)
                transport.close()
                allocated = True
            except TransactionFailed:
                allocated = False
            self.record(f"coturn allocation with the {label}: "
                        f"{'allocated' if should else 'refused'}", allocated == should)


async def main_async(workers: int, redis_url: str | None, pairs: int) -> int:
    async with coturn() as turn_port:
        env = {"SIGNAL_TURN_URLS": f"turn:127.0.0.1:{turn_port}",
               "SIGNAL_TURN_SECRET": TURN_SECRET}
        if redis_url:
            env |= {"SIGNAL_REDIS_URL": redis_url, "SIGNAL_REDIS_SECRET": REDIS_SECRET,
                    "SIGNAL_REDIS_CHANNEL": f"ops-{uuid.uuid4().hex[:8]}"}
        node = Node(env, workers)
        await node.start()
        try:
            print(f"operations: {workers} worker(s), coturn on {turn_port}", flush=True)
            harness = Harness(node.url, turn_port)
            await harness.metrics(pairs)
            await harness.turn()
        finally:
            await node.stop()
    failed = [r for r in harness.results if not r[1]]
    print(f"{len(harness.results) - len(failed)} of {len(harness.results)} checks hold",
          flush=True)
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--redis", help="Redis URL (needed with more than one worker)")
    parser.add_argument("--pairs", type=int, default=6)
    args = parser.parse_args()
    if args.workers > 1 and not args.redis:
        parser.error("--workers > 1 needs --redis")
    return asyncio.run(main_async(args.workers, args.redis, args.pairs))


if __name__ == "__main__":
    raise SystemExit(main())
