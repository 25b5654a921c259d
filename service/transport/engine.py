"""The Engine.IO layer, hardened where python-engineio trusts its clients or keeps too much.

- **Closing a polling session** no longer waits for a long-poll that is not there: Engine.IO's
  ``disconnect`` waits until the client has fetched its last packets, which, on the error
  path of a POST (an unexpected packet type), held that POST open for good.
- **Pings.** Engine.IO keeps one sleeping task per session to send the next PING, and that
  task held the session (queue, websocket, request) for up to ``ping_interval`` after it
  ended: reconnect churn cost as much memory as live connections. The next PING is a timer
  here (cheaper than a task; it holds the session weakly), cancelled when the session ends.
- **Websocket frames.** A frame that is not an Engine.IO packet (``abc``, an empty frame, an
  unknown packet type) made python-engineio raise out of the websocket handler, and Sanic then
  wrote an ``HTTP/1.1 500`` response into the open websocket, with a traceback in the log, per
  frame. It now ends the session with one log line and a close frame (1002).
- **Close packets.** A client's CLOSE packet (``1``) over websocket ended the Engine.IO
  session but left the websocket open until Sanic's keepalive gave up; it is closed at once,
  as is the websocket of any session that has ended while its reader waits.
- **After a websocket.** python-engineio's Sanic driver answers the upgrade request with an
  ``HTTP/1.1 200 OK`` response once the websocket has ended, which Sanic writes into the
  connection after the close frame; and Sanic's timeout timer, armed before the upgrade, keeps
  each connection (request, websocket, queues) alive for up to 30 s after it closed. The
  Engine.IO route is registered here as a websocket-capable handler that answers an upgraded
  request with nothing, and the timer is cancelled at the upgrade (Sanic disables timeouts
  for websockets anyway). Timers armed while handling a request no longer carry the request
  in their context (a cancelled ``asyncio`` timer keeps its context until its deadline).
- **Requests no client makes.** JSONP polling and ``Sec-Fetch-Mode: no-cors`` requests (what
  ``<img>`` and ``<script>`` tags send) are refused before they open a session or spend the
  address's budget.
- **Packet floods below Socket.IO.** Every Engine.IO packet a client sends (messages, pings,
  upgrades, noops) counts against its session's and its address's packet budgets, over
  websocket frame by frame as each frame arrives (websocket pings and empty continuation
  frames too), and over long-polling per POST, counted before the body is decoded; a POST may
  carry at most :data:`MAX_PACKETS_PER_POST`. Over either, the session is closed. The outgoing
  queue is bounded for Engine.IO's own packets too (:class:`BoundedQueue`).
- **Upgrades.** python-engineio lets any number of websockets start an upgrade of one
  polling session, and waits for their probe without end: sockets no session counts and no
  timer closes. Here a session has one upgrade under way at a time (another is refused 400),
  each spends a packet, and it must complete within :data:`UPGRADE_TIMEOUT`; the session's end
  closes it.
- **Dead clients.** Engine.IO's service task (one wake-up per session per ping timeout, each
  with a task and a timer) is replaced by :meth:`EngineServer.sweep`, one pass over all
  sessions per ping timeout.
- **Slow readers.** A websocket send that cannot complete within ``send_timeout`` ends the
  connection.
- **The heartbeat in the handshake.** python-engineio tells clients ``pingInterval`` rounded
  down to whole seconds; the OPEN packet carries the exact interval (``SIGNAL_PING_INTERVAL``
  may be 0.3 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import sys
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import urlsplit

import engineio
from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio.async_drivers.sanic import WebSocket as SanicWebSocket
from sanic import Request, Sanic
from sanic.response import HTTPResponse, json

from service.telemetry import log_event
from service.transport.websocket import GOING_AWAY, Wire, accept

#: how long closing a polling session waits for a pending long-poll to take its last packets
POLL_FLUSH_SECONDS: Final = 2.0
#: the first character of every Engine.IO packet a client may send as text: a packet type
#: (0 open … 6 noop) or ``b`` (base64 binary)
PACKET_STARTS: Final = frozenset("0123456b")
MESSAGE_START: Final = str(eio_packet.MESSAGE)
#: an Engine.IO PONG as it arrives on a websocket
PONG_TEXT: Final = str(eio_packet.PONG).encode()
#: websocket close code for a frame that is not an Engine.IO packet (RFC 6455: protocol error)
CLOSE_PROTOCOL_ERROR: Final = 1002
#: ... and for a client over its packet budget (policy violation)
CLOSE_POLICY: Final = 1008
#: ... and for a message over ``max_http_buffer_size``
CLOSE_TOO_BIG: Final = 1009
#: packets one long-polling POST may carry; clients batch what queued up, a few hundred at
#: most (a burst of ICE candidates); more closes the session
MAX_PACKETS_PER_POST: Final = 500
#: how long a session's upgrade from long-polling to websocket may take, from the websocket
#: handshake to the client's UPGRADE packet (engine.io's ``upgradeTimeout``)
UPGRADE_TIMEOUT: Final = 10.0
#: sessions one pass of :meth:`EngineServer.sweep` looks at between two turns of the loop
SWEEP_BATCH: Final = 1000
#: the separator of packets in a long-polling body
RECORD_SEPARATOR: Final = b"\x1e"
_EMPTY: Final = contextvars.Context()
#: the tasks serving websocket connections
_SERVING: set[asyncio.Task[None]] = set()
Drop = Callable[[str, str], Awaitable[None]]
AllowPackets = Callable[[Any, int], bool]


#: what the websocket wrapper returns for a request it upgraded: no HTTP response follows
UPGRADED: Final = object()


def create_route(app: Sanic[Any, Any], server: engineio.AsyncServer, endpoint: str) -> None:
    """Register the Engine.IO endpoint on ``app`` (in place of the driver's
    ``create_route``)."""

    async def engineio_endpoint(request: Request) -> HTTPResponse | None:
        if refusal := _not_for_a_client(request):
            return refusal
        if (request.method == "POST" and isinstance(server, EngineServer)
                and (refusal := await server.check_post(request.args.get("sid"),
                                                        request.body))):
            return refusal
        # Sanic keeps the current request in a context variable. Every task and timer
        # started while handling it (Engine.IO's long-poll and per-frame timeouts, the token
        # timers, Sanic's keepalive and its abort after a close handshake) copies the context
        # and with it the request, which a timer keeps, cancelled or not, until its deadline:
        # 45 s to 10 min after the connection closed. Engine.IO has the request in its environ.
        type(request)._current.set(None)  # type: ignore[arg-type]
        response = await server.handle_request(request)
        return None if response is UPGRADED else response

    # tells Sanic that a handler returning nothing has answered by upgrading the connection
    engineio_endpoint.is_websocket = True  # type: ignore[attr-defined]
    app.add_route(engineio_endpoint, endpoint, methods=["GET", "POST", "OPTIONS"])
    app.enable_websocket()


def _not_for_a_client(request: Request) -> HTTPResponse | None:
    """Requests no Socket.IO client makes, refused before they cost a session or the
    address's budget: JSONP polling (``j=``: a ``<script>`` tag's transport), and whatever a
    browser marks ``Sec-Fetch-Mode: no-cors`` (``<img>``/``<script>`` tags, by which any web
    page could spend its visitors' session budget; clients use XHR/fetch or a websocket)."""
    if "j" in request.args:
        return json({"error": "jsonp_not_supported"}, status=400)
    if request.headers.get("sec-fetch-mode", "").lower() == "no-cors":
        return json({"error": "forbidden", "detail": "not a Socket.IO client request"},
                    status=403)
    return None


#: what asyncio.Queue.__init__ makes
_QUEUE_STATE: Final = ("_maxsize", "_getters", "_putters", "_unfinished_tasks", "_finished",
                       "_queue")


class BoundedQueue(asyncio.Queue[Any]):
    """A session's outgoing queue that never holds more than ``limit`` packets: Engine.IO
    queues its own packets (a NOOP for each UPGRADE a client sends) past every check above
    it. What does not fit is dropped and ``overflowed`` set (the packets that filled it
    also spent the session's packet budget, which closes it); ``None``, the marker that ends a
    writer, always fits.

    Once the session is on a websocket (:meth:`attach`), nothing waits here: each packet is
    written to the connection as it is put, ``None`` (or a CLOSE packet) closes it, and
    :meth:`qsize` is the number of messages the peer has yet to read (``Wire.backlog``).

    On long-polling, the end marker is preceded by a CLOSE packet (unless one was queued):
    python-engineio answers a long-poll that finds only the marker with an empty ``200``,
    which clients read as a parser error instead of the session's end."""

    def __init__(self, limit: int, ping_interval_ms: int | None = None) -> None:
        # asyncio.Queue's own state (four deques, ~3 KB) is made when first used, and let go
        # once the session is on a websocket: see __getattr__ and attach
        self.limit = limit
        #: what the OPEN packet tells the client (python-engineio rounds the interval down
        #: to whole seconds: 0.3 s would be told as 0)
        self.ping_interval_ms = ping_interval_ms
        self.overflowed = False
        self.wire: Wire | None = None
        #: a CLOSE packet has been queued
        self.closing = False

    def __getattr__(self, name: str) -> Any:
        if name in _QUEUE_STATE:  # first use of asyncio.Queue's state: make it
            asyncio.Queue.__init__(self)
            return getattr(self, name)
        raise AttributeError(name)

    def attach(self, wire: Wire) -> None:
        """Write to ``wire`` from now on, starting with what is queued."""
        while not self.empty():
            item = self.get_nowait()
            self.task_done()
            self._write(wire, item)
        self.wire = wire
        for name in _QUEUE_STATE:  # (nothing waits on an attached queue)
            self.__dict__.pop(name, None)

    def detach(self) -> None:
        """The connection is over: what is put from now on is dropped. (Engine.IO's service
        task keeps a copy of the session list for up to a ping timeout; the session must not
        hold the connection meanwhile.)"""
        self.wire = None
        self.limit = 0

    def put_nowait(self, item: Any) -> None:
        if self.wire is not None:
            self._write(self.wire, item)
            return
        if item is None:
            if not self.closing:
                self.closing = True
                super().put_nowait(eio_packet.Packet(eio_packet.CLOSE))
        elif getattr(item, "packet_type", None) == eio_packet.CLOSE:
            self.closing = True
        elif (self.ping_interval_ms is not None
              and getattr(item, "packet_type", None) == eio_packet.OPEN):
            item.data["pingInterval"] = self.ping_interval_ms
        elif super().qsize() >= self.limit:
            self.overflowed = True
            return
        super().put_nowait(item)

    async def put(self, item: Any) -> None:
        self.put_nowait(item)

    def qsize(self) -> int:
        return self.wire.backlog if self.wire is not None else super().qsize()

    @staticmethod
    def _write(wire: Wire, item: Any) -> None:
        if item is None:
            wire.fail()
            return
        wire.send(item.encode())
        if item.packet_type == eio_packet.CLOSE:
            wire.fail()


class EngineServer(engineio.AsyncServer):  # type: ignore[misc]
    """``engineio.AsyncServer`` with the repairs in this module's docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: the pending ping timer of each session
        self.ping_tasks: dict[str, asyncio.TimerHandle] = {}
        self.log: logging.Logger = logging.getLogger("signaling")
        #: outgoing packets a session may have waiting (one more than the Socket.IO check)
        self.queue_limit = 1_000_000
        #: may this session (an Engine.IO socket) send ``count`` more packets now?
        self.allow_packets: AllowPackets = lambda sock, count: True
        #: close a session at once, with a logged reason (set by the Socket.IO server)
        self.drop: Drop | None = None
        #: the websocket of each session upgrading from long-polling
        self.upgrades: dict[str, Wire] = {}

    async def sweep(self) -> float:
        """One pass of what Engine.IO's service task does (that task is off:
        ``monitor_clients=False``): forget closed sessions, and close those whose client has
        not answered a PING within ``ping_timeout``; the seconds until the next pass. Engine.IO's
        task visited one session at a time, with a task and a timer for each wait: at 10,000
        connections, 500 wake-ups a second for nothing. (Run by the service's supervised
        loops.)"""
        now = time.time()
        for n, sock in enumerate(list(self.sockets.values())):
            if (not sock.closed and not sock.closing and sock.last_ping
                    and now - sock.last_ping > self.ping_timeout):
                await sock.check_ping_timeout()
            if sock.closed:
                # (Engine.IO's CLOSE packet is lost on this path: the queue's end marker
                # closes the websocket, or answers a pending long-poll)
                sock.queue.put_nowait(None)
                if self.sockets.get(sock.sid) is sock:
                    del self.sockets[sock.sid]
            if n % SWEEP_BATCH == SWEEP_BATCH - 1:
                await asyncio.sleep(0)  # let the connections get a word in
        return float(self.ping_timeout)

    def create_queue(self, *args: Any, **kwargs: Any) -> BoundedQueue:
        return BoundedQueue(self.queue_limit, round(
            (self.ping_interval + self.ping_interval_grace_period) * 1000))

    async def check_post(self, sid: str | None, body: bytes) -> HTTPResponse | None:
        """A long-polling POST is counted before Engine.IO decodes it: over
        :data:`MAX_PACKETS_PER_POST` or over the session's or address's packet budget, the
        session is closed and the POST refused."""
        sock = self.sockets.get(sid) if sid is not None else None
        if sock is None or sock.closed or sock.closing:
            return None  # Engine.IO answers that one itself
        count = body.count(RECORD_SEPARATOR) + 1
        if count > MAX_PACKETS_PER_POST:
            reason = "too_many_packets"
        elif not self.allow_packets(sock, count):
            reason = "rate_limited"
        else:
            return None
        if self.drop is not None:
            await self.drop(sock.sid, reason)
        return json({"error": reason}, status=400)

    def start_background_task(self, target: Any, *args: Any, **kwargs: Any) -> Any:
        sock = getattr(target, "__self__", None)
        if getattr(target, "__name__", None) == "_send_ping" and sock is not None:
            return self._schedule_ping(sock)
        return super().start_background_task(target, *args, **kwargs)

    def _schedule_ping(self, sock: Any) -> asyncio.TimerHandle:
        """What Engine.IO's ``AsyncSocket._send_ping`` task does (sleep ``ping_interval``,
        then, if the session is still open, note the time and send a PING), as a timer: a
        sleeping task per connection cost ~1.5 KB of every idle connection. The timer holds
        the session weakly (a cancelled timer stays scheduled until its deadline)."""
        timer = asyncio.get_running_loop().call_later(
            self.ping_interval, self._ping, weakref.ref(sock), context=_EMPTY)
        self.ping_tasks[sock.sid] = timer
        return timer

    def _ping(self, ref: weakref.ref[Any]) -> None:
        sock = ref()
        if sock is None:
            return
        if self.ping_tasks.get(sock.sid) is not None:
            del self.ping_tasks[sock.sid]
        if not sock.closing and not sock.closed:
            sock.last_ping = time.time()
            sock.queue.put_nowait(eio_packet.Packet(eio_packet.PING))

    async def _trigger_event(self, event: str, *args: Any, **kwargs: Any) -> Any:
        if event == "message" and not kwargs.get("run_async"):
            # the hot path, straight to python-socketio's handler (Engine.IO's wraps each
            # call in a new closure after asking whether it is a coroutine function); it
            # logs and swallows what it raises, as Engine.IO's wrapper does
            try:
                return await self.handlers["message"](*args)
            except Exception:
                self.log.exception("message_failed", extra={"fields": {"eio_sid": args[0]}})
                return None
        if event == "disconnect" and args:
            timer = self.ping_tasks.pop(args[0], None)
            if timer is not None:
                timer.cancel()
            upgrade = self.upgrades.pop(args[0], None)
            if upgrade is not None:  # the session ended while it upgraded
                upgrade.fail(GOING_AWAY)
        return await super()._trigger_event(event, *args, **kwargs)

    async def disconnect(self, sid: str | None = None) -> None:
        sock = self.sockets.get(sid) if sid is not None else None
        if sock is None or sock.upgraded:
            await super().disconnect(sid)
            return
        await sock.close(wait=False, reason=self.reason.SERVER_DISCONNECT)
        if getattr(sock.queue, "_getters", True):  # a long-poll is waiting: let it take them
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sock.queue.join(), POLL_FLUSH_SECONDS)
        self.sockets.pop(sid, None)


class EngineWebSocket(SanicWebSocket):  # type: ignore[misc]
    """Engine.IO's websocket transport, run here instead of python-engineio's
    ``AsyncSocket._websocket_handler``: the connection is a
    :class:`~service.transport.websocket.Wire` (no task, timer or lock per message), the
    session's queue writes straight to it, and every frame is checked (packet type, size,
    packet budget) before Engine.IO decodes it.

    ``handler`` is the Engine.IO socket's bound ``_websocket_handler``; only its socket
    (``__self__``) is used. The loop below keeps that handler's protocol: the probe/upgrade
    exchange of a session upgrading from long-polling, then each packet to
    ``socket.receive``, and the session closed (``transport close``) when the connection is.
    """

    send_timeout: float = 10.0

    async def __call__(self, environ: dict[str, Any]) -> object:
        request = environ["sanic.request"]
        server = self.server
        session = self.handler.__self__
        if session.connected:
            if session.upgrading or session.closing or session.closed:
                return server._bad_request()  # one upgrade at a time
            if not server.allow_packets(session, 1):  # each one counts
                if server.drop is not None:
                    await server.drop(session.sid, "rate_limited")
                return server._bad_request()
        try:
            wire = accept(request, send_timeout=self.send_timeout)
        except ValueError:
            return server._bad_request()
        wire.on_frame = lambda: self._allow_frame(wire, session)
        # Sanic's timeout checks stop at an upgraded connection, but the one already
        # scheduled would hold the connection for up to half a timeout after it closed
        timer = getattr(request.transport.get_protocol(), "_callback_check_timeouts", None)
        if timer is not None:
            timer.cancel()
        self.environ = environ
        wire.on_stalled = lambda: self._give_up(wire, session, GOING_AWAY, "send_timeout")
        if session.connected:
            server.upgrades[session.sid] = wire
            session.upgrading = True  # polling GETs now answer NOOP; no second upgrade
            try:
                upgraded = await asyncio.wait_for(self._upgrade(wire, session),
                                                  UPGRADE_TIMEOUT)
            except (asyncio.CancelledError, TimeoutError):
                upgraded = False
            finally:
                if server.upgrades.get(session.sid) is wire:
                    del server.upgrades[session.sid]
            if not upgraded:
                wire.fail()
                await session.close(wait=False, abort=True,
                                    reason=server.reason.TRANSPORT_CLOSE)
                return UPGRADED
        else:
            session.connected = True
            session.upgraded = True
        session.queue.attach(wire)
        # an Engine.IO PONG (the idle peer's only traffic) is handled as it arrives, as
        # ``session.receive`` would (the next PING is scheduled): no task wakes for it
        wire.pong, wire.on_pong = PONG_TEXT, functools.partial(_ponged, session)
        # The connection is served by a task of its own from here, and Sanic's request
        # handler returns: its coroutines (ten frames), the request's parser state and the
        # handler task itself were ~5 KB of every idle connection.
        wire.detached = True
        task = asyncio.ensure_future(self._run(wire, session))
        _SERVING.add(task)
        task.add_done_callback(_SERVING.discard)
        return UPGRADED

    async def _run(self, wire: Wire, session: Any) -> None:
        try:
            await self._serve(wire, session)
        except Exception:
            # a bug here must not take the connection's task down silently
            self.server.log.exception("websocket_failed",
                                      extra={"fields": {"eio_sid": session.sid}})
            wire.fail()

    async def _serve(self, wire: Wire, session: Any) -> None:
        server = self.server
        limit = server.max_http_buffer_size
        try:
            while True:
                try:
                    data = await wire.recv()
                except asyncio.CancelledError:
                    # (the loop shutting down) the session is closed below all the same
                    break
                if data is None or session.closed or session.closing:
                    break
                if isinstance(data, str) and (not data or data[0] not in PACKET_STARTS):
                    self._give_up(wire, session, CLOSE_PROTOCOL_ERROR, "protocol_error")
                    break
                if len(data) > limit:
                    self._give_up(wire, session, CLOSE_TOO_BIG, "too_big")
                    break
                if isinstance(data, str) and data[0] == MESSAGE_START:
                    # a text MESSAGE, the hot path: what ``socket.receive`` would do with it
                    await server._trigger_event("message", session.sid, data[1:])
                    if session.closed:
                        break
                    continue
                try:
                    pkt = eio_packet.Packet(encoded_packet=data)
                except ValueError:  # a ``b`` packet that is not base64
                    self._give_up(wire, session, CLOSE_PROTOCOL_ERROR, "protocol_error")
                    break
                try:
                    await session.receive(pkt)
                except eio_exceptions.UnknownPacketError:
                    pass
                except eio_exceptions.SocketIsClosedError:
                    break
                except Exception:
                    server.log.exception("receive_failed",
                                         extra={"fields": {"eio_sid": session.sid}})
                if session.closed:  # e.g. the client's CLOSE packet
                    break
        finally:
            wire.fail()
            session.queue.detach()
            await session.close(wait=False, abort=True, reason=server.reason.TRANSPORT_CLOSE)
            # (what Engine.IO's request handler did once its websocket handler returned)
            if server.sockets.get(session.sid) is session:
                del server.sockets[session.sid]

    async def _upgrade(self, wire: Wire, session: Any) -> bool:
        """The probe exchange of a session upgrading from long-polling (as Engine.IO's)."""
        try:
            probe = await wire.recv()
            if probe != "2probe":
                return False
            wire.send("3probe")
            session.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))  # ends the poll
            if await wire.recv() != "5":
                return False
            session.upgraded = True
            return True
        finally:
            session.upgrading = False

    def _allow_frame(self, wire: Wire, session: Any) -> bool:
        """Each frame, as it arrives, spends one packet of the session's and its address's
        budgets; over them, the connection is closed (1008) and nothing more is read."""
        if self.server.allow_packets(session, 1):
            return True
        self._give_up(wire, session, CLOSE_POLICY, "rate_limited")
        return False

    def _give_up(self, wire: Wire, session: Any, code: int, reason: str) -> None:
        """Log why and close the connection with ``code``."""
        request = self.environ.get("sanic.request") if self.environ else None
        log_event(self.server.log, "session_dropped", logging.WARNING,
                  eio_sid=getattr(session, "sid", None), reason=reason,
                  ip=getattr(request, "ip", None))
        metrics = getattr(self.server, "metrics", None)
        if metrics is not None:
            metrics.session_dropped(reason)
        wire.fail(code)


class RequestBody:
    """``wsgi.input`` of a request's environ: its body. (The Sanic driver defines this class
    anew inside every call, so each connection kept a class object of its own, ~2.5 KB.)"""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes | None) -> None:
        self.payload = payload or b""

    async def read(self, length: int | None = None) -> bytes:
        if length is None:
            data, self.payload = self.payload, b""
        else:
            data, self.payload = self.payload[:length], self.payload[length:]
        return data


def translate_request(request: Request) -> dict[str, Any]:
    """The environ python-engineio's Sanic driver makes of a request, key for key, with one
    shared :class:`RequestBody` class."""
    uri_parts = urlsplit(request.url)
    environ: dict[str, Any] = {
        "wsgi.input": RequestBody(request.body),
        "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0),
        "wsgi.async": True,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "SERVER_SOFTWARE": "sanic",
        "REQUEST_METHOD": request.method,
        "QUERY_STRING": uri_parts.query or "",
        "RAW_URI": request.url,
        "SERVER_PROTOCOL": "HTTP/" + request.version,
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "0",
        "SERVER_NAME": "sanic",
        "SERVER_PORT": "0",
        "sanic.request": request,
    }
    for name, value in request.headers.items():
        name = name.upper()
        if name == "CONTENT-TYPE":
            environ["CONTENT_TYPE"] = value
            continue
        if name == "CONTENT-LENGTH":
            environ["CONTENT_LENGTH"] = value
            continue
        key = "HTTP_" + name.replace("-", "_")
        if key in environ:
            value = f"{environ[key]},{value}"
        environ[key] = value
    environ["wsgi.url_scheme"] = environ.get("HTTP_X_FORWARDED_PROTO", "http")
    environ["PATH_INFO"] = uri_parts.path
    environ["SCRIPT_NAME"] = ""
    return environ


def driver(base: dict[str, Any], send_timeout: float) -> dict[str, Any]:
    """A copy of the Sanic driver table (shared by every server in the process) with this
    module's route and websocket wrapper."""
    websocket = type("EngineWebSocket", (EngineWebSocket,), {"send_timeout": send_timeout})
    return {**base, "websocket": websocket, "create_route": create_route,
            "translate_request": translate_request}


def _ponged(session: Any) -> None:
    """A PONG arrived: the next PING is scheduled (not for a session that is closing: its
    timer would outlive it)."""
    if not session.closing and not session.closed:
        session.schedule_ping()
