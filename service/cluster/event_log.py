""":class:`RedisEventLog`: lifecycle events waiting for delivery, and users' online state,
cluster-wide on Redis (the interface is :class:`service.calls.lifecycle.EventLog`).

Keys (``<prefix>`` is ``SIGNAL_REDIS_CHANNEL``): ``<prefix>:events:<key>`` a key's events (a
list of JSON, oldest first; ``<key>`` is ``call:<id>`` or ``user:<id>``);
``<prefix>:events:due`` a sorted set of keys with events, by when their turn comes;
``<prefix>:events:lease:<key>`` the node sending ``<key>`` now (expires unless renewed);
``<prefix>:user:<id>`` a user's ``online`` flag and event counter; ``<prefix>:offline_due``
users to check, by when; ``<prefix>:lifenodes`` the nodes that tell users online, each alive
while ``<prefix>:lifenode:<node>`` lives, with the users it saw join in
``<prefix>:nodeusers:<node>`` (checked by another node when it dies).

A call's events are written by :class:`~service.cluster.RedisCallStore` inside the
transaction that commits the change they tell of (:meth:`RedisEventLog.add`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection
from typing import Any, Final

import orjson
from redis.exceptions import RedisError

from service.calls import (
    LEASE_SECONDS,
    USER_OFFLINE,
    USER_ONLINE,
    Event,
    EventLogUnavailable,
    new_event,
    user_key,
)
from service.cluster.link import RedisLink
from service.cluster.presence import node_id
from service.telemetry import Metrics

#: a user's state lives this long after its last change
USER_TTL_SECONDS: Final = 30 * 86400
#: due keys looked at per step, at most (to find the ones no node is sending)
DUE_SCAN: Final = 1000
#: a dead node's users moved to the offline checks per script call (Redis is not blocked)
REAP_CHUNK: Final = 500

#: KEYS[1]: the due set; ARGV: now, most returned, most looked at, lease key prefix. Due keys
#: whose lease nobody holds, oldest first.
_DUE = """
local out = {}
local keys = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, key in ipairs(keys) do
  if redis.call('EXISTS', ARGV[4] .. key) == 0 then
    table.insert(out, key)
    if #out >= tonumber(ARGV[2]) then break end
  end
end
return out
"""
#: KEYS: the due set, a key's lease; ARGV: the key, when it is due again, this node. Only
#: while this node holds the lease (which it gives back).
_LATER = """
if redis.call('GET', KEYS[2]) ~= ARGV[3] then return 0 end
redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[1])
redis.call('DEL', KEYS[2])
return 1
"""
#: KEYS[1]: a key's lease; ARGV: this node, lease ms, '1' to keep it only (not take it). 1
#: when this node holds it now.
_LEASE = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
elseif not v and ARGV[3] ~= '1' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
#: KEYS: a key's events, the due set, the key's lease; ARGV: the id answered (or ''), the
#: key, this node. -1: the lease is another node's; else how many events are left (0: the
#: key leaves the due set and its lease is given back)
_DONE = """
if redis.call('GET', KEYS[3]) ~= ARGV[3] then return -1 end
local head = redis.call('LINDEX', KEYS[1], 0)
if head and ARGV[1] ~= '' and cjson.decode(head).id == ARGV[1] then
  redis.call('LPOP', KEYS[1])
end
local n = redis.call('LLEN', KEYS[1])
if n == 0 then
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('DEL', KEYS[3])
end
return n
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""
#: the end of _ONLINE and _OFFLINE: the user's ``online`` flag set ('1' or '0'), its next number
#: counted, and the event (ARGV[2], unless '') queued with it
_TELL = """local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HSET', KEYS[1], 'online', %s)
redis.call('EXPIRE', KEYS[1], ARGV[4])
if ARGV[2] ~= '' then
  local e = cjson.decode(ARGV[2])
  e.seq = seq
  redis.call('RPUSH', KEYS[3], cjson.encode(e))
  redis.call('EXPIRE', KEYS[3], ARGV[4])
  redis.call('ZADD', KEYS[4], 'NX', ARGV[3], ARGV[5])
end
return 1
"""
#: KEYS: the user's state, the offline-due set, the user's events, the events' due set, this
#: node's users; ARGV: user, event JSON without seq ('' when not sent), now, ttl, event key,
#: this node
_ONLINE = """
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[5], ARGV[1])
redis.call('EXPIRE', KEYS[5], ARGV[4])
redis.call('HSET', KEYS[1], 'node', ARGV[6])
if redis.call('HGET', KEYS[1], 'online') == '1' then return 0 end
""" + _TELL % "'1'"
#: KEYS: as _ONLINE but the last; ARGV: user, event JSON or '', now, ttl, event key, '1' when
#: a device is still there, the node users prefix. Only a check still due: a join since took
#: the user off the set. An offline user leaves the users of the node it last joined on.
_OFFLINE = """
local at = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not at or tonumber(at) > tonumber(ARGV[3]) then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[6] == '1' or redis.call('HGET', KEYS[1], 'online') ~= '1' then return 0 end
local node = redis.call('HGET', KEYS[1], 'node')
if node then redis.call('SREM', ARGV[7] .. node, ARGV[1]) end
""" + _TELL % "'0'"
#: KEYS: the node registry, the offline-due set, a dead node's users; ARGV: the node, when
#: its users are checked, how many at most. Moves them to the checks; the users left (0: the
#: node is forgotten).
_REAP = """
local users = redis.call('SPOP', KEYS[3], ARGV[3])
for _, user in ipairs(users) do
  redis.call('ZADD', KEYS[2], 'NX', ARGV[2], user)
end
local left = redis.call('SCARD', KEYS[3])
if left == 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return left
"""


class RedisEventLog:
    """Events and users' online state on Redis (see the module docstring)."""

    def __init__(self, link: RedisLink, *, prefix: str, wanted: Collection[str],
                 retry_for: float, node_ttl: float, metrics: Metrics | None = None) -> None:
        self.wanted = frozenset(wanted)
        self.metrics = metrics or Metrics()
        self.node = node_id()
        self._redis = link.client
        self._prefix = prefix
        self._due = f"{prefix}:events:due"
        self._offline_due = f"{prefix}:offline_due"
        self._nodes = f"{prefix}:lifenodes"
        #: a key's events outlive the time they are retried
        self._ttl = int(retry_for) + 86400
        self._lease = self._redis.register_script(_LEASE)
        self._done = self._redis.register_script(_DONE)
        self._release = self._redis.register_script(_RELEASE)
        self._online = self._redis.register_script(_ONLINE)
        self._offline = self._redis.register_script(_OFFLINE)
        self._reap = self._redis.register_script(_REAP)
        self._due_script = self._redis.register_script(_DUE)
        self._later = self._redis.register_script(_LATER)
        #: as presence's nodes: a node is dead this long after its last beat (and then its
        #: presence is too, so its users' devices no longer count)
        self._node_ttl = node_ttl

    def _events(self, key: str) -> str:
        return f"{self._prefix}:events:{key}"

    def _lease_key(self, key: str) -> str:
        return f"{self._prefix}:events:lease:{key}"

    def add(self, pipe: Any, events: Collection[Event]) -> None:
        """Queue ``events`` (the wanted ones) in ``pipe``, a transaction that commits the
        change they tell of."""
        for event in events:
            if event.type in self.wanted:
                pipe.rpush(self._events(event.key), orjson.dumps(event.to_json()))
                pipe.expire(self._events(event.key), self._ttl)
                pipe.zadd(self._due, {event.key: event.ts}, nx=True)

    async def due(self, now: float, limit: int) -> list[str]:
        try:
            keys = await self._due_script(keys=[self._due],
                                          args=[now, limit, DUE_SCAN, self._lease_key("")])
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None
        return [_text(k) for k in keys]

    async def later(self, key: str, at: float) -> None:
        try:
            await self._later(keys=[self._due, self._lease_key(key)], args=[key, at, self.node])
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None

    async def lease(self, key: str, *, keep: bool = False) -> bool:
        try:
            return bool(await self._lease(keys=[self._lease_key(key)],
                                          args=[self.node, int(LEASE_SECONDS * 1000),
                                                "1" if keep else "0"]))
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None

    async def head(self, key: str) -> Event | None:
        try:
            raw = await self._redis.lindex(self._events(key), 0)
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None
        return None if raw is None else Event.from_json(orjson.loads(raw))

    async def done(self, key: str, event_id: str) -> bool:
        try:
            left = await self._done(keys=[self._events(key), self._due, self._lease_key(key)],
                                    args=[event_id, key, self.node])
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None
        return int(left) > 0

    async def release(self, key: str) -> None:
        try:
            await self._release(keys=[self._lease_key(key)], args=[self.node])
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None

    def _user_args(self, type_: str, user: str, now: float) -> list[Any]:
        key = user_key(user)
        template = ""
        if type_ in self.wanted:
            template = orjson.dumps(new_event(type_, key, 0, now, user=user).to_json()).decode()
        return [user, template, now, USER_TTL_SECONDS, key, self.node]

    def _user_keys(self, user: str) -> list[str]:
        return [f"{self._prefix}:user:{user}", self._offline_due,
                self._events(user_key(user)), self._due]

    async def online(self, user: str, now: float) -> None:
        try:
            await self._online(
                keys=[*self._user_keys(user), f"{self._prefix}:nodeusers:{self.node}"],
                args=self._user_args(USER_ONLINE, user, now))
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None

    async def expect_offline(self, user: str, at: float) -> None:
        try:
            await self._redis.zadd(self._offline_due, {user: at})
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None

    async def offline_due(self, now: float, limit: int) -> list[str]:
        try:
            users = await self._redis.zrangebyscore(self._offline_due, "-inf", now, start=0,
                                                    num=limit)
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None
        return [_text(u) for u in users]

    async def offline(self, user: str, now: float, still: bool) -> None:
        try:
            await self._offline(keys=self._user_keys(user),
                                args=[*self._user_args(USER_OFFLINE, user, now)[:5],
                                      "1" if still else "0", f"{self._prefix}:nodeusers:"])
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None

    async def beat(self, now: float, grace: float) -> float:
        """This node is alive; a dead node's users are checked once its presence has
        expired too and the grace has passed."""
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(f"{self._prefix}:lifenode:{self.node}", "1",
                         px=int(self._node_ttl * 1000))
                pipe.hset(self._nodes, self.node, "1")
                await pipe.execute()
            nodes = [n for n in (_text(n) for n in await self._redis.hkeys(self._nodes))
                     if n != self.node]
            if nodes:
                alive = await self._redis.mget([f"{self._prefix}:lifenode:{n}" for n in nodes])
                for node, beat in zip(nodes, alive, strict=True):
                    if beat is None:
                        await self._reap_node(node, now + self._node_ttl + grace)
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None
        return self._node_ttl / 5

    async def _reap_node(self, node: str, at: float) -> None:
        users = f"{self._prefix}:nodeusers:{node}"
        while int(await self._reap(keys=[self._nodes, self._offline_due, users],
                                   args=[node, at, REAP_CHUNK])) > 0:
            pass

    async def close(self) -> int:
        with contextlib.suppress(RedisError, OSError):  # the others check its users now
            await self._redis.delete(f"{self._prefix}:lifenode:{self.node}")
        return 0

    def _unavailable(self, exc: BaseException) -> EventLogUnavailable:
        self.metrics.redis_errors.labels("events").inc()
        return EventLogUnavailable(type(exc).__name__)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
