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
from service.engine import EngineServer, EngineWebSocket
from service.socket_server import CheckedPacket, SignalingServer


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
    (socketio.AsyncRedisManager, "_redis_connect", ["self"]),
    (socketio.AsyncRedisManager, "_redis_listen_with_retries", ["self"]),
    (socketio.AsyncRedisManager, "_publish", ["self", "data"]),
    (socketio.AsyncRedisManager, "_listen", ["self"]),
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
    assert server.eio._async["create_route"].__module__ == "service.engine"
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


def test_socketio_dispatch_we_rely_on() -> None:
    """The connect handler runs between ``pre_connect`` and ``manager.connect`` (so the
    service can see a session that ended meanwhile); ``_handle_disconnect`` returns early for
    a socket that is not connected; packets are decoded with ``self.packet_class``."""
    connect = source(socketio.AsyncServer._handle_connect)
    assert connect.index("pre_connect") < connect.index("_trigger_event") < connect.rindex(
        "self.manager.connect(sid, namespace)")
    assert "self.packet_class(encoded_packet=data)" in source(
        socketio.AsyncServer._handle_eio_message)
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


def test_fast_json_keeps_the_integer_guard_when_python_has_none() -> None:
    """Packets are decoded by the C decoder alone while Python bounds integer parsing
    (``sys.get_int_max_str_digits``); with that bound lifted, python-engineio's own guard
    (at most 100 digits) comes back, so a huge number can never cost quadratic time."""
    import sys

    from service.socket_server import FastJson

    assert FastJson.loads("[" + "7" * 200 + "]") == [int("7" * 200)]
    previous = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        with pytest.raises(ValueError):
            FastJson.loads("[" + "7" * 200 + "]")
    finally:
        sys.set_int_max_str_digits(previous)
