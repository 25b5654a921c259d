#!/usr/bin/env python3
"""The service against a Node socket.io 4.8 server doing the same job, in one run.

    .venv/bin/python benchmarks/versus_node.py [--smoke] [--json FILE]

Each server runs alone, pinned to CPU 0 (``taskset``), with its limits raised far above the load
but left on (``SIGNAL_LIMIT_*=1000000:1000000``, ``SIGNAL_MAX_CONNECTIONS_PER_USER=0``); the
load generator (raw Engine.IO 4 / Socket.IO 5 over websockets, a JWT in the auth payload) runs
on CPU 1. The Node server (``benchmarks/node_reference/``) has its npm dependencies installed by
this script. Scenarios, each measured on both servers:

- connect storm: ``--connects`` clients, 100 in flight: connects/s, handshake p50/p99, server
  CPU per connect; the connections then stay open, idle, for
- idle memory: server RSS growth per open connection;
- saturated relays: 50 pairs, each sender keeping 4 acknowledged relays in flight, for
  ``--seconds``, with a 200 B and a 3 KB payload: relays/s and server CPU per relay;
- a fixed ``--rate`` (1,000 relays/s) over 10 pairs: delivery latency p50/p99/max and the
  server's CPU share.

Server CPU and RSS are read from /proc (the server and its children). A run where processes
other than the two measured ones used more than 10 % of a core is flagged ``busy``. ``--smoke``
runs every scenario at a tiny size, for CI: no time thresholds, only that both servers answer.
Not yet here (issue 11): idle CPU and 10,000 connections, churn, and the Redis path; and the
load generator, one Python process, is the bottleneck for Node's relays/s and connects/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import websockets

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from attacks import rss_mib, write_report  # noqa: E402
from relay import CANDIDATE, SECRET, cpu_seconds  # noqa: E402

from service.auth import mint  # noqa: E402
from service.config import Secret, Settings  # noqa: E402

NODE_DIR = ROOT / "benchmarks" / "node_reference"
HIGH = "1000000:1000000"
LIMITS = {f"SIGNAL_LIMIT_{name}": HIGH for name in (
    "RELAYS", "USER_RELAYS", "ROOMS", "REFRESHES", "OTHER", "STRIKES", "IP_CONNECTS",
    "IP_AUTH_FAILURES", "PACKETS", "IP_PACKETS")}
TOKENS = Settings(jwt_secret=Secret(SECRET))
#: a 3 KB relay: the candidate plus an app field (a candidate line itself is at most 2 KB)
PAD_3KB = 2800


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def system_cpu_seconds() -> float:
    """All CPU time spent by anyone on this machine, from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    busy = sum(int(v) for i, v in enumerate(fields) if i not in (3, 4))  # not idle, iowait
    return busy / os.sysconf("SC_CLK_TCK")


class Server:
    """One server process, pinned to CPU 0."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path,
                 port: int) -> None:
        self.name, self.argv, self.env, self.cwd, self.port = name, argv, env, cwd, port
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        taskset = ["taskset", "-c", "0"] if shutil.which("taskset") else []
        self.proc = await asyncio.create_subprocess_exec(
            *taskset, *self.argv, cwd=self.cwd, env=self.env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                try:
                    async with http.get(f"{self.url}/healthz") as response:
                        if response.status == 200:
                            await asyncio.sleep(0.5)  # workers settle
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise SystemExit(f"{self.name} did not start")

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        os.killpg(self.proc.pid, 9)
        await self.proc.wait()


def python_server() -> Server:
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SIGNAL_")},
           "SIGNAL_JWT_SECRET": SECRET, "SIGNAL_ENV_FILE": "/dev/null",
           "SIGNAL_LOG_LEVEL": "WARNING", "SIGNAL_MAX_CONNECTIONS_PER_USER": "0", **LIMITS}
    sanic = str(Path(sys.executable).with_name("sanic"))
    return Server("python", [sanic, "service.app", "--host", "127.0.0.1", "--port", str(port)],
                  env, ROOT, port)


def node_server() -> Server:
    if not (NODE_DIR / "node_modules").is_dir():
        subprocess.run(["npm", "ci", "--silent", "--no-audit", "--no-fund"], cwd=NODE_DIR,
                       check=True)
    port = free_port()
    return Server("node", ["node", "server.mjs"], {**os.environ, "PORT": str(port),
                                                    "SECRET": SECRET}, NODE_DIR, port)


class Client:
    """A raw Engine.IO 4 / Socket.IO 5 client over one websocket."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.next_id = 0
        self.acks: dict[int, asyncio.Future[Any]] = {}
        self.on_event: Callable[[str, Any], None] | None = None
        self.reader: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, url: str, user: str) -> tuple[Client, float]:
        started = time.perf_counter()
        ws = await websockets.connect(
            url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket",
            max_size=None, compression=None)
        await ws.recv()
        await ws.send("40" + json.dumps({"token": mint(TOKENS, user, 3600)}))
        while not str(await ws.recv()).startswith("40"):
            pass
        client = cls(ws)
        client.reader = asyncio.ensure_future(client._read())
        return client, time.perf_counter() - started

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                text = str(frame)
                if text == "2":
                    await self.ws.send("3")
                elif text.startswith("43"):
                    bracket = text.index("[")
                    future = self.acks.pop(int(text[2:bracket]), None)
                    if future is not None and not future.done():
                        future.set_result(json.loads(text[bracket:])[0])
                elif text.startswith("42") and self.on_event is not None:
                    event, data = json.loads(text[2:])
                    self.on_event(event, data)
        except websockets.ConnectionClosed:
            pass

    async def call(self, event: str, data: Any) -> Any:
        self.next_id += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.acks[self.next_id] = future
        await self.ws.send(f"42{self.next_id}" + json.dumps([event, data]))
        return await future

    async def close(self) -> None:
        await self.ws.close()
        if self.reader is not None:
            await self.reader


async def measured(server: Server, work: Callable[[], Awaitable[Any]]) -> tuple[Any, dict[str,
                                                                                      float]]:
    """Run ``work``; its result and what the server (and everyone else) spent meanwhile."""
    own = cpu_seconds(os.getpid())
    cpu, system, started = cpu_seconds(server.pid), system_cpu_seconds(), time.monotonic()
    result = await work()
    wall = time.monotonic() - started
    server_cpu = cpu_seconds(server.pid) - cpu
    others = system_cpu_seconds() - system - server_cpu - (cpu_seconds(os.getpid()) - own)
    return result, {"wall_s": wall, "server_cpu_s": server_cpu,
                    "busy": others > 0.10 * wall}


async def connect_storm(server: Server, count: int) -> tuple[list[Client], dict[str, Any]]:
    clients: list[Client] = []
    times: list[float] = []
    gate = asyncio.Semaphore(100)
    rss_before = rss_mib(server.pid)

    async def one(n: int) -> None:
        async with gate:
            client, took = await Client.connect(server.url, f"u{n}")
            clients.append(client)
            times.append(took)

    async def storm() -> None:
        await asyncio.gather(*(one(n) for n in range(count)))

    _, spent = await measured(server, storm)
    await asyncio.sleep(1.0)
    rss_after = rss_mib(server.pid)
    times.sort()
    return clients, {
        "connects_per_s": round(count / spent["wall_s"]),
        "handshake_p50_ms": round(statistics.median(times) * 1000, 2),
        "handshake_p99_ms": round(times[int(len(times) * 0.99) - 1] * 1000, 2),
        "server_cpu_per_connect_ms": round(spent["server_cpu_s"] / count * 1000, 3),
        "idle_kb_per_connection": round((rss_after - rss_before) * 1024 / count, 1),
        "busy": spent["busy"],
    }


async def saturated(server: Server, pairs: int, seconds: float, pad: int = 0
                    ) -> dict[str, Any]:
    senders, receivers = [], []
    for n in range(pairs):
        sender, _ = await Client.connect(server.url, f"s{n}")
        receiver, _ = await Client.connect(server.url, f"r{n}")
        assert (await receiver.call("JoinSocket", f"r{n}"))["ok"]
        senders.append(sender)
        receivers.append(receiver)
    done = 0
    stop_at = 0.0

    async def pump(sender: Client, to: str) -> None:
        nonlocal done
        message: dict[str, Any] = {"to": to, "candidate": CANDIDATE}
        if pad:
            message["pad"] = "x" * pad
        while time.monotonic() < stop_at:
            ack = await sender.call("candidate", message)
            assert ack.get("delivered") is True, ack
            done += 1

    async def run() -> None:
        nonlocal stop_at
        stop_at = time.monotonic() + seconds
        await asyncio.gather(*(pump(s, f"r{n}") for n, s in enumerate(senders)
                               for _ in range(4)))

    _, spent = await measured(server, run)
    for client in senders + receivers:
        await client.close()
    return {"relays_per_s": round(done / spent["wall_s"]),
            "server_cpu_us_per_relay": round(spent["server_cpu_s"] / max(done, 1) * 1e6, 1),
            "relays": done, "busy": spent["busy"]}


async def fixed_rate(server: Server, rate: int, seconds: float) -> dict[str, Any]:
    """``rate`` relays/s spread over 10 pairs: delivery latency sender → receiver and the
    server's CPU share."""
    pairs = 10
    senders, receivers = [], []
    latencies: list[float] = []
    for n in range(pairs):
        sender, _ = await Client.connect(server.url, f"fs{n}")
        receiver, _ = await Client.connect(server.url, f"fr{n}")
        receiver.on_event = lambda event, data: latencies.append(time.perf_counter() - data["t"])
        assert (await receiver.call("JoinSocket", f"fr{n}"))["ok"]
        senders.append(sender)
        receivers.append(receiver)
    pending: set[asyncio.Task[Any]] = set()

    async def run() -> None:
        start = time.perf_counter()
        total = int(rate * seconds)
        for n in range(total):
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            message = {"to": f"fr{n % pairs}", "candidate": CANDIDATE, "t": time.perf_counter()}
            task = asyncio.ensure_future(senders[n % pairs].call("candidate", message))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)

    _, spent = await measured(server, run)
    for client in senders + receivers:
        await client.close()
    latencies.sort()
    ms = [x * 1000 for x in latencies] or [0.0]
    return {"delivered": len(latencies), "p50_ms": round(statistics.median(ms), 3),
            "p99_ms": round(ms[max(0, int(len(ms) * 0.99) - 1)], 3),
            "max_ms": round(ms[-1], 3),
            "server_cpu_percent": round(spent["server_cpu_s"] / spent["wall_s"] * 100, 1),
            "busy": spent["busy"]}


async def run_server(server: Server, connects: int, pairs: int, seconds: float,
                     rate: int) -> dict[str, Any]:
    await server.start()
    try:
        clients, storm = await connect_storm(server, connects)
        for client in clients:
            await client.close()
        return {
            "connect_storm": storm,
            "relays_200B": await saturated(server, pairs, seconds),
            "relays_3KB": await saturated(server, pairs, seconds, PAD_3KB),
            f"fixed_{rate}_per_s": await fixed_rate(server, rate, seconds),
        }
    finally:
        await server.stop()


def ratios(python: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for scenario, values in python.items():
        out[scenario] = {key: round(value / node[scenario][key], 2)
                         for key, value in values.items()
                         if isinstance(value, (int, float)) and not isinstance(value, bool)
                         and node[scenario].get(key)}
    return out


async def main_async(connects: int, pairs: int, seconds: float, rate: int
                     ) -> dict[str, Any]:
    with __import__("contextlib").suppress(OSError):
        os.sched_setaffinity(0, {1})  # the load generator stays off the servers' core
    report = {"python": await run_server(python_server(), connects, pairs, seconds, rate),
              "node": await run_server(node_server(), connects, pairs, seconds, rate)}
    report["ratio_python_to_node"] = ratios(report["python"], report["node"])
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--connects", type=int, default=2000)
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=int, default=1000, help="relays/s of the fixed run")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.connects, args.pairs, args.seconds, args.rate = 20, 2, 0.5, 100
    write_report(asyncio.run(main_async(args.connects, args.pairs, args.seconds, args.rate)),
                 args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
