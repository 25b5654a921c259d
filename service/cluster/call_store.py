""":class:`RedisCallStore`: open calls, cluster-wide, on Redis.

Keys (``<prefix>`` is ``SIGNAL_REDIS_CHANNEL``): ``<prefix>:call:<id>`` the call as JSON;
``<prefix>:calls:<user>`` the set of a user's open call ids; ``<prefix>:callver:<user>`` a
counter every change to one of the user's calls increments; ``<prefix>:deadlines`` a sorted
set of call ids by the moment something must happen to them (ring timeout, grace). Every key
expires a day after its last change (garbage of a cluster that went away).

A change is read first from a consistent snapshot (one script, batched with the other reads
of the same loop turn); most relays change nothing (a candidate in a call both parties are
in) and are done. A change that writes is run again inside ``WATCH`` of its users' counters
and written with ``MULTI``/``EXEC``, retried when another node changed one of those users'
calls meanwhile: the rules in :mod:`service.calls.rules` see each call as one node at a time
does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

import orjson
from redis.exceptions import RedisError, WatchError

from service.calls import (
    OUTBOX_MESSAGES,
    REPEAT_WAIT_SECONDS,
    SIGNAL_IDS_SECONDS,
    Ack,
    Call,
    CallStoreUnavailable,
    Ledger,
    Recorded,
)
from service.cluster.batch import ScriptBatch
from service.cluster.event_log import RedisEventLog
from service.cluster.link import RedisLink
from service.telemetry import Metrics

T = TypeVar("T")
#: a call's keys live this long after their last change
KEY_TTL_SECONDS: Final = 86400
#: attempts of one change against concurrent changes on other nodes
MAX_ATTEMPTS: Final = 50
#: calls past their deadline handled per sweep
SWEEP_BATCH: Final = 100

#: KEYS: the users' call-id sets; ARGV[1]: the call key prefix. The calls (JSON), once each;
#: ids whose call is gone are dropped from the sets.
_READ_CALLS = """
local seen, out = {}, {}
for _, key in ipairs(KEYS) do
  for _, id in ipairs(redis.call('SMEMBERS', key)) do
    if not seen[id] then
      seen[id] = true
      local call = redis.call('GET', ARGV[1] .. id)
      if call then table.insert(out, call) else redis.call('SREM', key, id) end
    end
  end
end
return out
"""


#: KEYS[1]: a call party's sequence counter; ARGV[1]: its lifetime. The next number.
_NEXT_SEQ = """
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
return n
"""

#: KEYS[1]: a call party's sequence counter, KEYS[2]: the call; ARGV[1]: the counter's
#: lifetime. The next number, or nil (no counter is made) when the call is not there.
_RESERVE_SEQ = """
if redis.call('EXISTS', KEYS[2]) == 0 then
  return nil
end
local n = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
return n
"""

#: KEYS[1]: a call party's outbox, a list of "<seq>|<json>", KEYS[2]: the call; ARGV: seq,
#: entry, most kept, lifetime, the party's user, the device written to. Appended only past
#: the last seq kept. The party's device when it is another one now, else false.
_RECORD = """
local last = redis.call('LINDEX', KEYS[1], -1)
if not (last and tonumber(string.match(last, '^(%d+)|')) >= tonumber(ARGV[1])) then
  redis.call('RPUSH', KEYS[1], ARGV[2])
  redis.call('LTRIM', KEYS[1], -tonumber(ARGV[3]), -1)
  redis.call('EXPIRE', KEYS[1], ARGV[4])
end
local raw = redis.call('GET', KEYS[2])
if not raw then return false end
local call = cjson.decode(raw)
local party = call.callee
if call.caller.user == ARGV[5] then party = call.caller end
if type(party.device) == 'string' and party.device ~= ARGV[6] then return party.device end
return false
"""
#: KEYS[1]: a signal's ack; ARGV[1]: how long it is kept. The ack, or false (and the signal
#: is marked as being handled)
_FIRST_ACK = """
local ack = redis.call('GET', KEYS[1])
if ack then return ack end
redis.call('SET', KEYS[1], 'pending', 'EX', ARGV[1])
return false
"""
#: a call party's counter lives as long as its call's record (a long call may go an hour
#: without a message to a party, and then its hangup must not be numbered 1 again) ...
SEQ_TTL_SECONDS: Final = KEY_TTL_SECONDS
#: ... once the call is stored; counted for an offer that opens no call, it goes soon
FRESH_SEQ_TTL_SECONDS: Final = 60
#: a party's outbox lives this long after its last message
OUTBOX_TTL_SECONDS: Final = 600


class RedisCallStore:
    """Open calls on Redis (see the module docstring)."""

    def __init__(self, link: RedisLink, *, prefix: str, metrics: Metrics | None = None,
                 events: RedisEventLog | None = None) -> None:
        self.metrics = metrics or Metrics()
        #: where the lifecycle events of a change are queued, in its transaction
        self.events = events
        self._redis = link.client
        self._call_prefix = f"{prefix}:call:"
        self._calls_prefix = f"{prefix}:calls:"
        self._ver_prefix = f"{prefix}:callver:"
        self._deadlines = f"{prefix}:deadlines"
        self._read = ScriptBatch(self._redis, self._redis.register_script(_READ_CALLS))
        self._next_seq = ScriptBatch(self._redis, self._redis.register_script(_NEXT_SEQ))
        self._reserve_seq = ScriptBatch(self._redis,
                                        self._redis.register_script(_RESERVE_SEQ))
        self._record = ScriptBatch(self._redis, self._redis.register_script(_RECORD))
        self._first_ack = ScriptBatch(self._redis, self._redis.register_script(_FIRST_ACK))
        self._ack_prefix = f"{prefix}:ack:"
        self._seq_prefix = f"{prefix}:seq:"
        self._outbox_prefix = f"{prefix}:outbox:"

    async def update(self, users: Sequence[str], change: Callable[[Ledger], T]) -> T:
        try:
            raws = await self._read.call(keys=[self._calls_prefix + u for u in users],
                                         args=[self._call_prefix])
            ledger = Ledger(_decode(raw) for raw in raws)
            result = change(ledger)
            if not ledger.changed:
                return result
            for _ in range(MAX_ATTEMPTS):
                try:
                    return await self._transaction(users, change)
                except WatchError:
                    continue
        except (RedisError, OSError) as exc:
            self.metrics.redis_errors.labels("calls").inc()
            raise CallStoreUnavailable(type(exc).__name__) from None
        raise CallStoreUnavailable("too many concurrent changes")

    async def _transaction(self, users: Sequence[str], change: Callable[[Ledger], T]) -> T:
        async with self._redis.pipeline(transaction=True) as pipe:
            await pipe.watch(*(self._ver_prefix + u for u in users))
            ids = await pipe.sunion([self._calls_prefix + u for u in users])
            keys = [self._call_prefix + _text(i) for i in ids]
            raws = await pipe.mget(keys) if keys else []
            ledger = Ledger(_decode(raw) for raw in raws if raw is not None)
            result = change(ledger)
            pipe.multi()  # type: ignore[no-untyped-call]
            touched: set[str] = set()
            for call in ledger.saved.values():
                pipe.set(self._call_prefix + call.id, orjson.dumps(call.to_json()),
                         ex=KEY_TTL_SECONDS)
                for user in call.users:
                    pipe.sadd(self._calls_prefix + user, call.id)
                    pipe.expire(self._calls_prefix + user, KEY_TTL_SECONDS)
                    # (an offer's number was counted before its call was stored)
                    pipe.expire(f"{self._seq_prefix}{call.id}:{user}", SEQ_TTL_SECONDS)
                deadline = call.deadline
                if deadline is None:
                    pipe.zrem(self._deadlines, call.id)
                else:
                    pipe.zadd(self._deadlines, {call.id: deadline})
                touched.update(call.users)
            for call in ledger.ended.values():
                pipe.delete(self._call_prefix + call.id)
                for user in call.users:
                    pipe.srem(self._calls_prefix + user, call.id)
                pipe.zrem(self._deadlines, call.id)
                touched.update(call.users)
            for user in touched:
                pipe.incr(self._ver_prefix + user)
                pipe.expire(self._ver_prefix + user, KEY_TTL_SECONDS)
            if touched:
                pipe.expire(self._deadlines, KEY_TTL_SECONDS)
            if self.events is not None:
                self.events.add(pipe, ledger.events)
            await pipe.execute()
            return result

    async def next_seq(self, call_id: str, user: str) -> int:
        try:
            return int(await self._next_seq.call(keys=[f"{self._seq_prefix}{call_id}:{user}"],
                                                 args=[str(SEQ_TTL_SECONDS)]))
        except (RedisError, OSError) as exc:
            self.metrics.redis_errors.labels("calls").inc()
            raise CallStoreUnavailable(type(exc).__name__) from None

    async def first_seq(self, call_id: str, user: str) -> int:
        try:
            return int(await self._next_seq.call(keys=[f"{self._seq_prefix}{call_id}:{user}"],
                                                 args=[str(FRESH_SEQ_TTL_SECONDS)]))
        except (RedisError, OSError) as exc:
            self.metrics.redis_errors.labels("calls").inc()
            raise CallStoreUnavailable(type(exc).__name__) from None

    async def reserve_seq(self, call_id: str, user: str) -> int | None:
        try:
            seq = await self._reserve_seq.call(
                keys=[f"{self._seq_prefix}{call_id}:{user}", self._call_prefix + call_id],
                args=[str(SEQ_TTL_SECONDS)])
        except (RedisError, OSError) as exc:
            self.metrics.redis_errors.labels("calls").inc()
            raise CallStoreUnavailable(type(exc).__name__) from None
        return None if seq is None else int(seq)

    async def record(self, call_id: str, user: str, seq: int, event: str,
                     body: dict[str, Any], device: str) -> str | None:
        entry = f"{seq}|" + orjson.dumps([event, body]).decode()
        try:
            now = await self._record.call(
                keys=[f"{self._outbox_prefix}{call_id}:{user}", self._call_prefix + call_id],
                args=[str(seq), entry, str(OUTBOX_MESSAGES), str(OUTBOX_TTL_SECONDS), user,
                      device])
        except (RedisError, OSError) as exc:
            self.metrics.redis_errors.labels("calls").inc()
            raise CallStoreUnavailable(type(exc).__name__) from None
        return _text(now) if now else None

    async def outbox(self, call_id: str, user: str) -> list[Recorded]:
        try:
            raws = await self._redis.lrange(f"{self._outbox_prefix}{call_id}:{user}", 0, -1)
        except (RedisError, OSError) as exc:
            self.metrics.redis_errors.labels("calls").inc()
            raise CallStoreUnavailable(type(exc).__name__) from None
        entries: list[Recorded] = []
        for raw in raws:
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            seq, _, data = text.partition("|")
            event, body = orjson.loads(data)
            entries.append((int(seq), str(event), body))
        return entries

    async def first_ack(self, sender: str, to: str, signal_id: str) -> Ack | None:
        key = f"{self._ack_prefix}{sender}\x1f{to}\x1f{signal_id}"
        try:
            deadline = time.monotonic() + REPEAT_WAIT_SECONDS
            while True:
                raw = await self._first_ack.call(keys=[key],
                                                 args=[str(int(SIGNAL_IDS_SECONDS))])
                if raw is None:
                    return None
                text = raw.decode() if isinstance(raw, bytes) else str(raw)
                if text != "pending":
                    ack: Ack = orjson.loads(text)
                    return ack
                if time.monotonic() > deadline:
                    return None  # the first was never answered: handled afresh
                await asyncio.sleep(0.05)
        except (RedisError, OSError) as exc:
            self.metrics.redis_errors.labels("calls").inc()
            raise CallStoreUnavailable(type(exc).__name__) from None

    async def settle(self, sender: str, to: str, signal_id: str, ack: Ack | None) -> None:
        key = f"{self._ack_prefix}{sender}\x1f{to}\x1f{signal_id}"
        try:
            if ack is None:
                await self._redis.delete(key)
            else:
                await self._redis.set(key, orjson.dumps(ack), ex=int(SIGNAL_IDS_SECONDS))
        except (RedisError, OSError) as exc:
            self.metrics.redis_errors.labels("calls").inc()
            raise CallStoreUnavailable(type(exc).__name__) from None

    async def due(self, now: float) -> list[tuple[str, tuple[str, str]]]:
        try:
            ids = await self._redis.zrangebyscore(self._deadlines, "-inf", now, start=0,
                                                  num=SWEEP_BATCH)
            if not ids:
                return []
            names = [_text(i) for i in ids]
            raws = await self._redis.mget([self._call_prefix + i for i in names])
            found: list[tuple[str, tuple[str, str]]] = []
            for name, raw in zip(names, raws, strict=True):
                if raw is None:
                    await self._redis.zrem(self._deadlines, name)
                else:
                    found.append((name, _decode(raw).users))
            return found
        except (RedisError, OSError) as exc:
            self.metrics.redis_errors.labels("calls").inc()
            raise CallStoreUnavailable(type(exc).__name__) from None


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode(raw: bytes | str) -> Call:
    return Call.from_json(orjson.loads(raw))
