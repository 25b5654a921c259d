"""Sessions end when they should, and leave nothing behind: a connect that outlives its
Engine.IO session, a session without a Socket.IO connection, frames that are not Engine.IO,
a client's CLOSE packet, and reconnect churn (issue 9, items 4, 5, 14, 15 and 16)."""

from __future__ import annotations

import asyncio
import gc
import json
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import socketio
import websockets
from sanic import Request
from sanic.server.protocols.http_protocol import HttpProtocol

from service.config import JwksEndpoint, Rate, Secret, Settings
from tests.idp import IdpKey, JwksServer
from tests.support import (
    SECRET,
    Peer,
    RunningService,
    client_frame,
    eventually,
    raw_connection,
    serving,
    until_eof,
)

UNLIMITED = Rate(0, 0)
ISSUER = "https://idp.example.com/"


def lenient(**fields: Any) -> Settings:
    return Settings(**{"jwt_secret": Secret(SECRET), "limit_ip_connects": UNLIMITED,
                       "limit_user_connects": UNLIMITED,
                       "auth_timeout": 1.0, **fields})


def ws_url(service: RunningService) -> str:
    return service.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"


async def open_session(service: RunningService, user: str = "mallory") -> Any:
    """A raw websocket with a Socket.IO connection on it."""
    ws = await websockets.connect(ws_url(service))
    assert str(await ws.recv()).startswith("0{")
    await ws.send("40" + json.dumps({"token": service.token(user)}))
    assert str(await ws.recv()).startswith("40{")
    return ws


async def frames_until_closed(ws: Any, within: float) -> list[str | bytes]:
    """Every frame until the server closes the websocket; fails if it is still open after
    ``within`` seconds (a generous ceiling)."""
    received: list[str | bytes] = []
    deadline = time.monotonic() + within
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            received.append(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
    return received


# ---- item 4: a connect that outlives its session ----

@pytest.fixture
async def slow_idp() -> AsyncIterator[tuple[JwksServer, IdpKey]]:
    server = JwksServer()
    await server.start()
    key = IdpKey.new("ES256", "slow-1")
    server.publish("slow", key)
    server.delay = 2.5  # longer than SIGNAL_AUTH_TIMEOUT below
    yield server, key
    await server.stop()


async def test_connect_that_outlives_its_session_leaves_no_ghost(
        slow_idp: tuple[JwksServer, IdpKey], capture_logs: list[dict[str, Any]]) -> None:
    """The auth timer closes sessions whose connect waits on a slow JWKS; when verification
    then succeeds, no Session, timer or presence slot is left for the user, who can still
    connect up to the cap."""
    idp, key = slow_idp
    settings = Settings(jwt_jwks=(JwksEndpoint(ISSUER, idp.url("slow")),),
                        jwt_issuers=(ISSUER,), limit_ip_connects=UNLIMITED,
                        auth_timeout=1.0, max_connections_per_user=2, jwks_timeout=5.0)
    async with serving(settings) as service, aiohttp.ClientSession() as http:
        signaling = service.app.ctx.signaling
        base = f"{service.url}/socket.io/?EIO=4&transport=polling"

        async def connect() -> None:
            # long-polling: the POST carrying the connect stays open while the token is
            # verified (a websocket's reader would be cancelled with its connection)
            async with http.get(base) as response:
                sid = json.loads((await response.text())[1:])["sid"]
            token = key.token("alice", iss=ISSUER)
            async with http.post(f"{base}&sid={sid}", data="40" + json.dumps({"token": token})):
                pass

        await asyncio.gather(*(connect() for _ in range(3)))
        await eventually(lambda: sum(r["event"] == "connect_refused"
                                     and r["reason"] == "session_closed"
                                     for r in capture_logs) == 3, within=10)
        assert signaling.sessions == {}
        assert signaling.presence.connections_of("alice") == 0
        assert not service.app.ctx.sio.manager.rooms.get("/", {}).get(None)
        assert not signaling.timers._handles
        peers = [Peer(service.url, "websocket") for _ in range(2)]
        for peer in peers:  # the cap (2) is all there: no ghost holds a slot
            await peer.connect(key.token("alice", iss=ISSUER))
        assert len(signaling.sessions) == 2
        for peer in peers:
            await peer.close()


# ---- item 5: Engine.IO sessions without a Socket.IO connection ----

async def test_session_that_leaves_the_namespace_is_closed() -> None:
    """A client that sends ``41`` (leaves the namespace) and stays is closed after
    SIGNAL_AUTH_TIMEOUT."""
    async with serving(lenient()) as service:
        ws = await open_session(service)
        await asyncio.sleep(1.5)  # past the first SIGNAL_AUTH_TIMEOUT, which it passed
        assert service.app.ctx.sio.eio.sockets
        await ws.send("41")
        started = time.monotonic()
        await frames_until_closed(ws, within=10)
        assert time.monotonic() - started >= 0.9  # it had its SIGNAL_AUTH_TIMEOUT
        await eventually(lambda: not service.app.ctx.sio.eio.sockets)


async def test_polling_session_that_leaves_the_namespace_is_closed() -> None:
    """The same over long-polling: the session is gone after SIGNAL_AUTH_TIMEOUT."""
    async with serving(lenient()) as service, aiohttp.ClientSession() as http:
        base = f"{service.url}/socket.io/?EIO=4&transport=polling"
        async with http.get(base) as response:
            sid = json.loads((await response.text())[1:])["sid"]
        url = f"{base}&sid={sid}"
        async with http.post(url, data="40" + json.dumps({"token": service.token("m")})):
            pass
        async with http.get(url) as response:
            assert "40{" in await response.text()
        await asyncio.sleep(1.5)  # past the first SIGNAL_AUTH_TIMEOUT, which it passed
        assert sid in service.app.ctx.sio.eio.sockets
        async with http.post(url, data="41") as response:
            assert response.status == 200
        assert sid in service.app.ctx.sio.eio.sockets
        await eventually(lambda: sid not in service.app.ctx.sio.eio.sockets, within=10)


async def test_session_that_ignores_server_disconnect_is_closed() -> None:
    """A client told ``server_disconnect`` (its token expired) that keeps its websocket open
    is closed after SIGNAL_AUTH_TIMEOUT."""
    async with serving(lenient(jwt_leeway=0, token_expiry_warning=0)) as service:
        ws = await websockets.connect(ws_url(service))
        await ws.recv()
        await ws.send("40" + json.dumps({"token": service.token("mallory", ttl=2)}))
        frames = await frames_until_closed(ws, within=15)
        texts = [f for f in frames if isinstance(f, str)]
        told = next(i for i, f in enumerate(texts) if "server_disconnect" in f)
        assert "41" in texts[told + 1:]  # the namespace disconnect, which it ignored
        await eventually(lambda: not service.app.ctx.sio.eio.sockets)


# ---- items 14 and 15: frames and close packets over websocket ----

async def _raw_session(service: RunningService, last: str) -> tuple[bytes, float]:
    """Open a websocket by hand, connect, send ``last``; every byte the server then sends
    until it closes the TCP connection, and how long that took."""
    reader, writer = await raw_connection(service)
    writer.write(client_frame(last.encode()))
    started = time.monotonic()
    rest = await until_eof(reader)
    writer.close()
    return rest, time.monotonic() - started


@pytest.mark.parametrize("frame", ["abc", "", "9", "{}"])
async def test_frame_that_is_not_engineio_ends_the_session_cleanly(
        frame: str, capture_logs: list[dict[str, Any]]) -> None:
    """A websocket frame that is not an Engine.IO packet: one log line, a close frame with
    code 1002, and nothing after it (no HTTP response written into the websocket)."""
    async with serving(lenient()) as service:
        rest, _ = await _raw_session(service, frame)
        assert rest == b"\x88\x02" + (1002).to_bytes(2, "big")
        await eventually(lambda: not service.app.ctx.sio.eio.sockets)
    dropped = [r for r in capture_logs if r["event"] == "session_dropped"]
    assert [r["reason"] for r in dropped] == ["protocol_error"]
    assert not [r for r in capture_logs if "traceback" in r]


async def test_close_packet_closes_the_websocket_at_once() -> None:
    """The client's Engine.IO CLOSE packet (``1``): the server closes the websocket (1000)
    right away, not when its keepalive gives up."""
    async with serving(lenient()) as service:
        rest, took = await _raw_session(service, "1")
        assert rest == b"\x88\x02" + (1000).to_bytes(2, "big")
        assert took < 5  # before: ~40 s, when Sanic's keepalive gave up
        await eventually(lambda: not service.app.ctx.sio.eio.sockets)


# ---- item 16: closed connections release everything ----

ENGINEIO_TASKS = ("_send_ping", "_websocket_handler", "writer", "poll")


def _engineio_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks()
            if getattr(t.get_coro(), "__name__", "") in ENGINEIO_TASKS]


def _timers_holding_requests() -> int:
    """Timers, cancelled ones included, whose context holds a Sanic request (asyncio keeps a
    cancelled timer, with its context, until its deadline, unless it happens to compact its
    heap: looked at directly, so the test does not depend on that)."""
    loop = asyncio.get_running_loop()
    return sum(any(isinstance(value, Request) for value in handle._context.values())
               for handle in loop._scheduled)  # type: ignore[attr-defined]


async def test_closed_connections_release_everything() -> None:
    """After websocket clients leave (close frame, dropped TCP connection), polling clients
    say goodbye and upgraded clients disconnect, no Engine.IO socket, ping task, Sanic
    request or connection is left within a second or so (before: until the next ping,
    25-45 s later)."""
    async with serving(lenient(max_connections_per_user=0)) as service:
        requests: list[weakref.ref[Any]] = []

        connections: set[int] = set()  # Sanic's protocols take no weak references

        @service.app.on_request
        async def track(request: Any) -> None:
            requests.append(weakref.ref(request))
            connections.add(id(request.transport.get_protocol()))

        async def websocket_cycle(abort: bool) -> None:
            ws = await open_session(service, "churn")
            await ws.send('420["JoinSocket","churn"]')
            assert "ok" in str(await ws.recv())
            if abort:
                ws.transport.abort()
            else:
                await ws.close()

        async def client_cycle(transports: list[str]) -> None:
            client = socketio.AsyncClient(reconnection=False)
            await client.connect(service.url, auth={"token": service.token("churn")},
                                 transports=transports, wait_timeout=5)
            assert await client.call("JoinSocket", "churn", timeout=5) == {"ok": True}
            http = client.eio.http
            await client.disconnect()
            await http.close()  # else its idle keep-alive connection keeps the last request

        for _ in range(10):
            await asyncio.gather(websocket_cycle(False), websocket_cycle(True),
                                 client_cycle(["polling"]),
                                 client_cycle(["polling", "websocket"]))
        sio = service.app.ctx.sio
        assert len(requests) >= 40

        def released() -> bool:
            gc.collect()
            return (not sio.eio.sockets and not sio.eio.ping_tasks and not _engineio_tasks()
                    and not service.app.ctx.signaling.sessions
                    and all(ref() is None for ref in requests)
                    and not any(isinstance(o, HttpProtocol) and id(o) in connections
                                for o in gc.get_objects())
                    and not _timers_holding_requests())

        started = time.monotonic()
        await eventually(released, within=10)
        # a generous ceiling on a busy machine; before the fix it was 25 s at least
        assert time.monotonic() - started < 5


async def test_sweep_closes_sessions_that_stop_answering_pings() -> None:
    """Engine.IO's per-session service task is off; one sweep over all sessions closes those
    whose client has not answered a PING within ``ping_timeout`` (here a raw websocket that
    never answers), and leaves a client that answers alone."""
    async with serving(lenient()) as service:
        eio = service.app.ctx.sio.eio
        assert not [t for t in asyncio.all_tasks()
                    if getattr(t.get_coro(), "__name__", "") == "_service_task"]
        eio.ping_interval, eio.ping_timeout = 1, 0.5
        alice = Peer(service.url, "websocket")
        await alice.connect(service.token("alice"))
        mute = await open_session(service, "mute")
        assert await asyncio.wait_for(mute.recv(), 5) == "2"  # a PING it will not answer
        await asyncio.sleep(0.6)
        await eio.sweep()
        frames = await frames_until_closed(mute, 5)
        assert "2" not in frames[1:]
        await eventually(lambda: len([s for s in eio.sockets.values() if not s.closed]) == 1)
        assert await alice.call("JoinSocket", "alice") == {"ok": True}
        await alice.close()


async def test_the_heartbeat_follows_the_settings(capture_logs: list[dict[str, Any]]) -> None:
    """SIGNAL_PING_INTERVAL/SIGNAL_PING_TIMEOUT (here 300/200 ms, as the protocol suites
    use) are what the handshake tells clients and what the service enforces: a client that
    stops answering is closed within them (before: always 25 s / 20 s); one that answers
    stays."""
    async with serving(lenient(ping_interval=0.3, ping_timeout=0.2)) as service:
        async with aiohttp.ClientSession() as http, http.get(
                f"{service.url}/socket.io/?EIO=4&transport=polling") as response:
            opened = json.loads((await response.text())[1:])
        assert (opened["pingInterval"], opened["pingTimeout"]) == (300, 200)
        alice = Peer(service.url, "websocket")
        await alice.connect(service.token("alice"))
        mute = await open_session(service, "mute")
        started = time.monotonic()
        await frames_until_closed(mute, 5)
        assert time.monotonic() - started < 3  # a generous ceiling over 0.3 + 0.2 + a sweep
        assert any(r["event"] == "disconnect" and r.get("reason") == "ping timeout"
                   for r in capture_logs)
        assert await alice.call("JoinSocket", "alice") == {"ok": True}  # alive, 10 pings on
        await alice.close()
