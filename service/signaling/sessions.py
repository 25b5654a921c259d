"""The session registry and its life cycle: who is connected on this node, and how a
connection ends. A connection lives as long as its token: ``token_expiring`` is emitted shortly
before ``exp``, and at ``exp`` (plus leeway), or when the token's ``jti`` is revoked, or when the
node shuts down, the server emits ``server_disconnect`` with the reason and closes it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Final

import socketio

from service.auth import ExpiryTimers, Identity, TokenVerifier
from service.delivery import Presence
from service.errors import ShuttingDown, TokenExpired
from service.policy import ConnectionBudget
from service.telemetry import forever, log_event

NAMESPACE: Final = "/"
#: how often the jti deny-list file is checked for newly revoked, connected tokens
REVOCATION_SWEEP_SECONDS: Final = 2.0
#: how long a closing client has to take its last messages
CLOSE_TIMEOUT_SECONDS: Final = 5.0


@dataclass(slots=True)
class Session:
    """What the server remembers about one connected socket."""

    identity: Identity
    transport: str
    ip: str
    connected_at: float
    budget: ConnectionBudget
    #: why the server closed it, when it did
    closing: str | None = None
    #: the event being handled was charged to the budget before it was decoded
    charged: bool = False


class Sessions:
    """The connected sockets of this node, by Socket.IO sid, and everything that ends them."""

    def __init__(self, sio: socketio.AsyncServer, verifier: TokenVerifier,
                 presence: Presence, logger: logging.Logger, *, expiry_warning: int) -> None:
        self.sio = sio
        self.verifier = verifier
        self.presence = presence
        self.log = logger
        self.shutting_down = False
        self._drained = asyncio.Event()
        self.by_sid: dict[str, Session] = {}
        self.timers = ExpiryTimers(warning=expiry_warning, leeway=verifier.leeway,
                                   warn=self._warn_expiring, expire=self._expire)
        self._background: list[asyncio.Task[None]] = []
        #: the deny-list version the last revocation sweep saw
        self._swept = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, sid: str, session: Session) -> None:
        """A socket is connected: remember it and arm its token timers."""
        self.by_sid[sid] = session
        self.timers.arm(sid, session.identity)

    async def remove(self, sid: str) -> Session | None:
        """A socket is gone: forget it, uncount it; the session, if there was one."""
        session = self.by_sid.pop(sid, None)
        self.timers.disarm(sid)
        if session is None:
            return None
        await self.presence.remove_connection(session.identity.user_id, sid)
        if self.shutting_down and not self.by_sid:
            self._drained.set()
        return session

    async def start(self) -> None:
        """Background work while serving: presence, JWKS, the deny-list, and the sweep of
        Engine.IO sessions whose clients stopped answering pings."""
        if not self.sio.manager_initialized:
            # subscribe to the cluster now, not when the first client happens to connect
            self.sio.manager_initialized = True
            self.sio.manager.initialize()
        await self.presence.start()
        self._background = [asyncio.ensure_future(forever(self.verifier.keep_fetched,
                                                          name="jwks_fetch", log=self.log)),
                            asyncio.ensure_future(forever(self.sio.eio.sweep,
                                                          name="session_sweep",
                                                          log=self.log))]
        if self.verifier.denylist is not None:
            self._swept = self.verifier.denylist.version
            self._background.append(asyncio.ensure_future(
                forever(self._sweep_revoked, name="revocation_sweep", log=self.log)))

    async def stop(self) -> None:
        self.timers.close()
        tasks = [*self._background, *self._tasks]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.presence.stop()

    async def shutdown(self, within: float) -> None:
        """Leave gracefully: take no new sessions or events, and end every client's
        transport after its queued messages, and wait up to ``within`` seconds for them to
        go. A transport that ends is what socket.io clients reconnect after, by themselves
        (to another node, through the load balancer); a ``server_disconnect`` would tell
        them to stay away. Their calls hold what is sent meanwhile."""
        self.shutting_down = True
        log_event(self.log, "shutting_down", connections=len(self.by_sid))
        for sid in list(self.by_sid):
            session = self.by_sid[sid]
            if session.closing is None:
                session.closing = ShuttingDown.code
                self.spawn(self._leave(sid))
        if self.by_sid:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), within)
        log_event(self.log, "shut_down", left_behind=len(self.by_sid))

    async def ready(self) -> tuple[bool, str]:
        """Whether this node should get traffic, and why not."""
        if self.shutting_down:
            return False, "shutting_down"
        if not await self.presence.healthy():
            return False, "redis_unreachable"
        if not self.verifier.keys_ready:
            return False, "jwks_unavailable"  # its tokens would be refused (unavailable)
        return True, "ready"
    def begin_close(self, sid: str, reason: str) -> None:
        """From now on the connection's events are refused; :meth:`close` runs in the
        background."""
        session = self.by_sid.get(sid)
        if session is None or session.closing is not None:
            return
        session.closing = reason
        self.spawn(self._close(sid, reason))

    async def close(self, sid: str, reason: str) -> None:
        """Tell the client why (``server_disconnect``), then disconnect it; a client that
        does not take its last messages within a few seconds is cut off."""
        session = self.by_sid.get(sid)
        if session is None or session.closing is not None:
            return
        session.closing = reason
        await self._close(sid, reason)

    async def _close(self, sid: str, reason: str) -> None:
        self.timers.disarm(sid)
        eio_sid = self.sio.manager.eio_sid_from_sid(sid, NAMESPACE)
        # the socket is on this node: no need to go through the cluster (ignore_queue)
        await self.sio.emit("server_disconnect", {"reason": reason}, to=sid, ignore_queue=True)
        try:
            await asyncio.wait_for(self.sio.disconnect(sid, ignore_queue=True),
                                   CLOSE_TIMEOUT_SECONDS)
        except TimeoutError:
            if eio_sid is not None:
                await self.sio.drop(eio_sid, reason)

    async def _leave(self, sid: str) -> None:
        """End ``sid``'s Engine.IO session, not its Socket.IO connection: an Engine.IO CLOSE
        after what is queued, then the end of the transport."""
        self.timers.disarm(sid)
        eio_sid = self.sio.manager.eio_sid_from_sid(sid, NAMESPACE)
        if eio_sid is None:
            return
        try:
            await asyncio.wait_for(self.sio.eio.disconnect(eio_sid), CLOSE_TIMEOUT_SECONDS)
        except TimeoutError:
            await self.sio.drop(eio_sid, ShuttingDown.code)

    def spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _warn_expiring(self, sid: str, identity: Identity) -> None:
        session = self.by_sid.get(sid)
        if session is None or session.identity is not identity:
            return
        remaining = max(0, round(identity.expires_at - time.time()))
        await self.sio.emit("token_expiring", {"exp": identity.expires_at,
                                               "expires_in": remaining}, to=sid,
                            ignore_queue=True)

    async def _expire(self, sid: str, identity: Identity) -> None:
        session = self.by_sid.get(sid)
        if session is not None and session.identity is identity:
            await self.close(sid, TokenExpired.reason)

    async def _sweep_revoked(self) -> float:
        """Close connections whose token was revoked, whenever the deny-list has changed
        since the last complete sweep (whoever re-read it); one step of a supervised loop."""
        denylist = self.verifier.denylist
        assert denylist is not None
        denylist.refresh()
        version = denylist.version
        if version != self._swept:
            for sid, session in list(self.by_sid.items()):
                if self.verifier.is_revoked(session.identity):
                    await self.close(sid, "token_revoked")
            self._swept = version
        return REVOCATION_SWEEP_SECONDS

