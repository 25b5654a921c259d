"""The Socket.IO server class, hardened where python-socketio trusts its clients.

- **Namespaces.** A connect to a namespace the service does not serve is refused with
  ``{"message", "data": {"reason": "unknown_namespace"}}``, not python-socketio's bare string.
- **Event names.** python-socketio dispatches an EVENT by the name the client wrote: a client
  emitting ``"connect"`` or ``"disconnect"`` would re-run the connection handlers, and a
  packet with no name raises inside the library. Such events are renamed
  :data:`INVALID_EVENT`, which the catch-all handler answers (and rate-limits) like any
  unknown event.
- **Sessions.** Each new Engine.IO session asks ``admit(environ)`` first (per-address
  throttling), and is closed if it has not authenticated within ``auth_timeout``.
- **Cheap refusals.** An event on the main namespace is shown to ``precheck`` by name and size
  before its arguments are decoded: unknown names, a connection out of budget or on its way
  out are answered without paying for the JSON.
- **Malformed input.** A packet python-socketio cannot decode (bad JSON, bad type, nesting
  too deep) drops the session, as the JavaScript server does, with one log line instead of a
  traceback per frame. Binary events are not part of the protocol: one with an ack id is
  answered ``invalid_payload`` and its attachments are skipped; too many attachments, or
  stray binary frames, drop the session.
- **Slow consumers.** A client whose outgoing queue holds ``max_queued`` messages is dropped
  (it is not reading).
- **Long-polls.** A polling client's pending long-poll is answered as soon as it says
  goodbye; Engine.IO would hold it for ``ping_interval + ping_timeout`` (45 s).
- **Sessions without a connection.** An Engine.IO session is closed ``auth_timeout`` seconds
  after it has no Socket.IO connection: one that never connected, one whose client left the
  namespace (``41``) but keeps answering pings, and one told to go (``server_disconnect``)
  that ignores it.

The Engine.IO repairs (ping tasks, websocket frames, close packets, send timeouts) are in
:mod:`service.transport.engine`.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import json
import logging
import re
import sys
from collections.abc import Callable
from typing import Any, Final

import orjson
import socketio
from engineio import json as engineio_json
from engineio import packet as eio_packet
from socketio import packet

from service.errors import InvalidPayload
from service.telemetry import Metrics, log_event
from service.transport.engine import EngineServer, driver

RESERVED: Final = frozenset({"connect", "disconnect", "connect_error"})
#: what reserved or nameless client events are renamed to (no client can send this name
#: through python-socketio's dispatch untouched: it is rewritten here first)
INVALID_EVENT: Final = "\x00invalid"
MAX_ATTACHMENTS: Final = 10
#: the refusal of a connect to a namespace the service does not serve
UNKNOWN_NAMESPACE: Final = {
    "message": "unknown namespace: connect to the main namespace (a URL without a path, or "
               "with the path in the 'path' option)",
    "data": {"reason": "unknown_namespace"}}
#: the Socket.IO packet types a client sends as text: CONNECT, DISCONNECT, EVENT, ACK ...
CLIENT_TYPES: Final = frozenset(str(t) for t in (packet.CONNECT, packet.DISCONNECT,
                                                 packet.EVENT, packet.ACK))
#: ... and the binary ones, which the protocol does not use
BINARY_TYPES: Final = frozenset(str(t) for t in (packet.BINARY_EVENT, packet.BINARY_ACK))
Admit = Callable[[dict[str, Any]], str | None]
#: ``precheck(sid, event_name, raw_size)``: an ack refusing the event, or None to handle it
Precheck = Callable[[str, str, int], dict[str, Any] | None]
EVENT_TYPE: Final = str(packet.EVENT)
#: the Engine.IO packet type of a Socket.IO packet
MESSAGE_TYPE: Final = str(eio_packet.MESSAGE)
ACK_TYPE: Final = str(packet.ACK)
#: an EVENT on the main namespace: ack id and a plain event name, before the arguments
EVENT_HEAD: Final = re.compile(r'2(?P<id>\d{1,18})?(?P<args>\[)"(?P<name>[^"\\]{1,128})"[,\]]')


class MalformedPacket(ValueError):
    """A client packet python-socketio cannot decode, or that no client may send."""


class FastJson:
    """The JSON python-socketio encodes and decodes packets with.

    Decoding: Engine.IO's default calls a Python function for every integer, to refuse
    numbers of over 100 digits: a 56 KB list of small integers then cost 2.8 ms, ~7 relays'
    worth. Python itself bounds what an integer may cost to parse
    (``sys.get_int_max_str_digits()``, 4300 digits by default), so the C decoder runs alone,
    unless that bound was lifted.

    Encoding: orjson (compact, UTF-8), several times faster than the standard library for
    the small objects a relay and its ack are; what orjson refuses (integers beyond 64 bits,
    lone surrogates) is encoded by the standard library as before. (Relays are checked to be
    plain JSON before they are sent on: no NaN reaches here from a client.)"""

    @staticmethod
    def loads(text: str | bytes, **kwargs: Any) -> Any:
        if sys.get_int_max_str_digits() == 0:  # unbounded: keep the library's guard
            return engineio_json.loads(text, **kwargs)
        return json.loads(text, **kwargs)

    @staticmethod
    def dumps(value: Any, **kwargs: Any) -> str:
        try:
            return orjson.dumps(value).decode()
        except TypeError:
            return json.dumps(value, **kwargs)


class CheckedPacket(packet.Packet):  # type: ignore[misc]
    """python-socketio's packet, whose decoding errors are told apart from handler bugs, and
    whose JSON is :class:`FastJson`."""

    json = FastJson
    #: the protocol is JSON text: the service never sends bytes, and python-socketio's
    #: search of every outgoing packet for them (a recursive walk per packet) is skipped.
    #: Binary packets from clients are still decoded, and refused (see the module docstring)
    uses_binary_events = False

    def decode(self, encoded_packet: str | bytes) -> int:
        try:
            return int(super().decode(encoded_packet) or 0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError,
                RecursionError) as exc:
            raise MalformedPacket(type(exc).__name__) from None

class SignalingServer(socketio.AsyncServer):  # type: ignore[misc]
    """``socketio.AsyncServer`` with the guards described in this module's docstring."""

    def __init__(self, *, log: logging.Logger, auth_timeout: float, max_queued: int,
                 send_timeout: float, metrics: Metrics | None = None, **kwargs: Any) -> None:
        super().__init__(serializer=CheckedPacket, **kwargs)
        self.log = log
        self.metrics = metrics or Metrics()
        self.auth_timeout = auth_timeout
        self.max_queued = max_queued
        self.admit: Admit | None = None
        self.precheck: Precheck | None = None
        self._auth_timers: dict[str, asyncio.TimerHandle] = {}
        self._skip_attachments: dict[str, int] = {}
        #: handler -> whether it is a coroutine function (asked once, not per event)
        self._coroutines: dict[Any, bool] = {}
        self._dropping: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.eio.log = log
        self.eio.metrics = self.metrics
        self.eio.drop = self.drop
        self.eio.queue_limit = max_queued + 1  # room for the check below to see it full
        self.eio._async = driver(self.eio._async, send_timeout)

    def _engineio_server_class(self) -> type[EngineServer]:
        return EngineServer

    # ---- client events ----

    async def _handle_event(self, eio_sid: str, namespace: str | None, id: int | None,
                            data: Any) -> None:
        name = data[0] if isinstance(data, list) and data else None
        if not isinstance(name, str) or name in RESERVED or name == INVALID_EVENT:
            data = [INVALID_EVENT]
        await super()._handle_event(eio_sid, namespace, id, data)

    async def _handle_eio_message(self, eio_sid: str, data: str | bytes) -> None:
        try:
            if isinstance(data, bytes):
                self._skip_binary(eio_sid)
                return
            kind = data[:1]
            if kind in BINARY_TYPES:
                await self._refuse_binary(eio_sid, data)
                return
            if data and kind not in CLIENT_TYPES:
                # CONNECT_ERROR, or no Socket.IO packet type at all
                raise MalformedPacket("not a packet type a client sends")
        except MalformedPacket:
            await self.drop(eio_sid, "protocol_error")
            return
        if kind == EVENT_TYPE and self.precheck is not None and await self._prechecked(
                eio_sid, data):
            return
        try:
            await super()._handle_eio_message(eio_sid, data)
        except MalformedPacket:
            await self.drop(eio_sid, "protocol_error")  # python-socketio could not decode it
        except Exception:
            # a bug while handling a well-formed packet: the client did nothing wrong
            self.log.exception("message_failed", extra={"fields": {"eio_sid": eio_sid}})

    async def _prechecked(self, eio_sid: str, data: str) -> bool:
        """An event on the main namespace, shown to ``precheck`` by name and size before its
        arguments are decoded: refused here, or decoded here (as python-socketio's packet
        would: the JSON array after the ack id) and handed to ``_handle_event``. True when it
        was dealt with; False for the rest (a namespace, an escaped name, a client not
        connected), which python-socketio decodes and dispatches itself."""
        head = EVENT_HEAD.match(data)
        if head is None:
            return False
        sid = self.manager.sid_from_eio_sid(eio_sid, "/")
        if sid is None or not self.manager.is_connected(sid, "/"):
            return False
        assert self.precheck is not None
        refusal = self.precheck(sid, head.group("name"), len(data))
        ident = head.group("id")
        if refusal is not None:
            if ident:
                await self._send_packet(eio_sid, self.packet_class(
                    packet.ACK, namespace="/", id=int(ident), data=[refusal]))
            return True
        try:
            args = self.packet_class.json.loads(data[head.start("args"):])
        except (ValueError, RecursionError):
            await self.drop(eio_sid, "protocol_error")
            return True
        try:
            name = args[0] if isinstance(args, list) and args else None
            handler = self.handlers.get("/", {}).get(name) if isinstance(name, str) else None
            if handler is not None and name not in RESERVED and name != INVALID_EVENT and (
                    not self.async_handlers and self._coroutine(handler)):
                await self._answer(eio_sid, sid, handler, args,
                                   int(ident) if ident else None)
            else:
                await self._handle_event(eio_sid, "/", int(ident) if ident else None, args)
        except Exception:
            self.log.exception("message_failed", extra={"fields": {"eio_sid": eio_sid}})
        return True

    async def _answer(self, eio_sid: str, sid: str, handler: Any, args: list[Any],
                      ident: int | None) -> None:
        """The event's own handler (``sio.on(name)`` on the main namespace), called and its
        ack sent as python-socketio's ``_handle_event_internal`` does, without its layers
        of dispatch (a relay's hottest path)."""
        try:
            result = await handler(sid, *args[1:])
        except asyncio.CancelledError:  # as python-socketio: the event ends unanswered
            result = None
        if ident is not None:
            data = [] if result is None else list(result) if isinstance(result, tuple) else [
                result]
            # (python-socketio's encoding of an ACK on the main namespace, without its Packet)
            await self.send_message(eio_sid, ACK_TYPE + str(ident) + FastJson.dumps(data))

    def _coroutine(self, handler: Any) -> bool:
        known = self._coroutines.get(handler)
        if known is None:
            known = self._coroutines[handler] = inspect.iscoroutinefunction(handler)
        return known

    async def send_message(self, eio_sid: str, text: str) -> None:
        """Send a Socket.IO packet already encoded (``text``) as :meth:`_send_packet` does."""
        sock = self.eio.sockets.get(eio_sid)
        wire = getattr(sock.queue, "wire", None) if sock is not None else None
        if wire is not None and not sock.closed:
            if await self._has_room(eio_sid):
                wire.send(MESSAGE_TYPE + text)
            return
        if await self._has_room(eio_sid):
            await super()._send_eio_packet(eio_sid, eio_packet.Packet(eio_packet.MESSAGE,
                                                                      text))

    async def emit_to(self, sid: str, event: str, data: Any) -> None:
        """``emit(event, data, to=sid)`` on the main namespace for one connected socket:
        encoded once (as python-socketio would) and sent by the manager, which keeps its
        gate (:meth:`InlineManager.send_to`)."""
        eio_sid = self.manager.eio_sid_from_sid(sid, "/")
        if eio_sid is not None:
            await self.manager.send_to(eio_sid, EVENT_TYPE + FastJson.dumps([event, data]))

    async def _refuse_binary(self, eio_sid: str, data: str) -> None:
        pkt = self.packet_class(encoded_packet=data)
        if not 0 < pkt.attachment_count <= MAX_ATTACHMENTS:
            raise MalformedPacket("attachment count out of range")
        self._skip_attachments[eio_sid] = pkt.attachment_count
        namespace = pkt.namespace or "/"
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if (pkt.packet_type == packet.BINARY_EVENT and pkt.id is not None
                and self.manager.is_connected(sid, namespace)):
            error = InvalidPayload("binary attachments are not part of the protocol")
            await self._send_packet(eio_sid, self.packet_class(
                packet.ACK, namespace=namespace, id=pkt.id,
                data=[{"ok": False, "error": error.code, "detail": str(error)}]))

    def _skip_binary(self, eio_sid: str) -> None:
        remaining = self._skip_attachments.get(eio_sid, 0)
        if remaining <= 0:
            raise MalformedPacket("binary frame without a binary packet")
        if remaining == 1:
            del self._skip_attachments[eio_sid]
        else:
            self._skip_attachments[eio_sid] = remaining - 1

    # ---- sessions ----

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> str | None:
        refusal = self.admit(environ) if self.admit is not None else None
        if refusal is not None:
            return refusal  # Engine.IO answers the handshake 401 {"message": refusal}
        await super()._handle_eio_connect(eio_sid, environ)
        self._watch(eio_sid, "auth_timeout")
        return None

    def _watch(self, eio_sid: str, reason: str) -> None:
        """Close the Engine.IO session ``auth_timeout`` seconds from now unless it then has a
        Socket.IO connection."""
        sock = self.eio.sockets.get(eio_sid)
        if sock is None or sock.closed or sock.closing or eio_sid in self._auth_timers:
            return
        # an empty context: a cancelled timer keeps its context (and in it the request of the
        # connection) until its deadline
        self._auth_timers[eio_sid] = asyncio.get_running_loop().call_later(
            self.auth_timeout, self._check_connected, eio_sid, reason,
            context=contextvars.Context())

    def _check_connected(self, eio_sid: str, reason: str) -> None:
        self._auth_timers.pop(eio_sid, None)
        sid = self.manager.sid_from_eio_sid(eio_sid, "/")
        if sid is None or not self.manager.is_connected(sid, "/"):
            task = asyncio.ensure_future(self.drop(eio_sid, reason))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def session_open(self, sid: str) -> bool:
        """Whether the Engine.IO session under Socket.IO connection ``sid`` is still open
        (the auth timer, or the client, may have ended it while its connect was verified),
        and its websocket too: once the client's close (or a reset) has been seen, the
        session lives on until its task runs again, and what is written meanwhile is lost."""
        eio_sid = self.manager.eio_sid_from_sid(sid, "/")
        sock = self.eio.sockets.get(eio_sid) if eio_sid is not None else None
        if sock is None or sock.closed or sock.closing:
            return False
        wire = getattr(sock.queue, "wire", None)
        return wire is None or not wire.closed

    async def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        """A connect to a namespace the service does not serve is refused with the object
        protocol v5 wants (python-socketio sends the string ``"Unable to connect"``, which
        socket.io-client reports with no message and no data). The usual cause is
        ``io("https://host/app")``: the URL's path becomes the namespace."""
        name = namespace or "/"
        if not (name in self.handlers or name in self.namespace_handlers
                or self.namespaces == "*" or name in (self.namespaces or ())):
            await self._send_packet(eio_sid, self.packet_class(
                packet.CONNECT_ERROR, data=UNKNOWN_NAMESPACE, namespace=name))
            return
        await super()._handle_connect(eio_sid, namespace, data)

    async def _handle_disconnect(self, eio_sid: str, namespace: str | None,
                                 reason: str | None = None) -> None:
        """The client left the namespace (``41``): its session must not outlive it."""
        await super()._handle_disconnect(eio_sid, namespace, reason)
        self._watch(eio_sid, "no_connection")

    async def disconnect(self, sid: str, namespace: str | None = None,
                         ignore_queue: bool = False) -> None:
        """The server ended the connection: a client that ignores it is closed later."""
        eio_sid = self.manager.eio_sid_from_sid(sid, namespace or "/")
        await super().disconnect(sid, namespace=namespace, ignore_queue=ignore_queue)
        if eio_sid is not None:
            self._watch(eio_sid, "no_connection")

    async def _handle_eio_disconnect(self, eio_sid: str, reason: str) -> None:
        timer = self._auth_timers.pop(eio_sid, None)
        if timer is not None:
            timer.cancel()
        self._skip_attachments.pop(eio_sid, None)
        try:
            await super()._handle_eio_disconnect(eio_sid, reason)
        except Exception:
            # python-engineio would log it through its own logger, as plain text
            self.log.exception("disconnect_failed", extra={"fields": {"eio_sid": eio_sid}})
            self.environ.pop(eio_sid, None)
        if reason == self.reason.CLIENT_DISCONNECT:
            sock = self.eio.sockets.get(eio_sid)
            if sock is not None and not sock.upgraded:
                sock.queue.put_nowait(eio_packet.Packet(eio_packet.CLOSE))

    async def drop(self, eio_sid: str, reason: str) -> None:
        """Close an Engine.IO session now, without waiting for the client to read anything."""
        sock = self.eio.sockets.get(eio_sid)
        if sock is None or sock.closed or sock.closing or eio_sid in self._dropping:
            return
        self._dropping.add(eio_sid)
        try:
            request = self.environ.get(eio_sid, {}).get("sanic.request")
            log_event(self.log, "session_dropped", logging.WARNING, eio_sid=eio_sid,
                      reason=reason, ip=getattr(request, "ip", None))
            self.metrics.session_dropped(reason)
            await sock.close(wait=False, abort=True, reason=reason)
            sock.queue.put_nowait(None)  # ends a pending long-poll or the websocket writer
            # gone now, not when Engine.IO's service task next passes by (up to 20 s)
            self.eio.sockets.pop(eio_sid, None)
        finally:
            self._dropping.discard(eio_sid)

    # ---- outgoing ----

    async def _send_packet(self, eio_sid: str, pkt: Any) -> None:
        sock = self.eio.sockets.get(eio_sid)
        wire = getattr(sock.queue, "wire", None) if sock is not None else None
        if wire is not None and not sock.closed:
            if await self._has_room(eio_sid):
                # on a websocket: encoded and written here (what python-socketio's
                # ``eio.send`` → ``send_packet`` → ``socket.send`` → queue would end up doing)
                wire.send(MESSAGE_TYPE + pkt.encode())
            return
        if await self._has_room(eio_sid):
            await super()._send_packet(eio_sid, pkt)

    async def _send_eio_packet(self, eio_sid: str, eio_pkt: Any) -> None:
        sock = self.eio.sockets.get(eio_sid)
        wire = getattr(sock.queue, "wire", None) if sock is not None else None
        if wire is not None and not sock.closed:
            if await self._has_room(eio_sid):
                wire.send(eio_pkt.encode())
            return
        if await self._has_room(eio_sid):
            await super()._send_eio_packet(eio_sid, eio_pkt)

    async def _has_room(self, eio_sid: str) -> bool:
        sock = self.eio.sockets.get(eio_sid)
        if sock is None or sock.queue.qsize() < self.max_queued:
            return True
        await self.drop(eio_sid, "slow_consumer")
        return False
