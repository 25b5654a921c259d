"""Presence and delivery in one process: who is connected and joined (in memory), and relays
through python-socketio's in-memory rooms. With one process this is the whole truth."""

from __future__ import annotations

import time
from contextlib import AbstractAsyncContextManager
from typing import Any

from service.delivery.interfaces import Device, device_of


class LocalPresence:
    """One process's view, which is the whole truth when there is one process."""

    def __init__(self) -> None:
        self._connections: dict[str, set[str]] = {}
        self._joined: dict[str, set[str]] = {}
        self._about: dict[str, str] = {}
        #: user -> (revoked through this second, until this moment)
        self._revoked: dict[str, tuple[int, float]] = {}

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def add_connection(self, user: str, sid: str, cap: int, about: str = "") -> bool:
        sids = self._connections.setdefault(user, set())
        if 0 < cap <= len(sids):
            if not sids:
                del self._connections[user]
            return False
        sids.add(sid)
        self._about[sid] = about
        return True

    async def remove_connection(self, user: str, sid: str) -> None:
        _discard(self._connections, user, sid)
        _discard(self._joined, user, sid)
        self._about.pop(sid, None)

    async def devices(self, user: str) -> list[Device]:
        joined = self._joined.get(user, set())
        return [device_of(sid, self._about.get(sid, ""), sid in joined)
                for sid in sorted(self._connections.get(user, ()))]

    async def revoke(self, user: str, through: int, ttl: float) -> None:
        now = time.monotonic()
        for other, (_, until) in list(self._revoked.items()):
            if until <= now:  # (revocations are rare: forgotten as they are read)
                del self._revoked[other]
        previous = self._revoked.get(user, (0, 0.0))[0]
        self._revoked[user] = (max(previous, through), now + ttl)

    async def revoked_through(self, user: str) -> int | None:
        entry = self._revoked.get(user)
        if entry is None or entry[1] <= time.monotonic():
            return None
        return entry[0]

    async def join(self, user: str, sid: str) -> None:
        self._joined.setdefault(user, set()).add(sid)

    async def leave(self, user: str, sid: str) -> None:
        _discard(self._joined, user, sid)

    def connected(self, user: str, sid: str) -> bool:
        return sid in self._connections.get(user, ())

    async def others_present(self, user: str, sid: str) -> bool:
        return any(other != sid for other in self._joined.get(user, ()))

    async def healthy(self) -> bool:
        return True

    async def wait_reachable(self, within: float) -> bool:
        return True

    def connections_of(self, user: str) -> int:
        return len(self._connections.get(user, ()))


def _discard(index: dict[str, set[str]], user: str, sid: str) -> None:
    sids = index.get(user)
    if sids is not None:
        sids.discard(sid)
        if not sids:
            del index[user]


class LocalDelivery:
    """Relays within one process: python-socketio's in-memory rooms."""

    def __init__(self, sio: Any, presence: LocalPresence) -> None:
        self._sio = sio
        self._presence = presence

    async def relay(self, event: str, message: dict[str, Any], to: str, room: str,
                    sid: str) -> bool:
        """Emit ``message`` to ``room`` when someone other than ``sid`` joined it there."""
        if not await self._presence.others_present(to, sid):
            return False
        await self._sio.emit(event, message, room=room, skip_sid=sid)
        return True

    async def to_device(self, event: str, message: dict[str, Any], user: str,
                        device: str) -> bool:
        # a socket whose session is closing counts as gone: what is sent to it is held
        if not self._presence.connected(user, device) or not self._sio.session_open(device):
            return False
        await self._sio.emit_to(device, event, message)
        return True

    async def close(self, device: str) -> None:
        await self._sio.disconnect(device)

    def gated(self, device: str) -> AbstractAsyncContextManager[None]:
        gate: AbstractAsyncContextManager[None] = self._sio.manager.gated(device)
        return gate

    def device(self, sid: str) -> str:
        return sid

    def is_open(self, sid: str) -> bool:
        return bool(self._sio.session_open(sid))

    def sid_of(self, device: str) -> str:
        return device
