"""The Socket.IO handlers. Each one is thin: parse → check → stamp ``from`` → emit → ack.

Users are addressed through rooms named ``user:<id>``, never a bare id, so a client cannot
reach a socket through the per-socket rooms python-socketio names after each sid.
``RefreshToken`` swaps in a new token for the same user. Who is connected, and how a
connection ends (expiry, revocation, shutdown), is :mod:`service.signaling.sessions`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import socketio

from service.auth import ExpiryTimers, IceServers, Identity, TokenVerifier, extract_token
from service.calls import Calls
from service.delivery import Delivery, Presence, PresenceUnavailable, describe, user_room
from service.errors import (
    AuthError,
    ConnectionRefused,
    Forbidden,
    RateLimited,
    RequestError,
    ServiceUnavailable,
    SessionClosed,
    ShuttingDown,
    Throttled,
    TokenExpired,
    TokenRevoked,
    TooManyConnections,
    Unavailable,
    UnknownEvent,
)
from service.policy import OTHER, Guard, address_key, event_class
from service.protocol import (
    CLAIM,
    ICE_SERVERS,
    JOIN,
    LEAVE,
    REFRESH,
    RELAY_EVENTS,
    parse_claim,
    parse_ice_request,
    parse_refresh,
    parse_relay,
    parse_room_request,
)
from service.signaling.sessions import Session, Sessions
from service.telemetry import LIBRARY_REASONS, Metrics, bounded, forever, log_event

__all__ = ["Signaling", "user_room"]

#: how long a connect or JoinSocket waits for this node to be reachable through the cluster
REACHABLE_WAIT_SECONDS: Final = 2.0
#: timers hold no request context (a cancelled timer keeps its context until its deadline)
_EMPTY: Final = contextvars.Context()
#: how often the connection gauge is brought up to date
CONNECTION_COUNT_SECONDS: Final = 1.0
#: what a connection's environ keeps once connected: its client's address
CLIENT_IP: Final = "signal.client_ip"
#: ... and recounted at least every this many of those steps (transports change on upgrade)
RECOUNT_STEPS: Final = 10
#: how long a stopping single node keeps sending the lifecycle events it holds in memory
LIFECYCLE_FLUSH_SECONDS: Final = 2.0
TRANSPORTS: Final = ("websocket", "polling")
#: what a ``disconnects`` label may be: the service's reasons and python-socketio's
DISCONNECT_REASONS: Final = LIBRARY_REASONS | {
    "token_expired", "token_revoked", "rate_limited", "shutting_down", "send_timeout",
    "slow_consumer", "protocol_error", "auth_timeout", "too_many_packets"}
#: what an ``events`` outcome may be: ok, or an error code
OUTCOMES: Final = frozenset({
    "ok", "invalid_payload", "forbidden", "unknown_event", "rate_limited", "unavailable",
    "shutting_down", "not_in_call", "busy", "glare", "internal_error", "token_invalid",
    "token_expired", "token_not_yet_valid", "token_revoked", "token_missing"})
#: where a session's packet budget and address live in its Engine.IO ``session`` dict
PACKETS: Final = "signaling.packets"
Ack = dict[str, Any]
Handler = Callable[..., Awaitable[Ack]]


class Signaling:
    """Binds the protocol to a ``socketio.AsyncServer``."""

    def __init__(self, sio: socketio.AsyncServer, verifier: TokenVerifier, guard: Guard,
                 presence: Presence, delivery: Delivery, calls: Calls,
                 logger: logging.Logger, *, expiry_warning: int,
                 ice: IceServers | None = None, metrics: Metrics | None = None) -> None:
        self.sio = sio
        self.delivery = delivery
        #: call state: what a relay may do, where it goes, what is held
        self.calls = calls
        #: STUN/TURN servers handed to clients, TURN credentials minted per user
        self.ice = ice or IceServers()
        #: per connection given TURN credentials: when fresh ones are pushed
        self._ice_timers: dict[str, asyncio.TimerHandle] = {}
        self.metrics = metrics or Metrics()
        self.metrics.on_scrape = self.count_connections
        self._sweep: asyncio.Task[None] | None = None
        self._counting: asyncio.Task[None] | None = None
        #: connections that came or went, and as of the last count (see _count_connections)
        self._changes = self._counted = self._count_steps = 0
        self.verifier = verifier
        self.guard = guard
        self.presence = presence
        self.log = logger
        #: the registry and life cycle of this node's connections
        self.life = Sessions(sio, verifier, presence, logger, expiry_warning=expiry_warning)
        self._handlers: frozenset[str] = frozenset()

    @property
    def sessions(self) -> dict[str, Session]:
        return self.life.by_sid

    @property
    def timers(self) -> ExpiryTimers:
        return self.life.timers

    @property
    def shutting_down(self) -> bool:
        return self.life.shutting_down

    async def start(self) -> None:
        """Background work while serving: presence, JWKS, the deny-list, and the sweep that
        ends calls past their ring timeout or grace."""
        await self.life.start()
        self._sweep = asyncio.ensure_future(forever(self.calls.sweep, name="call_sweep",
                                                    log=self.log))
        self._counting = asyncio.ensure_future(forever(self._count_connections,
                                                       name="connection_count", log=self.log))
        if self.calls.lifecycle is not None:
            await self.calls.lifecycle.start()

    async def stop(self) -> None:
        for task in (self._sweep, self._counting):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.calls.webhook is not None:
            await self.calls.webhook.stop()
        if self.calls.lifecycle is not None:
            # (in memory: what is queued has a moment to go; on Redis it waits for the others)
            await self.calls.lifecycle.stop(flush=LIFECYCLE_FLUSH_SECONDS)
        await self.life.stop()

    async def shutdown(self, within: float) -> None:
        """See :meth:`Sessions.shutdown`."""
        await self.life.shutdown(within)

    async def ready(self) -> tuple[bool, str]:
        """Whether this node should get traffic, and why not."""
        return await self.life.ready()

    def begin_close(self, sid: str, reason: str) -> None:
        self.life.begin_close(sid, reason)

    async def _count_connections(self) -> float:
        """Bring the connection gauge up to date and flush the per-event counts into the
        metrics (for the other workers' scrapes; this worker's scrapes do both first); one
        step of a supervised loop. The count goes over every session: it is made again only
        after connections came or went (or an upgrade may have happened: every tenth step),
        not every second for 10,000 idle ones."""
        self._count_steps += 1
        if self._changes != self._counted or self._count_steps % RECOUNT_STEPS == 0:
            self._counted = self._changes
            self.count_connections()
        self.metrics.flush()
        return CONNECTION_COUNT_SECONDS

    def count_connections(self) -> None:
        """Set this node's connection gauge, by each connection's transport now (a polling
        connection may have upgraded)."""
        counts = dict.fromkeys(TRANSPORTS, 0)
        sessions = self.sessions  # (no copy: 10,000 tuples made at once set off the GC)
        for sid in sessions:
            transport = self._transport(sid, sessions[sid].transport)
            if transport in counts:
                counts[transport] += 1
        for transport, count in counts.items():
            self.metrics.connections.labels(transport).set(count)

    def register(self) -> None:
        """Install every handler on the server."""
        self._handlers = frozenset({JOIN, LEAVE, REFRESH, ICE_SERVERS, CLAIM, *RELAY_EVENTS})
        self.sio.on("connect", self.connect)
        self.sio.on("disconnect", self.disconnect)
        self.sio.on(JOIN, self._answering(JOIN, self.join))
        self.sio.on(LEAVE, self._answering(LEAVE, self.leave))
        self.sio.on(REFRESH, self._answering(REFRESH, self.refresh))
        self.sio.on(ICE_SERVERS, self._answering(ICE_SERVERS, self.ice_servers))
        self.sio.on(CLAIM, self._answering(CLAIM, self.claim))
        for event in RELAY_EVENTS:
            self.sio.on(event, self._answering(event, self._relay_handler(event)))
        unknown = self._answering(OTHER, self.unknown)

        async def catch_all(event: str, sid: str, *args: object) -> Ack:
            return await unknown(sid, event, *args)

        self.sio.on("*", catch_all)
        self.sio.admit = self.admit_session
        self.sio.precheck = self.precheck
        self.sio.eio.allow_packets = self.allow_packets

    def client_ip(self, environ: dict[str, Any]) -> str:
        """The client's address: the TCP peer (python-socketio's Sanic driver reports
        127.0.0.1 for everyone, so it is read off the request), or the forwarded address when
        the peer is a trusted proxy."""
        known = environ.get(CLIENT_IP)
        if known is not None:
            return str(known)
        request = environ.get("sanic.request")
        peer = str(request.ip) if request is not None else "unknown"
        return self.guard.client_ip(peer, environ.get("HTTP_X_FORWARDED_FOR"))

    def admit_session(self, environ: dict[str, Any]) -> str | None:
        """Engine.IO asks before opening a session: refuse an address over its limits."""
        ip = self.client_ip(environ)
        if self.shutting_down:
            return ShuttingDown.code
        if self.guard.admit_session(ip):
            return None
        log_event(self.log, "session_refused", logging.WARNING, reason=Throttled.reason, ip=ip)
        self.metrics.rate_limited.labels("connect").inc()
        self.metrics.connects.labels(Throttled.reason).inc()
        return Throttled.reason

    def precheck(self, sid: str, event: str, size: int) -> Ack | None:
        """Before an event's arguments are decoded (``size``: its raw length): refuse it when
        the connection is on its way out, when it is not part of the protocol (after
        spending the "other" budget), or when it does not fit its budget, which a big message
        spends more of. None: go on and handle it (its budget already spent)."""
        session = self.sessions.get(sid)
        if session is None:
            return None
        kind = event_class(event) if event in self._handlers else OTHER
        refusal = self._spend(sid, session, kind, size)
        if refusal is not None:
            self._count_event(event if event in self._handlers else OTHER, refusal["error"])
            return refusal
        session.charged = True
        if event not in self._handlers:
            log_event(self.log, "unknown_event", logging.DEBUG, sid=sid, name=event[:64])
            self._count_event(OTHER, UnknownEvent.code)
            return {"ok": False, "error": UnknownEvent.code}
        return None

    def _spend(self, sid: str, session: Session, kind: str, size: int) -> Ack | None:
        """The refusal for an event of ``kind`` now, if any (spending its budget)."""
        if session.closing is not None:
            return {"ok": False, "error": session.closing}  # on its way out: no work
        if self.shutting_down:
            return {"ok": False, "error": ShuttingDown.code}
        if not self.guard.allow(session.budget, session.identity.user_id, kind, size):
            self.metrics.rate_limited.labels(kind).inc()
            if not self.guard.strike(session.budget):
                self.metrics.rate_limited.labels("strike_out").inc()
                self.begin_close(sid, RateLimited.code)
            error = RateLimited(f"too many {kind} events; slow down")
            return {"ok": False, "error": error.code, "detail": str(error)}
        return None

    def allow_packets(self, sock: Any, count: int) -> bool:
        """Engine.IO asks for each websocket frame and each polling POST: may this session
        (and its address) send ``count`` more packets of any kind now?"""
        state = sock.session.get(PACKETS)
        if state is None:
            ip = self.client_ip(self.sio.environ.get(sock.sid, {}))
            state = sock.session[PACKETS] = (self.guard.packet_bucket(), address_key(ip))
        bucket, key = state
        return self.guard.allow_packets(bucket, key, count)  # refusals: session_dropped

    async def connect(self, sid: str, environ: dict[str, Any], auth: object = None) -> None:
        """Admit the socket if it presents a valid token; otherwise refuse with a reason.
        The handshake's environ (python-socketio keeps it for the connection's life) is cut
        down to the client's address first: it held the handshake request, ~2 KB of every
        idle connection (what ``raw.request = null`` does for Node's socket.io)."""
        ip = self.client_ip(environ)
        token_header = environ.get("HTTP_AUTHORIZATION")
        environ.clear()
        environ[CLIENT_IP] = ip
        transport = self._transport(sid)
        try:
            if not self.guard.may_authenticate(ip):
                raise Throttled("too many failed authentications from this address")
            token = extract_token(auth, token_header)
            try:
                identity = await self.verifier.verify(token)
                await self.check_revoked(identity)
            except AuthError as exc:
                self.guard.authentication_failed(ip)
                self.metrics.auth_failures.labels(exc.reason).inc()
                raise
            if not self.guard.authenticated(ip, identity.user_id):
                raise Throttled("too many new connections of this user")
            if self.shutting_down:
                raise ServiceUnavailable("this node is shutting down")
            if not await self.presence.wait_reachable(REACHABLE_WAIT_SECONDS):
                # a node that just started, or lost Redis: calls to this socket would be lost
                raise ServiceUnavailable("this node is not connected to the cluster")
            try:
                admitted = await self.presence.add_connection(
                    identity.user_id, sid, self.guard.max_per_user,
                    describe(transport, time.time()))
            except PresenceUnavailable:
                raise ServiceUnavailable("presence store unreachable") from None
            except asyncio.CancelledError:
                # the connection went away while the store counted it: uncount it
                self.life.spawn(self.presence.remove_connection(identity.user_id, sid))
                raise
            if not admitted:
                raise TooManyConnections("user is at its connection limit")
            if not self.sio.session_open(sid):
                # closed while we verified (auth timeout, client gone): python-socketio
                # would still complete the connect, leaving a session nobody can end
                await self.presence.remove_connection(identity.user_id, sid)
                raise SessionClosed("the session ended while connecting")
        except ConnectionRefused as exc:
            log_event(self.log, "connect_refused", sid=sid, reason=exc.reason,
                      transport=transport, ip=ip)
            self.metrics.connects.labels(exc.reason).inc()
            if isinstance(exc, Throttled):
                self.metrics.rate_limited.labels("connect").inc()
            raise socketio.exceptions.ConnectionRefusedError(
                exc.code, {"reason": exc.reason}
            ) from None
        except Exception:
            # python-socketio would leave the client waiting for an answer that never comes
            self.log.exception("connect_failed", extra={"fields": {"sid": sid}})
            self.metrics.connects.labels("internal_error").inc()
            raise socketio.exceptions.ConnectionRefusedError(
                "internal_error", {"reason": "internal_error"}
            ) from None
        self.life.add(sid, Session(identity, transport, ip, time.monotonic(),
                                   self.guard.budget()))
        self._changes += 1
        self.metrics.connects.labels("ok").inc()
        log_event(self.log, "connect", sid=sid, user=identity.user_id, transport=transport,
                  ip=ip, exp=identity.expires_at)

    async def check_revoked(self, identity: Identity) -> None:
        """Refuse a token issued at or before its user's revocation (the server API's
        ``revoke``; a token without ``iat`` counts as issued before)."""
        try:
            through = await self.presence.revoked_through(identity.user_id)
        except PresenceUnavailable:
            raise ServiceUnavailable("presence store unreachable") from None
        if through is not None and (identity.issued_at is None
                                    or identity.issued_at <= through):
            raise TokenRevoked("the user's tokens issued before a revocation are refused")

    async def disconnect(self, sid: str, reason: str | None = None) -> None:
        """Forget the socket; python-socketio removes it from its rooms."""
        timer = self._ice_timers.pop(sid, None)
        if timer is not None:
            timer.cancel()
        known = self.sessions.get(sid)
        if known is not None:
            # before the session is forgotten: a node shutting down waits for that, and the
            # calls of its clients must hold their signals until they are back elsewhere
            try:
                await self.calls.gone(known.identity.user_id, sid)
            except Unavailable:
                log_event(self.log, "call_state_unavailable", logging.WARNING, sid=sid,
                          during="disconnect")
            except Exception:  # the session must still be forgotten below
                self.log.exception("call_state_failed", extra={"fields": {"sid": sid}})
        session = await self.life.remove(sid)
        if session is None:
            return
        self._changes += 1
        self.metrics.disconnects.labels(
            bounded(session.closing or str(reason), DISCONNECT_REASONS)).inc()
        log_event(
            self.log, "disconnect", sid=sid, user=session.identity.user_id,
            transport=self._transport(sid, session.transport),
            reason=session.closing or str(reason),
            duration_s=round(time.monotonic() - session.connected_at, 3),
        )

    async def join(self, sid: str, *args: object) -> Ack:
        """``JoinSocket(userID)``: enter the caller's own room; any other id is refused."""
        user_id = self._own_id(sid, parse_room_request(args))
        # the ack means "you can be called now": not before this node receives cluster
        # traffic and is counted online
        if not await self.presence.wait_reachable(REACHABLE_WAIT_SECONDS):
            raise Unavailable("this node is not connected to the cluster; retry")
        try:
            await self.presence.join(user_id, sid)
        except PresenceUnavailable:
            raise Unavailable("presence store unreachable; retry") from None
        await self.sio.enter_room(sid, user_room(user_id))
        # what was held for this user (its device was away, or it was offline while called)
        await self.calls.joined(user_id, sid)
        log_event(self.log, "join", logging.DEBUG, sid=sid, user=user_id)
        return {"ok": True}

    async def leave(self, sid: str, *args: object) -> Ack:
        """``LeaveSocket(userID)``: leave the caller's own room (a no-op if not in it)."""
        user_id = self._own_id(sid, parse_room_request(args))
        await self.sio.leave_room(sid, user_room(user_id))
        await self.presence.leave(user_id, sid)
        if self.calls.lifecycle is not None:  # (it may have been the last device joined)
            await self.calls.lifecycle.left(user_id)
        log_event(self.log, "leave", logging.DEBUG, sid=sid, user=user_id)
        return {"ok": True}

    async def relay(self, event: str, sid: str, *args: object) -> Ack:
        """Deliver a validated offer/answer/candidate/hangup within its call, from the
        caller (``from`` stamped by the server; see :mod:`service.calls.coordinator`)."""
        started = time.perf_counter()
        relay = parse_relay(event, args)
        sender = self._session(sid).identity.user_id
        ack = await self.calls.relay(event, sid, sender, relay)
        self.metrics.relay("delivered" if ack["delivered"] else "held" if ack.get("held")
                           else "not_delivered", time.perf_counter() - started)
        return ack

    async def refresh(self, sid: str, *args: object) -> Ack:
        """``RefreshToken(token)``: replace the connection's token with a newer one for the
        same user; the expiry timers follow the new ``exp``."""
        token = parse_refresh(args)
        session = self._session(sid)
        identity = await self.verifier.verify(token)
        if identity.user_id != session.identity.user_id:
            raise Forbidden("the new token names another user")
        await self.check_revoked(identity)
        session.identity = identity
        self.timers.arm(sid, identity)
        log_event(self.log, "token_refreshed", sid=sid, user=identity.user_id,
                  exp=identity.expires_at)
        ack: Ack = {"ok": True, "exp": identity.expires_at}
        if self.ice.expiry(identity.expires_at, time.time()) is not None:
            # the credentials the client has expire no later than its old token
            ack["iceServers"] = self._ice_for(sid, identity)
        return ack

    async def ice_servers(self, sid: str, *args: object) -> Ack:
        """``GetIceServers()``: the RTCIceServer list for this user, TURN credentials
        expiring no later than the connection's token."""
        parse_ice_request(args)
        return {"ok": True, "iceServers": self._ice_for(sid, self._session(sid).identity)}

    def _ice_for(self, sid: str, identity: Identity) -> list[dict[str, Any]]:
        """The ICE servers for connection ``sid`` now; fresh ones are pushed
        (``ice_servers``) before these TURN credentials expire, while its token lives on."""
        now = time.time()
        servers = self.ice.for_user(identity.user_id, identity.expires_at, now)
        previous = self._ice_timers.pop(sid, None)
        if previous is not None:
            previous.cancel()
        at = self.ice.refresh_at(identity.expires_at, now)
        if at is not None:
            self._ice_timers[sid] = asyncio.get_running_loop().call_later(
                max(0.0, at - now), self._push_ice, sid, context=_EMPTY)
        return servers

    def _push_ice(self, sid: str) -> None:
        self._ice_timers.pop(sid, None)
        session = self.sessions.get(sid)
        if session is None or session.closing is not None:
            return
        servers = self._ice_for(sid, session.identity)
        self.life.spawn(self.sio.emit("ice_servers", {"iceServers": servers}, to=sid))

    async def claim(self, sid: str, *args: object) -> Ack:
        """``ClaimCall({callId, lastSeq?})``: this socket takes its user's call over (see
        :meth:`service.calls.Calls.claim`)."""
        claim = parse_claim(args)
        return await self.calls.claim(sid, self._session(sid).identity.user_id, claim)

    async def unknown(self, sid: str, *args: object) -> Ack:
        """Any event outside the protocol (the catch-all's event name comes first in
        ``args``, as :meth:`_answering` passes it on)."""
        log_event(self.log, "unknown_event", logging.DEBUG, sid=sid,
                  name=str(args[0])[:64] if args else "")
        raise UnknownEvent()

    def _relay_handler(self, event: str) -> Handler:
        async def handler(sid: str, *args: object) -> Ack:
            return await self.relay(event, sid, *args)

        return handler

    def _answering(self, event: str, handler: Handler) -> Handler:
        """Turn refusals into ``{"ok": false, "error": code}`` acks, and never let a bug
        escape into python-socketio without an answer to the client."""

        kind = event_class(event)

        async def answered(sid: str, *args: object) -> Ack:
            ack = self._admitted(sid, kind)
            if ack is None:
                try:
                    ack = await handler(sid, *args)
                except RequestError as exc:
                    ack = {"ok": False, "error": exc.code}
                    if str(exc):
                        ack["detail"] = str(exc)
                    ack.update(exc.ack_fields())
                except AuthError as exc:  # RefreshToken, or a token that expired meanwhile
                    self.metrics.auth_failures.labels(exc.reason).inc()
                    ack = {"ok": False, "error": exc.reason}
                except ServiceUnavailable as exc:  # RefreshToken: its issuer has no keys yet
                    ack = {"ok": False, "error": exc.code}
                except Exception:
                    self.log.exception("handler_failed", extra={"fields": {"sid": sid,
                                                                           "name": event}})
                    ack = {"ok": False, "error": "internal_error"}
            self._count_event(event, "ok" if ack["ok"] else str(ack["error"]))
            return ack

        return answered

    def _admitted(self, sid: str, kind: str) -> Ack | None:
        """The refusal of an event of ``kind`` before its handler runs, if any (spending
        its budget, unless the precheck did from the raw message)."""
        session = self.sessions.get(sid)
        if session is not None:
            if session.charged:  # precheck spent the budget from the raw message
                session.charged = False
                if session.closing is not None:
                    return {"ok": False, "error": session.closing}
            elif (refusal := self._spend(sid, session, kind, 0)) is not None:
                return refusal
        if self.shutting_down:
            return {"ok": False, "error": ShuttingDown.code}
        return None

    def _count_event(self, event: str, outcome: str) -> None:
        self.metrics.event(bounded(event, self._handlers), bounded(outcome, OUTCOMES))

    def _session(self, sid: str) -> Session:
        session = self.sessions.get(sid)
        if session is None or session.closing is not None:
            raise Forbidden("not connected")
        if time.time() > session.identity.expires_at + self.verifier.leeway:
            # the timer closes it; until then the expired token grants nothing
            raise TokenExpired("token has expired")
        return session

    def _own_id(self, sid: str, user_id: str) -> str:
        if user_id != self._session(sid).identity.user_id:
            raise Forbidden("you may only join or leave your own room")
        return user_id

    def _transport(self, sid: str, default: str = "unknown") -> str:
        try:
            return str(self.sio.transport(sid))
        except (KeyError, TypeError):
            return default
