"""Raw Engine.IO / Socket.IO frames over a plain websocket and plain HTTP long-polling:
malformed packets, bad ack ids, wrong namespaces, binary frames, oversize frames. The
service never crashes, never hangs a request, and well-behaved clients carry on."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest
import websockets

from service.config import Rate, Secret, Settings
from tests.support import SECRET, Peer, RunningService, calls_work, serving

UNLIMITED = Rate(0, 0)
FRAMES: dict[str, str | bytes] = {
    "bad-json": "42[",
    "truncated-event": '42["offer"',
    "object-not-array": "42{}",
    "empty-array": "42[]",
    "number-as-name": "42[7,{}]",
    "null-name": "42[null]",
    "unknown-socketio-type": "4x",
    "unknown-engineio-type": "9",
    "empty-frame": "",
    "only-engineio-message": "4",
    "ack-for-unknown-id": "43999[]",
    "ack-with-bad-id": "43abc[]",
    "connect-other-namespace": '40/admin,{"token":"x"}',
    "event-other-namespace": '42/admin,["offer",{}]',
    "second-connect": "40",
    "connect-error-from-client": '44{"message":"x"}',
    "reserved-name": '421["disconnect"]',
    "binary-event-with-ack": '451-7["offer",{"_placeholder":true,"num":0}]',
    "binary-event-many-attachments": '452000000-["offer",{"_placeholder":true,"num":0}]',
    "stray-binary-frame": b"\x00\x01\x02",
    "deep-nesting": "42" + "[" * 5000 + "]" * 5000,
    "lone-surrogate-name": '421["\\ud800",{}]',
    "lone-surrogate-in-sdp": '421["offer",{"to":"bob","offer":{"type":"offer","sdp":"\\ud800"}}]',
    "huge-number": "421[\"hangup\",{\"to\":" + "9" * 4000 + "}]",
    "engineio-upgrade-again": "5",
    "engineio-ping-from-client": "2",
    "oversize-frame": "42" + json.dumps(["offer", {"pad": "x" * 70_000}]),
}


def settings() -> Settings:
    return Settings(jwt_secret=Secret(SECRET), limit_ip_connects=UNLIMITED,
                    limit_other=UNLIMITED, limit_relays=UNLIMITED,
                    limit_user_relays=UNLIMITED)


async def _healthy(service: RunningService, alice: Peer, bob: Peer) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{service.url}/healthz") as response:
        assert response.status == 200
    await calls_work(alice, bob)


async def _pair(service: RunningService) -> tuple[Peer, Peer]:
    alice, bob = Peer(service.url, "websocket"), Peer(service.url, "polling")
    for peer, user in ((alice, "alice"), (bob, "bob")):
        await peer.connect(service.token(user))
        assert await peer.call("JoinSocket", user) == {"ok": True}
    return alice, bob


async def _drain(ws: Any, within: float = 0.5) -> list[str | bytes]:
    """What the server sends within ``within`` seconds, until it closes."""
    received: list[str | bytes] = []
    try:
        while True:
            received.append(await asyncio.wait_for(ws.recv(), within))
    except (TimeoutError, websockets.ConnectionClosed):
        return received


@pytest.mark.parametrize("name", list(FRAMES))
async def test_raw_websocket_frame(name: str) -> None:
    """Each frame, sent on an authenticated raw websocket session, is answered, ignored or
    ends that session, and nothing else."""
    async with serving(settings()) as service:
        alice, bob = await _pair(service)
        ws_url = service.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
        async with websockets.connect(ws_url, max_size=None) as ws:
            assert str(await ws.recv()).startswith("0{")
            await ws.send("40" + json.dumps({"token": service.token("mallory")}))
            assert str(await ws.recv()).startswith("40{")
            await ws.send(FRAMES[name])
            replies = await _drain(ws)
        if name == "binary-event-with-ack":
            assert json.loads(str(replies[0])[3:])[0]["error"] == "invalid_payload"
        if name in ("reserved-name", "lone-surrogate-name"):
            assert json.loads(str(replies[0])[3:]) == [{"ok": False, "error": "unknown_event"}]
        if name == "lone-surrogate-in-sdp":
            assert json.loads(str(replies[0])[3:])[0]["error"] == "invalid_payload"
        await _healthy(service, alice, bob)
        await alice.close()
        await bob.close()


@pytest.mark.parametrize("name", [n for n, f in FRAMES.items() if isinstance(f, str)])
async def test_raw_polling_post(name: str) -> None:
    """Each frame, POSTed on an authenticated raw polling session, gets an HTTP answer
    within two seconds, and the service carries on."""
    async with serving(settings()) as service:
        alice, bob = await _pair(service)
        base = f"{service.url}/socket.io/?EIO=4&transport=polling"
        async with aiohttp.ClientSession() as http:
            async with http.get(base) as response:
                sid = json.loads((await response.text())[1:])["sid"]
            url = f"{base}&sid={sid}"
            async with http.post(url, data="40" + json.dumps({"token": service.token("m")})
                                 ) as response:
                assert response.status == 200
            async with http.get(url) as response:
                assert "40{" in await response.text()
            started = time.monotonic()
            async with http.post(url, data=str(FRAMES[name]).encode()) as response:
                assert response.status in (200, 400, 413)
            assert time.monotonic() - started < 2
        await _healthy(service, alice, bob)
        await alice.close()
        await bob.close()


async def test_garbage_handshakes(service: RunningService) -> None:
    """Handshakes with a bad protocol version, an unknown transport, an unknown sid or a
    bad method get an immediate HTTP error."""
    async with aiohttp.ClientSession() as http:
        for query in ("EIO=3&transport=polling", "EIO=4&transport=carrier-pigeon",
                      "EIO=4&transport=polling&sid=nope", "transport=polling", "EIO=x"):
            async with http.get(f"{service.url}/socket.io/?{query}") as response:
                assert response.status == 400, query
        async with http.put(f"{service.url}/socket.io/?EIO=4&transport=polling") as response:
            assert response.status in (400, 405)
