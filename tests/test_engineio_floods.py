"""Below Socket.IO: floods of Engine.IO packets (UPGRADE, PING, NOOP, unknown events batched
by the thousand) over long-polling and websocket, with and without a token (issue 10, item 1).
Each is refused or closes the flooding session; queues stay bounded; /healthz and a call
elsewhere carry on."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest
import websockets

from service.config import Rate, Secret, Settings
from service.transport.engine import MAX_PACKETS_PER_POST, BoundedQueue
from tests.support import SECRET, RunningService, calls_work, eventually, serving
from tests.test_raw_frames import _pair

UNLIMITED = Rate(0, 0)


def flood_settings(**fields: Any) -> Settings:
    return Settings(**{"jwt_secret": Secret(SECRET), "limit_ip_connects": UNLIMITED,
                       "limit_user_connects": UNLIMITED, **fields})


async def _polling_session(http: aiohttp.ClientSession, service: RunningService,
                           token: str | None) -> str:
    base = f"{service.url}/socket.io/?EIO=4&transport=polling"
    async with http.get(base) as response:
        sid = str(json.loads((await response.text())[1:])["sid"])
    if token is not None:
        async with http.post(f"{base}&sid={sid}", data="40" + json.dumps({"token": token})):
            pass
        async with http.get(f"{base}&sid={sid}") as response:
            assert "40{" in await response.text()
    return f"{base}&sid={sid}"


async def _healthz_ms(http: aiohttp.ClientSession, service: RunningService) -> float:
    started = time.monotonic()
    async with http.get(f"{service.url}/healthz") as response:
        assert response.status == 200
    return (time.monotonic() - started) * 1000


def test_bounded_queue_drops_what_does_not_fit() -> None:
    """Past its limit the queue drops packets and says so; the writer's end marker, and the
    CLOSE packet before it, always fit."""
    queue = BoundedQueue(3)
    for n in range(10):
        queue.put_nowait(n)
    assert queue.qsize() == 3 and queue.overflowed
    queue.put_nowait(None)
    assert queue.qsize() == 5  # a CLOSE packet and the end marker (issue 19, item 16)


@pytest.mark.parametrize("packet", ["5", "2", "6", '42["nothing"]'])
@pytest.mark.parametrize("authenticated", [True, False], ids=["token", "no-token"])
async def test_a_huge_polling_post_closes_the_session(packet: str, authenticated: bool,
                                                      capture_logs: list[dict[str, Any]]
                                                      ) -> None:
    """A 64 KiB POST of 32,768 packets (before: each UPGRADE queued a NOOP, 655,360 after 20
    POSTs) is refused before Engine.IO decodes it and its session is closed; the rest of the
    service does not notice."""
    async with serving(flood_settings()) as service, aiohttp.ClientSession() as http:
        alice, bob = await _pair(service)
        url = await _polling_session(http, service,
                                     service.token("mallory") if authenticated else None)
        body = "\x1e".join([packet] * (MAX_PACKETS_PER_POST * 65))[:65000]
        async with http.post(url, data=body.encode()) as response:
            assert response.status == 400
            assert await response.json() == {"error": "too_many_packets"}
        async with http.get(url) as response:
            assert response.status == 400  # the session is gone
        eio = service.app.ctx.sio.eio
        assert max((s.queue.qsize() for s in eio.sockets.values()), default=0) <= 2
        assert await _healthz_ms(http, service) < 1000  # a generous ceiling, not a benchmark
        await calls_work(alice, bob)
        await alice.close()
        await bob.close()
    assert [r["reason"] for r in capture_logs if r["event"] == "session_dropped"] == [
        "too_many_packets"]


async def test_many_small_posts_spend_the_packet_budget(
        capture_logs: list[dict[str, Any]]) -> None:
    """POSTs each under the per-POST bound still spend the session's packet budget: once
    it is out, the session is closed; the outgoing queue never grows past its bound."""
    settings = flood_settings(limit_packets=Rate(50, 500), max_queued_messages=64)
    async with serving(settings) as service, aiohttp.ClientSession() as http:
        url = await _polling_session(http, service, service.token("mallory"))
        body = "\x1e".join(["5"] * 400).encode()
        statuses = []
        eio = service.app.ctx.sio.eio
        for _ in range(5):
            async with http.post(url, data=body) as response:
                statuses.append(response.status)
            assert all(s.queue.qsize() <= 65 for s in eio.sockets.values())
            if response.status == 400:
                break
        assert statuses[0] == 200 and statuses[-1] == 400
        assert not [s for s in eio.sockets.values() if not s.closed]
    assert "rate_limited" in [r["reason"] for r in capture_logs
                              if r["event"] == "session_dropped"]


@pytest.mark.parametrize("frame", ["5", "2", "6", "3"])
async def test_a_websocket_packet_flood_is_closed(frame: str) -> None:
    """Frames of any Engine.IO type count: a websocket flooding PINGs, UPGRADEs, NOOPs or
    PONGs is closed with 1008 once past its budget; a call on another connection carries
    on."""
    settings = flood_settings(limit_packets=Rate(20, 100))
    async with serving(settings) as service:
        alice, bob = await _pair(service)
        url = service.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
        async with websockets.connect(url) as ws:
            await ws.recv()
            await ws.send("40" + json.dumps({"token": service.token("mallory")}))
            await ws.recv()
            with pytest.raises(websockets.ConnectionClosed) as closed:
                for _ in range(10_000):
                    await ws.send(frame)
                await asyncio.wait_for(ws.recv(), 10)
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        await calls_work(alice, bob)
        await eventually(lambda: len(service.app.ctx.sio.eio.sockets) == 2)
        await alice.close()
        await bob.close()


async def test_a_flooder_does_not_cut_off_a_quiet_neighbour() -> None:
    """Sessions of one address share its packet budget, but when a flooder has spent it, a
    quiet client on the same address (a NAT) keeps working: only busy sessions are cut."""
    settings = flood_settings(limit_packets=Rate(50, 400), limit_ip_packets=Rate(10, 300))
    async with serving(settings) as service, aiohttp.ClientSession() as http:
        alice, bob = await _pair(service)
        url = await _polling_session(http, service, service.token("mallory"))
        async with http.post(url, data="\x1e".join(["5"] * 250).encode()) as response:
            assert response.status == 200  # within both budgets
        async with http.post(url, data="\x1e".join(["5"] * 100).encode()) as response:
            assert response.status == 400  # the address is spent, and mallory is busy
        for _ in range(3):
            await calls_work(alice, bob)
        await alice.close()
        await bob.close()


@pytest.mark.parametrize("why", ["auth_timeout", "rate_limited"])
async def test_a_dropped_polling_session_answers_its_long_poll_with_close(why: str) -> None:
    """The service ends a polling session (here: the auth timeout, or a POST over the packet
    budget): the long-poll waiting for it is answered with a CLOSE packet, which clients
    read as the session's end (before: an empty 200, a parser error to engine.io-client)."""
    config = flood_settings(auth_timeout=1, limit_packets=Rate(1, 5))
    async with serving(config) as service, aiohttp.ClientSession() as http:
        token = service.token("alice") if why == "rate_limited" else None
        url = await _polling_session(http, service, token)
        poll = asyncio.ensure_future(http.get(url))
        sockets = service.app.ctx.sio.eio.sockets
        await eventually(lambda: any(s.queue._getters for s in sockets.values()))  # waiting
        if why == "rate_limited":
            async with http.post(url, data="\x1e".join(["6"] * 20)) as refused:
                assert refused.status == 400
        async with await asyncio.wait_for(poll, 10) as response:
            assert response.status == 200
            assert await response.text() == "1"
