"""Lifecycle webhooks: the app's backend hears of every call and of users coming and going.

Events (:mod:`service.calls.events`) wait in an :class:`EventLog`, in order per key (a call,
a user): in memory for one process (:class:`LocalEventLog`), on Redis for a cluster
(:class:`service.cluster.RedisEventLog`), where a call's events are written in the same
transaction as the change they tell of. :class:`Lifecycle` sends them: one key at a time per
*lease* (a node that takes a key's lease sends its events in order, one after the other; a
node that dies loses the lease within :data:`LEASE_SECONDS` and another node goes on), each
signed like ``call.incoming`` and retried with backoff until a 2xx; a 4xx or 3xx is the
receiver's final answer, and an event still undelivered :attr:`retry_for` seconds after it
happened is given up: both are counted (``signaling_webhook_events``) and logged, and the
key's next event follows. Delivery is at least once (a node that dies after the receiver
answered and before it noted so sends the event again): the receiver drops repeats by ``id``.

``user.online`` is told when a user's first device joins; ``user.offline`` when its last one
has been gone for the reconnect grace (a reconnect within it tells nothing), checked against
presence, cluster-wide; on a cluster, a node that dies leaves its users to the others (their
grace starts when its key expires).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Collection
from typing import Final, Protocol

import orjson

from service.calls import events as ev
from service.calls.events import Event
from service.calls.webhook import FIRST_BACKOFF, MAX_BACKOFF, REQUEST_TIMEOUT, Webhook
from service.delivery import Presence, PresenceUnavailable
from service.outbound import Outbound
from service.telemetry import Metrics, forever, log_event

#: a key's sender keeps its lease this long unless renewed (it renews it while it sends: a
#: node that dies leaves its keys to the others this soon)
LEASE_SECONDS: Final = 5.0
#: keys sent at once by one node (and requests under way: a key sends one at a time)
WORKERS: Final = 20
#: how often a node looks for keys to send and users whose grace ended
PUMP_SECONDS: Final = 0.25
#: users checked for going offline per step
OFFLINE_BATCH: Final = 100
#: events one process keeps in memory at most (beyond: counted as dropped, and logged)
LOCAL_EVENTS: Final = 100_000
#: answers that mean "later" (retried), although they are 4xx
RETRY_STATUSES: Final = frozenset({408, 425, 429})


class EventLogUnavailable(Exception):
    """The log cannot be reached (Redis away): nothing was taken or changed."""


class EventLog(Protocol):
    """Where events wait, in order per key, and the users' online state."""

    #: the event types sent (the others are never queued)
    wanted: frozenset[str]

    async def due(self, now: float, limit: int) -> list[str]:
        """Keys whose first event is to be sent now and that no node is sending."""

    async def lease(self, key: str, *, keep: bool = False) -> bool:
        """Take (unless ``keep``: only keep) the right to send ``key``'s events, for
        :data:`LEASE_SECONDS`; whether this node has it."""

    async def head(self, key: str) -> Event | None:
        """``key``'s first event."""

    async def done(self, key: str, event_id: str) -> bool:
        """The first event of ``key`` (``event_id``) was answered: drop it; whether ``key``
        has more (else its lease is given back)."""

    async def later(self, key: str, at: float) -> None:
        """Sending ``key`` failed: give its lease back; it is due again at ``at``."""

    async def release(self, key: str) -> None:
        """Give ``key``'s lease back (this node stops sending it)."""

    async def online(self, user: str, now: float) -> None:
        """A device of ``user`` joined: ``user.online`` unless it is online already."""

    async def expect_offline(self, user: str, at: float) -> None:
        """A device of ``user`` went: check at ``at`` whether it is offline."""

    async def offline_due(self, now: float, limit: int) -> list[str]:
        """Users to check now."""

    async def offline(self, user: str, now: float, still: bool) -> None:
        """``user`` was checked: offline (``still`` False: ``user.offline`` if it was
        online), or still online; either way it is not to be checked again."""

    async def beat(self, now: float, grace: float) -> float:
        """(A cluster) this node is alive; the users of nodes that died are checked after
        ``grace``. The wait until the next beat."""

    async def close(self) -> int:
        """Stop; how many events this log loses (the in-memory one: what was not sent)."""


class LocalEventLog:
    """One process's events, in memory (lost with the process: counted and logged)."""

    def __init__(self, wanted: Collection[str]) -> None:
        self.wanted = frozenset(wanted)
        self._queues: dict[str, deque[Event]] = {}
        self._size = 0
        self._leased: set[str] = set()
        self._later: dict[str, float] = {}
        #: events dropped (the memory bound), by type, not yet told
        self.dropped: list[str] = []
        self._online: set[str] = set()
        self._user_seq: dict[str, int] = {}
        self._due: dict[str, float] = {}

    def push(self, events: Collection[Event]) -> None:
        """Queue ``events`` (the wanted ones), in order (the in-memory call store does, as
        it commits a change)."""
        for event in events:
            if event.type not in self.wanted:
                continue
            if self._size >= LOCAL_EVENTS:
                self.dropped.append(event.type)
                continue
            self._queues.setdefault(event.key, deque()).append(event)
            self._size += 1

    @property
    def size(self) -> int:
        """Events waiting."""
        return self._size

    async def due(self, now: float, limit: int) -> list[str]:
        found: list[str] = []
        for key in self._queues:
            if key not in self._leased and self._later.get(key, 0.0) <= now:
                found.append(key)
                if len(found) >= limit:
                    break
        return found

    async def lease(self, key: str, *, keep: bool = False) -> bool:
        if key not in self._queues or (keep and key not in self._leased):
            return False
        self._leased.add(key)
        return True

    async def head(self, key: str) -> Event | None:
        queue = self._queues.get(key)
        return queue[0] if queue else None

    async def done(self, key: str, event_id: str) -> bool:
        queue = self._queues.get(key)
        if queue and queue[0].id == event_id:
            queue.popleft()
            self._size -= 1
            self._later.pop(key, None)
        if not queue:
            self._queues.pop(key, None)
            self._leased.discard(key)
            self._later.pop(key, None)
            return False
        return True

    async def later(self, key: str, at: float) -> None:
        self._later[key] = at
        self._leased.discard(key)

    async def release(self, key: str) -> None:
        self._leased.discard(key)

    async def online(self, user: str, now: float) -> None:
        self._due.pop(user, None)
        if user not in self._online:
            self._online.add(user)
            self._user_event(ev.ONLINE, user, now)

    async def expect_offline(self, user: str, at: float) -> None:
        if user in self._online:
            self._due[user] = at

    async def offline_due(self, now: float, limit: int) -> list[str]:
        return [user for user, at in self._due.items() if at <= now][:limit]

    async def offline(self, user: str, now: float, still: bool) -> None:
        self._due.pop(user, None)
        if not still and user in self._online:
            self._online.discard(user)
            self._user_event(ev.OFFLINE, user, now)

    async def beat(self, now: float, grace: float) -> float:
        return 3600.0  # (one process: no other node to watch)

    async def close(self) -> int:
        # what is lost: the events not sent, and the offline checks not made
        lost = self._size + (len(self._due) if ev.OFFLINE in self.wanted else 0)
        self._queues, self._size, self._due = {}, 0, {}
        return lost

    def _user_event(self, type_: str, user: str, now: float) -> None:
        seq = self._user_seq[user] = self._user_seq.get(user, 0) + 1
        self.push([ev.event(type_, ev.user_key(user), seq, now, user=user)])
        if type_ == ev.OFFLINE:
            # (an offline user's numbers are kept until it comes back: bounded by users
            # seen, forgotten oldest first past the bound)
            while len(self._user_seq) > LOCAL_EVENTS:
                self._user_seq.pop(next(iter(self._user_seq)))


class Lifecycle:
    """Sends the lifecycle events of ``log`` through ``webhook`` (see the module
    docstring), and tells users online and offline from what presence knows."""

    def __init__(self, log: EventLog, webhook: Webhook, presence: Presence,
                 logger: logging.Logger, *, grace: float, retry_for: float,
                 metrics: Metrics | None = None) -> None:
        self.log = log
        self.webhook = webhook
        self.presence = presence
        self.grace = grace
        self.retry_for = retry_for
        self.metrics = metrics or Metrics()
        #: requests of their own: a slow receiver of lifecycle events never delays a push
        #: wake-up (call.incoming), and no attempt waits for a connection
        self.outbound = Outbound("lifecycle", concurrency=WORKERS)
        self._logger = logger
        self._workers: dict[str, asyncio.Task[None]] = {}
        #: the next backoff of keys whose last attempt failed (forgotten once delivered)
        self._backoff: dict[str, float] = {}
        self._loops: list[asyncio.Task[None]] = []
        self.users = bool({ev.ONLINE, ev.OFFLINE} & log.wanted)

    async def start(self) -> None:
        self._loops = [
            asyncio.ensure_future(forever(self._step, name="lifecycle_webhooks",
                                          log=self._logger)),
            asyncio.ensure_future(forever(self._beat, name="lifecycle_beat",
                                          log=self._logger))]

    async def stop(self, flush: float = 0.0) -> None:
        """Stop sending (after up to ``flush`` seconds for what is queued in memory): the
        keys this node sends are given back; what an in-memory log still holds is lost,
        counted and logged."""
        if flush > 0 and isinstance(self.log, LocalEventLog):
            deadline = time.monotonic() + flush
            while self.log.size and time.monotonic() < deadline:
                await self._step()
                await asyncio.sleep(0.05)
        for loop in self._loops:
            loop.cancel()
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        workers = list(self._workers.items())
        for _, task in workers:
            task.cancel()
        for key, task in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(EventLogUnavailable):
                await self.log.release(key)
        lost = await self.log.close()
        if lost:
            self.metrics.webhook_events.labels("any", "lost").inc(lost)
            log_event(self._logger, "webhook_events_lost", logging.WARNING, events=lost,
                      why="shutdown")

    async def joined(self, user: str) -> None:
        """A device of ``user`` joined its room."""
        if self.users:
            try:
                await self.log.online(user, time.time())
            except EventLogUnavailable:
                self._unrecorded(ev.ONLINE, user)

    async def left(self, user: str) -> None:
        """A device of ``user`` went: it is offline if no device is back within the grace."""
        if self.users:
            try:
                await self.log.expect_offline(user, time.time() + self.grace)
            except EventLogUnavailable:
                self._unrecorded(ev.OFFLINE, user)

    def _unrecorded(self, type_: str, user: str) -> None:
        self.metrics.webhook_events.labels(type_, "lost").inc()
        log_event(self._logger, "webhook_event_lost", logging.WARNING, type=type_,
                  user=user, why="event_log_unavailable")

    async def _beat(self) -> float:
        try:
            return await self.log.beat(time.time(), self.grace)
        except EventLogUnavailable:
            return PUMP_SECONDS * 4

    async def _step(self) -> float:
        now = time.time()
        self._count_dropped()
        try:
            if self.users:
                for user in await self.log.offline_due(now, OFFLINE_BATCH):
                    try:
                        devices = await self.presence.devices(user)
                    except PresenceUnavailable:
                        break
                    await self.log.offline(user, now, any(d.joined for d in devices))
            room = WORKERS - len(self._workers)
            if room > 0:
                for key in await self.log.due(now, room):
                    if key not in self._workers and await self.log.lease(key):
                        task = asyncio.ensure_future(self._send_key(key))
                        self._workers[key] = task
                        task.add_done_callback(functools.partial(self._forget, key))
        except EventLogUnavailable:
            return PUMP_SECONDS * 4
        return PUMP_SECONDS

    def _forget(self, key: str, task: asyncio.Task[None]) -> None:
        if self._workers.get(key) is task:
            del self._workers[key]

    def _count_dropped(self) -> None:
        dropped = getattr(self.log, "dropped", None)
        if dropped:
            for type_ in dropped:
                self.metrics.webhook_events.labels(type_, "dropped").inc()
            log_event(self._logger, "webhook_events_dropped", logging.WARNING,
                      events=len(dropped), why="memory_bound")
            dropped.clear()

    async def _send_key(self, key: str) -> None:
        """Send ``key``'s events in order while this node holds its lease; after a failed
        attempt the key is given back, due again after its backoff (on any node)."""
        sending = asyncio.current_task()
        assert sending is not None
        renewing = asyncio.ensure_future(self._renew(key, sending))
        try:
            while True:
                event = await self.log.head(key)
                if event is None:
                    await self.log.done(key, "")
                    return
                if not await self._send(key, event):
                    return
                self._backoff.pop(key, None)
                if not await self.log.done(key, event.id):
                    return
        except EventLogUnavailable:
            with contextlib.suppress(EventLogUnavailable):
                await self.log.release(key)
        finally:
            renewing.cancel()

    async def _renew(self, key: str, sending: asyncio.Task[None]) -> None:
        """Keep ``key``'s lease while ``sending`` runs; stop it when the lease is lost (the
        key's events are another node's now: this one must not send them too)."""
        while True:
            await asyncio.sleep(LEASE_SECONDS / 3)
            try:
                held = await self.log.lease(key, keep=True)
            except EventLogUnavailable:
                held = False
            if not held:
                sending.cancel()
                return

    async def _send(self, key: str, event: Event) -> bool:
        """One attempt at ``event``, the first of ``key``: True when it is answered (or
        given up), False when it is to be tried again later (the key is given back)."""
        body = orjson.dumps(event.body())
        status, error = await self.webhook.post(body, event.id, event=event.type,
                                                within=REQUEST_TIMEOUT,
                                                outbound=self.outbound)
        fields = {"event_id": event.id, "type": event.type, "host": self.webhook.host}
        if 200 <= status < 300:
            self.metrics.webhook_events.labels(event.type, "delivered").inc()
            log_event(self._logger, "webhook_event_delivered", logging.DEBUG, **fields)
            return True
        if 300 <= status < 500 and status not in RETRY_STATUSES:
            self.metrics.webhook_events.labels(event.type, "refused").inc()
            log_event(self._logger, "webhook_event_refused", logging.WARNING,
                      status=status, **fields)
            return True
        backoff = self._backoff.get(key, FIRST_BACKOFF)
        if time.time() + backoff > event.ts + self.retry_for:
            self.metrics.webhook_events.labels(event.type, "undeliverable").inc()
            log_event(self._logger, "webhook_event_undeliverable", logging.WARNING,
                      status=status, error=error, **fields)
            return True
        self.metrics.webhook_events.labels(event.type, "retry").inc()
        log_event(self._logger, "webhook_event_retry", logging.INFO, status=status,
                  error=error, backoff=backoff, **fields)
        self._backoff[key] = min(backoff * 2, MAX_BACKOFF)
        await self.log.later(key, time.time() + backoff)
        return False
