"""The service's own websocket (``service.transport.websocket.Wire``), through real sockets: framing
(fragments, pings, bad UTF-8, oversized messages), how it closes, and readers that stall."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest
import websockets

from service.config import Rate, Secret, Settings
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


def settings(**fields: Any) -> Settings:
    return Settings(**{"jwt_secret": Secret(SECRET), "limit_ip_connects": UNLIMITED,
                       "limit_user_connects": UNLIMITED,
                       **fields})


def ws_url(service: RunningService) -> str:
    return service.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"


async def connected(service: RunningService, user: str, **options: Any) -> Any:
    ws = await websockets.connect(ws_url(service), **options)
    assert str(await ws.recv()).startswith("0{")
    await ws.send("40" + json.dumps({"token": service.token(user)}))
    assert str(await ws.recv()).startswith("40{")
    return ws


def close_code(data: bytes) -> int | None:
    """The code of the first close frame (opcode 8) in what the server sent, if any."""
    at = data.find(b"\x88")
    if at < 0 or len(data) < at + 4:
        return None
    return int.from_bytes(data[at + 2:at + 4], "big")


async def test_fragmented_message_is_assembled() -> None:
    """A message sent in several frames (continuation frames) is handled as one."""
    async with serving(settings()) as service:
        ws = await connected(service, "frag")
        await ws.send(["421", '["JoinSocket"', ',"frag"]'])
        assert await asyncio.wait_for(ws.recv(), 5) == '431[{"ok":true}]'
        await ws.close()


async def test_ping_frames_are_answered() -> None:
    """A websocket-level ping (not Engine.IO's) is answered with a pong carrying its data."""
    async with serving(settings()) as service:
        ws = await connected(service, "pinger")
        pong = await ws.ping(b"are you there")
        await asyncio.wait_for(pong, 5)
        await ws.close()


async def test_text_that_is_not_utf8_closes_1007(capture_logs: list[dict[str, Any]]) -> None:
    """A text frame that is not UTF-8 ends the connection with 1007 (invalid data) and the
    session with it."""
    async with serving(settings()) as service:
        reader, writer = await raw_connection(service)
        writer.write(client_frame(b"42[\xff\xfe]"))
        rest = await until_eof(reader)
        writer.close()
        assert close_code(rest) == 1007
        await eventually(lambda: not service.app.ctx.sio.eio.sockets, 5)


async def test_oversized_message_is_refused_with_1009_not_a_reset() -> None:
    """A frame over the message limit is refused as soon as its header arrives (1009); the
    server then stops reading it but does not reset the connection while the client is still
    sending the rest, so the close frame reaches the client."""
    async with serving(settings(max_message_bytes=16_384)) as service:
        reader, writer = await raw_connection(service)
        body = b"x" * 400_000
        writer.write(client_frame(b"", length=len(body)))
        received = b""
        for start in range(0, len(body), 65536):  # the rest of the announced payload
            try:
                writer.write(body[start:start + 65536])
                await writer.drain()
            except ConnectionError:
                break
        received = await until_eof(reader)
        writer.close()
        assert close_code(received) == 1009
        await eventually(lambda: not service.app.ctx.sio.eio.sockets, 5)


async def test_empty_binary_frame_ends_the_session_cleanly(
        capture_logs: list[dict[str, Any]]) -> None:
    """An empty binary frame (binary is not part of the protocol) ends the session with
    ``protocol_error``; nothing is written into the upgraded connection as HTTP (a bug in
    the websocket loop once let Sanic answer it with a 500)."""
    async with serving(settings()) as service:
        ws = await connected(service, "mallory")
        await ws.send(b"")
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        await eventually(lambda: not service.app.ctx.sio.eio.sockets, 5)
    assert [r["reason"] for r in capture_logs if r["event"] == "session_dropped"] == [
        "protocol_error"]
    assert not [r for r in capture_logs if r["event"] in ("websocket_failed", "message_failed")]


async def test_reader_that_stalls_is_dropped_after_send_timeout(
        capture_logs: list[dict[str, Any]]) -> None:
    """A client that stops reading while what it is sent cannot be written is dropped
    ``send_timeout`` seconds later (``send_timeout``), even below the queued-message limit;
    the sender carries on."""
    fields = {"limit_relays": UNLIMITED, "limit_user_relays": UNLIMITED,
              "max_queued_messages": 100_000, "send_timeout": 1}
    async with serving(settings(**fields)) as service:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", int(service.url.rsplit(":", 1)[1])))
        async with websockets.connect(ws_url(service), sock=sock, max_queue=1) as bob:
            await bob.recv()
            await bob.send("40" + json.dumps({"token": service.token("bob")}))
            await bob.recv()
            await bob.send('421["JoinSocket","bob"]')
            assert json.loads((await bob.recv())[3:]) == [{"ok": True}]
            # bob stops reading
            alice = Peer(service.url, "websocket")
            await alice.connect(service.token("alice"))
            offer = {"to": "bob", "offer": {"type": "offer", "sdp": "v" * 40_000}}
            for _ in range(2000):
                ack = await alice.call("offer", offer)
                if not ack["delivered"]:
                    break
                await asyncio.sleep(0.01)
            assert not ack["delivered"]
            assert alice.client.connected
            await alice.close()
    reasons = [r["reason"] for r in capture_logs if r["event"] == "session_dropped"]
    assert reasons == ["send_timeout"]


def unmasked(payload: bytes, opcode: int = 0x1) -> bytes:
    return bytes([0x80 | opcode, len(payload)]) + payload


@pytest.mark.parametrize(("frames", "code"), [
    ([unmasked(b"42[]")], 1002),                                  # a client must mask
    ([client_frame(b"42[]", opcode=0x1 | 0x40)], 1002),           # a reserved bit (RSV1)
    ([client_frame(b"x", opcode=0x3)], 1002),                     # an unknown opcode
    ([client_frame(b"x", opcode=0x0)], 1002),                     # continuation of nothing
    ([bytes([0x01, 0x81]) + b"\x00\x00\x00\x00" + b"4",            # a text frame while a
      client_frame(b"2")], 1002),                                 #   fragmented one is open
    ([client_frame(b"p" * 126, opcode=0x9)], 1002),               # a ping over 125 bytes
    ([bytes([0x09, 0x80]) + b"\x00\x00\x00\x00"], 1002),          # a fragmented ping
    ([client_frame(b"\x03", opcode=0x8)], 1002),                  # a one-byte close payload
    ([client_frame((4000).to_bytes(2, "big") + b"bye", opcode=0x8)], 4000),  # echoed
], ids=["unmasked", "rsv1", "opcode-3", "stray-continuation", "interleaved", "long-ping",
        "fragmented-ping", "short-close", "close-echo"])
async def test_framing_errors_close_with_a_code(frames: list[bytes], code: int) -> None:
    """RFC 6455 framing the server refuses (1002), and a client's close frame, whose code
    the server echoes; either way the session ends."""
    async with serving(settings()) as service:
        reader, writer = await raw_connection(service)
        for frame in frames:
            writer.write(frame)
        rest = await until_eof(reader)
        writer.close()
        assert close_code(rest) == code
        await eventually(lambda: not service.app.ctx.sio.eio.sockets, 5)


async def test_fragments_count_together_against_the_limit() -> None:
    """Fragments each under the message limit but over it together: 1009."""
    async with serving(settings(max_message_bytes=16_384)) as service:
        reader, writer = await raw_connection(service)
        piece = b"x" * 10_000
        writer.write(client_frame(b"42" + piece, opcode=0x1)[:1].replace(b"\x81", b"\x01")
                     + client_frame(b"42" + piece)[1:])
        writer.write(client_frame(piece, opcode=0x0))  # the final continuation
        rest = await until_eof(reader)
        writer.close()
        assert close_code(rest) == 1009


#: close codes a peer may not send (Autobahn 7.9.1-7.9.9, 7.13.1-2): 1005 and 1006 only
#: report a missing code or frame, 1015 a TLS failure; the others are unassigned or reserved
INVALID_CLOSE_CODES = (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535)
VALID_CLOSE_CODES = (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
                     3000, 3999, 4000, 4999)


@pytest.mark.parametrize("code", INVALID_CLOSE_CODES)
async def test_a_close_code_a_peer_may_not_send_is_answered_1002(code: int) -> None:
    """A close frame with a code outside RFC 6455's and IANA's lists (and 3000-4999) is a
    protocol error: answered 1002, never echoed."""
    async with serving(settings()) as service:
        reader, writer = await raw_connection(service)
        writer.write(client_frame(code.to_bytes(2, "big"), opcode=0x8))
        rest = await until_eof(reader)
        writer.close()
        assert close_code(rest) == 1002


async def test_valid_close_codes_are_echoed() -> None:
    """Every code a peer may send is echoed back in the server's close frame."""
    async with serving(settings(max_connections_per_user=0)) as service:
        for code in VALID_CLOSE_CODES:
            reader, writer = await raw_connection(service)
            writer.write(client_frame(code.to_bytes(2, "big") + b"bye", opcode=0x8))
            rest = await until_eof(reader)
            writer.close()
            assert close_code(rest) == code
