#!/usr/bin/env python3
"""Lifecycle webhooks (issue 21) against real ``sanic service.app`` processes: whole calls
driven through real sockets, and a real backend (``tests/backend.py``, checking every
signature) that must see exactly the events the calls imply, in order.

    .venv/bin/python benchmarks/lifecycle.py [--rounds 3] [--redis URL [--kill]] [--json F]

Each round runs every kind of call once, concurrently, with fresh users:

- ``answered`` (the caller hangs up), ``callee_hangup``: ringing, answered, ended (hangup,
  by whom, a duration);
- ``cancelled``, ``declined``, ``timeout``: ringing, missed (why, by whom);
- ``pushed_cancelled`` (the callee is offline: call.incoming; the caller gives up):
  ringing, missed, cancelled; ``pushed_answered`` (the woken callee connects and answers):
  ringing, answered, cancelled (answered), ended;
- ``by_server`` (the server API ends it): ringing, answered, ended (ended_by_server);
- ``peer_gone`` (the callee's app goes and does not come back): ringing, answered, ended
  (peer_gone, by the callee);

and every user that connected is ``user.online`` then, past the grace after its last socket
went, ``user.offline``. With ``--redis`` the caller sits on one node and the callee on another;
with ``--kill`` the backend answers 503 while the calls happen, the first node is killed
(SIGKILL) once they are done, and the backend comes back: the second node must deliver
everything (the first node's users go offline through it too).

Prints per kind: calls, events expected, received (after dropping repeats by ``id``),
missing, unexpected, out of order, repeats; exit status 1 when anything is missing,
unexpected or out of order, or a request was not signed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import socketio
from cluster import REDIS_SECRET, Node
from relay import SECRET

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.auth import mint  # noqa: E402
from service.config import Secret, Settings  # noqa: E402
from tests.backend import HOOK_SECRET, Backend, backend  # noqa: E402

TOKENS = Settings(jwt_secret=Secret(SECRET))
API_KEY = "lifecycle-harness-api-key-0123456789abcdef"
RING_SECONDS, GRACE_SECONDS = 2, 1
SDP = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
KINDS = ("answered", "callee_hangup", "cancelled", "declined", "timeout", "pushed_cancelled",
         "pushed_answered", "by_server", "peer_gone")


class App:
    """One user's app: a python-socketio client that joins, and keeps what it gets."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.sio = socketio.AsyncClient(reconnection=False)
        self.got: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        for event in ("offer", "answer", "candidate", "hangup"):
            queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
            self.got[event] = queue
            self.sio.on(event, queue.put)

    async def connect(self, url: str) -> App:
        token = mint(TOKENS, self.user, ttl=3600)
        await self.sio.connect(url, auth={"token": token}, transports=["websocket"],
                               wait_timeout=10)
        ack = await self.sio.call("JoinSocket", self.user, timeout=10)
        assert ack == {"ok": True}, ack
        return self

    async def send(self, event: str, body: dict[str, Any]) -> dict[str, Any]:
        ack: dict[str, Any] = await self.sio.call(event, body, timeout=10)
        assert ack.get("ok") is True, (event, ack)
        return ack

    async def next(self, event: str, within: float = 10) -> dict[str, Any]:
        return await asyncio.wait_for(self.got[event].get(), within)

    async def close(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()


def expected(kind: str, caller: str, callee: str) -> list[tuple[str, Any, Any]]:
    """The call's events (type, reason, by) that ``kind`` implies."""
    ringing: tuple[str, Any, Any] = ("call.ringing", None, None)
    answered: tuple[str, Any, Any] = ("call.answered", None, None)
    kinds: dict[str, list[tuple[str, Any, Any]]] = {
        "answered": [ringing, answered, ("call.ended", "hangup", caller)],
        "callee_hangup": [ringing, answered, ("call.ended", "hangup", callee)],
        "cancelled": [ringing, ("call.missed", "cancelled", caller)],
        "declined": [ringing, ("call.missed", "declined", callee)],
        "timeout": [ringing, ("call.missed", "timeout", None)],
        "pushed_cancelled": [ringing, ("call.missed", "cancelled", caller),
                             ("call.cancelled", "cancelled", None)],
        "pushed_answered": [ringing, answered, ("call.cancelled", "answered", None),
                            ("call.ended", "hangup", caller)],
        "by_server": [ringing, answered, ("call.ended", "ended_by_server", None)],
        "peer_gone": [ringing, answered, ("call.ended", "peer_gone", callee)],
    }
    return kinds[kind]


async def one_call(kind: str, run: str, a_url: str, b_url: str,
                   apps: list[App]) -> tuple[str, str, str, str]:
    """Drive one call of ``kind``; (kind, call id, caller, callee)."""
    caller_id, callee_id = f"{run}-{kind}-a", f"{run}-{kind}-b"
    caller = await App(caller_id).connect(a_url)
    apps.append(caller)
    offer = {"to": callee_id, "offer": {"type": "offer", "sdp": SDP}}
    answer = {"to": caller_id, "answer": {"type": "answer", "sdp": SDP}}
    if kind.startswith("pushed"):
        ack = await caller.send("offer", offer)
        assert ack.get("notified") is True, ack
        call_id = ack["callId"]
        if kind == "pushed_cancelled":
            await caller.send("hangup", {"to": callee_id})
            return kind, call_id, caller_id, callee_id
        callee = await App(callee_id).connect(b_url)  # woken by the push
        apps.append(callee)
        await callee.next("offer")
        await callee.send("answer", answer)
        await caller.next("answer")
        await caller.send("hangup", {"to": callee_id})
        return kind, call_id, caller_id, callee_id
    callee = await App(callee_id).connect(b_url)
    apps.append(callee)
    call_id = (await caller.send("offer", offer))["callId"]
    await callee.next("offer")
    if kind == "cancelled":
        await caller.send("hangup", {"to": callee_id})
    elif kind == "declined":
        await callee.send("hangup", {"to": caller_id})
    elif kind == "timeout":
        await caller.next("hangup", within=RING_SECONDS + 10)
    else:
        await callee.send("answer", answer)
        await caller.next("answer")
        if kind == "answered":
            await caller.send("hangup", {"to": callee_id})
        elif kind == "callee_hangup":
            await callee.send("hangup", {"to": caller_id})
        elif kind == "by_server":
            async with aiohttp.ClientSession() as http, http.post(
                    f"{a_url}/api/v1/users/{caller_id}/calls/{call_id}/end",
                    headers={"Authorization": f"Bearer {API_KEY}"}) as response:
                assert response.status == 200, await response.text()
        elif kind == "peer_gone":
            await callee.close()
            await caller.next("hangup", within=GRACE_SECONDS + 10)
    return kind, call_id, caller_id, callee_id


def judge(hook: Backend, calls: list[tuple[str, str, str, str]],
          users: set[str]) -> dict[str, dict[str, int]]:
    """Per kind (and ``users``): what was expected, received, missing, unexpected, out of
    order, repeated."""
    rows: dict[str, Counter[str]] = {}
    seen_ids: Counter[str] = Counter(e["id"] for e in hook.events if "id" in e)

    def compare(row: Counter[str], want: list[tuple[str, Any, Any]],
                got: list[dict[str, Any]]) -> None:
        unique, ids = [], set()
        for e in got:
            if e["id"] not in ids:
                ids.add(e["id"])
                unique.append(e)
        row["expected"] += len(want)
        row["received"] += len(unique)
        row["repeats"] += sum(seen_ids[i] - 1 for i in ids)
        have = [(e["type"], e.get("reason"), e.get("by")) for e in unique]
        missing = Counter(want) - Counter(have)
        row["missing"] += sum(missing.values())
        row["unexpected"] += sum((Counter(have) - Counter(want)).values())
        seqs = [e["seq"] for e in unique]
        if seqs != sorted(seqs) or len(set(seqs)) != len(seqs) or (
                not missing and have != want):
            row["out_of_order"] += 1

    for kind, call_id, caller, callee in calls:
        row = rows.setdefault(kind, Counter())
        row["calls"] += 1
        compare(row, expected(kind, caller, callee), hook.of(f"call:{call_id}"))
    row = rows.setdefault("users", Counter())
    for user in sorted(users):
        row["calls"] += 1
        compare(row, [("user.online", None, None), ("user.offline", None, None)],
                hook.of(f"user:{user}"))
    return {k: dict(v) for k, v in rows.items()}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    async with backend(status=503 if args.kill else 200) as hook:
        env = {"SIGNAL_WEBHOOK_URL": hook.url, "SIGNAL_WEBHOOK_SECRET": HOOK_SECRET,
               "SIGNAL_WEBHOOK_EVENTS": "all", "SIGNAL_RING_TIMEOUT": str(RING_SECONDS),
               "SIGNAL_RECONNECT_GRACE": str(GRACE_SECONDS), "SIGNAL_API_KEYS": API_KEY}
        if args.redis:
            env.update({"SIGNAL_REDIS_URL": args.redis, "SIGNAL_REDIS_SECRET": REDIS_SECRET,
                        "SIGNAL_REDIS_CHANNEL": f"lifecycle-{uuid.uuid4().hex[:8]}",
                        "SIGNAL_NODE_TTL": "2"})
        a = Node(env, 1)
        await a.start()
        b = a
        if args.redis:
            b = Node(env, 1)
            await b.start()
        started = time.monotonic()
        calls: list[tuple[str, str, str, str]] = []
        apps: list[App] = []
        try:
            for n in range(args.rounds):
                run = f"r{n}{uuid.uuid4().hex[:4]}"
                calls += await asyncio.gather(*(one_call(kind, run, a.url, b.url, apps)
                                                for kind in KINDS))
            users = {app.user for app in apps}
            if args.kill:
                os.killpg(a.proc.pid, signal.SIGKILL)  # the node: its process group
                await a.proc.wait()
                for app in apps:
                    await app.close()
                hook.status = 200
            else:
                for app in apps:
                    await app.close()
            want = sum(len(expected(k, c, d)) for k, _, c, d in calls) + 2 * len(users)
            deadline = time.monotonic() + args.settle
            while len({e["id"] for e in hook.events
                       if e["type"] != "call.incoming"}) < want:
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)  # (anything more that was coming)
            rows = judge(hook, calls, users)
        finally:
            for app in apps:
                await app.close()
            for node in {id(a): a, id(b): b}.values():
                if node.proc.returncode is None:
                    await node.stop()
        return {"rows": rows, "unsigned": hook.unsigned, "seconds":
                round(time.monotonic() - started, 1),
                "incoming": sum(1 for e in hook.events if e["type"] == "call.incoming")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="every kind of call, this often")
    parser.add_argument("--redis", help="two nodes on this Redis (else one, in memory)")
    parser.add_argument("--kill", action="store_true",
                        help="(with --redis) kill the first node before the backend is back")
    parser.add_argument("--settle", type=float, default=40.0,
                        help="seconds to wait for the events after the calls")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    if args.kill and not args.redis:
        parser.error("--kill needs --redis")
    result = asyncio.run(main_async(args))
    columns = ("calls", "expected", "received", "missing", "unexpected", "out_of_order",
               "repeats")
    print(f"{'kind':17}" + "".join(f"{c:>13}" for c in columns))
    bad = result["unsigned"] > 0
    for kind, row in result["rows"].items():
        print(f"{kind:17}" + "".join(f"{row.get(c, 0):>13}" for c in columns))
        bad = bad or any(row.get(c, 0) for c in ("missing", "unexpected", "out_of_order"))
    print(f"unsigned requests: {result['unsigned']}; call.incoming: {result['incoming']}; "
          f"{result['seconds']} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
