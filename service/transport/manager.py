""":class:`InlineManager`: python-socketio's client manager, sending to each recipient in turn.

``AsyncManager.emit`` makes a task per recipient and waits for them all; a relay, which goes to
the few connections of one user, paid for a task, its scheduling and an ``asyncio.wait`` per
message. A send only queues the packet (or writes it to the recipient's websocket; see
:mod:`service.transport.engine`) and never waits for the peer, so here each recipient's packet
is sent inline, in order. Emits that ask for a callback (a distinct ack id per recipient) keep
the library's path.

A socket can be *gated* (:meth:`InlineManager.gated`): while a device takes a call over (a
claim or a join sends it again, in order, what it may have missed), what the rest of the node
sends to that socket waits and follows in the order it came, so a live message never
overtakes the older ones sent again before it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Any

import socketio
from engineio import packet as eio_packet
from socketio import packet

#: the sockets whose gate the running task holds (what it sends to them is not held back)
_holding: ContextVar[frozenset[str]] = ContextVar("gates_held", default=frozenset())


class InlineManager(socketio.AsyncManager):  # type: ignore[misc]
    """``socketio.AsyncManager`` whose plain emits send inline (see the module docstring).
    The Redis manager puts it under its own ``emit`` (what arrives from Redis is delivered
    through it too)."""

    async def emit(self, event: str, data: Any, namespace: str, room: str | None = None,
                   skip_sid: Any = None, callback: Any = None, to: str | None = None,
                   **kwargs: Any) -> None:
        if callback is not None:
            await super().emit(event, data, namespace, room=room, skip_sid=skip_sid,
                               callback=callback, to=to, **kwargs)
            return
        room = to or room
        if namespace not in self.rooms:
            return
        if isinstance(data, tuple):
            data = list(data)
        elif data is not None:
            data = [data]
        else:
            data = []
        skip = skip_sid if isinstance(skip_sid, list) else [skip_sid]
        # the recipients first: a send may drop a slow recipient, which changes the rooms
        targets = [eio_sid for sid, eio_sid in self.get_participants(namespace, room)
                   if sid not in skip]
        if not targets:
            return
        encoded = self.server.packet_class(packet.EVENT, namespace=namespace,
                                           data=[event, *data]).encode()
        packets = [eio_packet.Packet(eio_packet.MESSAGE, p)
                   for p in (encoded if isinstance(encoded, list) else [encoded])]
        send = self.server._send_eio_packet
        gates = self._gates()
        for eio_sid in targets:
            waiting = gates.get(eio_sid)
            if waiting is not None and eio_sid not in _holding.get():
                waiting.extend(packets)
                continue
            for pkt in packets:
                await send(eio_sid, pkt)

    async def send_to(self, eio_sid: str, text: str) -> None:
        """Send one encoded Socket.IO packet to one socket, as :meth:`emit` sends each of
        its packets (after what waits at the socket's gate, unless this task holds it)."""
        waiting = self._gates().get(eio_sid)
        if waiting is not None and eio_sid not in _holding.get():
            waiting.append(eio_packet.Packet(eio_packet.MESSAGE, text))
            return
        await self.server.send_message(eio_sid, text)

    # ---- rooms: which a socket is in, kept per socket ----
    # python-socketio finds a leaving socket's rooms by scanning (and copying) every room of
    # the namespace: with 10,000 connections, each in its own room and its user's, every
    # disconnect went over 20,000 rooms, and a mass disconnect (a deploy) was quadratic.

    def basic_enter_room(self, sid: str, namespace: str, room: str | None,
                         eio_sid: str | None = None) -> None:
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)
        self._rooms_of().setdefault((namespace, sid), set()).add(room)

    def basic_leave_room(self, sid: str, namespace: str, room: str | None) -> None:
        super().basic_leave_room(sid, namespace, room)
        rooms = self._rooms_of().get((namespace, sid))
        if rooms is not None:
            rooms.discard(room)
            if not rooms:
                del self._rooms_of()[(namespace, sid)]

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        """What ``BaseManager.basic_disconnect`` does (pinned in
        tests/test_library_pins.py), leaving the socket's own rooms only."""
        if namespace not in self.rooms:
            return
        for room in list(self._rooms_of().get((namespace, sid), ())):
            self.basic_leave_room(sid, namespace, room)
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            if namespace in pending and sid in pending[namespace]:
                pending[namespace].remove(sid)
                if not pending[namespace]:
                    del pending[namespace]

    def _rooms_of(self) -> dict[tuple[str, str], set[str | None]]:
        """(namespace, sid) -> the rooms it is in (made on first use, as the gates)."""
        rooms: dict[tuple[str, str], set[str | None]] = self.__dict__.setdefault(
            "_rooms_by_sid", {})
        return rooms

    def _gates(self) -> dict[str, list[eio_packet.Packet]]:
        """eio sid -> what waits for it (made on first use: the Redis manager's
        ``__init__`` chain does not reach this class's)."""
        gates: dict[str, list[eio_packet.Packet]] = self.__dict__.setdefault("_gated", {})
        return gates

    @contextlib.asynccontextmanager
    async def gated(self, sid: str, namespace: str = "/") -> AsyncIterator[None]:
        """While the block runs, what others send to socket ``sid`` waits; the block's own
        sends go at once. Then what waited is sent, in order (what is sent meanwhile still
        queues behind it). A gate held already (by this task or another) is shared."""
        eio_sid = self.eio_sid_from_sid(sid, namespace)
        gates = self._gates()
        if eio_sid is None or eio_sid in gates:
            yield
            return
        gates[eio_sid] = []
        token = _holding.set(_holding.get() | {eio_sid})
        try:
            yield
        finally:
            _holding.reset(token)
            waiting = gates[eio_sid]
            try:
                while waiting:
                    await self.server._send_eio_packet(eio_sid, waiting.pop(0))
            finally:
                del gates[eio_sid]
