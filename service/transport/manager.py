""":class:`InlineManager`: python-socketio's client manager, sending to each recipient in turn.

``AsyncManager.emit`` makes a task per recipient and waits for them all; a relay, which goes to
the few connections of one user, paid for a task, its scheduling and an ``asyncio.wait`` per
message. A send only queues the packet (or writes it to the recipient's websocket; see
:mod:`service.transport.engine`) and never waits for the peer, so here each recipient's packet
is sent inline, in order. Emits that ask for a callback (a distinct ack id per recipient) keep
the library's path.
"""

from __future__ import annotations

from typing import Any

import socketio
from engineio import packet as eio_packet
from socketio import packet


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
        for eio_sid in targets:
            for pkt in packets:
                await send(eio_sid, pkt)
