"""What the service's overrides rely on in python-socketio, python-engineio, Sanic and
redis-py, pinned (issue 9, item 13): each overridden or borrowed private method still exists
with the signature and the behaviour the override assumes. An upgrade that changes one fails
here, by name, in CI, not in production. The behaviour itself is exercised through real
sockets in the other test files; these pins say which assumption broke."""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Callable
from typing import Any

import engineio
import pytest
import socketio
from engineio import async_socket
from engineio.async_drivers import sanic as sanic_driver
from sanic.request import Request
from sanic.server.protocols.http_protocol import HttpProtocol
from sanic.server.protocols.websocket_protocol import WebSocketProtocol

from service.cluster import SignedRedisManager
from service.transport.engine import EngineServer, EngineWebSocket
from service.transport.server import CheckedPacket, SignalingServer


def params(function: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(function).parameters)


def source(function: Callable[..., Any]) -> str:
    return inspect.getsource(function)


OVERRIDES = [
    # (library class, method, parameters the override takes and passes on)
    (socketio.AsyncServer, "_engineio_server_class", ["self"]),
    (socketio.AsyncServer, "_handle_event", ["self", "eio_sid", "namespace", "id", "data"]),
    (socketio.AsyncServer, "_handle_eio_message", ["self", "eio_sid", "data"]),
    (socketio.AsyncServer, "_handle_eio_connect", ["self", "eio_sid", "environ"]),
    (socketio.AsyncServer, "_handle_connect", ["self", "eio_sid", "namespace", "data"]),
    (socketio.AsyncServer, "_handle_eio_disconnect", ["self", "eio_sid", "reason"]),
    (socketio.AsyncServer, "_handle_disconnect", ["self", "eio_sid", "namespace", "reason"]),
    (socketio.AsyncServer, "_send_packet", ["self", "eio_sid", "pkt"]),
    (socketio.AsyncServer, "_send_eio_packet", ["self", "eio_sid", "eio_pkt"]),
    (socketio.AsyncServer, "disconnect", ["self", "sid", "namespace", "ignore_queue"]),
    (socketio.packet.Packet, "decode", ["self", "encoded_packet"]),
    (engineio.AsyncServer, "start_background_task", ["self", "target", "args", "kwargs"]),
    (engineio.AsyncServer, "_trigger_event", ["self", "event", "args", "kwargs"]),
    (engineio.AsyncServer, "disconnect", ["self", "sid"]),
    (sanic_driver.WebSocket, "__call__", ["self", "environ"]),
    (sanic_driver.WebSocket, "wait", ["self"]),
    (sanic_driver.WebSocket, "send", ["self", "message"]),
    (sanic_driver.WebSocket, "close", ["self"]),
    (socketio.AsyncManager, "emit", ["self", "event", "data", "namespace", "room",
                                     "skip_sid", "callback", "to", "kwargs"]),
    (socketio.AsyncRedisManager, "_redis_connect", ["self"]),
    (socketio.AsyncRedisManager, "_redis_listen_with_retries", ["self"]),
    (socketio.AsyncRedisManager, "_publish", ["self", "data"]),
    (socketio.AsyncRedisManager, "_listen", ["self"]),
    (socketio.AsyncRedisManager, "_handle_emit", ["self", "message"]),
]


@pytest.mark.parametrize(("base", "name", "expected"), OVERRIDES,
                         ids=[f"{b.__module__}.{b.__name__}.{n}" for b, n, _ in OVERRIDES])
def test_overridden_methods_keep_their_signature(base: type, name: str,
                                                 expected: list[str]) -> None:
    """The library method exists with the parameters the override is written against."""
    assert params(getattr(base, name)) == expected


def test_our_classes_override_what_we_think() -> None:
    """Each override is installed where python-socketio / python-engineio will call it."""
    server = SignalingServer(log=__import__("logging").getLogger("pin"), auth_timeout=1,
                             max_queued=16, send_timeout=1, async_mode="sanic")
    assert isinstance(server.eio, EngineServer)
    assert server.packet_class is CheckedPacket
    assert issubclass(server.eio._async["websocket"], EngineWebSocket)
    assert server.eio._async["create_route"].__module__ == "service.transport.engine"
    assert issubclass(SignedRedisManager, socketio.AsyncRedisManager)


def test_engineio_calls_the_hooks_we_use() -> None:
    """Where python-engineio calls what we replace: sessions are AsyncSocket objects made in
    ``_handle_connect``; ``attach`` takes its route from the driver table; a socket starts
    its ping task through ``server.start_background_task(self._send_ping)``; ``close``
    triggers ``disconnect`` through ``server._trigger_event``; the websocket handler reads
    through ``ws.wait()`` and stops on an exception from it."""
    assert "async_socket.AsyncSocket(self, sid)" in source(engineio.AsyncServer._handle_connect)
    assert "self._async['create_route']" in source(engineio.AsyncServer.attach)
    assert "self.server.start_background_task(self._send_ping)" in source(
        async_socket.AsyncSocket.schedule_ping)
    assert "self.server._trigger_event(\n                'disconnect', self.sid" in source(
        async_socket.AsyncSocket.close)
    handler = source(async_socket.AsyncSocket._websocket_handler)
    assert "data = await ws.wait()" in handler
    assert "packet.Packet(encoded_packet=p)" in handler
    assert "self.server._async['websocket'](\n            self._websocket_handler" in source(
        async_socket.AsyncSocket._upgrade_websocket)
    for attribute in ("closed", "closing", "upgraded", "queue", "sid"):
        assert f"self.{attribute}" in source(async_socket.AsyncSocket)
    # the OPEN packet, whose pingInterval BoundedQueue corrects (whole seconds here), goes
    # through the new session's queue
    connect = source(engineio.AsyncServer._handle_connect)
    assert "'pingInterval': int(\n                self.ping_interval" in connect
    assert "await s.send(pkt)" in connect


def test_socketio_dispatch_we_rely_on() -> None:
    """The connect handler runs between ``pre_connect`` and ``manager.connect`` (so the
    service can see a session that ended meanwhile); ``_handle_disconnect`` returns early for
    a socket that is not connected; packets are decoded with ``self.packet_class``; an
    unknown namespace is told apart as the override does."""
    connect = source(socketio.AsyncServer._handle_connect)
    assert connect.index("pre_connect") < connect.index("_trigger_event") < connect.rindex(
        "self.manager.connect(sid, namespace)")
    assert "self.packet_class(encoded_packet=data)" in source(
        socketio.AsyncServer._handle_eio_message)
    # a namespace it serves is one of these (our refusal of the others uses the same test);
    # the others get a bare string (what the override replaces)
    for served in ("namespace in self.handlers", "namespace in self.namespace_handlers",
                   "self.namespaces == '*'", "namespace in self.namespaces",
                   "data='Unable to connect'"):
        assert served in connect
    assert "serializer" in params(socketio.base_server.BaseServer.__init__)


def test_sanic_internals_we_touch() -> None:
    """Sanic keeps the current request in ``Request._current`` (a ContextVar); its HTTP
    protocol schedules ``_callback_check_timeouts``, which the websocket protocol's
    ``close`` leaves armed; a handler marked ``is_websocket`` may return nothing."""
    assert isinstance(Request._current, contextvars.ContextVar)
    assert "self._callback_check_timeouts = self.loop.call_later" in source(
        HttpProtocol.check_timeouts)
    assert "_callback_check_timeouts" not in source(WebSocketProtocol.close)
    assert "websocket_handshake" in dir(WebSocketProtocol)
    from sanic import app as sanic_app

    assert 'hasattr(handler, "is_websocket")' in source(sanic_app.Sanic.handle_request)


def test_redis_manager_internals_we_use() -> None:
    """python-socketio's Redis manager keeps its listener task in ``thread`` and its pubsub
    in ``pubsub``, and filters what ``_redis_listen_with_retries`` yields by type."""
    assert "self.thread = self.server.start_background_task(self._thread)" in source(
        socketio.async_pubsub_manager.AsyncPubSubManager.initialize)
    listen = source(socketio.AsyncRedisManager._listen)
    assert "self._redis_listen_with_retries()" in listen
    assert "message['type'] == 'message'" in listen
    # emits from other nodes go through _handle_emit, awaited one at a time (what keeps
    # the signals SignedRedisManager._handle_emit holds in order), with the message as
    # published (so a key of ours, "device", reaches it)
    thread = source(socketio.async_pubsub_manager.AsyncPubSubManager._thread)
    assert "await self._handle_emit(data)" in thread
    handle = source(socketio.async_pubsub_manager.AsyncPubSubManager._handle_emit)
    assert "message['event']" in handle and "message.get('room')" in handle
    # ... and reach the local emit (InlineManager.emit, where a gated socket's packets
    # wait), as every local emit does; the gate finds a socket's eio sid by its sid
    assert "await super().emit(" in handle
    assert params(socketio.AsyncManager.eio_sid_from_sid) == ["self", "sid", "namespace"]


def test_fast_json_keeps_the_integer_guard_when_python_has_none() -> None:
    """Packets are decoded by the C decoder alone while Python bounds integer parsing
    (``sys.get_int_max_str_digits``); with that bound lifted, python-engineio's own guard
    (at most 100 digits) comes back, so a huge number can never cost quadratic time."""
    import sys

    from service.transport.server import FastJson

    assert FastJson.loads("[" + "7" * 200 + "]") == [int("7" * 200)]
    # (orjson, faster, would read an integer past 64 bits as a float: not used to decode)
    assert FastJson.loads('[18446744073709551616, "x"]') == [2 ** 64, "x"]
    assert FastJson.loads("[9223372036854775807]") == [2 ** 63 - 1]
    assert FastJson.loads("[NaN]")[0] != FastJson.loads("[NaN]")[0]
    assert FastJson.loads('["\\ud800"]') == ["\ud800"]
    previous = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        with pytest.raises(ValueError):
            FastJson.loads("[" + "7" * 200 + "]")
    finally:
        sys.set_int_max_str_digits(previous)


def test_engineio_websocket_protocol_we_run_ourselves() -> None:
    """``EngineWebSocket`` runs the websocket transport in place of
    ``AsyncSocket._websocket_handler``: the upgrade exchange (``2probe`` → ``3probe``, a NOOP
    to end the pending poll, then ``5``), then each packet to ``socket.receive``, which hands
    a MESSAGE's data to ``_trigger_event('message', sid, data)``; the session is closed with
    ``transport close`` when the connection ends; a PONG schedules the next PING
    (``schedule_ping``), which the wire calls as the PONG arrives. A PING is due
    ``ping_interval`` after the last PONG: ``_send_ping`` sleeps that long, notes
    ``last_ping`` and sends PING (what the ping timer in ``EngineServer._ping`` does)."""
    handler = source(async_socket.AsyncSocket._websocket_handler)
    for fragment in ("decoded_pkt.data != 'probe'", "packet.Packet(packet.PONG, data='probe')",
                     "await self.queue.put(packet.Packet(packet.NOOP))",
                     "decoded_pkt.packet_type != packet.UPGRADE", "await self.receive(pkt)",
                     "reason=self.server.reason.TRANSPORT_CLOSE"):
        assert fragment in handler, fragment
    receive = source(async_socket.AsyncSocket.receive)
    assert "'message', self.sid, pkt.data," in receive
    # a PONG only schedules the next PING: the wire does that itself as the PONG arrives
    assert "if pkt.packet_type == packet.PONG:\n            self.schedule_ping()" in receive
    assert "self.server.start_background_task(self._send_ping)" in source(
        async_socket.AsyncSocket.schedule_ping)
    ping = source(async_socket.AsyncSocket._send_ping)
    for fragment in ("await asyncio.sleep(self.server.ping_interval)",
                     "if not self.closing and not self.closed:",
                     "self.last_ping = time.time()",
                     "await self.send(packet.Packet(packet.PING))"):
        assert fragment in ping, fragment


def test_sends_we_write_straight_to_the_wire() -> None:
    """``SignalingServer._send_packet``/``_send_eio_packet`` write what python-socketio would
    hand Engine.IO: the packet's encoding, as the data of an Engine.IO MESSAGE (``4``), or
    the Engine.IO packet's own encoding; ``Packet`` skips its search for binary data when
    ``uses_binary_events`` is off."""
    assert "encoded_packet = pkt.encode()" in source(socketio.AsyncServer._send_packet)
    assert "await self.eio.send(eio_sid, encoded_packet)" in source(
        socketio.AsyncServer._send_packet)
    assert "packet.Packet(packet.MESSAGE, data=data)" in source(engineio.AsyncServer.send)
    assert "await self.eio.send_packet(eio_sid, eio_pkt)" in source(
        socketio.AsyncServer._send_eio_packet)
    assert "self.uses_binary_events and" in source(socketio.packet.Packet.__init__)
    assert CheckedPacket.uses_binary_events is False
    assert CheckedPacket(socketio.packet.ACK, data=[{"ok": True}], id=3).encode() == (
        '33[{"ok":true}]')
    dispatch = source(socketio.AsyncServer._handle_eio_message)
    assert ("await self._handle_event(eio_sid, pkt.namespace, pkt.id,\n"
            "                                         pkt.data)") in dispatch


def test_sanic_websocket_slot_we_fill() -> None:
    """Sanic's websocket protocol hands its upgraded connection to whatever sits in
    ``self.websocket`` (our ``Wire``): bytes, end of stream and loss of the connection, and
    ``end_connection`` when the handler returns; at shutdown it reads ``ws_proto.state`` and
    calls ``close``."""
    assert "self.websocket.data_received(data)" in source(WebSocketProtocol.data_received)
    assert "return self.websocket.eof_received()" in source(WebSocketProtocol.eof_received)
    assert "self.websocket.connection_lost(exc)" in source(WebSocketProtocol.connection_lost)
    assert "self.websocket.end_connection(1001)" in source(WebSocketProtocol.close)
    shutdown = source(WebSocketProtocol.close_if_idle)
    assert "self.websocket.ws_proto.state in (CLOSING, CLOSED)" in shutdown
    assert "self.websocket.close(1001)" in shutdown


def test_redis_pool_and_script_calls_we_rely_on() -> None:
    """``FairConnectionPool`` wraps the blocking pool's ``get_connection``/``release``;
    ``ScriptBatch`` queues a script call on a pipeline (``client=pipe``: EVALSHA, the script
    loaded by the pipeline when Redis lacks it)."""
    from redis.asyncio import BlockingConnectionPool
    from redis.commands.core import AsyncScript

    assert params(BlockingConnectionPool.get_connection)[:2] == ["self", "command_name"]
    assert params(BlockingConnectionPool.release) == ["self", "connection"]
    call = source(AsyncScript.__call__)
    assert "isinstance(client, Pipeline)" in call and "client.scripts.add(self)" in call


def test_prometheus_histogram_storage() -> None:
    """``Metrics.flush`` adds counted observations straight into a Histogram's values:
    ``_buckets`` (one value per bucket, +Inf last, non-cumulative: exposition sums them)
    and ``_sum``, each with ``inc``; the same result as observing one by one."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from service.telemetry import Metrics

    observed_registry, flushed = CollectorRegistry(), Metrics()
    observed = Histogram("signaling_relay_seconds", "x", registry=observed_registry,
                         buckets=flushed.relay_seconds._upper_bounds[:-1])
    assert len(flushed.relay_seconds._buckets) == len(observed._upper_bounds)
    for seconds in (0.00004, 0.0003, 0.0003, 0.02, 7.0):
        observed.observe(seconds)
        flushed.relay("delivered", seconds)
    flushed.flush()

    def samples(text: bytes) -> list[str]:
        return sorted(line for line in text.decode().splitlines()
                      if line.startswith("signaling_relay_seconds_")
                      and "_created" not in line)

    assert samples(flushed.expose()) == samples(generate_latest(observed_registry))


async def test_handlers_of_the_main_namespace_are_kept_by_name() -> None:
    """``SignalingServer._answer`` calls an event's own handler straight from
    ``AsyncServer.handlers["/"][name]`` (what ``sio.on(name, handler)`` registers) and sends
    the ack as ``_handle_event_internal`` does: ``None`` -> no arguments, a tuple -> its items,
    anything else -> one argument."""
    import socketio

    sio = socketio.AsyncServer()

    async def handler(sid: str, *args: object) -> object:
        return args

    sio.on("offer", handler)
    assert sio.handlers["/"]["offer"] is handler
    source = inspect.getsource(socketio.AsyncServer._handle_event_internal)
    assert "if r is None:" in source and "isinstance(r, tuple)" in source
    assert "data = [r]" in source


async def test_a_disconnect_leaves_only_its_own_rooms() -> None:
    """``InlineManager.basic_disconnect`` does what ``BaseManager.basic_disconnect`` does (its
    source pinned here) without scanning every room of the namespace: a socket leaves the
    rooms it entered (kept per socket), its callbacks and pending marks go, and the other
    sockets' rooms stay. The namespace's rooms are made unreadable as a whole: the library's
    scan (``.copy().items()``) would fail."""
    from service.transport import InlineManager

    base = source(socketio.base_manager.BaseManager.basic_disconnect)
    for fragment in ("for room_name, room in self.rooms[namespace].copy().items():",
                     "if sid in self.callbacks:", "del self.callbacks[sid]",
                     "self.pending_connect[namespace].remove(sid)",
                     "self.pending_disconnect[namespace].remove(sid)"):
        assert fragment in base, fragment

    class Server:
        packet_class = socketio.packet.Packet

        class eio:
            count = 0

            @classmethod
            def generate_id(cls) -> str:
                cls.count += 1
                return f"s{cls.count}"

    manager = InlineManager()
    manager.set_server(Server)
    sids = []
    for n in range(2000):
        sid = await manager.pre_connect(f"e{n}", "/")
        manager.basic_enter_room(sid, "/", f"user:u{n % 1000}")
        sids.append(sid)
    gone, kept = sids[0], sids[1000]  # both in room user:u0
    manager.callbacks[gone] = {1: print}
    manager.pre_disconnect(gone, "/")

    class Unscannable(dict):  # type: ignore[type-arg]
        def copy(self) -> dict:  # type: ignore[type-arg]
            raise AssertionError("every room scanned")

        def items(self) -> Any:
            raise AssertionError("every room scanned")

    manager.rooms["/"] = Unscannable(manager.rooms["/"])
    manager.basic_disconnect(gone, "/")
    rooms = dict.items(manager.rooms["/"])
    assert not [name for name, room in rooms if gone in room]
    assert gone not in manager.callbacks and "/" not in manager.pending_disconnect
    assert kept in manager.rooms["/"]["user:u0"] and kept in manager.rooms["/"][None]
    assert gone not in dict.__getitem__(manager.rooms["/"], None)
