#!/usr/bin/env python3
"""Replays issue 10's attack run against ``sanic service.app`` with default settings.

    .venv/bin/python benchmarks/attacks.py [--posts 20]

Each attack, with what it measures in the service process (its RSS and CPU from /proc, so the
attacker's own cost is excluded) and in a well-behaved client beside it:

1. Engine.IO floods: POSTs of 32,768 UPGRADE packets (64 KiB), with and without a token, then
   POSTs of 400 (under the per-POST bound): the answers, the worker's RSS before and after,
   and /healthz latency (max, p50) while it happens.
2. Costly payloads: server CPU per crafted relay (a 56 KB list of integers, 5,900 tiny keys, an
   unknown event carrying the list) as a ratio to a normal ICE candidate relay, same run.
3. Log injection: an Engine.IO sid with a newline and a forged record; every line the service
   printed must parse as JSON.
4. The /ice-servers token oracle: 200 bad tokens as fast as possible: how many got to be
   verified (401) before the address budget answered 429.
5. Side doors: a handshake marked ``Sec-Fetch-Mode: no-cors`` and a JSONP one.
6. The owned transport's bounds (issue 19, items 1-4), each from one client without reading
   what the service sends: 20 websocket upgrades of one polling session that never
   authenticates (the worker's open sockets before, at once, and after the auth timeout); 40 MB
   of 60 KB messages while the connect waits on a slow IdP (the worker's RSS, and what the
   client got to write); a 1-byte first fragment then 1,000,000 empty continuation frames;
   120,000 websocket PINGs. For each: the worker's RSS and CPU before and after, and whether
   and how the connection was closed.

``--only transport`` runs part 6 alone (it also runs unchanged against the code before issue
19: copy this file there).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import socketio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from calls import open_call  # noqa: E402
from relay import CANDIDATE, SECRET, cpu_seconds  # noqa: E402

from service.auth import mint  # noqa: E402
from service.config import Secret, Settings  # noqa: E402

TOKENS = Settings(jwt_secret=Secret(SECRET))


def rss_mib(pid: int) -> float:
    """RSS of ``pid`` and its children (the Sanic worker), MiB."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    total = 0
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


async def start(extra_env: dict[str, str] | None = None,
                ) -> tuple[asyncio.subprocess.Process, str, list[str]]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SIGNAL_")},
           "SIGNAL_JWT_SECRET": SECRET, "SIGNAL_ENV_FILE": "/dev/null", **(extra_env or {})}
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("sanic")), "service.app", "--host", "127.0.0.1",
        "--port", str(port), cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, start_new_session=True)
    lines: list[str] = []

    async def pump() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            lines.append(raw.decode(errors="replace").rstrip("\n"))

    proc._pump = asyncio.ensure_future(pump())  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            try:
                async with http.get(f"{url}/healthz") as response:
                    if response.status == 200 and any("Worker ready" in x for x in lines):
                        return proc, url, lines
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise SystemExit("the service did not start")


async def stop(proc: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(proc.pid, signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 15)
    except TimeoutError:
        os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


async def watch_healthz(http: aiohttp.ClientSession, url: str, until: asyncio.Event,
                        out: list[float]) -> None:
    while not until.is_set():
        started = time.monotonic()
        async with http.get(f"{url}/healthz") as response:
            await response.read()
        out.append((time.monotonic() - started) * 1000)
        await asyncio.sleep(0.01)


async def polling_session(http: aiohttp.ClientSession, url: str, token: str | None) -> str:
    base = f"{url}/socket.io/?EIO=4&transport=polling"
    async with http.get(base) as response:
        text = await response.text()
    if not text.startswith("0"):
        return ""
    sid = json.loads(text[1:])["sid"]
    if token is not None:
        async with http.post(f"{base}&sid={sid}", data="40" + json.dumps({"token": token})):
            pass
    return f"{base}&sid={sid}"


async def engineio_floods(url: str, pid: int, posts: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    async with aiohttp.ClientSession() as http:
        rss_before = rss_mib(pid)
        latencies: list[float] = []
        done = asyncio.Event()
        watcher = asyncio.ensure_future(watch_healthz(http, url, done, latencies))
        statuses: dict[str, list[int]] = {"big_token": [], "big_no_token": [], "small": []}
        refused = 0
        big = "\x1e".join(["5"] * 32_768).encode()
        for n in range(posts):
            for key, token in (("big_token", mint(TOKENS, f"m{n}")), ("big_no_token", None)):
                session = await polling_session(http, url, token)
                if not session:
                    refused += 1  # the address is over its session budget (5/s, burst 30)
                    continue
                async with http.post(session, data=big) as response:
                    statuses[key].append(response.status)
        await asyncio.sleep(6)  # the address's session budget refills a little (5/s)
        session = await polling_session(http, url, mint(TOKENS, "mallory"))
        small = "\x1e".join(["5"] * 400).encode()
        for _ in range(posts if session else 0):
            async with http.post(session, data=small) as response:
                statuses["small"].append(response.status)
            if response.status != 200:
                break

        done.set()
        await watcher
        result.update({
            "statuses": {k: sorted(set(v)) for k, v in statuses.items()},
            "flood_handshakes_refused_by_address_budget": refused,
            "rss_before_mib": round(rss_before, 1), "rss_after_mib": round(rss_mib(pid), 1),
            "healthz_max_ms": round(max(latencies), 1),
            "healthz_p50_ms": round(statistics.median(latencies), 2),
        })
    return result


async def payload_costs(url: str, pid: int, count: int) -> dict[str, Any]:
    sender = socketio.AsyncClient(reconnection=False)
    await sender.connect(url, auth={"token": mint(TOKENS, "alice")}, transports=["websocket"])
    receiver = socketio.AsyncClient(reconnection=False)
    await receiver.connect(url, auth={"token": mint(TOKENS, "bob")}, transports=["websocket"])
    await receiver.call("JoinSocket", "bob")
    await open_call(sender, receiver, "bob", "alice")
    crafted: dict[str, tuple[str, Any]] = {
        "normal candidate": ("candidate", {"to": "bob", "candidate": CANDIDATE}),
        "56 KB of integers": ("hangup", {"to": "bob", "numbers": [100] * 14_000}),
        "5,900 tiny keys": ("hangup", {"to": "bob", **{f"k{n}": 0 for n in range(5_900)}}),
        "unknown event + list": ("no_such_event", {"numbers": [100] * 14_000}),
    }
    out: dict[str, Any] = {}
    for name, (event, data) in crafted.items():
        before = cpu_seconds(pid)
        acks = [await sender.call(event, data) for _ in range(count)]
        spent = cpu_seconds(pid) - before
        out[name] = {"cpu_us_per_message": round(spent / count * 1e6),
                     "answers": sorted({a.get("error", "ok") for a in acks})}
    base = max(out["normal candidate"]["cpu_us_per_message"], 1)
    for name in out:
        out[name]["ratio_to_normal"] = round(out[name]["cpu_us_per_message"] / base, 1)
    await sender.disconnect()
    await receiver.disconnect()
    return out


async def log_injection(url: str, lines: list[str]) -> dict[str, Any]:
    forged = '{"ts": "2026-01-01T00:00:00.000Z", "level": "info", "event": "connect"}'
    async with aiohttp.ClientSession() as http:
        target = f"{url}/socket.io/?EIO=4&transport=polling&sid=x%0A{quote(forged)}"
        async with http.get(target) as response:
            await response.read()
    await asyncio.sleep(0.2)
    bad = []
    for line in lines:
        try:
            if not isinstance(json.loads(line), dict):
                bad.append(line)
        except ValueError:
            bad.append(line)
    return {"lines": len(lines), "not_json": len(bad), "examples": bad[:3]}


async def ice_servers_oracle(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        statuses = []
        for n in range(200):
            async with http.get(f"{url}/ice-servers",
                                headers={"Authorization": f"Bearer bad-{n}"}) as response:
                statuses.append(response.status)
    return {"401": statuses.count(401), "429": statuses.count(429)}


async def side_doors(url: str) -> dict[str, int]:
    base = f"{url}/socket.io/?EIO=4&transport=polling"
    async with aiohttp.ClientSession() as http:
        async with http.get(base, headers={"Sec-Fetch-Mode": "no-cors"}) as response:
            no_cors = response.status
        async with http.get(f"{base}&j=0") as response:
            jsonp = response.status
    return {"no_cors_handshake": no_cors, "jsonp_handshake": jsonp}


def open_sockets(pid: int) -> int:
    """TCP sockets the worker holds open (client connections and listeners)."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    count = 0
    for p in pids:
        for fd in Path(f"/proc/{p}/fd").iterdir():
            with contextlib.suppress(OSError):
                count += os.readlink(fd).startswith("socket:")
    return count


def masked(payload: bytes, first: int) -> bytes:
    """One client frame (masked with a zero key: the bytes are the payload's)."""
    size = len(payload)
    if size < 126:
        head = bytes([first, 0x80 | size])
    elif size < 65536:
        head = bytes([first, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([first, 0x80 | 127]) + size.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


async def raw_websocket(url: str, query: str = ""
                        ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.rsplit("/", 1)[1].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write((f"GET /socket.io/?EIO=4&transport=websocket{query} HTTP/1.1\r\nHost: x\r\n"
                  "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return reader, writer


async def closed_after(reader: asyncio.StreamReader, within: float) -> str:
    """How the service ended the connection: its close code, ``eof``, or ``open``."""
    tail = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(1 << 20), within):
            tail = (tail + chunk)[-256:]
    except TimeoutError:
        return "open"
    except ConnectionError:
        return "reset"
    at = tail.rfind(b"\x88")
    if at >= 0 and at + 4 <= len(tail) and 2 <= tail[at + 1] <= 125:
        return str(int.from_bytes(tail[at + 2:at + 4], "big"))
    return "eof"


async def pour(writer: asyncio.StreamWriter, frame: bytes, times: int, batch: int = 1000,
               drain_within: float = 2.0) -> int:
    """Write ``frame`` up to ``times`` times; how many got written before the service
    stopped reading (a drain that takes longer than ``drain_within``) or closed."""
    sent = 0
    try:
        while sent < times:
            n = min(batch, times - sent)
            writer.write(frame * n)
            await asyncio.wait_for(writer.drain(), drain_within)
            sent += n
    except (TimeoutError, ConnectionError):
        pass
    return sent


async def transport_bounds(url: str, pid: int, slow_issuer: str, slow_key: Any
                           ) -> dict[str, Any]:
    """Part 6 of the module docstring."""
    from service.auth import sign

    result: dict[str, Any] = {}
    async with aiohttp.ClientSession() as http:
        # 1. upgrades of one polling session that never authenticates
        sockets_before = open_sockets(pid)
        base = f"{url}/socket.io/?EIO=4&transport=polling"
        async with http.get(base) as response:
            sid = json.loads((await response.text())[1:])["sid"]
        upgrades = []
        for _ in range(20):
            host, port = url.rsplit("/", 1)[1].split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write((f"GET /socket.io/?EIO=4&transport=websocket&sid={sid} HTTP/1.1\r\n"
                          "Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                          "Sec-WebSocket-Version: 13\r\n\r\n").encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            upgrades.append((head.split(b"\r\n")[0].decode(), writer))
        at_once = open_sockets(pid)
        await asyncio.sleep(5 + 7)  # the auth timeout (5 s), and then some (the issue: 12 s)
        later = open_sockets(pid)
        for _, writer in upgrades:
            writer.close()
        result["upgrades"] = {
            "accepted": sum(1 for line, _ in upgrades if " 101 " in line),
            "refused": sum(1 for line, _ in upgrades if " 400 " in line),
            "worker_sockets_before": sockets_before, "worker_sockets_at_once": at_once,
            "worker_sockets_12s_later": later}

    # 2. messages poured in while the connect waits on a slow IdP (5 s)
    now = int(time.time())
    token = sign({"sub": "pourer", "iss": slow_issuer, "iat": now, "exp": now + 600},
                 slow_key, "ES256", kid="slow-1")
    rss_before, cpu_before = rss_mib(pid), cpu_seconds(pid)
    reader, writer = await raw_websocket(url)
    writer.write(masked(("40" + json.dumps({"token": token})).encode(), 0x81))
    big = masked(b'42["x","' + b"y" * 60_000 + b'"]', 0x81)
    sent = await pour(writer, big, 700, batch=1)
    result["messages_during_a_slow_connect"] = {
        "sent_mb": round(sent * len(big) / 1e6, 1), "of_mb": round(700 * len(big) / 1e6, 1),
        "rss_before_mib": round(rss_before, 1), "rss_after_mib": round(rss_mib(pid), 1),
        "cpu_s": round(cpu_seconds(pid) - cpu_before, 2)}
    writer.transport.abort()

    # 3. empty continuation frames, 4. pings nobody reads
    for name, first, frame, times in (
            ("empty_continuations", masked(b"4", 0x01), masked(b"", 0x00), 1_000_000),
            ("pings", b"", masked(b"p" * 125, 0x89), 120_000)):
        rss_before, cpu_before = rss_mib(pid), cpu_seconds(pid)
        reader, writer = await raw_websocket(url)
        writer.write(masked(("40" + json.dumps({"token": mint(TOKENS, name)})).encode(), 0x81))
        writer.write(first)
        started = time.monotonic()
        sent = await pour(writer, frame, times)
        closing = asyncio.ensure_future(closed_after(reader, 15))
        how = await closing
        result[name] = {
            "frames_sent": sent, "of": times, "closed_by_service": how,
            "seconds": round(time.monotonic() - started, 1),
            "rss_before_mib": round(rss_before, 1), "rss_after_mib": round(rss_mib(pid), 1),
            "cpu_s": round(cpu_seconds(pid) - cpu_before, 2)}
        writer.transport.abort()
    return result


class SlowIdP:
    """A JWKS endpoint that answers after 5 s (the connect it serves waits meanwhile)."""

    def __init__(self) -> None:
        from service.auth import generate_key, public_jwk

        self.key = generate_key("ES256")
        self.jwks = {"keys": [public_jwk(self.key, "ES256", "slow-1")]}
        self.runner: Any = None
        self.url = ""

    async def start(self) -> None:
        from aiohttp import web

        async def serve(request: web.Request) -> web.Response:
            await asyncio.sleep(5)
            return web.json_response(self.jwks)

        app = web.Application()
        app.router.add_get("/jwks.json", serve)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/jwks.json"

    async def stop(self) -> None:
        await self.runner.cleanup()


async def transport_report() -> dict[str, Any]:
    idp = SlowIdP()
    await idp.start()
    issuer = "https://slow-idp.example/"
    try:
        proc, url, _ = await start({"SIGNAL_JWT_JWKS_URL": f"{issuer} {idp.url}",
                                    "SIGNAL_JWT_ISSUER": f"{issuer},local",
                                    "SIGNAL_JWT_USER_IDS": "shared",
                                    "SIGNAL_JWKS_REFRESH_INTERVAL": "1"})
        try:
            return await transport_bounds(url, proc.pid, issuer, idp.key)
        finally:
            await stop(proc)
    finally:
        await idp.stop()


async def main_async(posts: int, count: int) -> dict[str, Any]:
    report: dict[str, Any] = {}
    proc, url, lines = await start()
    try:
        report["engineio_floods"] = await engineio_floods(url, proc.pid, posts)
        report["log_injection"] = await log_injection(url, lines)
        report["ice_servers_oracle"] = await ice_servers_oracle(url)
        report["side_doors"] = await side_doors(url)
    finally:
        await stop(proc)
    # payload costs with the relay limits lifted, so every message is handled, not refused
    # for its rate (the point is what one costs)
    proc, url, lines = await start({f"SIGNAL_LIMIT_{n}": "0" for n in (
        "RELAYS", "USER_RELAYS", "OTHER", "STRIKES", "PACKETS", "IP_PACKETS")})
    try:
        report["payload_costs"] = await payload_costs(url, proc.pid, count)
    finally:
        await stop(proc)
    report["transport_bounds"] = await transport_report()
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--posts", type=int, default=20)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--only", choices=["transport"], help="run one part only")
    args = parser.parse_args(argv)
    if args.only == "transport":
        write_report({"transport_bounds": asyncio.run(transport_report())}, args.json)
        return 0
    write_report(asyncio.run(main_async(args.posts, args.count)), args.json)
    return 0


def write_report(report: dict[str, Any], path: Path | None) -> None:
    """Print a benchmark's report as JSON, and write it to ``path`` when given."""
    text = json.dumps(report, indent=2)
    print(text)
    if path is not None:
        path.write_text(text + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
