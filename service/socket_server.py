"""The Socket.IO server class, hardened at the one place python-socketio trusts its clients.

python-socketio dispatches a client's EVENT packet by the name the client wrote. A client
that emits ``"connect"`` or ``"disconnect"`` would re-run the connection handlers with
arguments of its choosing, and a packet with no name at all raises inside the library.
:class:`SignalingServer` drops those packets at the door, answering an ack if one was asked.

It also answers a polling client's pending long-poll as soon as that client says goodbye.
Engine.IO would hold the request open for ``ping_interval + ping_timeout`` (45 s), keeping a
handler busy on the server and stalling clients that wait for it, like python-socketio's.
"""

from __future__ import annotations

from typing import Any, Final

import socketio
from engineio import packet as eio_packet
from socketio import packet

from service.errors import UnknownEvent

RESERVED: Final = frozenset({"connect", "disconnect", "connect_error"})


class SignalingServer(socketio.AsyncServer):  # type: ignore[misc]
    """``socketio.AsyncServer`` that refuses reserved and nameless client events."""

    async def _handle_event(self, eio_sid: str, namespace: str | None, id: int | None,
                            data: Any) -> None:
        name = data[0] if isinstance(data, list) and data else None
        if isinstance(name, str) and name not in RESERVED:
            await super()._handle_event(eio_sid, namespace, id, data)
            return
        namespace = namespace or "/"
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if id is not None and self.manager.is_connected(sid, namespace):
            error = UnknownEvent()
            await self._send_packet(eio_sid, self.packet_class(
                packet.ACK, namespace=namespace, id=id,
                data=[{"ok": False, "error": error.code}]))

    async def _handle_eio_disconnect(self, eio_sid: str, reason: str) -> None:
        await super()._handle_eio_disconnect(eio_sid, reason)
        if reason == self.reason.CLIENT_DISCONNECT:
            sock = self.eio.sockets.get(eio_sid)
            if sock is not None and not sock.upgraded:
                sock.queue.put_nowait(eio_packet.Packet(eio_packet.CLOSE))
