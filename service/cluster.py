"""Scale-out on Redis: python-socketio's own Redis manager, hardened, and cluster presence.

:class:`RedisLink` is the one Redis client of a process: a bounded pool whose connections are
reused by publishing, presence and the subscription (the stock manager builds a new client,
and a new pool, every time a publish or the subscription fails, and leaves the old ones to
the garbage collector).

:class:`SignedRedisManager` is ``socketio.AsyncRedisManager`` with three changes:

- every message on the channel carries an HMAC (``SIGNAL_REDIS_SECRET``), a timestamp and a
  random id; unsigned, forged, stale (over 30 s) or replayed messages are dropped, so a client
  of the same Redis that can PUBLISH cannot inject events or disconnects;
- a publish that fails twice raises :class:`ClusterUnavailable` (the stock manager logs and
  drops it), so the relay is answered ``unavailable`` instead of a silent loss;
- the subscription retries every second at most (the stock manager backs off to a minute),
  so delivery resumes within about a second of Redis coming back.

:class:`RedisPresence` keeps, per user, the set of ``node|sid`` connections and of joined
sockets, and per node a key that lives ``SIGNAL_NODE_TTL`` seconds and is renewed several times
a second: members of a node whose key has expired (a crashed node) are ignored and pruned.
When the node key was missing at renewal (Redis restarted, or it was away too long), the node
writes its members again. A node renews its key only while its subscription to the channel is
up: otherwise a relay to its users would be acknowledged ``delivered`` and never arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import socket
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import socketio
from redis import asyncio as aioredis
from redis.exceptions import RedisError

from service.logs import log_event
from service.presence import PresenceUnavailable
from service.supervise import forever

#: messages older than this (or from a clock this far ahead) are dropped
MAX_MESSAGE_AGE: Final = 30.0
#: ids of recently accepted messages, to drop replays
SEEN_IDS: Final = 100_000
SUBSCRIBE_RETRY_SECONDS: Final = 1.0
#: what :meth:`SignedRedisManager.open` returns for this node's own messages
OWN: Final = "\x00own"

#: Lua: count the members of set KEYS[1] ("node|sid") whose node key (ARGV[1] .. node) is
#: alive, leaving out ARGV[2]; prune the members of dead nodes. Shared by the scripts below.
_COUNT_LIVE = """
local live = 0
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local node = string.match(member, '^(.-)|')
  if node and redis.call('EXISTS', ARGV[1] .. node) == 1 then
    if member ~= ARGV[2] then live = live + 1 end
  else
    redis.call('SREM', KEYS[1], member)
  end
end
"""

#: KEYS[1]: a user's connections; ARGV: node key prefix, new member, cap (0: none), ttl
_ADD_UNDER_CAP = _COUNT_LIVE + """
local cap = tonumber(ARGV[3])
if cap > 0 and live >= cap then return 0 end
redis.call('SADD', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return 1
"""

#: KEYS[1]: the recipient's joined sockets; ARGV: node key prefix, the sender's member,
#: channel, signed envelope. Publishes only when another live socket has joined; returns how
#: many have. One round trip per relay instead of two.
_PUBLISH_IF_PRESENT = _COUNT_LIVE + """
if live > 0 then redis.call('PUBLISH', ARGV[3], ARGV[4]) end
return live
"""

#: sets of a user's members expire after a day without a change (garbage from dead clusters)
SET_TTL_SECONDS: Final = 86400


class ClusterUnavailable(Exception):
    """A message could not be published to the other nodes."""


class RedisLink:
    """The process's Redis client: one bounded, reused connection pool."""

    def __init__(self, url: str, *, max_connections: int, timeout: float = 1.0) -> None:
        self.url = url
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout,
            socket_timeout=timeout, socket_connect_timeout=timeout,
            health_check_interval=30)
        self.client: aioredis.Redis = aioredis.Redis(connection_pool=pool)

    async def close(self) -> None:
        await self.client.aclose(close_connection_pool=True)


class SignedRedisManager(socketio.AsyncRedisManager):  # type: ignore[misc]
    """python-socketio's Redis manager on a shared pool, with signed messages."""

    def __init__(self, link: RedisLink, *, channel: str, secret: str,
                 logger: logging.Logger) -> None:
        super().__init__(url=link.url, channel=channel)
        self.link = link
        self._key = secret.encode()
        self._log = logger
        self._seen: OrderedDict[str, float] = OrderedDict()
        self.dropped = 0
        #: whether messages from other nodes reach this one now
        self.subscribed = False
        #: ids this node published lately: its own messages come back and need no checking
        self._own: OrderedDict[str, None] = OrderedDict()

    # ---- connections ----

    def _redis_connect(self) -> None:
        self.redis = self.link.client
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        self.connected = True

    async def _redis_listen_with_retries(self) -> AsyncIterator[dict[str, Any]]:
        failing = False
        while True:
            try:
                self._redis_connect()
                await self.pubsub.subscribe(self.channel)
                self.subscribed = True
                if failing:
                    log_event(self._log, "redis_subscription_restored", channel=self.channel)
                    failing = False
                async for message in self.pubsub.listen():
                    yield message
            except (RedisError, OSError) as exc:
                self.subscribed = False
                if not failing:
                    log_event(self._log, "redis_subscription_lost", logging.WARNING,
                              channel=self.channel, error_type=type(exc).__name__)
                    failing = True
                with contextlib.suppress(Exception):
                    await self.pubsub.aclose()  # type: ignore[no-untyped-call]
                await asyncio.sleep(SUBSCRIBE_RETRY_SECONDS)

    async def close(self) -> None:
        """Stop listening (python-socketio leaves its listener task running for good)."""
        task = getattr(self, "thread", None)
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, 2.0)
        pubsub = getattr(self, "pubsub", None)
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
        self.subscribed = False

    # ---- signing ----

    def _sign(self, body: str, ts: float, mid: str) -> str:
        text = f"{self.channel}\n{ts!r}\n{mid}\n{body}".encode()
        return hmac.new(self._key, text, hashlib.sha256).hexdigest()

    def seal(self, data: Any) -> str:
        """The signed envelope of a manager message."""
        body = self.json.dumps(data)
        ts, mid = time.time(), secrets.token_hex(12)
        self._own[mid] = None
        while len(self._own) > SEEN_IDS:
            self._own.popitem(last=False)
        return json.dumps({"id": mid, "ts": ts, "body": body, "sig": self._sign(body, ts, mid)})

    def emit_envelope(self, event: str, data: Any, room: str, skip_sid: str) -> str:
        """The signed message by which python-socketio's managers on the other nodes emit
        ``event`` to ``room`` (what ``AsyncPubSubManager.emit`` publishes)."""
        return self.seal({"method": "emit", "event": event, "data": [data], "binary": False,
                          "namespace": "/", "room": room, "skip_sid": skip_sid,
                          "callback": None, "host_id": self.host_id})

    def open(self, raw: bytes | str) -> str | None:
        """The body of a genuine, fresh, first-seen envelope; :data:`OWN` for one this node
        published; None otherwise."""
        try:
            envelope = json.loads(raw)
            ts, mid, body, sig = (envelope["ts"], envelope["id"], envelope["body"],
                                  envelope["sig"])
        except (ValueError, TypeError, KeyError):
            return None
        if isinstance(mid, str) and mid in self._own:
            self._own.pop(mid)
            return OWN  # our own message, back from Redis: handled here already
        if not (isinstance(ts, float) and isinstance(mid, str) and isinstance(body, str)
                and isinstance(sig, str)):
            return None
        if not hmac.compare_digest(sig, self._sign(body, ts, mid)):
            return None
        now = time.time()
        if abs(now - ts) > MAX_MESSAGE_AGE or mid in self._seen:
            return None
        self._seen[mid] = now
        while len(self._seen) > SEEN_IDS:
            self._seen.popitem(last=False)
        return body

    async def _publish(self, data: Any) -> None:
        message = self.seal(data)
        for attempt in (1, 2):
            try:
                await self.link.client.publish(self.channel, message)
                return
            except (RedisError, OSError) as exc:
                if attempt == 2:
                    log_event(self._log, "redis_publish_failed", logging.WARNING,
                              channel=self.channel, error_type=type(exc).__name__)
                    raise ClusterUnavailable("cannot publish to Redis") from None

    async def _listen(self) -> AsyncIterator[str]:
        async for raw in super()._listen():
            body = self.open(raw)
            if body is OWN:
                continue
            if body is None:
                self.dropped += 1
                if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                    log_event(self._log, "cluster_message_dropped", logging.WARNING,
                              channel=self.channel, dropped=self.dropped)
                continue
            yield body


def node_id() -> str:
    """A name for this process in the cluster: host, pid and a random suffix."""
    host = socket.gethostname().replace("|", "_")
    return f"{host}:{os.getpid()}:{secrets.token_hex(4)}"


class RedisPresence:
    """Cluster-wide presence on Redis (see the module docstring)."""

    def __init__(self, link: RedisLink, *, prefix: str, ttl: float,
                 logger: logging.Logger, node: str | None = None,
                 receiving: Callable[[], bool] = lambda: True) -> None:
        self.node = node or node_id()
        self._receiving = receiving
        self._redis = link.client
        self._prefix = prefix
        self._ttl = ttl
        self._log = logger
        self._node_prefix = f"{prefix}:node:"
        self._node_key = self._node_prefix + self.node
        self._add = self._redis.register_script(_ADD_UNDER_CAP)
        self._publish_if_present = self._redis.register_script(_PUBLISH_IF_PRESENT)
        self._connections: dict[str, str] = {}  # sid -> user, on this node
        self._joined: dict[str, str] = {}
        self._pending: list[tuple[str, str]] = []  # (key, member) to remove when Redis is back
        self._beat: asyncio.Task[None] | None = None
        self.failing = False
        #: this node's key was renewed by the last heartbeat: its users count as online
        self.live = False

    def _member(self, sid: str) -> str:
        return f"{self.node}|{sid}"

    def _conns(self, user: str) -> str:
        return f"{self._prefix}:conns:{user}"

    def _joined_key(self, user: str) -> str:
        return f"{self._prefix}:joined:{user}"

    async def start(self) -> None:
        self._beat = asyncio.ensure_future(
            forever(self._heartbeat, name="presence_heartbeat", log=self._log))

    async def stop(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat
        with contextlib.suppress(RedisError, OSError):
            async with self._redis.pipeline(transaction=False) as pipe:
                for sid, user in self._connections.items():
                    pipe.srem(self._conns(user), self._member(sid))
                for sid, user in self._joined.items():
                    pipe.srem(self._joined_key(user), self._member(sid))
                pipe.delete(self._node_key)
                await pipe.execute()

    async def _heartbeat(self) -> float:
        """One beat: renew this node's key (only while subscribed), resync when Redis forgot
        it; returns the wait until the next beat (a step of a supervised loop)."""
        interval = self._ttl / 5
        try:
            if not self._receiving():
                # not subscribed: this node's users must not count as reachable
                self.live = False
                await self._redis.delete(self._node_key)
                return min(interval, 0.1)
            previous = await self._redis.set(self._node_key, "1",
                                             px=int(self._ttl * 1000), get=True)
            if previous is None or self._pending:
                await self._resync()
            self.live = True
            if self.failing:
                log_event(self._log, "redis_presence_restored", node=self.node)
                self.failing = False
        except (RedisError, OSError) as exc:
            self.live = False
            if not self.failing:
                log_event(self._log, "redis_presence_lost", logging.WARNING,
                          node=self.node, error_type=type(exc).__name__)
                self.failing = True
        except Exception:
            self.live = False
            raise
        return interval

    async def _resync(self) -> None:
        """Write this node's members again (after Redis forgot them) and apply removals that
        failed while Redis was away."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, member in self._pending:
                pipe.srem(key, member)
            for sid, user in self._connections.items():
                pipe.sadd(self._conns(user), self._member(sid))
            for sid, user in self._joined.items():
                pipe.sadd(self._joined_key(user), self._member(sid))
            await pipe.execute()
        self._pending.clear()

    async def add_connection(self, user: str, sid: str, cap: int) -> bool:
        try:
            added = await self._add(keys=[self._conns(user)],
                                    args=[self._node_prefix, self._member(sid), cap,
                                          SET_TTL_SECONDS])
        except (RedisError, OSError) as exc:
            raise PresenceUnavailable(str(type(exc).__name__)) from None
        if added:
            self._connections[sid] = user
        return bool(added)

    async def remove_connection(self, user: str, sid: str) -> None:
        self._connections.pop(sid, None)
        removals = [(self._conns(user), self._member(sid))]
        if self._joined.pop(sid, None) is not None:
            removals.append((self._joined_key(user), self._member(sid)))
        await self._remove(removals)

    async def join(self, user: str, sid: str) -> None:
        try:
            await self._redis.sadd(self._joined_key(user), self._member(sid))
            await self._redis.expire(self._joined_key(user), SET_TTL_SECONDS)
        except (RedisError, OSError) as exc:
            raise PresenceUnavailable(str(type(exc).__name__)) from None
        self._joined[sid] = user

    async def leave(self, user: str, sid: str) -> None:
        if self._joined.pop(sid, None) is not None:
            await self._remove([(self._joined_key(user), self._member(sid))])

    async def _remove(self, removals: list[tuple[str, str]]) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, member in removals:
                    pipe.srem(key, member)
                await pipe.execute()
        except (RedisError, OSError):
            self._pending.extend(removals)  # the heartbeat applies them once Redis is back

    async def publish_if_present(self, user: str, sid: str, channel: str,
                                 envelope: str) -> bool:
        """In one round trip: whether another live socket has joined ``user``'s room, and if
        so, publish ``envelope`` on ``channel``."""
        try:
            live = await self._publish_if_present(
                keys=[self._joined_key(user)],
                args=[self._node_prefix, self._member(sid), channel, envelope])
        except (RedisError, OSError) as exc:
            raise PresenceUnavailable(str(type(exc).__name__)) from None
        return int(live) > 0

    async def healthy(self) -> bool:
        """Redis answers, and this node is subscribed and counted as online."""
        if not self.live:
            return False
        try:
            return bool(await asyncio.wait_for(self._redis.ping(), 1.0))
        except (RedisError, OSError, TimeoutError):
            return False


class ClusterDelivery:
    """Relays across the cluster: presence check and publish in one Redis round trip, then
    delivery to this node's own recipients (Redis does not echo them back to it)."""

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
