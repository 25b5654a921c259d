"""What the app's backend may do through the server API (:mod:`service.http.api`), for the
whole cluster: who is online (devices, calls), disconnecting a user or one device (and
revoking the user's tokens), an app event to a user's devices, and a user's calls (ending
one). Any node answers: presence, delivery and the call store are cluster-wide."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from service.calls import ACTIVE, Call
from service.delivery import Device, PresenceUnavailable
from service.errors import Unavailable
from service.telemetry import log_event

if TYPE_CHECKING:
    from service.signaling.handlers import Signaling

#: the event a user's devices get from the backend's ``notify``
NOTIFY: Final = "notify"
#: the event a socket gets just before the server closes it, with the reason
SERVER_DISCONNECT: Final = "server_disconnect"
#: users looked up at once in a presence query of many
LOOKUPS_AT_ONCE: Final = 32


def device_json(device: Device) -> dict[str, Any]:
    return {"device": device.device, "transport": device.transport,
            "connectedAt": round(device.connected_at, 3), "joined": device.joined}


def call_json(call: Call) -> dict[str, Any]:
    return {"callId": call.id, "caller": call.caller.user, "callee": call.callee.user,
            "state": call.state, "openedAt": round(call.opened_at, 3)}


class Control:
    """The operations of the server API (see the module docstring)."""

    def __init__(self, signaling: Signaling, *, max_token_lifetime: int,
                 logger: logging.Logger) -> None:
        self.signaling = signaling
        self.max_token_lifetime = max_token_lifetime
        self.log = logger

    async def presence(self, user: str) -> dict[str, Any]:
        """Whether ``user`` is online, its devices, and whether it is in a call (answered)
        or ringing. Raises :class:`Unavailable`."""
        try:
            devices = await self.signaling.presence.devices(user)
        except PresenceUnavailable:
            raise Unavailable("presence cannot be reached") from None
        calls = await self.signaling.calls.open_calls(user)
        return {"user": user, "online": bool(devices),
                "devices": [device_json(d) for d in devices],
                "inCall": any(c.state == ACTIVE for c in calls),
                "ringing": any(c.state != ACTIVE for c in calls)}

    async def presence_of(self, users: Sequence[str]) -> dict[str, dict[str, Any]]:
        """:meth:`presence` of each of ``users`` (a few at a time)."""
        slots = asyncio.Semaphore(LOOKUPS_AT_ONCE)

        async def one(user: str) -> dict[str, Any]:
            async with slots:
                return await self.presence(user)

        found = await asyncio.gather(*(one(user) for user in users))
        return {entry["user"]: entry for entry in found}

    async def disconnect(self, user: str, reason: str, *, device: str | None = None,
                         revoke: bool = False) -> dict[str, Any]:
        """Close ``user``'s sockets (or the one at ``device``), each told ``reason`` in a
        ``server_disconnect`` first; with ``revoke``, the user's tokens issued until now
        are refused from now on, on every node (for as long as a token may live). Raises
        :class:`Unavailable`."""
        presence = self.signaling.presence
        try:
            if revoke:
                await presence.revoke(user, int(time.time()), self.max_token_lifetime)
            devices = await presence.devices(user)
        except PresenceUnavailable:
            raise Unavailable("presence cannot be reached") from None
        chosen = [d for d in devices if device is None or d.device == device]
        closed = 0
        for found in chosen:
            closed += await self._close(user, found.device, reason)
        log_event(self.log, "api_disconnect", user=user, devices=closed, reason=reason,
                  revoked=revoke)
        return {"disconnected": closed, "revoked": revoke}

    async def _close(self, user: str, device: str, reason: str) -> bool:
        """Tell the socket at ``device`` why, and close it; whether it was still there."""
        signaling = self.signaling
        sid = signaling.delivery.sid_of(device)
        if signaling.delivery.device(sid) == device:  # this node's: the usual way out
            if sid not in signaling.sessions:
                return False
            await signaling.life.close(sid, reason)
            return True
        try:
            told = await signaling.delivery.to_device(SERVER_DISCONNECT, {"reason": reason},
                                                      user, device)
            if told:
                await signaling.delivery.close(device)
            return told
        except Exception:  # whatever the cluster says: the next one is closed
            log_event(self.log, "api_disconnect_failed", logging.WARNING, user=user)
            return False

    async def notify(self, user: str, payload: Any) -> int:
        """Send ``notify {payload}`` to each of ``user``'s connected sockets; how many got
        it. Raises :class:`Unavailable`."""
        try:
            devices = await self.signaling.presence.devices(user)
        except PresenceUnavailable:
            raise Unavailable("presence cannot be reached") from None
        sent = 0
        for device in devices:
            try:
                sent += await self.signaling.delivery.to_device(
                    NOTIFY, {"payload": payload}, user, device.device)
            except Exception:  # a device the cluster cannot reach: not counted
                continue
        return sent

    async def calls(self, user: str) -> list[dict[str, Any]]:
        """``user``'s open calls. Raises :class:`Unavailable`."""
        return [call_json(c) for c in await self.signaling.calls.open_calls(user)]

    async def end_call(self, user: str, call_id: str) -> bool:
        """End ``user``'s call ``call_id`` (both parties get ``hangup {reason:
        "ended_by_server"}``); whether it was open. Raises :class:`Unavailable`."""
        return await self.signaling.calls.end_by_server(user, call_id)
