""":class:`RedisPresence`: cluster-wide presence on Redis.

Per user, the set of ``node|sid`` connections and of joined sockets; per node, a key that
lives ``SIGNAL_NODE_TTL`` seconds and is renewed several times a second. Members of a node
whose key has expired (a crashed node) are ignored and pruned. When the node key was missing
at renewal (Redis restarted, or it was away too long), the node writes its members again. A
node renews its key only while its subscription to the channel is up: otherwise a relay to
its users would be acknowledged ``delivered`` and never arrive; and until its key is written
it is not *reachable*: new connections and ``JoinSocket`` wait for that (a JoinSocket ack
means "you can be called now").

Removals that fail while Redis is away are kept (once each) and applied when it is back; past
:data:`MAX_PENDING` of them the node takes a new name instead, which orphans every member of
its old name at once (pruned as dead), and writes its live members under the new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Callable
from typing import Any, Final

from redis.exceptions import RedisError

from service.cluster.batch import ScriptBatch
from service.cluster.link import RedisLink
from service.delivery import Device, PresenceUnavailable, device_of
from service.telemetry import Metrics, forever, log_event

#: removals remembered while Redis is away; beyond that the node renames itself
MAX_PENDING: Final = 10_000

#: Lua: count the members of set KEYS[1] ("node|sid") whose node key (ARGV[1] .. node) is
#: alive, leaving out ARGV[2]; prune the members of dead nodes (and what is known of them,
#: in hash KEYS[2]).
_COUNT_LIVE = """
local live = 0
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local node = string.match(member, '^(.-)|')
  if node and redis.call('EXISTS', ARGV[1] .. node) == 1 then
    if member ~= ARGV[2] then live = live + 1 end
  else
    redis.call('SREM', KEYS[1], member)
    redis.call('HDEL', KEYS[2], member)
  end
end
"""

#: KEYS[1]: a user's connections, KEYS[2]: what is known of each; ARGV: node key prefix,
#: new member, cap (0: none), ttl, what is known of the new member
_ADD_UNDER_CAP = _COUNT_LIVE + """
local cap = tonumber(ARGV[3])
if cap > 0 and live >= cap then return 0 end
redis.call('SADD', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
redis.call('HSET', KEYS[2], ARGV[2], ARGV[5])
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4]))
return 1
"""

#: KEYS: a user's connections, joined sockets, what is known of each; ARGV[1]: node key
#: prefix. Each live member: {member, what is known of it, 1 if joined}.
_DEVICES = """
local joined, out = {}, {}
for _, member in ipairs(redis.call('SMEMBERS', KEYS[2])) do joined[member] = true end
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local node = string.match(member, '^(.-)|')
  if node and redis.call('EXISTS', ARGV[1] .. node) == 1 then
    local about = redis.call('HGET', KEYS[3], member) or ''
    table.insert(out, {member, about, joined[member] and 1 or 0})
  else
    redis.call('HDEL', KEYS[3], member)
  end
end
return out
"""

#: KEYS[1]: a user's revocation; ARGV: the second through which tokens are revoked, its
#: life in ms. A later revocation never moves it back.
_REVOKE = """
local through = tonumber(ARGV[1])
local before = tonumber(redis.call('GET', KEYS[1]) or '0')
if before > through then through = before end
redis.call('SET', KEYS[1], through, 'PX', tonumber(ARGV[2]))
return through
"""

#: KEYS[1]: the recipient's joined sockets; ARGV: node key prefix, the sender's member,
#: channel, signed envelope, this node. Returns how many other live sockets have joined, and
#: publishes when one of them is on another node (this node delivers to its own). One round
#: trip per relay instead of two, shared with the other relays of the same loop turn
#: (:class:`~service.cluster.batch.ScriptBatch`).
_PUBLISH_IF_PRESENT = """
local live, remote = 0, 0
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local node = string.match(member, '^(.-)|')
  if node and redis.call('EXISTS', ARGV[1] .. node) == 1 then
    if member ~= ARGV[2] then
      live = live + 1
      if node ~= ARGV[5] then remote = remote + 1 end
    end
  else
    redis.call('SREM', KEYS[1], member)
  end
end
if remote > 0 then redis.call('PUBLISH', ARGV[3], ARGV[4]) end
return live
"""

#: KEYS[1]: a user's connections; ARGV: node key prefix, the member (node|sid) to reach,
#: its node, channel, signed envelope. Publishes when that socket is connected on a live
#: node; whether it is.
_PUBLISH_TO_MEMBER = """
if redis.call('EXISTS', ARGV[1] .. ARGV[3]) == 1
    and redis.call('SISMEMBER', KEYS[1], ARGV[2]) == 1 then
  redis.call('PUBLISH', ARGV[4], ARGV[5])
  return 1
end
return 0
"""

#: sets of a user's members expire after a day without a change (garbage from dead clusters)
SET_TTL_SECONDS: Final = 86400



def node_id() -> str:
    """A name for this process in the cluster: host, pid and a random suffix."""
    host = socket.gethostname().replace("|", "_")
    return f"{host}:{os.getpid()}:{secrets.token_hex(4)}"


class RedisPresence:
    """Cluster-wide presence on Redis (see the module docstring)."""

    def __init__(self, link: RedisLink, *, prefix: str, ttl: float,
                 logger: logging.Logger, node: str | None = None,
                 receiving: Callable[[], bool] = lambda: True,
                 metrics: Metrics | None = None) -> None:
        self.metrics = metrics or Metrics()
        self.node = node or node_id()
        self._receiving = receiving
        self._redis = link.client
        self._prefix = prefix
        self._ttl = ttl
        self._log = logger
        self._node_prefix = f"{prefix}:node:"
        self._node_key = self._node_prefix + self.node
        self._add = self._redis.register_script(_ADD_UNDER_CAP)
        self._devices = self._redis.register_script(_DEVICES)
        self._revoke = self._redis.register_script(_REVOKE)
        self._publish_if_present = ScriptBatch(
            self._redis, self._redis.register_script(_PUBLISH_IF_PRESENT))
        self._publish_to_member = ScriptBatch(
            self._redis, self._redis.register_script(_PUBLISH_TO_MEMBER))
        self._connections: dict[str, str] = {}  # sid -> user, on this node
        self._about: dict[str, str] = {}  # sid -> what is known of it, on this node
        self._joined: dict[str, str] = {}
        #: (key, member) to remove when Redis is back, each once
        self._pending: dict[tuple[str, str], None] = {}
        #: too many removals piled up: take a new name at the next successful beat
        self._rename = False
        self._reachable = asyncio.Event()
        self._beat: asyncio.Task[None] | None = None
        self.failing = False
        #: this node's key was renewed by the last heartbeat: its users count as online
        self.live = False

    def _member(self, sid: str) -> str:
        return f"{self.node}|{sid}"

    def address(self, sid: str) -> str:
        """This node's socket ``sid`` as the cluster knows it (``node|sid``)."""
        return self._member(sid)

    def local_sid(self, member: str) -> str | None:
        """The sid of ``member`` when it is a connected socket of this node."""
        node, _, sid = member.rpartition("|")
        return sid if node == self.node and sid in self._connections else None

    def _conns(self, user: str) -> str:
        return f"{self._prefix}:conns:{user}"

    def _joined_key(self, user: str) -> str:
        return f"{self._prefix}:joined:{user}"

    def _about_key(self, user: str) -> str:
        return f"{self._prefix}:about:{user}"

    def _revoked_key(self, user: str) -> str:
        return f"{self._prefix}:revoked:{user}"

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
                    pipe.hdel(self._about_key(user), self._member(sid))
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
                self._set_live(False)
                await self._redis.delete(self._node_key)
                return min(interval, 0.1)
            if self._rename:
                await self._take_new_name()
            previous = await self._redis.set(self._node_key, "1",
                                             px=int(self._ttl * 1000), get=True)
            if previous is None or self._pending:
                await self._resync()
            self._set_live(True)
            if self.failing:
                log_event(self._log, "redis_presence_restored", node=self.node)
                self.failing = False
        except (RedisError, OSError) as exc:
            self._set_live(False)
            self.metrics.redis_errors.labels("presence").inc()
            if not self.failing:
                log_event(self._log, "redis_presence_lost", logging.WARNING,
                          node=self.node, error_type=type(exc).__name__)
                self.failing = True
        except Exception:
            self._set_live(False)
            raise
        return interval

    def _set_live(self, live: bool) -> None:
        self.live = live
        if live:
            self._reachable.set()
        else:
            self._reachable.clear()

    async def wait_reachable(self, within: float) -> bool:
        """Wait up to ``within`` seconds until this node receives cluster traffic and is
        counted online; whether it is."""
        if not self.live:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reachable.wait(), within)
        return self.live

    async def _take_new_name(self) -> None:
        """Orphan every member written under the old name (they count as a dead node's and
        are pruned), and forget the removals that were waiting for Redis."""
        old_key = self._node_key
        self.node = node_id()
        self._node_key = self._node_prefix + self.node
        self._pending.clear()
        self._rename = False
        await self._redis.delete(old_key)
        log_event(self._log, "redis_presence_renamed", logging.WARNING, node=self.node,
                  reason="too_many_pending_removals")

    async def _resync(self) -> None:
        """Write this node's members again (after Redis forgot them, or under a new name)
        and apply removals that failed while Redis was away. Removals queued while this runs
        are kept for the next beat."""
        pending, self._pending = self._pending, {}
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                for key, member in pending:
                    self._unset(pipe, key, member)
                for sid, user in self._connections.items():
                    pipe.sadd(self._conns(user), self._member(sid))
                    pipe.expire(self._conns(user), SET_TTL_SECONDS)
                    pipe.hset(self._about_key(user), self._member(sid),
                              self._about.get(sid, ""))
                    pipe.expire(self._about_key(user), SET_TTL_SECONDS)
                for sid, user in self._joined.items():
                    pipe.sadd(self._joined_key(user), self._member(sid))
                    pipe.expire(self._joined_key(user), SET_TTL_SECONDS)
                await pipe.execute()
        except BaseException:
            self._defer(list(pending))
            raise

    async def add_connection(self, user: str, sid: str, cap: int, about: str = "") -> bool:
        try:
            added = await self._add(keys=[self._conns(user), self._about_key(user)],
                                    args=[self._node_prefix, self._member(sid), cap,
                                          SET_TTL_SECONDS, about])
        except (RedisError, OSError) as exc:
            raise PresenceUnavailable(str(type(exc).__name__)) from None
        if added:
            self._connections[sid] = user
            self._about[sid] = about
        return bool(added)

    async def remove_connection(self, user: str, sid: str) -> None:
        self._connections.pop(sid, None)
        self._about.pop(sid, None)
        removals = [(self._conns(user), self._member(sid)),
                    (self._about_key(user), self._member(sid))]
        if self._joined.pop(sid, None) is not None:
            removals.append((self._joined_key(user), self._member(sid)))
        await self._remove(removals)

    async def join(self, user: str, sid: str) -> None:
        key = self._joined_key(user)
        try:
            # one MULTI/EXEC: never a member without the set's TTL
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.sadd(key, self._member(sid))
                pipe.expire(key, SET_TTL_SECONDS)
                await pipe.execute()
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
                    self._unset(pipe, key, member)
                await pipe.execute()
        except (RedisError, OSError):
            self._defer(removals)  # the heartbeat applies them once Redis is back

    def _unset(self, pipe: Any, key: str, member: str) -> None:
        """Take ``member`` out of ``key`` (a set, or the hash of what is known)."""
        if key.startswith(f"{self._prefix}:about:"):
            pipe.hdel(key, member)
        else:
            pipe.srem(key, member)

    def _defer(self, removals: list[tuple[str, str]]) -> None:
        for removal in removals:
            self._pending[removal] = None
        if len(self._pending) > MAX_PENDING:
            self._rename = True

    async def publish_if_present(self, user: str, sid: str, channel: str,
                                 envelope: str) -> bool:
        """In one round trip: whether another live socket has joined ``user``'s room, and if
        one is on another node, publish ``envelope`` on ``channel``."""
        try:
            live = await self._publish_if_present.call(
                keys=[self._joined_key(user)],
                args=[self._node_prefix, self._member(sid), channel, envelope, self.node])
        except (RedisError, OSError) as exc:
            raise PresenceUnavailable(str(type(exc).__name__)) from None
        return int(live) > 0

    async def publish_to_member(self, user: str, member: str, channel: str,
                                envelope: str) -> bool:
        """Publish ``envelope`` when ``member`` (another node's socket of ``user``) is
        connected on a live node; whether it is."""
        node = member.rpartition("|")[0]
        try:
            sent = await self._publish_to_member.call(
                keys=[self._conns(user)],
                args=[self._node_prefix, member, node, channel, envelope])
        except (RedisError, OSError) as exc:
            raise PresenceUnavailable(str(type(exc).__name__)) from None
        return bool(sent)

    async def devices(self, user: str) -> list[Device]:
        try:
            found = await self._devices(
                keys=[self._conns(user), self._joined_key(user), self._about_key(user)],
                args=[self._node_prefix])
        except (RedisError, OSError) as exc:
            raise PresenceUnavailable(str(type(exc).__name__)) from None
        return sorted((device_of(_text(member), _text(about), bool(joined))
                       for member, about, joined in found), key=lambda d: d.device)

    async def revoke(self, user: str, through: int, ttl: float) -> None:
        try:
            await self._revoke(keys=[self._revoked_key(user)],
                               args=[through, max(1, int(ttl * 1000))])
        except (RedisError, OSError) as exc:
            raise PresenceUnavailable(str(type(exc).__name__)) from None

    async def revoked_through(self, user: str) -> int | None:
        try:
            through = await self._redis.get(self._revoked_key(user))
        except (RedisError, OSError) as exc:
            raise PresenceUnavailable(str(type(exc).__name__)) from None
        return None if through is None else int(_text(through))

    async def healthy(self) -> bool:
        """Redis answers, and this node is subscribed and counted as online."""
        if not self.live:
            return False
        try:
            return bool(await asyncio.wait_for(self._redis.ping(), 1.0))
        except (RedisError, OSError, TimeoutError):
            return False


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
