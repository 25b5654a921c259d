"""Test helpers: the real service on a free port, and a recording python-socketio client."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import socket
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import socketio
from engineio.payload import Payload
from sanic import Sanic

from service.auth import mint
from service.config import Settings
from service.factory import create_app

SECRET = "test-secret-that-is-long-enough-for-hs256-and-hs512-0123456789abcdef"
TRANSPORTS = ["websocket", "polling"]
# Sanic rewrites some methods of its classes at start-up ("touchup"); in test mode it keeps
# the originals, so that many apps can start in one process, as Sanic's own tests do.
Sanic.test_mode = True
_names = itertools.count()
# python-engineio's *client* drops a long-poll response holding more than 16 packets (the
# service sends whatever queued up, as the JavaScript server does). The service raises the
# same class attribute for the POSTs it receives; a python-socketio app on long-polling must
# raise it too, as scripts/peer.py does. Set here explicitly, not inherited from the factory.
Payload.max_decode_packets = 1_000_000


@dataclass
class RunningService:
    app: Sanic[Any, Any]
    url: str
    settings: Settings

    def token(self, user: str, ttl: int = 600, **claims: Any) -> str:
        return mint(self.settings, user, ttl, claims=claims)


def free_socket() -> socket.socket:
    """A listening socket on a free port (Sanic reads ``port=0`` as 'the default, 8000')."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


async def start_service(settings: Settings) -> tuple[RunningService, Callable[[], Any]]:
    app = create_app(settings, name=f"signaling_test_{next(_names)}")
    sock = free_socket()
    port = sock.getsockname()[1]
    server = await app.create_server(sock=sock, return_asyncio_server=True)
    assert server is not None
    await server.startup()  # type: ignore[no-untyped-call]
    await server.before_start()  # type: ignore[no-untyped-call]
    await server.start_serving()  # type: ignore[no-untyped-call]
    await server.after_start()  # type: ignore[no-untyped-call]

    async def stop() -> None:
        # what `sanic` does on shutdown: stop listening, let idle connections close, give
        # the others a moment, then close them
        await server.before_stop()  # type: ignore[no-untyped-call]
        await server.close()  # type: ignore[no-untyped-call]
        for conn in list(server.connections):
            conn.close_if_idle()
        for _ in range(20):
            if not server.connections:
                break
            await asyncio.sleep(0.05)
        for conn in list(server.connections):
            if getattr(conn, "websocket", None):
                conn.websocket.fail_connection(code=1001)
            else:
                conn.abort()
        # closing transports finish on the next loop iteration
        await asyncio.sleep(0)
        await server.after_stop()  # type: ignore[no-untyped-call]
        sock.close()

    return RunningService(app, f"http://127.0.0.1:{port}", settings), stop


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[RunningService]:
    """The service, started with ``settings`` for the length of a ``with`` block."""
    running, stop = await start_service(settings)
    try:
        yield running
    finally:
        await stop()


async def refusal(url: str, transport: str, **connect: Any) -> Any:
    """Connect with ``connect`` arguments, expect a refusal, and return its data."""
    peer = Peer(url, transport)
    try:
        await peer.connect(**connect)
    except socketio.exceptions.ConnectionError:
        assert not peer.client.connected
        assert len(peer.refusals) == 1, peer.refusals
        return peer.refusals[0]
    await peer.close()
    raise AssertionError("the connection was accepted")


@dataclass
class Peer:
    """A python-socketio client that records every event it receives."""

    url: str
    transport: str
    client: socketio.AsyncClient = field(init=False)
    inbox: defaultdict[str, asyncio.Queue[Any]] = field(init=False)
    refusals: list[Any] = field(init=False, default_factory=list)
    _http: Any = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.client = socketio.AsyncClient(reconnection=False)
        self.inbox = defaultdict(asyncio.Queue)
        self.client.on("*", self._record)
        self.client.on("connect_error", self._refused)

    async def _record(self, event: str, *args: Any) -> None:
        self.inbox[event].put_nowait(args[0] if len(args) == 1 else args)

    async def _refused(self, data: Any) -> None:
        self.refusals.append(data)

    async def connect(self, token: str | None = None, *, header: bool = False,
                      auth: Any = None, headers: dict[str, str] | None = None) -> None:
        all_headers = dict(headers or {})
        if token is not None and header:
            all_headers["Authorization"] = f"Bearer {token}"
        elif token is not None:
            auth = {"token": token}
        try:
            await self.client.connect(self.url, auth=auth, headers=all_headers,
                                      transports=[self.transport], wait_timeout=5)
        except socketio.exceptions.ConnectionError:
            await self._close_http()
            raise
        self._http = self.client.eio.http

    async def _close_http(self) -> None:
        # python-socketio's client leaves its aiohttp session (and its pooled connections)
        # open when refused, and when the server ends the session
        for http in (getattr(self.client.eio, "http", None), self._http):
            if http is not None and not http.closed:
                await http.close()

    async def call(self, event: str, *args: Any) -> Any:
        return await self.client.call(event, args[0] if len(args) == 1 else args or None,
                                      timeout=5)

    async def next(self, event: str, within: float = 3) -> Any:
        """The next ``event`` received, as the tests compare it: see :func:`without_seq`."""
        return without_seq(await self.next_raw(event, within))

    async def next_raw(self, event: str, within: float = 3) -> Any:
        """The next ``event`` received, exactly."""
        return await asyncio.wait_for(self.inbox[event].get(), within)

    async def silent(self, event: str, wait: float = 0.3) -> bool:
        """True when no ``event`` arrives within ``wait`` seconds."""
        await asyncio.sleep(wait)
        return self.inbox[event].empty()

    async def close(self) -> None:
        if self.client.connected:
            await self.client.disconnect()
        # after a server-side disconnect python-socketio's client can leave its Engine.IO
        # loops running (a long-poll in flight); stop them so nothing outlives the test
        for name in ("read_loop_task", "write_loop_task"):
            task = getattr(self.client.eio, name, None)
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self._close_http()


def without_seq(payload: Any) -> Any:
    """A call message without its ``seq`` (issue 20), once that is checked to be a whole
    number from 1: the tests written before compare the rest, as sent."""
    if isinstance(payload, dict) and "seq" in payload and "callId" in payload:
        seq = payload["seq"]
        assert isinstance(seq, int) and not isinstance(seq, bool) and seq >= 1, payload
        return {k: v for k, v in payload.items() if k != "seq"}
    return payload


async def eventually(check: Callable[[], bool], within: float = 3.0) -> None:
    """Wait until ``check()`` holds (the server handles a client's goodbye asynchronously)."""
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def eventually_true(check: Callable[[], Any], within: float = 10.0) -> None:
    """Wait until the coroutine ``check()`` returns True (a generous ceiling, polled)."""
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


# ---- websockets by hand (frames no client library sends) ----

def client_frame(payload: bytes, opcode: int = 0x1, length: int | None = None) -> bytes:
    """A masked frame as a client sends it; ``length`` may announce more than ``payload``."""
    size = len(payload) if length is None else length
    if size < 126:
        head = bytes([0x80 | opcode, 0x80 | size])
    elif size < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + size.to_bytes(8, "big")
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def raw_connection(service: RunningService
                         ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A websocket opened by hand, with a Socket.IO connection on it."""
    port = int(service.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\n"
                  f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    writer.write(client_frame(("40" + json.dumps({"token": service.token("mallory")}))
                              .encode()))
    data = b""
    while b"40{" not in data:
        data += await asyncio.wait_for(reader.read(4096), 5)
    return reader, writer


async def until_eof(reader: asyncio.StreamReader, within: float = 15) -> bytes:
    """Every byte the server sends until it closes the TCP connection."""
    rest = b""
    while chunk := await asyncio.wait_for(reader.read(65536), within):
        rest += chunk
    return rest


class RawPeer:
    """A Socket.IO client on a websocket opened by hand: the test writes every byte itself
    (for races a library client would hide), and reads what the server sends, packet by
    packet (answering Engine.IO's pings)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.events: list[tuple[str, Any]] = []
        self.acks: dict[int, Any] = {}
        self._ids = itertools.count(1)

    @classmethod
    async def connect(cls, service: RunningService, user: str, *, join: bool = True
                      ) -> RawPeer:
        port = int(service.url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\n"
                      f"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                      ).encode())
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        peer = cls(reader, writer)
        writer.write(client_frame(("40" + json.dumps({"token": service.token(user)}))
                                  .encode()))
        while not (await peer._packet()).startswith("40"):
            pass
        if join:
            assert await peer.call("JoinSocket", user) == {"ok": True}
        return peer

    def emit(self, event: str, payload: Any) -> int:
        """Write one event asking for an ack, now (no await); its ack id."""
        ack = next(self._ids)
        self.writer.write(client_frame(f"42{ack}{json.dumps([event, payload])}".encode()))
        return ack

    async def ack(self, ack: int, within: float = 5) -> Any:
        while ack not in self.acks:
            await asyncio.wait_for(self._packet(), within)
        return self.acks.pop(ack)

    async def call(self, event: str, payload: Any) -> Any:
        return await self.ack(self.emit(event, payload))

    async def next(self, event: str, within: float = 5) -> Any:
        while True:
            for n, (name, payload) in enumerate(self.events):
                if name == event:
                    del self.events[n]
                    return without_seq(payload)
            await asyncio.wait_for(self._packet(), within)

    async def _packet(self) -> str:
        head = await self.reader.readexactly(2)
        length = head[1] & 0x7F
        if length == 126:
            length = int.from_bytes(await self.reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await self.reader.readexactly(8), "big")
        text = (await self.reader.readexactly(length)).decode()
        if text == "2":
            self.writer.write(client_frame(b"3"))
        elif text.startswith("42"):
            name, *args = json.loads(text[2:])
            self.events.append((name, args[0] if args else None))
        elif text.startswith("43"):
            digits = text[2:].split("[", 1)[0]
            self.acks[int(digits)] = json.loads(text[2 + len(digits):])[0]
        return text

    def close(self) -> None:
        self.writer.close()


# ---- calls ----

SDP = ("v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
       "a=group:BUNDLE 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n"
       "a=mid:0\r\na=sendrecv\r\na=rtpmap:111 opus/48000/2\r\n")


def offer_to(user: str, **extra: Any) -> dict[str, Any]:
    return {"to": user, "offer": {"type": "offer", "sdp": SDP}, **extra}


def answer_to(user: str, **extra: Any) -> dict[str, Any]:
    return {"to": user, "answer": {"type": "answer", "sdp": SDP}, **extra}


def candidate_to(user: str, n: int = 0, **extra: Any) -> dict[str, Any]:
    return {"to": user, "candidate": {
        "candidate": f"candidate:{n} 1 udp 2122260223 192.0.2.{n % 250} {50000 + n} typ host",
        "sdpMid": "0", "sdpMLineIndex": 0}, **extra}


async def open_call(caller: Peer, callee: Peer | None, to: str) -> str:
    """``caller`` offers ``to``; the call id (``callee``, when given, has received the offer)."""
    ack = await caller.call("offer", offer_to(to))
    assert ack["ok"] is True, ack
    if callee is not None:
        assert (await callee.next("offer"))["callId"] == ack["callId"]
    return str(ack["callId"])


async def answered_call(caller: Peer, callee: Peer, caller_id: str, callee_id: str) -> str:
    """A call ``caller`` opened and ``callee`` answered; its id."""
    call_id = await open_call(caller, callee, callee_id)
    assert (await callee.call("answer", answer_to(caller_id)))["delivered"] is True
    assert (await caller.next("answer"))["callId"] == call_id
    return call_id


async def calls_work(caller: Peer, callee: Peer, caller_id: str = "alice",
                     callee_id: str = "bob") -> None:
    """A whole call between the two goes through (offer, answer, candidate, hangup), and
    leaves no call open."""
    call_id = await answered_call(caller, callee, caller_id, callee_id)
    assert (await caller.call("candidate", candidate_to(callee_id)))["delivered"] is True
    assert (await callee.next("candidate"))["callId"] == call_id
    assert await caller.call("hangup", {"to": callee_id}) == {"ok": True, "delivered": True}
    assert await callee.next("hangup") == {"to": callee_id, "from": caller_id,
                                           "callId": call_id}


async def closed(service: RunningService, peer: Peer) -> None:
    """Close ``peer`` and wait until the service has handled its disconnect (what is sent
    to it in between is acked delivered, and held if the session had closed by then)."""
    sid = peer.client.get_sid()
    await peer.close()
    await eventually(lambda: sid not in service.app.ctx.signaling.sessions)


class Blackhole:
    """A TCP proxy of the test's own between clients and the service, which can stop
    forwarding the connections it carries, in both directions, without closing them
    (:meth:`freeze`): what a phone's socket looks like after it switched networks. New
    connections (the phone on its new network) flow."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._flows: list[asyncio.Event] = []
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Blackhole:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def freeze(self) -> None:
        """Stop forwarding what the connections open now carry, both ways; they stay
        open."""
        for flow in self._flows:
            flow.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [writer, up_writer]
        flow = asyncio.Event()
        flow.set()
        self._flows.append(flow)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(self._pump(source, sink, flow))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                    flow: asyncio.Event) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while True:
                await flow.wait()
                data = await source.read(65536)
                if not data:
                    break
                await flow.wait()  # (frozen while reading: this chunk is held back)
                sink.write(data)
                await sink.drain()
        with contextlib.suppress(ConnectionError, RuntimeError):
            sink.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for writer in self._writers:
            writer.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()
