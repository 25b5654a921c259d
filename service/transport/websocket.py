"""A websocket on Sanic's transport with nothing per message but the parse and the write.

Sanic's own websocket (``WebsocketImplProtocol``) hands each message through a frame assembler
(locks and futures), keeps a ping task per connection and makes every send a coroutine; for a
signaling server that relays many small messages over many idle connections that machinery
cost more than everything else together. :class:`Wire` takes its place in the slot Sanic's
``WebSocketProtocol`` keeps for it (``protocol.websocket``; Sanic forwards ``data_received``,
``eof_received``, ``connection_lost`` and its shutdown calls to it). The handshake is
answered by the ``websockets`` library's sans-I/O ``ServerProtocol``, as Sanic's is; frames
are then parsed here (RFC 6455, a server's side: masked frames in, unmasked out, no
extensions; unmasking is ``websockets``' C ``apply_mask``), complete messages wait in a deque
for one reader, and what is sent goes out at the end of the event loop's turn.

- **Limits.** A message over ``max_size`` closes the connection with 1009 as soon as the
  frame header announcing it arrives (fragments count together), and so does one in more than
  ``max_fragments`` frames; bad framing (reserved bits, an unmasked frame, an unknown opcode, a
  bad control or continuation frame) with 1002; text that is not UTF-8 with 1007. Pings are
  answered; the peer's close frame is echoed, unless its code is not one a peer may send
  (1002). Every frame, control frames and empty continuations included, is shown to
  :attr:`on_frame` as it arrives (the packet budget), before it costs anything more.
- **Back-pressure.** At most :data:`INBOX_LIMIT` messages wait for the reader: past that the
  transport stops reading (the peer's TCP window fills) until the reader has taken half.
- **Slow readers.** Writes never wait. What the peer has not read waits in the transport's
  buffer; :attr:`backlog` counts the messages written since that buffer was last empty, and
  a buffer that stays non-empty for ``send_timeout`` seconds ends the connection
  (``on_stalled``); a pong or a close frame left in the buffer starts that clock too.
- **Closing.** After its close frame (or the peer's) the server ends its side of the stream
  and waits up to :data:`CLOSE_TIMEOUT` for the peer to close; it reads (and discards) what
  the peer still sends meanwhile, so the close frame is not lost to a reset.
- **Timers** hold the connection weakly: asyncio keeps a cancelled timer until its deadline.

A connection that goes silent is Engine.IO's business (its pings and ping timeout).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import struct
import types
import weakref
from collections.abc import Callable
from typing import Any, Final

from sanic import Request
from websockets.datastructures import Headers
from websockets.http11 import Request as HandshakeRequest
from websockets.protocol import State
from websockets.server import ServerProtocol

try:
    from websockets.speedups import apply_mask
except ImportError:  # websockets built without its C extension
    from websockets.utils import apply_mask

#: RFC 6455 opcodes
CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
#: RFC 6455 close codes used here
NORMAL: Final = 1000
GOING_AWAY: Final = 1001
PROTOCOL_ERROR: Final = 1002
INVALID_DATA: Final = 1007
MESSAGE_TOO_BIG: Final = 1009
#: "no close frame": not sent, only reported
ABNORMAL: Final = 1006
#: the codes a peer's close frame may carry (RFC 6455 §7.4 and IANA's registry, as the
#: ``websockets`` library's ``EXTERNAL_CLOSE_CODES``; 1005, 1006 and 1015 are never sent), and
#: 3000-4999 for libraries and applications; any other is a protocol error
CLOSE_CODES: Final = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012,
                                1013, 1014})
APPLICATION_CODES: Final = range(3000, 5000)
#: how long a closing connection waits for the peer's side of the close handshake
CLOSE_TIMEOUT: Final = 5.0
#: messages waiting for the reader before the transport stops reading
INBOX_LIMIT: Final = 8
#: frames one message may come in (browsers and mobile clients send one; 64 KiB messages
#: in 1 KiB fragments fit)
MAX_FRAGMENTS: Final = 64
#: the handshake's logger: at DEBUG the ``websockets`` library logs what it handles, which is
#: never to include what clients send (SDP and ICE candidates); its INFO lines are noise
PARSER_LOG: Final = logging.getLogger("signaling.websocket")
PARSER_LOG.setLevel(logging.WARNING)
_EMPTY: Final = contextvars.Context()
_FIN_TEXT: Final = 0x81
_FIN_BINARY: Final = 0x82
_FIN_CLOSE: Final = 0x88
_FIN_PONG: Final = 0x8A
_SHORT: Final = struct.Struct("!BB")
_MEDIUM: Final = struct.Struct("!BBH")
_LONG: Final = struct.Struct("!BBQ")


def frame_header(first: int, length: int) -> bytes:
    """The header of an unmasked (server) frame of ``length`` payload bytes."""
    if length < 126:
        return _SHORT.pack(first, length)
    if length < 65536:
        return _MEDIUM.pack(first, 126, length)
    return _LONG.pack(first, 127, length)


class Wire:
    """One upgraded connection (see the module docstring)."""

    def __init__(self, protocol: Any, *, max_size: int, send_timeout: float,
                 max_fragments: int = MAX_FRAGMENTS) -> None:
        self.transport: asyncio.Transport = protocol.transport
        self.loop = asyncio.get_running_loop()
        #: Sanic's protocol reads ``ws_proto.state`` when it shuts down
        self.ws_proto = types.SimpleNamespace(state=State.OPEN)
        #: messages in, oldest first (a list: an empty deque costs ~700 bytes of every
        #: connection, and there are rarely more than a few here)
        self.inbox: list[str | bytes] = []
        self.closed = False
        #: served by a task of its own: the end of Sanic's request handler is not the end
        self.detached = False
        #: messages written since the transport's buffer was last empty
        self.backlog = 0
        #: called once when the peer has not read for ``send_timeout`` seconds
        self.on_stalled: Callable[[], None] | None = None
        #: called for each frame the peer sends, as it arrives; False: the peer is over its
        #: budget, and the hook has closed the connection (nothing more is read)
        self.on_frame: Callable[[], bool] | None = None
        #: when set, a text message equal to :attr:`pong` is handed to it as it arrives
        #: instead of to the reader (no task wakes up for the heartbeat of an idle peer)
        self.on_pong: Callable[[], None] | None = None
        self.pong = b""
        #: reading is paused until the reader catches up (see :data:`INBOX_LIMIT`)
        self.paused = False
        self._out: list[bytes] = []
        self._buffer = bytearray()
        self._max_size = max_size
        self._max_fragments = max_fragments
        self._fragments: list[bytes] | None = None
        self._fragments_size = 0
        self._fragments_opcode = TEXT
        #: after a protocol error nothing the peer sends is looked at again
        self._discarding = False
        self._waiter: asyncio.Future[None] | None = None
        self._send_timeout = send_timeout
        self._stall_timer: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None

    # ---- what Sanic's WebSocketProtocol calls ----

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        self._buffer += data
        self._parse()

    def _parse(self) -> None:
        """Take the complete frames out of the buffer, until it is empty, the connection
        ends, or the inbox is full (then reading pauses, and the rest waits here)."""
        buffer = self._buffer
        end = len(buffer)
        at = 0
        while end - at >= 2 and not self.paused:
            first, second = buffer[at], buffer[at + 1]
            opcode = first & 0x0F
            if first & 0x70 or not second & 0x80:
                return self._protocol_error("reserved bits, or an unmasked frame")
            length = second & 0x7F
            start = at + 2
            if length == 126:
                if end - start < 2:
                    break
                length = int.from_bytes(buffer[start:start + 2], "big")
                start += 2
            elif length == 127:
                if end - start < 8:
                    break
                length = int.from_bytes(buffer[start:start + 8], "big")
                start += 8
            if opcode >= CLOSE:
                if opcode > PONG or length > 125 or not first & 0x80:
                    return self._protocol_error("bad control frame")
            elif opcode > BINARY:
                return self._protocol_error("unknown opcode")
            elif length + (self._fragments_size if opcode == CONT else 0) > self._max_size:
                self.fail(MESSAGE_TOO_BIG, "message too big")
                self._discarding = True
                return
            if end - start < 4 + length:
                break
            at = start + 4 + length
            if self.on_frame is not None and not self.on_frame():
                self._discarding = True
                return
            payload = apply_mask(buffer[start + 4:at], buffer[start:start + 4])
            self._frame(first & 0x80, opcode, payload)
            if self._discarding:
                return
        if at:
            del buffer[:at]
        if self.inbox:
            self._wake()

    def eof_received(self) -> bool:
        self._gone()
        return False  # let the transport close

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
        self.ws_proto.state = State.CLOSED
        self._gone()

    def end_connection(self, code: int = GOING_AWAY) -> None:
        """Sanic calls this when the request's handler has returned: the end of the
        connection, unless it was handed to a task of its own (:attr:`detached`)."""
        if not self.detached:
            self.fail(code)

    def fail_connection(self, code: int = GOING_AWAY, reason: str = "") -> bool:
        """Close now, whatever the peer does (Sanic calls this when its graceful shutdown
        runs out of time)."""
        if code != ABNORMAL:
            self.fail(code, reason)
        self.transport.close()
        self._gone()
        return True

    async def close(self, code: int = GOING_AWAY, reason: str = "") -> None:
        """Close now (Sanic calls this at shutdown)."""
        self.fail(code, reason)

    # ---- the reader's side ----

    async def recv(self) -> str | bytes | None:
        """The next message, or None once the connection is over."""
        while not self.inbox:
            if self.closed:
                return None
            self._waiter = self.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        message = self.inbox.pop(0)
        if self.paused and len(self.inbox) <= INBOX_LIMIT // 2 and not self.closed:
            self.paused = False
            self.transport.resume_reading()
            self._parse()
        return message

    # ---- the writer's side ----

    def send(self, message: str | bytes) -> None:
        """Queue one message for the end of this turn of the event loop (never waits; see
        :attr:`backlog`): what a turn sends to a connection goes out in one write."""
        if self.closed:
            return
        if isinstance(message, str):
            data = message.encode()
            first = _FIN_TEXT
        else:
            data, first = message, _FIN_BINARY
        if not self._out:
            _OUTPUT.add(self)
        self._out.append(frame_header(first, len(data)) + data)

    def _flush(self) -> None:
        out, self._out = self._out, []
        transport = self.transport
        if not out or transport.is_closing():
            return
        if transport.get_write_buffer_size():
            self.backlog += len(out)
        else:
            self.backlog = 0
        transport.writelines(out)
        self._watch_buffer()

    def _write_control(self, frame: bytes) -> None:
        """Write a control frame now, after what was sent before it."""
        self._flush()
        self.transport.write(frame)
        self._watch_buffer()

    def _watch_buffer(self) -> None:
        """What the peer has not read starts the slow-reader clock."""
        if self.transport.get_write_buffer_size() and self._stall_timer is None:
            self._stall_timer = self._later(self._send_timeout, self._check_stall)

    def fail(self, code: int = NORMAL, reason: str = "") -> None:
        """End the connection: a close frame with ``code`` (unless one was exchanged) and
        the end of our side of the stream; the reader sees the end at once."""
        self._flush()  # what was sent before goes first
        if self.ws_proto.state is State.OPEN and not self.transport.is_closing():
            payload = code.to_bytes(2, "big") + reason.encode()[:123]
            self.transport.write(frame_header(_FIN_CLOSE, len(payload)) + payload)
            self.ws_proto.state = State.CLOSING
        self._half_close()
        self._gone()

    # ---- inside ----

    def _frame(self, fin: int, opcode: int, payload: bytes) -> None:
        if opcode in (TEXT, BINARY):
            if self._fragments is not None:
                return self._protocol_error("expected a continuation frame")
            if fin:
                self._message(opcode, payload)
            else:
                self._fragments, self._fragments_opcode = [payload], opcode
                self._fragments_size = len(payload)
        elif opcode == CONT:
            if self._fragments is None:
                return self._protocol_error("unexpected continuation frame")
            if len(self._fragments) >= self._max_fragments:
                self.fail(MESSAGE_TOO_BIG, "too many fragments")
                self._discarding = True
                return None
            self._fragments.append(payload)
            self._fragments_size += len(payload)
            if fin:
                data = b"".join(self._fragments)
                self._fragments, self._fragments_size = None, 0
                self._message(self._fragments_opcode, data)
        elif opcode == PING:
            if self.ws_proto.state is State.OPEN:
                self._write_control(frame_header(_FIN_PONG, len(payload)) + payload)
        elif opcode == CLOSE:
            self._closed_by_peer(payload)
        # PONG: nothing to do

    def _message(self, opcode: int, data: bytes) -> None:
        if self.closed:
            return  # the reader has gone: the rest is discarded
        if opcode == BINARY:
            self.inbox.append(data)
        elif data == self.pong and self.on_pong is not None:
            self.on_pong()
            return
        else:
            try:
                self.inbox.append(data.decode())
            except UnicodeDecodeError:
                self.fail(INVALID_DATA, "invalid UTF-8")
                return
        if len(self.inbox) >= INBOX_LIMIT and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def _closed_by_peer(self, payload: bytes) -> None:
        """The peer's close frame: answered with the same code (if ours was not sent yet),
        then the end of our side; nothing more is read."""
        if len(payload) == 1:
            return self._protocol_error("bad close frame")
        if payload:
            code = int.from_bytes(payload[:2], "big")
            if code not in CLOSE_CODES and code not in APPLICATION_CODES:
                return self._protocol_error("bad close code")
        try:
            payload[2:].decode()
        except UnicodeDecodeError:
            return self.fail(INVALID_DATA, "invalid UTF-8")
        if self.ws_proto.state is State.OPEN and not self.transport.is_closing():
            self._write_control(frame_header(_FIN_CLOSE, len(payload)) + payload)
        self.ws_proto.state = State.CLOSED
        self._discarding = True
        self._half_close()
        self._gone()

    def _protocol_error(self, reason: str) -> None:
        self.fail(PROTOCOL_ERROR, reason)
        self._discarding = True

    def _half_close(self) -> None:
        """Send our end of the stream and let the peer close: closing outright while it still
        sends (the rest of an oversized message, its answer to our close frame) would turn
        what we wrote last into a reset. A peer that never closes is cut off."""
        transport = self.transport
        if self._close_timer is not None or transport.is_closing():
            return
        if self.paused:  # read (and discard) until the peer closes
            self.paused = False
            transport.resume_reading()
        self._close_timer = self._later(CLOSE_TIMEOUT, self._abort)
        if transport.can_write_eof():
            transport.write_eof()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _gone(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._stall_timer is not None:
            self._stall_timer.cancel()
        self.on_stalled = self.on_frame = self.on_pong = None  # (they refer to it)
        self._wake()

    def _later(self, delay: float, method: Callable[[], None]) -> asyncio.TimerHandle:
        """A timer that does not hold this connection: asyncio keeps a cancelled timer, and
        what its callback refers to, until its deadline."""
        return self.loop.call_later(delay, _call, weakref.WeakMethod(method),
                                    context=_EMPTY)

    def _abort(self) -> None:
        self.transport.abort()

    def _check_stall(self) -> None:
        self._stall_timer = None
        if self.closed or not self.transport.get_write_buffer_size():
            return
        if self.on_stalled is not None:
            self.on_stalled()
        else:
            self.fail(GOING_AWAY, "not reading")


class _Output:
    """The connections with something to write, written together at the end of the loop's
    turn (one callback for all of them, not one per connection)."""

    def __init__(self) -> None:
        self.wires: list[Wire] = []
        #: the loop a flush is scheduled on (one that died with it pending is not waited for)
        self.loop: asyncio.AbstractEventLoop | None = None

    def add(self, wire: Wire) -> None:
        self.wires.append(wire)
        if self.loop is not wire.loop:
            self.loop = wire.loop
            wire.loop.call_soon(self.run, context=_EMPTY)

    def run(self) -> None:
        self.loop = None
        self.flush()

    def flush(self) -> None:
        wires, self.wires = self.wires, []
        for wire in wires:
            wire._flush()


_OUTPUT: Final = _Output()


def _call(method: weakref.WeakMethod[Callable[[], None]]) -> None:
    bound = method()
    if bound is not None:
        bound()


def accept(request: Request, *, send_timeout: float) -> Wire:
    """Complete the websocket handshake of ``request`` (``websockets``' sans-I/O server
    checks the request and writes the answer) and put a :class:`Wire` in Sanic's protocol.
    Raises ``ValueError`` for a request that is not a valid upgrade (nothing has been written
    then)."""
    protocol: Any = request.transport.get_protocol()
    handshake = ServerProtocol(logger=PARSER_LOG)
    response = handshake.accept(HandshakeRequest(path=request.path,
                                                 headers=Headers(request.headers)))
    if response.status_code != 101:
        raise ValueError(response.reason_phrase)
    head = [f"HTTP/1.1 101 {response.reason_phrase}\r\n"]
    head.extend(f"{name}: {value}\r\n" for name, value in response.headers.raw_items())
    head.append("\r\n")
    protocol.transport.write("".join(head).encode())
    wire = Wire(protocol, max_size=protocol.websocket_max_size or 2**20,
                send_timeout=send_timeout)
    protocol.websocket = wire
    return wire
