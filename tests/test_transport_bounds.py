"""Every socket and frame the owned transport accepts is bounded, token or not (issue 19,
items 1-4): websocket upgrades of a polling session, messages waiting for a busy reader,
fragments, and websocket pings (whose pongs a client need not read). Real sockets against the
real service; each test fails on the code before the bound."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from typing import Any

import aiohttp
import pytest

from service.config import Rate, Secret, Settings
from service.transport import engine, websocket
from tests.support import (
    SECRET,
    RunningService,
    client_frame,
    eventually,
    raw_connection,
    serving,
    until_eof,
)

UNLIMITED = Rate(0, 0)


def settings(**fields: Any) -> Settings:
    return Settings(**{"jwt_secret": Secret(SECRET), "limit_ip_connects": UNLIMITED,
                       "limit_user_connects": UNLIMITED,
                       **fields})


def close_code(data: bytes) -> int | None:
    at = data.find(b"\x88")
    if at < 0 or len(data) < at + 4:
        return None
    return int.from_bytes(data[at + 2:at + 4], "big")


async def polling_sid(service: RunningService) -> str:
    """A polling session that has not authenticated (no token)."""
    async with aiohttp.ClientSession() as http, http.get(
            f"{service.url}/socket.io/?EIO=4&transport=polling") as response:
        return str(json.loads((await response.text())[1:])["sid"])


async def upgrade_request(service: RunningService, sid: str,
                          ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A websocket upgrade of polling session ``sid`` that then sends nothing; the
    response's head."""
    port = int(service.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /socket.io/?EIO=4&transport=websocket&sid={sid} HTTP/1.1\r\n"
                  f"Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return reader, writer, head


async def test_one_upgrade_at_a_time_and_none_outlives_its_session() -> None:
    """20 websocket upgrades of one polling session that never authenticates: one is
    accepted, the others are refused at once (400), and the accepted one is closed when the
    auth timeout drops the session (before: all 20 stayed open past it)."""
    async with serving(settings(auth_timeout=1)) as service:
        sid = await polling_sid(service)
        requests = [await upgrade_request(service, sid) for _ in range(20)]
        accepted = [r for r in requests if r[2].startswith(b"HTTP/1.1 101")]
        refused = [r for r in requests if b" 400 " in r[2].split(b"\r\n")[0]]
        assert len(accepted) == 1 and len(refused) == 19
        reader, _writer, _ = accepted[0]
        await asyncio.wait_for(until_eof(reader), 5)  # the session's end closed it
        for _, other, _ in requests:
            other.close()
        assert not service.app.ctx.sio.eio.sockets


async def test_an_upgrade_that_never_probes_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """An authenticated polling session's upgrade that never sends its probe is closed after
    the upgrade timeout (before: never)."""
    monkeypatch.setattr(engine, "UPGRADE_TIMEOUT", 0.5)
    async with serving(settings()) as service, aiohttp.ClientSession() as http:
        base = f"{service.url}/socket.io/?EIO=4&transport=polling"
        sid = await polling_sid(service)
        async with http.post(f"{base}&sid={sid}",
                             data="40" + json.dumps({"token": service.token("alice")})):
            pass
        reader, writer, head = await upgrade_request(service, sid)
        assert head.startswith(b"HTTP/1.1 101")
        await asyncio.wait_for(until_eof(reader), 5)
        writer.close()


async def test_a_busy_reader_pauses_the_socket_instead_of_buffering_it() -> None:
    """While the connection's reader is busy (here: a connect whose IdP takes 5 s), what the
    client pours in waits in TCP, not in the service: at most a few messages are taken in
    (before: 40 MB of 60 KB messages, all in memory)."""
    from service.config import JwksEndpoint
    from tests.idp import IdpKey, JwksServer

    idp, key = JwksServer(), IdpKey.new("ES256", "k-1")
    await idp.start()
    idp.delay = 5.0
    try:
        config = settings(jwt_jwks=(JwksEndpoint("https://idp.test/", idp.publish("k", key)),),
                          jwt_issuers=("https://idp.test/",), jwt_secret=None,
                          limit_packets=UNLIMITED, limit_ip_packets=UNLIMITED)
        async with serving(config) as service:
            port = int(service.url.rsplit(":", 1)[1])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            handshake = base64.b64encode(os.urandom(16)).decode()
            writer.write((f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\n"
                          f"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                          f"Sec-WebSocket-Key: {handshake}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                          ).encode())
            await reader.readuntil(b"\r\n\r\n")
            token = key.token("alice", iss="https://idp.test/")
            writer.write(client_frame(("40" + json.dumps({"token": token})).encode()))
            big = client_frame(b'42["x","' + b"y" * 60_000 + b'"]')
            sent = 0
            try:
                with pytest.raises(TimeoutError):  # the service stops reading: writes block
                    while sent < 700:  # 42 MB
                        writer.write(big)
                        await asyncio.wait_for(writer.drain(), 1)
                        sent += 1
                wire = next(s.queue.wire for s in service.app.ctx.sio.eio.sockets.values())
                assert wire is not None and wire.paused
                assert len(wire.inbox) <= websocket.INBOX_LIMIT
                taken = sum(len(m) for m in wire.inbox) + len(wire._buffer)
                assert taken < 2 * 1024 * 1024, taken  # the rest waits in TCP's buffers
            finally:
                writer.transport.abort()
    finally:
        await idp.stop()


async def test_empty_continuation_frames_are_bounded() -> None:
    """A 1-byte first fragment and then empty continuation frames without end: closed at the
    fragment bound (1009) with the packet budget lifted, and by the packet budget (1008) when
    it is the smaller (before: 5,000,000 of them kept the connection open, 38 MB)."""
    empty = client_frame(b"", opcode=0x0)[:2].replace(b"\x80", b"\x00", 1) + b"\0\0\0\0"
    first = bytes([0x01]) + client_frame(b"4", opcode=0x1)[1:]
    lifted = settings(limit_packets=UNLIMITED, limit_ip_packets=UNLIMITED)
    assert await closing_code(lifted, first + empty * 5000) == 1009
    tight = settings(limit_packets=Rate(1, 20))  # a budget smaller than the fragment bound
    assert await closing_code(tight, first + empty * 5000) == 1008


async def closing_code(config: Settings, frames: bytes) -> int | None:
    """The code the service closes a connection with after ``frames``; it forgets the
    session."""
    async with serving(config) as service:
        reader, writer = await raw_connection(service)
        writer.write(frames)
        rest = await until_eof(reader)
        writer.close()
        await eventually(lambda: not service.app.ctx.sio.eio.sockets, 5)
        return close_code(rest)


async def test_websocket_pings_spend_the_packet_budget() -> None:
    """PING frames are packets like any other: a flood of them closes the session (1008)
    (before: 120,000 pings hit no limit)."""
    assert await closing_code(settings(), client_frame(b"p" * 125, opcode=0x9) * 2000) == 1008


async def test_pongs_a_client_does_not_read_start_the_slow_reader_clock(
        capture_logs: list[dict[str, Any]]) -> None:
    """With the packet budget lifted, pongs queued to a client that reads nothing count as
    unread writes: the connection is dropped after the send timeout (before: the clock did
    not start until the next Engine.IO ping, 25 s later, with 11 MB queued)."""
    config = settings(limit_packets=UNLIMITED, limit_ip_packets=UNLIMITED, send_timeout=1)
    async with serving(config) as service:
        _reader, writer = await raw_connection(service)
        ping = client_frame(b"p" * 125, opcode=0x9)
        for _ in range(120):  # 120,000 pings, 15 MB of pongs, none read
            writer.write(ping * 1000)
            if writer.transport.get_write_buffer_size() > 8 * 1024 * 1024:
                break
            await asyncio.sleep(0)
        await eventually(lambda: any(r.get("reason") == "send_timeout"
                                     for r in capture_logs
                                     if r["event"] == "session_dropped"), 10)
        writer.transport.abort()


async def test_an_upgrade_over_the_packet_budget_closes_the_session() -> None:
    """An upgrade spends a packet of the session's budget: one that finds it spent (here by
    a POST of three PONGs) is refused and the session is closed, as a POST over the budget
    closes it (before: the upgrade was accepted and spent nothing)."""
    async with serving(settings(limit_packets=Rate(0.001, 3))) as service, \
            aiohttp.ClientSession() as http:
        sid = await polling_sid(service)
        url = f"{service.url}/socket.io/?EIO=4&transport=polling&sid={sid}"
        async with http.post(url, data="3\x1e3\x1e3") as response:
            assert response.status == 200  # the budget, spent
        _reader, writer, head = await upgrade_request(service, sid)
        writer.close()
        assert b" 400 " in head.split(b"\r\n")[0]
        async with http.get(url) as response:
            assert response.status == 400  # the session is gone
