"""Hostile clients against the real service: sizes, rate limits, per-address throttling,
connection caps, unauthenticated sessions and slow consumers."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio
import websockets
from prometheus_client.parser import text_string_to_metric_families

from service.config import Rate, Secret, Settings
from tests.support import (
    SECRET,
    Peer,
    RunningService,
    answered_call,
    calls_work,
    eventually,
    offer_to,
    refusal,
    serving,
)
from tests.test_relay import VALID

UNLIMITED = Rate(0, 0)
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"


def limited(**fields: Any) -> Settings:
    return Settings(jwt_secret=Secret(SECRET), **fields)


async def _pair(service: RunningService, transport: str) -> tuple[Peer, Peer]:
    alice, bob = Peer(service.url, transport), Peer(service.url, transport)
    for peer, user in ((alice, "alice"), (bob, "bob")):
        await peer.connect(service.token(user))
        assert await peer.call("JoinSocket", user) == {"ok": True}
    return alice, bob


async def _pair_still_works(alice: Peer, bob: Peer) -> None:
    await calls_work(alice, bob)


# ---- sizes ----

async def test_oversized_websocket_message_closes_only_that_connection(
        service: RunningService) -> None:
    """A 100 KB frame (over the 64 KiB default) ends the sender's connection; others carry on."""
    alice, bob = await _pair(service, "websocket")
    mallory = Peer(service.url, "websocket")
    await mallory.connect(service.token("mallory"))
    await mallory.client.emit("offer", {"to": "bob", "offer": {"type": "offer",
                                                               "sdp": "x" * 100_000}})
    await eventually(lambda: not mallory.client.connected, 5)
    assert await bob.silent("offer", 0.2)
    await _pair_still_works(alice, bob)
    for peer in (alice, bob, mallory):
        await peer.close()


async def _polling_session(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(f"{url}/socket.io/?EIO=4&transport=polling") as response:
        assert response.status == 200
        body = await response.text()
    return str(json.loads(body[1:])["sid"])


@pytest.mark.parametrize("chunked", [False, True])
async def test_oversized_polling_post_is_answered_promptly(service: RunningService,
                                                           chunked: bool) -> None:
    """A 1 MB polling POST, with or without Content-Length, gets 413 at once, and the
    service keeps serving."""
    async with aiohttp.ClientSession() as http:
        sid = await _polling_session(http, service.url)
        body = b"4" + b"2" * 1_000_000

        async def chunks() -> Any:
            for i in range(0, len(body), 65536):
                yield body[i:i + 65536]

        started = time.monotonic()
        async with http.post(f"{service.url}/socket.io/?EIO=4&transport=polling&sid={sid}",
                             data=chunks() if chunked else body) as response:
            assert response.status == 413
        assert time.monotonic() - started < 2
    alice, bob = await _pair(service, "polling")
    await _pair_still_works(alice, bob)
    await alice.close()
    await bob.close()


async def test_huge_token_is_refused_by_the_transport(service: RunningService,
                                                      transport: str) -> None:
    """With default limits a 100 KB auth payload never reaches the verifier: the message
    limit refuses it, and no session is left behind."""
    peer = Peer(service.url, transport)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await peer.connect("x" * 100_000)
    await peer.close()
    await eventually(lambda: not service.app.ctx.sio.eio.sockets, 3)


# ---- event rate limits ----

async def test_relay_flood_is_limited_then_disconnected(transport: str) -> None:
    """Over the relay limit a client gets ``rate_limited`` and nothing is relayed; if it
    keeps going it receives ``server_disconnect {reason: rate_limited}`` and is closed."""
    settings = limited(limit_relays=Rate(1, 5), limit_strikes=Rate(0.1, 10))
    async with serving(settings) as service:
        alice, bob = await _pair(service, transport)
        acks = [await alice.call("offer", offer_to("bob")) for _ in range(8)]
        assert [a["ok"] for a in acks] == [True] * 5 + [False] * 3
        assert {a.get("error") for a in acks[5:]} == {"rate_limited"}
        for _ in range(5):
            await bob.next("offer")
        assert await bob.silent("offer", 0.2)
        for _ in range(8):
            await alice.client.emit("offer", offer_to("bob"))
        assert await alice.next("server_disconnect", 3) == {"reason": "rate_limited"}
        await eventually(lambda: not alice.client.connected, 6)
        await alice.close()
        await bob.close()


async def test_user_relay_limit_spans_connections(transport: str) -> None:
    """Two connections of one user share the per-user relay budget."""
    settings = limited(limit_relays=Rate(1, 4), limit_user_relays=Rate(1, 6))
    async with serving(settings) as service:
        phone, laptop = Peer(service.url, transport), Peer(service.url, transport)
        await phone.connect(service.token("alice"))
        await laptop.connect(service.token("alice"))
        results = [(await phone.call("offer", offer_to("bob")))["ok"] for _ in range(4)]
        results += [(await laptop.call("offer", offer_to("carol")))["ok"] for _ in range(4)]
        assert results == [True] * 6 + [False] * 2
        await phone.close()
        await laptop.close()


@pytest.mark.parametrize(("event", "arg", "field"), [
    ("JoinSocket", "alice", "limit_rooms"),
    ("RefreshToken", None, "limit_refreshes"),
    ("NoSuchEvent", {}, "limit_other"),
    ("connect", {}, "limit_other"),
])
async def test_each_event_class_has_its_limit(event: str, arg: Any, field: str) -> None:
    """Room events, refreshes and unknown (including reserved) events are limited too."""
    async with serving(limited(**{field: Rate(0.01, 2)})) as service:
        peer = Peer(service.url, "websocket")
        await peer.connect(service.token("alice"))
        value = service.token("alice") if event == "RefreshToken" else arg
        acks = [await peer.call(event, value) for _ in range(3)]
        assert acks[2] == {"ok": False, "error": "rate_limited",
                           "detail": acks[2]["detail"]}
        assert all(a.get("error") != "rate_limited" for a in acks[:2])
        await peer.close()


# ---- addresses ----

async def _handshake(http: aiohttp.ClientSession, url: str,
                     headers: dict[str, str] | None = None) -> int:
    async with http.get(f"{url}/socket.io/?EIO=4&transport=polling",
                        headers=headers or {}) as response:
        return response.status


async def test_connection_attempts_are_throttled_per_address() -> None:
    """Past its session budget an address gets 401 ``rate_limited``; behind a trusted proxy
    each forwarded client has its own budget, and a forged header from an untrusted peer is
    ignored."""
    first = limited(limit_ip_connects=Rate(0.01, 3))
    async with serving(first) as service, aiohttp.ClientSession() as http:
        assert [await _handshake(http, service.url) for _ in range(4)] == [200] * 3 + [401]
        forged = {"X-Forwarded-For": "198.51.100.7"}
        assert await _handshake(http, service.url, forged) == 401
    settings = limited(limit_ip_connects=Rate(0.01, 2), trusted_proxies=("127.0.0.1",))
    async with serving(settings) as service, aiohttp.ClientSession() as http:
        for client in ("198.51.100.7", "198.51.100.8"):
            headers = {"X-Forwarded-For": client}
            statuses = [await _handshake(http, service.url, headers) for _ in range(3)]
            assert statuses == [200, 200, 401]


async def test_failed_authentications_throttle_the_address(
        transport: str, capture_logs: list[dict[str, Any]]) -> None:
    """After its budget of failed authentications, an address is refused ``rate_limited``,
    even with a valid token, until the budget refills."""
    async with serving(limited(limit_ip_auth_failures=Rate(0.01, 3))) as service:
        for _ in range(3):
            data = await refusal(service.url, transport, token="garbage")
            assert data["data"]["reason"] == "token_invalid"
        peer = Peer(service.url, transport)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await peer.connect(service.token("alice"))
        await peer.close()
    assert any(r["event"] in ("session_refused", "connect_refused")
               and r["reason"] == "rate_limited" and r["ip"] == "127.0.0.1"
               for r in capture_logs)


async def test_simultaneous_connections_per_user_are_capped(transport: str) -> None:
    """The third connection of a user with a cap of two is refused ``too_many_connections``;
    once one closes, a new one is accepted."""
    async with serving(limited(max_connections_per_user=2)) as service:
        first, second = Peer(service.url, transport), Peer(service.url, transport)
        await first.connect(service.token("alice"))
        await second.connect(service.token("alice"))
        data = await refusal(service.url, transport, token=service.token("alice"))
        assert data == {"message": "too_many_connections",
                        "data": {"reason": "too_many_connections"}}
        other = Peer(service.url, transport)
        await other.connect(service.token("bob"))
        await first.close()
        presence = service.app.ctx.signaling.presence
        await eventually(lambda: presence.connections_of("alice") == 1)
        third = Peer(service.url, transport)
        await third.connect(service.token("alice"))
        for peer in (second, third, other):
            await peer.close()


# ---- unauthenticated sessions ----

async def test_session_that_never_authenticates_is_closed() -> None:
    """An Engine.IO session (polling or websocket) that sends no Socket.IO connect is closed
    after SIGNAL_AUTH_TIMEOUT."""
    async with serving(limited(auth_timeout=1)) as service:
        async with aiohttp.ClientSession() as http:
            sid = await _polling_session(http, service.url)
            ws_url = service.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
            async with websockets.connect(ws_url) as ws:
                assert str(await ws.recv()).startswith("0{")
                assert len(service.app.ctx.sio.eio.sockets) == 2
                started = time.monotonic()
                with pytest.raises(websockets.ConnectionClosed):
                    while True:
                        await asyncio.wait_for(ws.recv(), 5)
                assert time.monotonic() - started < 4
            async with http.get(f"{service.url}/socket.io/?EIO=4&transport=polling&sid={sid}"
                                ) as response:
                assert response.status == 400 or (await response.text()).startswith("1")
        assert not service.app.ctx.sio.eio.sockets


async def test_refused_session_is_closed_after_the_timeout(
        capture_logs: list[dict[str, Any]]) -> None:
    """A session whose connect was refused does not linger: the client may not keep it open
    to try token after token. It is closed for ``auth_timeout``, after the timeout (1 s) and
    well before Engine.IO's own ping timeout (45 s) would have ended it."""
    async with serving(limited(auth_timeout=1)) as svc:
        ws_url = svc.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
        async with websockets.connect(ws_url) as ws:
            await ws.recv()
            started = time.monotonic()
            await ws.send('40{"token":"garbage"}')
            assert str(await ws.recv()).startswith("44")  # CONNECT_ERROR
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 15)
            took = time.monotonic() - started
        assert 0.5 <= took < 15, took
        dropped = [r for r in capture_logs if r["event"] == "session_dropped"]
        assert [r["reason"] for r in dropped] == ["auth_timeout"]
        assert not svc.app.ctx.sio.eio.sockets


# ---- slow consumers ----

async def test_client_that_stops_reading_is_dropped() -> None:
    """A websocket client that stops reading while relays pile up for it is disconnected
    once its queue holds SIGNAL_MAX_QUEUED_MESSAGES; the server's queue never grows past
    that, and the sender is unaffected."""
    settings = limited(limit_relays=UNLIMITED, limit_user_relays=UNLIMITED,
                       max_queued_messages=64, send_timeout=2)
    async with serving(settings) as service:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", int(service.url.rsplit(":", 1)[1])))
        ws_url = service.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
        async with websockets.connect(ws_url, sock=sock, max_queue=1) as ws:
            await ws.recv()
            await ws.send(json.dumps({"token": service.token("bob")}).join(["40", ""]))
            await ws.recv()
            await ws.send('421["JoinSocket","bob"]')
            assert json.loads((await ws.recv())[3:]) == [{"ok": True}]
            # bob now stops reading
            alice = Peer(service.url, "websocket")
            await alice.connect(service.token("alice"))
            eio = service.app.ctx.sio.eio
            most = 0
            big = {**VALID["offer"], "offer": {"type": "offer", "sdp": "v" * 40_000}}
            for _ in range(400):
                ack = await alice.call("offer", big)
                most = max([most, *(s.queue.qsize() for s in eio.sockets.values())])
                if not ack["delivered"]:
                    break
            assert not ack["delivered"]       # bob is gone
            assert most <= 64 + 1               # + the marker that ends the writer
            assert alice.client.connected
            await alice.close()
        async with aiohttp.ClientSession() as http, http.get(
                f"{service.url}/metrics") as response:
            text = await response.text()
        drops = [s for f in text_string_to_metric_families(text) for s in f.samples
                 if s.name == "signaling_slow_consumer_drops_total"]
        assert sum(s.value for s in drops) == 1, drops


# ---- a flood during a call ----

async def test_flood_does_not_disturb_a_call(transport: str) -> None:
    """With default limits, a client (its own process) floods candidates at bob as fast as
    it can for 2 s, reconnecting whenever it is thrown out. It is limited, disconnected with
    ``rate_limited`` again and again, and then refused at the door; meanwhile alice's
    candidates to bob all arrive, in order, with bounded latency (recorded in
    artifacts/flood-latency-<transport>.json)."""
    async with serving(Settings(jwt_secret=Secret(SECRET))) as service:
        alice, bob = await _pair(service, transport)
        await answered_call(alice, bob, "alice", "bob")
        sent: dict[int, float] = {}
        latencies: list[float] = []
        order: list[int] = []
        flooded = 0

        async def on_candidate(message: dict[str, Any]) -> None:
            nonlocal flooded
            if message["from"] == "alice":
                # "n": the test's own numbering (the service's seq is the receiver's own)
                order.append(message["n"])
                latencies.append(time.monotonic() - sent[message["n"]])
            else:
                flooded += 1

        bob.client.on("candidate", on_candidate)
        flooder = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__).with_name("flooder.py")), service.url,
            service.token("mallory"), "candidate", json.dumps(VALID["candidate"]), "2",
            stdout=asyncio.subprocess.PIPE)
        assert flooder.stdout is not None
        assert json.loads(await asyncio.wait_for(flooder.stdout.readline(), 10)) == {
            "ready": True}
        for n in range(80):
            sent[n] = time.monotonic()
            await alice.client.emit("candidate", {**VALID["candidate"], "n": n})
            await asyncio.sleep(0.02)
        await eventually(lambda: len(order) == 80, 5)
        assert order == list(range(80))
        report = json.loads(await asyncio.wait_for(flooder.stdout.readline(), 30))
        assert await flooder.wait() == 0
        latencies.sort()
        record = {"transport": transport, "relays": len(latencies),
                  "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
                  "p95_ms": round(latencies[int(len(latencies) * 0.95)] * 1000, 2),
                  "max_ms": round(latencies[-1] * 1000, 2), "flood": report,
                  "flood_delivered": flooded}
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / f"flood-latency-{transport}.json").write_text(json.dumps(record) + "\n")
        print(record)
        assert record["max_ms"] < 500
        assert report["sent"] > 1000  # the flood was real ...
        assert report["connections"] >= 2 and set(map(json.dumps, report["reasons"])) == {
            json.dumps({"reason": "rate_limited"})}
        settings = service.app.ctx.settings
        # ... and none of it reached bob: mallory is in no call with him (before call
        # state, up to the user's burst plus its sustained rate did)
        assert settings.limit_user_relays.burst > 0
        assert flooded == 0
        await alice.close()
        await bob.close()
