""":class:`ClusterDelivery`: relays across the cluster."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any

import socketio

from service.cluster.presence import RedisPresence
from service.cluster.redis_manager import SignedRedisManager


class ClusterDelivery:
    """Presence check and publish in one Redis round trip, then delivery to this node's own
    recipients (Redis does not echo them back to it)."""

    def __init__(self, sio: socketio.AsyncServer, manager: SignedRedisManager,
                 presence: RedisPresence) -> None:
        self._sio = sio
        self._manager = manager
        self._presence = presence

    async def relay(self, event: str, message: dict[str, Any], to: str, room: str,
                    sid: str) -> bool:
        envelope = self._manager.emit_envelope(event, message, room, sid)
        delivered = await self._presence.publish_if_present(to, sid, self._manager.channel,
                                                            envelope)
        if delivered:
            await self._sio.emit(event, message, room=room, skip_sid=sid, ignore_queue=True)
        return delivered

    async def to_device(self, event: str, message: dict[str, Any], user: str,
                        device: str) -> bool:
        sid = self._presence.local_sid(device)
        if sid is not None and self._sio.session_open(sid):
            await self._sio.emit_to(sid, event, message)  # (this node's own: not via Redis)
            return True
        if device.rpartition("|")[0] == self._presence.node:
            return False  # this node's socket, and it is gone (or closing)
        # the device's node delivers it, or holds it if the socket is closing there
        envelope = self._manager.emit_envelope(event, message, self.sid_of(device), "",
                                               device=(user, device))
        return await self._presence.publish_to_member(user, device, self._manager.channel,
                                                      envelope)

    async def close(self, device: str) -> None:
        # python-socketio's pub/sub manager disconnects a sid of another node by publishing
        await self._sio.disconnect(self.sid_of(device))

    def gated(self, device: str) -> AbstractAsyncContextManager[None]:
        sid = self._presence.local_sid(device)
        if sid is None:
            return nullcontext()
        # (what other nodes send to it comes through this node's manager too)
        return self._manager.gated(sid)

    def device(self, sid: str) -> str:
        return self._presence.address(sid)

    def is_open(self, sid: str) -> bool:
        return bool(self._sio.session_open(sid))

    def sid_of(self, device: str) -> str:
        return device.rpartition("|")[2]
