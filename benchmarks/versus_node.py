#!/usr/bin/env python3
"""The service against a Node socket.io 4.8 server doing the same job, in one run.

    .venv/bin/python benchmarks/versus_node.py [--smoke] [--no-redis] [--untuned] [--json F]

The Node server (``node_reference/server.mjs``) is tuned the way its users tune it for this
job: websocket transport only, no per-message deflate, the handshake request dropped once
connected (``raw.request = null``), HS256 checked with Node's own crypto HMAC; ``--untuned``
measures it as it comes too (both transports, jsonwebtoken), beside the tuned one.

Each server runs alone, pinned to CPU 0 (``taskset``), with its limits raised far above the load
but left on (``SIGNAL_LIMIT_*=1000000:1000000``, ``SIGNAL_MAX_CONNECTIONS_PER_USER=0``). The
load generator is ``node_reference/load.mjs`` (raw Engine.IO 4 / Socket.IO 5 clients over
``ws``, a JWT in the auth payload), one Node process pinned to CPU 1, the same for both servers;
the Node server and generator have their npm dependencies installed by this script. Scenarios,
each measured on both servers:

- connect storm: ``--connects`` clients, 100 handshakes in flight: connects/s, handshake
  p50/p99, server CPU per connect, handshakes that failed or took over 30 s; then, all of
  them open and silent, RSS growth per connection and the server's idle CPU share over
  ``--idle-seconds``;
- the same at ``--many`` (10,000) connections;
- saturated relays: 50 pairs, each sender keeping 4 acknowledged relays in flight, for
  ``--seconds``, with a 200 B and a 3 KB payload: relays/s and server CPU per relay (and
  relays refused, e.g. ``unavailable``, which do not count);
- a fixed ``--rate`` (1,000 relays/s) over 10 pairs: delivery latency p50/p99/max and the
  server's CPU share;
- churn: relays between 10 pairs while a second generator connects and disconnects
  ``--churn-batch`` clients at a time: RSS before, after, and once they are gone;
- the Redis path (the service only; ``--no-redis`` skips it): saturated 200 B relays with
  ``SIGNAL_REDIS_URL`` set, one worker (CPU 0) and two workers (CPUs 0-1, sharing CPU 1 with
  the generator on this 2-core machine), as ratios to the in-memory run and to one worker.

Server CPU and RSS are read from /proc (the server and its children). A run where processes
other than the servers, this script and the generator(s) used more than 10 % of a core is
flagged ``busy``. ``--smoke`` runs every scenario at a tiny size, for CI: no time thresholds,
only that both servers answer.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from attacks import rss_mib, write_report  # noqa: E402
from relay import SECRET, cpu_seconds  # noqa: E402

from service.auth import mint  # noqa: E402
from service.config import Secret, Settings  # noqa: E402

NODE_DIR = ROOT / "benchmarks" / "node_reference"
HIGH = "1000000:1000000"
LIMITS = {f"SIGNAL_LIMIT_{name}": HIGH for name in (
    "RELAYS", "USER_RELAYS", "ROOMS", "REFRESHES", "OTHER", "STRIKES", "IP_CONNECTS",
    "USER_CONNECTS", "IP_AUTH_FAILURES", "PACKETS", "IP_PACKETS")}
TOKENS = Settings(jwt_secret=Secret(SECRET))
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
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
                 port: int, cpus: str = "0") -> None:
        self.name, self.argv, self.env, self.cwd, self.port = name, argv, env, cwd, port
        self.cpus = cpus
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self) -> None:
        taskset = ["taskset", "-c", self.cpus] if shutil.which("taskset") else []
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


def python_server(workers: int = 1, cpus: str = "0", redis: bool = False) -> Server:
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SIGNAL_")},
           "SIGNAL_JWT_SECRET": SECRET, "SIGNAL_ENV_FILE": "/dev/null",
           "SIGNAL_LOG_LEVEL": "WARNING", "SIGNAL_MAX_CONNECTIONS_PER_USER": "0", **LIMITS}
    if redis:
        env.update(SIGNAL_REDIS_URL=REDIS_URL, SIGNAL_REDIS_SECRET=SECRET,
                   SIGNAL_REDIS_CHANNEL=f"bench-{port}")
    sanic = str(Path(sys.executable).with_name("sanic"))
    return Server("python", [sanic, "service.app", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", str(workers)], env, ROOT, port, cpus)


def install_node_modules() -> None:
    """The Node server's and the load generator's npm dependencies (lockfile), once."""
    if not (NODE_DIR / "node_modules" / "ws").is_dir():
        subprocess.run(["npm", "ci", "--silent", "--no-audit", "--no-fund"], cwd=NODE_DIR,
                       check=True)


def node_server(*, tuned: bool = True) -> Server:
    """The Node reference: tuned as its users tune it for this job (``TUNED=1``: websocket
    only, no deflate, the handshake request dropped, HS256 with Node's crypto), or not."""
    port = free_port()
    return Server("node", ["node", "server.mjs"], {**os.environ, "PORT": str(port),
                                                    "SECRET": SECRET,
                                                    "TUNED": "1" if tuned else "0"},
                  NODE_DIR, port)


class Load:
    """The load generator (``node_reference/load.mjs``: raw Engine.IO/Socket.IO clients over
    ``ws``), pinned to ``cpus``, driven one JSON command per line."""

    def __init__(self, url: str, cpus: str = "1") -> None:
        self.url, self.cpus = url, cpus
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Load:
        taskset = ["taskset", "-c", self.cpus] if shutil.which("taskset") else []
        self.proc = await asyncio.create_subprocess_exec(
            *taskset, "node", "load.mjs", self.url, cwd=NODE_DIR, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, limit=64 * 1024 * 1024)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()

    async def run(self, cmd: str, **params: Any) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        self.proc.stdin.write((json.dumps({"cmd": cmd, **params}) + "\n").encode())
        await self.proc.stdin.drain()
        line = await self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"load generator ended during {cmd}")
        result: dict[str, Any] = json.loads(line)
        if "error" in result:
            raise SystemExit(f"load generator: {cmd}: {result['error']}")
        return result

    async def connect(self, users: Sequence[str], inflight: int = 100) -> dict[str, Any]:
        tokens = [mint(TOKENS, user, 3600) for user in users]
        return await self.run("connect", tokens=tokens, inflight=inflight)

    async def pairs(self, prefix: str, count: int) -> tuple[list[int], list[int], list[str]]:
        """``count`` senders, each in an answered call with its receiver."""
        callers = [f"{prefix}s{n}" for n in range(count)]
        senders = (await self.connect(callers))["ids"]
        users = [f"{prefix}r{n}" for n in range(count)]
        receivers = (await self.connect(users))["ids"]
        if None in senders or None in receivers:
            raise SystemExit(f"{prefix}: connections failed")
        await self.run("join", ids=receivers, users=users)
        await self.run("calls", senders=senders, receivers=receivers, to=users, **{
            "from": callers})
        return senders, receivers, users


async def measured(server: Server, work: Callable[[], Awaitable[Any]],
                   generators: int = 1) -> tuple[Any, dict[str, Any]]:
    """Run ``work``; its result and what the server (and everyone else) spent meanwhile.
    ``busy``: processes other than the server, this script and the load generator(s)
    (at most one core each) used more than 10 % of a core."""
    cpu, system, started = cpu_seconds(server.pid), system_cpu_seconds(), time.monotonic()
    result = await work()
    wall = time.monotonic() - started
    server_cpu = cpu_seconds(server.pid) - cpu
    others = system_cpu_seconds() - system - server_cpu
    return result, {"wall_s": wall, "server_cpu_s": server_cpu,
                    "busy": others > (generators + 0.10) * wall}


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * share) - 1)] if ordered else 0.0


async def connect_and_idle(server: Server, load: Load, count: int, idle_seconds: float,
                           prefix: str) -> dict[str, Any]:
    """``count`` connections, 100 handshakes in flight; then, all of them open and silent,
    the server's RSS per connection and its CPU share over ``idle_seconds``."""
    rss_before = rss_mib(server.pid)
    result, spent = await measured(server, lambda: load.connect(
        [f"{prefix}{n}" for n in range(count)]))
    await asyncio.sleep(1.0)
    rss_after = rss_mib(server.pid)
    _, idle = await measured(server, lambda: asyncio.sleep(idle_seconds))
    times = result["times_ms"] or [0.0]
    opened = [i for i in result["ids"] if i is not None]
    await load.run("close", ids=opened)
    return {
        "connects_per_s": round(len(opened) / spent["wall_s"]),
        "failed": result["failed"],
        "handshake_p50_ms": round(statistics.median(times), 2),
        "handshake_p99_ms": round(percentile(times, 0.99), 2),
        "server_cpu_per_connect_ms": round(spent["server_cpu_s"] / count * 1000, 3),
        "idle_kb_per_connection": round((rss_after - rss_before) * 1024
                                        / max(len(opened), 1), 1),
        "idle_cpu_percent": round(idle["server_cpu_s"] / idle["wall_s"] * 100, 2),
        "busy": spent["busy"] or idle["busy"],
    }


async def saturated(server: Server, load: Load, pairs: int, seconds: float, pad: int = 0,
                    prefix: str = "sat") -> dict[str, Any]:
    """``pairs`` senders, each keeping 4 acknowledged relays in flight to its receiver."""
    senders, receivers, users = await load.pairs(prefix, pairs)
    result, spent = await measured(server, lambda: load.run(
        "relay", senders=senders, to=users, depth=4, seconds=seconds, pad=pad))
    await load.run("close", ids=senders + receivers)
    done = result["done"]
    return {"relays_per_s": round(done / spent["wall_s"]),
            "server_cpu_us_per_relay": round(spent["server_cpu_s"] / max(done, 1) * 1e6, 1),
            "relays": done, "refused": result["refused"], "busy": spent["busy"]}


async def fixed_rate(server: Server, load: Load, rate: int, seconds: float) -> dict[str, Any]:
    """``rate`` relays/s spread over 10 pairs: delivery latency sender → receiver and the
    server's CPU share."""
    senders, receivers, users = await load.pairs("fixed", 10)
    result, spent = await measured(server, lambda: load.run(
        "fixed", senders=senders, receivers=receivers, to=users, rate=rate, seconds=seconds))
    await load.run("close", ids=senders + receivers)
    ms = result["latencies_ms"] or [0.0]
    return {"delivered": result["delivered"], "p50_ms": round(statistics.median(ms), 3),
            "p99_ms": round(percentile(ms, 0.99), 3), "max_ms": round(ms[-1], 3),
            "server_cpu_percent": round(spent["server_cpu_s"] / spent["wall_s"] * 100, 1),
            "busy": spent["busy"]}


async def churn(server: Server, load: Load, pairs: int, seconds: float, batch: int
                ) -> dict[str, Any]:
    """Relays between ``pairs`` pairs while a second generator connects and disconnects
    ``batch`` clients at a time for ``seconds``; the server's RSS before, right after, and
    once the churned connections are gone (it should come back near where it started)."""
    senders, receivers, users = await load.pairs("churn", pairs)
    await asyncio.sleep(0.5)
    baseline = rss_mib(server.pid)
    cycles = 0

    async def churning() -> None:
        nonlocal cycles
        async with Load(load.url, load.cpus) as other:
            stop_at = time.monotonic() + seconds
            while time.monotonic() < stop_at:
                ids = (await other.connect([f"c{cycles}-{n}" for n in range(batch)]))["ids"]
                await other.run("close", ids=[i for i in ids if i is not None])
                cycles += 1

    async def both() -> Any:
        relayed, _ = await asyncio.gather(load.run(
            "relay", senders=senders, to=users, depth=1, seconds=seconds, pad=0), churning())
        return relayed

    result, spent = await measured(server, both, generators=2)
    peak = rss_mib(server.pid)
    await load.run("close", ids=senders + receivers)
    await asyncio.sleep(2.0)
    settled = rss_mib(server.pid)
    return {"connections_churned": cycles * batch, "relays": result["done"],
            "rss_baseline_mib": round(baseline, 1), "rss_after_churn_mib": round(peak, 1),
            "rss_settled_mib": round(settled, 1),
            "rss_growth_kb_per_churned": round((settled - baseline) * 1024
                                               / max(cycles * batch, 1), 3),
            "busy": spent["busy"]}


async def run_server(server: Server, sizes: argparse.Namespace) -> dict[str, Any]:
    await server.start()
    try:
        async with Load(server.url) as load:
            scenarios: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
                "connect_storm": lambda: connect_and_idle(server, load, sizes.connects,
                                                          sizes.idle_seconds, "u"),
                f"idle_{sizes.many}": lambda: connect_and_idle(server, load, sizes.many,
                                                               sizes.idle_seconds, "m"),
                "relays_200B": lambda: saturated(server, load, sizes.pairs, sizes.seconds),
                "relays_3KB": lambda: saturated(server, load, sizes.pairs, sizes.seconds,
                                                PAD_3KB, "big"),
                f"fixed_{sizes.rate}_per_s": lambda: fixed_rate(server, load, sizes.rate,
                                                                sizes.seconds),
                "churn": lambda: churn(server, load, 10, sizes.seconds, sizes.churn_batch),
            }
            report: dict[str, Any] = {}
            for name, scenario in scenarios.items():
                try:
                    report[name] = await scenario()
                except SystemExit as failure:  # reported, and the next scenario runs
                    report[name] = {"error": str(failure)}
            return report
    finally:
        await server.stop()


async def redis_path(sizes: argparse.Namespace, in_memory: dict[str, Any]) -> dict[str, Any]:
    """Saturated 200 B relays through Redis (SIGNAL_REDIS_URL), one worker on CPU 0 and two
    workers on CPUs 0-1 (the generator then shares CPU 1 with a worker); relays/s as a ratio
    to the in-memory run, and two workers to one."""
    out: dict[str, Any] = {}
    for workers, cpus in ((1, "0"), (2, "0,1")):
        server = python_server(workers=workers, cpus=cpus, redis=True)
        await server.start()
        try:
            async with Load(server.url) as load:
                try:
                    out[f"workers_{workers}"] = await saturated(server, load, sizes.pairs,
                                                                sizes.seconds, prefix="redis")
                except SystemExit as failure:
                    out[f"workers_{workers}"] = {"error": str(failure), "relays_per_s": 0}
        finally:
            await server.stop()
    base = in_memory["relays_200B"].get("relays_per_s", 0)
    one = out["workers_1"]["relays_per_s"]
    out["one_worker_to_in_memory"] = round(one / base, 2) if base else None
    out["two_workers_to_one"] = round(out["workers_2"]["relays_per_s"] / one, 2) if one else None
    return out


def ratios(python: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for scenario, values in python.items():
        out[scenario] = {key: round(value / node[scenario][key], 2)
                         for key, value in values.items()
                         if isinstance(value, (int, float)) and not isinstance(value, bool)
                         and isinstance(node[scenario].get(key), (int, float))
                         and node[scenario][key]}
    return out


async def main_async(sizes: argparse.Namespace) -> dict[str, Any]:
    install_node_modules()
    with __import__("contextlib").suppress(OSError):
        os.sched_setaffinity(0, {1})  # this script stays off the servers' core
    report: dict[str, Any] = {"python": await run_server(python_server(), sizes),
                              "node": await run_server(node_server(), sizes)}
    report["ratio_python_to_node"] = ratios(report["python"], report["node"])
    if sizes.untuned:  # beside it, the Node server as it comes
        report["node_untuned"] = await run_server(node_server(tuned=False), sizes)
        report["ratio_python_to_node_untuned"] = ratios(report["python"],
                                                        report["node_untuned"])
    if sizes.redis:
        report["redis"] = await redis_path(sizes, report["python"])
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--connects", type=int, default=2000)
    parser.add_argument("--many", type=int, default=10_000,
                        help="connections of the large idle scenario")
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=int, default=1000, help="relays/s of the fixed run")
    parser.add_argument("--churn-batch", type=int, default=200)
    parser.add_argument("--no-redis", dest="redis", action="store_false",
                        help="skip the Redis path (needs Redis on 127.0.0.1:6379)")
    parser.add_argument("--untuned", action="store_true",
                        help="also measure the Node server untuned (both transports, "
                             "jsonwebtoken, the handshake request kept)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.connects, args.many, args.idle_seconds = 20, 40, 0.2
        args.pairs, args.seconds, args.rate, args.churn_batch = 2, 0.5, 100, 5
    write_report(asyncio.run(main_async(args)), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
