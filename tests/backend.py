"""An app's backend as the lifecycle webhooks meet it: a real HTTP server (aiohttp) that
checks each request's signature as docs/backend.md shows, and keeps what it got. Used by the
tests and by ``benchmarks/lifecycle.py``."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

HOOK_SECRET = "lifecycle-webhook-secret-that-is-long-enough-0123"


@dataclass
class Backend:
    """Answers every request with ``status`` (200 unless changed; the next of ``statuses``
    first); keeps every signed event it answered 2xx in ``events``, and every attempt in
    ``attempts``."""

    secret: str = HOOK_SECRET
    status: int = 200
    statuses: list[int] = field(default_factory=list)
    url: str = ""
    events: list[dict[str, Any]] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    unsigned: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    #: events this backend answers 503 whatever else it does
    failing: Callable[[dict[str, Any]], bool] = lambda body: False

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        timestamp = request.headers.get("X-Signal-Timestamp", "")
        mac = hmac.new(self.secret.encode(), timestamp.encode() + b"." + raw, hashlib.sha256)
        signed = hmac.compare_digest(request.headers.get("X-Signal-Signature", ""),
                                     "sha256=" + mac.hexdigest())
        fresh = timestamp.isdigit() and abs(time.time() - int(timestamp)) < 300
        if not (signed and fresh):
            self.unsigned += 1
            return web.Response(status=401)
        body = json.loads(raw)
        status = 503 if self.failing(body) else (
            self.statuses.pop(0) if self.statuses else self.status)
        self.attempts.append({"body": body, "status": status, "headers": dict(request.headers)})
        if 200 <= status < 300:
            self.events.append(body)
        self.changed.set()
        return web.Response(status=status, text="{}")

    def of(self, key: str) -> list[dict[str, Any]]:
        """The events answered 2xx about ``call:<id>`` or ``user:<id>``, as they arrived
        (not ``call.incoming``: the wake-up is not one of a call's numbered events)."""
        kind, _, name = key.partition(":")
        field_ = "callId" if kind == "call" else "user"
        return [e for e in self.events if e.get(field_) == name
                and e["type"].startswith(kind + ".") and e["type"] != "call.incoming"]

    def types(self, key: str) -> list[str]:
        return [e["type"] for e in self.of(key)]

    async def wait(self, check: Any, within: float = 10.0) -> None:
        """Until ``check()`` holds (re-checked as each request arrives)."""
        deadline = time.monotonic() + within
        while not check():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"the backend did not get it: {self.events}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 0.5))


@asynccontextmanager
async def backend(**options: Any) -> AsyncIterator[Backend]:
    """A running :class:`Backend` on a free loopback port."""
    hook = Backend(**options)
    app = web.Application()
    app.router.add_post("/hooks/events", hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    hook.url = f"http://127.0.0.1:{sock.getsockname()[1]}/hooks/events"
    try:
        yield hook
    finally:
        await runner.cleanup()


def in_order(events: list[dict[str, Any]]) -> bool:
    """Each key's events arrived by ``seq``, rising, once repeats are dropped by ``id``."""
    seen: set[str] = set()
    last: dict[str, int] = {}
    for e in events:
        if e["type"] == "call.incoming":
            continue
        if e["id"] in seen:
            continue
        seen.add(e["id"])
        key = f"call:{e['callId']}" if e["type"].startswith("call.") else f"user:{e['user']}"
        if e["seq"] <= last.get(key, 0):
            return False
        last[key] = e["seq"]
    return True
