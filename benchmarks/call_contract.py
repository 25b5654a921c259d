#!/usr/bin/env python3
"""The call contract, checked against real ``sanic service.app`` processes.

    .venv/bin/python benchmarks/call_contract.py [--redis redis://127.0.0.1:6379/0] [--json F]

Starts one node in memory, or with ``--redis`` two nodes on Redis (the parties of every check
then sit on different nodes), with SIGNAL_RING_TIMEOUT=2, SIGNAL_RECONNECT_GRACE=2 and a
webhook receiver of its own (which checks the signature and fails its first request), and
checks each rule of docs/protocol.md's "Call life cycle" with python-socketio clients: one
line per rule, ``ok`` or ``FAILED`` with what was seen, and how long it took. Exit status 1
when a rule failed. Independent of the test suite (its own clients, its own receiver).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import socket
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import socketio
from aiohttp import web
from cluster import REDIS_SECRET, Node
from relay import SECRET

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.auth import mint  # noqa: E402
from service.config import Secret, Settings  # noqa: E402

HOOK_SECRET = "call-contract-webhook-secret-0123456789"
SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
TOKENS = Settings(jwt_secret=Secret(SECRET))


def offer(to: str) -> dict[str, Any]:
    return {"to": to, "offer": {"type": "offer", "sdp": SDP}}


def answer(to: str) -> dict[str, Any]:
    return {"to": to, "answer": {"type": "answer", "sdp": SDP}}


def candidate(to: str, n: int = 0) -> dict[str, Any]:
    return {"to": to, "candidate": {"candidate": f"candidate:{n} 1 udp 1 192.0.2.1 {n} typ host",
                                    "sdpMid": "0"}}


class Client:
    """A python-socketio client that keeps what it receives, per event."""

    def __init__(self, url: str, user: str) -> None:
        self.url, self.user = url, user
        self.sio = socketio.AsyncClient(reconnection=False)
        self.inbox: defaultdict[str, asyncio.Queue[Any]] = defaultdict(asyncio.Queue)
        #: the seqs seen per call
        self.seqs: dict[str, set[int]] = {}

        async def keep(event: str, data: Any) -> None:
            self.inbox[event].put_nowait(data)

        self.sio.on("*", keep)

    async def start(self, join: bool = True) -> Client:
        await self.sio.connect(self.url, auth={"token": mint(TOKENS, self.user, 600)},
                               transports=["websocket"], wait_timeout=10)
        if join:
            await self.call("JoinSocket", self.user)
        return self

    async def call(self, event: str, data: Any) -> Any:
        return await self.sio.call(event, data, timeout=10)

    async def next(self, event: str, within: float = 10) -> Any:
        """The next ``event``; a call message's ``seq`` is checked (a whole number from 1, not
        seen before in the call) and taken out, the rest compared as sent."""
        data = await asyncio.wait_for(self.inbox[event].get(), within)
        if isinstance(data, dict) and "callId" in data:
            seq = data.pop("seq", None)
            seen = self.seqs.setdefault(data["callId"], set())
            assert isinstance(seq, int) and seq >= 1 and seq not in seen, f"seq {seq!r}"
            seen.add(seq)
        return data

    async def quiet(self, event: str, wait: float = 0.5) -> bool:
        await asyncio.sleep(wait)
        return self.inbox[event].empty()

    async def stop(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()


class Contract:
    """The checks; ``a`` and ``b`` are the URLs of the nodes the two parties use."""

    def __init__(self, a: str, b: str, hooks: list[dict[str, Any]],
                 logs: Callable[[], list[str]] = list) -> None:
        self.a, self.b, self.hooks = a, b, hooks
        #: the nodes' log lines so far
        self.logs = logs
        self.clients: list[Client] = []

    async def client(self, node: str, user: str, join: bool = True) -> Client:
        made = await Client(node, user).start(join)
        self.clients.append(made)
        return made

    def fresh(self, name: str) -> str:
        return f"{name}-{uuid.uuid4().hex[:6]}"

    async def gone(self, client: Client) -> None:
        """Close ``client`` and wait until its node has handled the disconnect (a signal
        sent in between is acked delivered, not held: presence still had the socket)."""
        sid = client.sio.get_sid()
        await client.stop()
        deadline = time.monotonic() + 10
        while not any('"event": "disconnect"' in line and sid in line for line in self.logs()):
            check(time.monotonic() < deadline, "the disconnect was not handled")
            await asyncio.sleep(0.02)

    async def stranger_refused(self) -> None:
        callee = self.fresh("bob")
        mallory, bob = await self.client(self.a, "mallory"), await self.client(self.b, callee)
        for event, data in (("candidate", candidate(callee)), ("answer", answer(callee)),
                            ("hangup", {"to": callee})):
            ack = await mallory.call(event, data)
            check(ack == {"ok": False, "error": "not_in_call"}, f"{event}: {ack}")
        check(await bob.quiet("candidate"), "bob received a stranger's candidate")

    async def offer_opens_a_call(self) -> None:
        alice_id, bob_id = self.fresh("alice"), self.fresh("bob")
        alice, bob = await self.client(self.a, alice_id), await self.client(self.b, bob_id)
        ack = await alice.call("offer", offer(bob_id))
        check(ack.get("ok") is True and ack.get("delivered") is True, f"offer: {ack}")
        relayed = await bob.next("offer")
        check(relayed["callId"] == ack["callId"] and relayed["from"] == alice_id,
              f"relayed: {relayed}")
        ack = await bob.call("candidate", candidate(alice_id))
        check(ack == {"ok": False, "error": "not_in_call"}, f"callee trickled first: {ack}")
        check((await bob.call("answer", answer(alice_id)))["delivered"], "answer")
        check((await alice.next("answer"))["callId"] == relayed["callId"], "answer callId")
        check((await bob.call("hangup", {"to": alice_id}))["delivered"], "hangup")
        ack = await alice.call("candidate", candidate(bob_id))
        check(ack == {"ok": False, "error": "not_in_call"}, f"after hangup: {ack}")

    async def busy_and_glare(self) -> None:
        alice_id, bob_id = self.fresh("alice"), self.fresh("bob")
        alice, bob = await self.client(self.a, alice_id), await self.client(self.b, bob_id)
        carol = await self.client(self.b, self.fresh("carol"))
        call_id = (await alice.call("offer", offer(bob_id)))["callId"]
        ack = await bob.call("offer", offer(alice_id))
        check(ack == {"ok": False, "error": "glare", "callId": call_id}, f"glare: {ack}")
        ack = await carol.call("offer", offer(bob_id))
        check(ack == {"ok": False, "error": "busy"}, f"busy: {ack}")
        check((await carol.next("hangup"))["reason"] == "busy", "busy hangup")

    async def ring_timeout(self) -> None:
        alice_id, bob_id = self.fresh("alice"), self.fresh("bob")
        alice, bob = await self.client(self.a, alice_id), await self.client(self.b, bob_id)
        call_id = (await alice.call("offer", offer(bob_id)))["callId"]
        for who, other in ((alice, bob_id), (bob, alice_id)):
            got = await who.next("hangup", 15)
            check(got == {"from": other, "callId": call_id, "reason": "timeout"}, f"{got}")
        check(await alice.quiet("hangup", 1.0), "told twice")

    async def first_answer_wins(self) -> None:
        alice_id, bob_id = self.fresh("alice"), self.fresh("bob")
        alice = await self.client(self.a, alice_id)
        phone, laptop = await self.client(self.b, bob_id), await self.client(self.a, bob_id)
        call_id = (await alice.call("offer", offer(bob_id)))["callId"]
        await phone.next("offer")
        await laptop.next("offer")
        check((await phone.call("answer", answer(alice_id)))["delivered"], "answer")
        got = await laptop.next("hangup")
        check(got == {"from": alice_id, "callId": call_id, "reason": "answered_elsewhere"},
              f"laptop: {got}")
        check((await alice.call("candidate", candidate(bob_id)))["delivered"], "candidate")
        await phone.next("candidate")
        check(await laptop.quiet("candidate"), "the laptop got a candidate")
        ack = await laptop.call("answer", answer(alice_id))
        check(ack == {"ok": False, "error": "not_in_call"}, f"late answer: {ack}")

    async def held_while_reconnecting(self) -> None:
        alice_id, bob_id = self.fresh("alice"), self.fresh("bob")
        alice, bob = await self.client(self.a, alice_id), await self.client(self.b, bob_id)
        call_id = (await alice.call("offer", offer(bob_id)))["callId"]
        await bob.next("offer")
        await bob.call("answer", answer(alice_id))
        await self.gone(bob)
        for n in range(3):
            ack = await alice.call("candidate", candidate(bob_id, n))
            check(ack == {"ok": True, "delivered": False, "held": True}, f"held: {ack}")
        back = await self.client(self.a, bob_id)
        for n in range(3):
            got = await back.next("candidate")
            check(got["callId"] == call_id and got["candidate"]["candidate"].startswith(
                f"candidate:{n} "), f"held #{n}: {got}")

    async def gone_past_grace(self) -> None:
        alice_id, bob_id = self.fresh("alice"), self.fresh("bob")
        alice, bob = await self.client(self.a, alice_id), await self.client(self.b, bob_id)
        call_id = (await alice.call("offer", offer(bob_id)))["callId"]
        await bob.next("offer")
        await bob.call("answer", answer(alice_id))
        await bob.stop()
        got = await alice.next("hangup", 15)
        check(got == {"from": bob_id, "callId": call_id, "reason": "peer_gone"}, f"{got}")

    async def offline_callee_woken(self) -> None:
        alice_id, bob_id = self.fresh("alice"), self.fresh("bob")
        alice = await self.client(self.a, alice_id)
        ack = await alice.call("offer", offer(bob_id))
        check(ack == {"ok": True, "delivered": False, "callId": ack.get("callId"),
                      "notified": True}, f"offer: {ack}")
        deadline = time.monotonic() + 10
        while sum(h["callId"] == ack["callId"] for h in self.hooks) < 2:
            check(time.monotonic() < deadline, f"webhook not retried: {self.hooks}")
            await asyncio.sleep(0.05)
        mine = [h for h in self.hooks if h["callId"] == ack["callId"]]
        check(all(h["signed"] for h in mine), "bad signature")
        bob = await self.client(self.b, bob_id)
        check((await bob.next("offer"))["callId"] == ack["callId"], "held offer")
        check((await bob.call("answer", answer(alice_id)))["delivered"], "answer")

    async def run(self) -> list[dict[str, Any]]:
        results = []
        checks: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("a stranger's candidate, answer, hangup: not_in_call", self.stranger_refused),
            ("offer opens a call; the callee trickles after answering", self.offer_opens_a_call),
            ("glare and busy", self.busy_and_glare),
            ("ring timeout, told once to each party", self.ring_timeout),
            ("first answer wins; candidates only to it", self.first_answer_wins),
            ("signals held while a party reconnects", self.held_while_reconnecting),
            ("party gone past the grace: peer_gone", self.gone_past_grace),
            ("offline callee: webhook (retried), held offer", self.offline_callee_woken),
        ]
        for name, step in checks:
            started = time.monotonic()
            try:
                await step()
                outcome = "ok"
            except (AssertionError, TimeoutError, socketio.exceptions.SocketIOError) as exc:
                outcome = f"FAILED: {type(exc).__name__} {exc}"
            finally:
                for client in self.clients:
                    await client.stop()
                self.clients.clear()
            results.append({"rule": name, "outcome": outcome,
                            "seconds": round(time.monotonic() - started, 2)})
            print(f"{outcome[:60]:<8} {results[-1]['seconds']:>6.2f}s  {name}", flush=True)
        return results


def check(condition: object, what: str) -> None:
    if not condition:
        raise AssertionError(what)


async def receiver() -> tuple[web.AppRunner, str, list[dict[str, Any]]]:
    """A webhook receiver that checks signatures and fails each call's first request."""
    hooks: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        raw = await request.read()
        stamp = request.headers.get("X-Signal-Timestamp", "")
        mac = hmac.new(HOOK_SECRET.encode(), stamp.encode() + b"." + raw, hashlib.sha256)
        body = json.loads(raw)
        first = not any(h["callId"] == body["callId"] for h in hooks)
        hooks.append({"callId": body["callId"], "signed": hmac.compare_digest(
            request.headers.get("X-Signal-Signature", ""), "sha256=" + mac.hexdigest())})
        return web.Response(status=503 if first else 200)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    return runner, f"http://127.0.0.1:{sock.getsockname()[1]}/hook", hooks


async def main_async(redis_url: str | None) -> list[dict[str, Any]]:
    runner, hook_url, hooks = await receiver()
    env = {"SIGNAL_RING_TIMEOUT": "2", "SIGNAL_RECONNECT_GRACE": "2",
           "SIGNAL_WEBHOOK_URL": hook_url, "SIGNAL_WEBHOOK_SECRET": HOOK_SECRET}
    if redis_url:
        env |= {"SIGNAL_REDIS_URL": redis_url, "SIGNAL_REDIS_SECRET": REDIS_SECRET,
                "SIGNAL_REDIS_CHANNEL": f"contract-{uuid.uuid4().hex[:8]}"}
    nodes = [Node(env, 1) for _ in range(2 if redis_url else 1)]
    try:
        for node in nodes:
            await node.start()
        mode = "two nodes on Redis" if redis_url else "one node, in memory"
        print(f"call contract: {mode}", flush=True)
        results = await Contract(nodes[0].url, nodes[-1].url, hooks,
                                 lambda: [line for n in nodes for line in n.lines]).run()
    finally:
        for node in nodes:
            await node.stop()
        await runner.cleanup()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", help="run two nodes on this Redis (default: one, memory)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    results = asyncio.run(main_async(args.redis))
    if args.json:
        Path(args.json).write_text(json.dumps({"mode": "redis" if args.redis else "memory",
                                               "results": results}, indent=2) + "\n")
    failed = [r for r in results if r["outcome"] != "ok"]
    print(f"{len(results) - len(failed)} of {len(results)} rules hold", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
