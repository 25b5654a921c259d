"""The Socket.IO handlers. Each one is thin: parse → check → stamp ``from`` → emit → ack.

Users are addressed through rooms named ``user:<id>``, never a bare id, so a client cannot
reach a socket through the per-socket rooms python-socketio names after each sid.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import socketio

from service.auth import Identity, TokenVerifier, extract_token
from service.errors import AuthError, Forbidden, RequestError, UnknownEvent
from service.logs import log_event
from service.protocol import JOIN, LEAVE, RELAY_EVENTS, parse_relay, parse_room_request

NAMESPACE: Final = "/"
Ack = dict[str, Any]
Handler = Callable[..., Awaitable[Ack]]


def user_room(user_id: str) -> str:
    """The room every socket of ``user_id`` joins with ``JoinSocket``."""
    return f"user:{user_id}"


@dataclass(frozen=True, slots=True)
class Session:
    """What the server remembers about one connected socket."""

    identity: Identity
    transport: str
    ip: str
    connected_at: float


class Signaling:
    """Binds the protocol to a ``socketio.AsyncServer``."""

    def __init__(
        self, sio: socketio.AsyncServer, verifier: TokenVerifier, logger: logging.Logger
    ) -> None:
        self.sio = sio
        self.verifier = verifier
        self.log = logger
        self.sessions: dict[str, Session] = {}

    def register(self) -> None:
        """Install every handler on the server."""
        self.sio.on("connect", self.connect)
        self.sio.on("disconnect", self.disconnect)
        self.sio.on(JOIN, self._answering(JOIN, self.join))
        self.sio.on(LEAVE, self._answering(LEAVE, self.leave))
        for event in RELAY_EVENTS:
            self.sio.on(event, self._answering(event, self._relay_handler(event)))
        self.sio.on("*", self.unknown)

    async def connect(self, sid: str, environ: dict[str, Any], auth: object = None) -> None:
        """Admit the socket if it presents a valid token; otherwise refuse with a reason."""
        request = environ.get("sanic.request")
        ip = (request.remote_addr or request.ip) if request is not None else "unknown"
        transport = self._transport(sid)
        try:
            token = extract_token(auth, environ.get("HTTP_AUTHORIZATION"))
            identity = self.verifier.verify(token)
        except AuthError as exc:
            log_event(self.log, "connect_refused", sid=sid, reason=exc.reason,
                      transport=transport, ip=ip)
            raise socketio.exceptions.ConnectionRefusedError(
                exc.code, {"reason": exc.reason}
            ) from None
        except Exception:
            # python-socketio would leave the client waiting for an answer that never comes
            self.log.exception("connect_failed", extra={"fields": {"sid": sid}})
            raise socketio.exceptions.ConnectionRefusedError(
                "internal_error", {"reason": "internal_error"}
            ) from None
        self.sessions[sid] = Session(identity, transport, ip, time.monotonic())
        log_event(self.log, "connect", sid=sid, user=identity.user_id, transport=transport,
                  ip=ip)

    async def disconnect(self, sid: str, reason: str | None = None) -> None:
        """Forget the socket; python-socketio removes it from its rooms."""
        session = self.sessions.pop(sid, None)
        if session is None:
            return
        log_event(
            self.log, "disconnect", sid=sid, user=session.identity.user_id,
            transport=self._transport(sid, session.transport), reason=str(reason),
            duration_s=round(time.monotonic() - session.connected_at, 3),
        )

    async def join(self, sid: str, *args: object) -> Ack:
        """``JoinSocket(userID)``: enter the caller's own room; any other id is refused."""
        user_id = self._own_id(sid, parse_room_request(args))
        await self.sio.enter_room(sid, user_room(user_id))
        log_event(self.log, "join", logging.DEBUG, sid=sid, user=user_id)
        return {"ok": True}

    async def leave(self, sid: str, *args: object) -> Ack:
        """``LeaveSocket(userID)``: leave the caller's own room (a no-op if not in it)."""
        user_id = self._own_id(sid, parse_room_request(args))
        await self.sio.leave_room(sid, user_room(user_id))
        log_event(self.log, "leave", logging.DEBUG, sid=sid, user=user_id)
        return {"ok": True}

    async def relay(self, event: str, sid: str, *args: object) -> Ack:
        """Deliver a validated offer/answer/candidate/hangup to room ``to``, from the caller."""
        relay = parse_relay(event, args)
        sender = self._session(sid).identity.user_id
        room = user_room(relay.to)
        delivered = self._has_other_members(room, sid)
        if delivered:
            await self.sio.emit(event, relay.stamped(sender), room=room, skip_sid=sid)
        return {"ok": True, "delivered": delivered}

    async def unknown(self, event: str, sid: str, *args: object) -> Ack:
        """Any event outside the protocol."""
        log_event(self.log, "unknown_event", logging.DEBUG, sid=sid, name=event[:64])
        error = UnknownEvent()
        return {"ok": False, "error": error.code}

    def _relay_handler(self, event: str) -> Handler:
        async def handler(sid: str, *args: object) -> Ack:
            return await self.relay(event, sid, *args)

        return handler

    def _answering(self, event: str, handler: Handler) -> Handler:
        """Turn refusals into ``{"ok": false, "error": code}`` acks, and never let a bug
        escape into python-socketio without an answer to the client."""

        async def answered(sid: str, *args: object) -> Ack:
            try:
                return await handler(sid, *args)
            except RequestError as exc:
                return {"ok": False, "error": exc.code, "detail": str(exc)}
            except Exception:
                self.log.exception("handler_failed", extra={"fields": {"sid": sid,
                                                                       "name": event}})
                return {"ok": False, "error": "internal_error"}

        return answered

    def _session(self, sid: str) -> Session:
        session = self.sessions.get(sid)
        if session is None:  # only reachable if a handler runs after disconnect
            raise Forbidden("not connected")
        return session

    def _own_id(self, sid: str, user_id: str) -> str:
        if user_id != self._session(sid).identity.user_id:
            raise Forbidden("you may only join or leave your own room")
        return user_id

    def _has_other_members(self, room: str, sid: str) -> bool:
        return any(member != sid for member, _ in self.sio.manager.get_participants(NAMESPACE,
                                                                                     room))

    def _transport(self, sid: str, default: str = "unknown") -> str:
        try:
            return str(self.sio.transport(sid))
        except (KeyError, TypeError):
            return default
