""":class:`SignedRedisManager`: ``socketio.AsyncRedisManager`` with these changes:

- every message on the channel carries an HMAC (``SIGNAL_REDIS_SECRET``), a timestamp, a
  random id and the publishing node; unsigned, forged, stale (over 30 s) or replayed messages
  are dropped, so a client of the same Redis that can PUBLISH cannot inject events or
  disconnects. Ids are remembered for as long as their message could still pass the age
  check (not a fixed count, which a busy cluster would cycle through within the window);
- a publish that fails twice raises :class:`ClusterUnavailable` (the stock manager logs and
  drops it), so the relay is answered ``unavailable`` instead of a silent loss;
- the subscription has a connection of its own (:mod:`service.cluster.link`), counts as up
  only once Redis has confirmed it, and retries every second at most (the stock manager backs
  off to a minute), so delivery resumes within about a second of Redis coming back.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import orjson
import socketio
from redis.exceptions import RedisError

from service.cluster.link import RedisLink
from service.delivery import DeliveryUnavailable
from service.telemetry import Metrics, log_event
from service.transport import InlineManager

#: messages older than this (or from a clock this far ahead) are dropped
MAX_MESSAGE_AGE: Final = 30.0
SUBSCRIBE_RETRY_SECONDS: Final = 1.0
#: what :meth:`SignedRedisManager.open` returns for this node's own messages
OWN: Final = "\x00own"


def _dumps(value: Any) -> str:
    """JSON text, by orjson (what it cannot encode, by the standard library)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value)


class ClusterUnavailable(DeliveryUnavailable):
    """A message could not be published to the other nodes."""


class ReplayWindow:
    """Ids of accepted messages, each kept ``2 * MAX_MESSAGE_AGE`` seconds after it arrived:
    a message accepted at ``t`` has ``ts >= t - MAX_MESSAGE_AGE``, so a copy of it passes the
    age check only until ``t + 2 * MAX_MESSAGE_AGE``."""

    def __init__(self, keep: float = 2 * MAX_MESSAGE_AGE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._keep = keep
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()

    def first_time(self, mid: str) -> bool:
        """Record ``mid``; False if it was seen within the window."""
        now = self._clock()
        while self._seen:
            oldest, arrived = next(iter(self._seen.items()))
            if now - arrived <= self._keep:
                break
            del self._seen[oldest]
        if mid in self._seen:
            return False
        self._seen[mid] = now
        return True

    def __len__(self) -> int:
        return len(self._seen)


class SignedRedisManager(socketio.AsyncRedisManager, InlineManager):  # type: ignore[misc]
    """python-socketio's Redis manager on the process's Redis link, with signed messages
    (and local deliveries sent inline: :class:`~service.transport.InlineManager`)."""

    def __init__(self, link: RedisLink, *, channel: str, secret: str,
                 logger: logging.Logger, metrics: Metrics | None = None) -> None:
        super().__init__(url=link.url, channel=channel)
        self.metrics = metrics or Metrics()
        #: why :meth:`open` last refused an envelope
        self.drop_reason = "malformed"
        #: (user, device, event, message) of a call signal whose socket here is gone
        self.undelivered: Callable[[str, str, str, Any], Awaitable[None]] | None = None
        self.link = link
        self._key = secret.encode()
        self._log = logger
        self._replays = ReplayWindow()
        self.dropped = 0
        #: whether messages from other nodes reach this one now (Redis confirmed it)
        self.subscribed = False
        #: (the id of this node's flush marker, set when the listener reaches it)
        self._flush: tuple[bytes, asyncio.Event] | None = None

    # ---- connections ----

    def _redis_connect(self) -> None:
        self.redis = self.link.client
        # subscribe confirmations are read (not skipped): they say when messages flow
        self.pubsub = self.link.subscriber.pubsub(ignore_subscribe_messages=False)
        self.connected = True

    async def _redis_listen_with_retries(self) -> AsyncIterator[dict[str, Any]]:
        failing = False
        while True:
            try:
                self._redis_connect()
                await self.pubsub.subscribe(self.channel)
                async for message in self.pubsub.listen():
                    if message.get("type") == "subscribe":
                        self.subscribed = True
                        if failing:
                            log_event(self._log, "redis_subscription_restored",
                                      channel=self.channel)
                            failing = False
                        continue
                    yield message
                raise RedisError("the subscription ended")
            except (RedisError, OSError) as exc:
                self.subscribed = False
                if not failing:
                    self.metrics.redis_errors.labels("subscribe").inc()
                    log_event(self._log, "redis_subscription_lost", logging.WARNING,
                              channel=self.channel, error_type=type(exc).__name__)
                    failing = True
                with contextlib.suppress(Exception):
                    await _aclose(self.pubsub)
                await asyncio.sleep(SUBSCRIBE_RETRY_SECONDS)

    async def flush(self, within: float) -> bool:
        """Wait until this node has handled every message published on the channel before
        now; whether it did within ``within`` seconds. A node that leaves calls it once it is
        no longer counted online: what other nodes sent to its sockets until then reaches
        the handlers (which hold it for the party, its socket being gone) instead of dying
        with the process. (Messages are handled one at a time, in the order Redis delivers
        them: when the listener reaches a marker this node published, all before it are
        done.)"""
        if not self.subscribed:
            return False
        marker = self.seal({"method": "flush"})
        done = asyncio.Event()
        self._flush = (json.loads(marker)["id"].encode(), done)
        try:
            await self.link.client.publish(self.channel, marker)
            await asyncio.wait_for(done.wait(), within)
            return True
        except (RedisError, OSError, TimeoutError):
            return False
        finally:
            self._flush = None

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

    def _sign(self, body: str, ts: float, mid: str, node: str) -> str:
        text = f"{self.channel}\n{ts!r}\n{mid}\n{node}\n{body}".encode()
        return hmac.new(self._key, text, hashlib.sha256).hexdigest()

    def seal(self, data: Any) -> str:
        """The signed envelope of a manager message."""
        body = _dumps(data)
        ts, mid, node = time.time(), secrets.token_hex(12), self.host_id
        return _dumps({"id": mid, "ts": ts, "node": node, "body": body,
                       "sig": self._sign(body, ts, mid, node)})

    def emit_envelope(self, event: str, data: Any, room: str, skip_sid: str,
                      device: tuple[str, str] | None = None) -> str:
        """The signed message by which python-socketio's managers on the other nodes emit
        ``event`` to ``room`` (what ``AsyncPubSubManager.emit`` publishes). ``device``:
        (user, device address) when ``room`` is one socket in a call (see
        :meth:`_handle_emit`)."""
        message = {"method": "emit", "event": event, "data": [data], "binary": False,
                   "namespace": "/", "room": room, "skip_sid": skip_sid,
                   "callback": None, "host_id": self.host_id}
        if device is not None:
            message["device"] = list(device)
        return self.seal(message)

    async def _handle_emit(self, message: dict[str, Any]) -> None:
        """A call signal for one of this node's sockets that is closing, or gone, is handed
        to :attr:`undelivered` (which holds it for the party) instead of being written to a
        dead socket. The listener awaits each message in turn, so what it holds keeps the
        order it was sent in."""
        device = message.get("device")
        if device is not None and self.undelivered is not None:
            sid = message.get("room")
            open_ = getattr(self.server, "session_open", None)
            if isinstance(sid, str) and open_ is not None and not open_(sid):
                user, address = device
                await self.undelivered(str(user), str(address), str(message["event"]),
                                       message["data"][0])
                return
        await super()._handle_emit(message)

    def open(self, raw: bytes | str) -> str | None:
        """The body of a genuine, fresh, first-seen envelope; :data:`OWN` for one this node
        published (handled here already); None otherwise."""
        try:
            envelope = json.loads(raw)
            ts, mid, node, body, sig = (envelope["ts"], envelope["id"], envelope["node"],
                                        envelope["body"], envelope["sig"])
        except (ValueError, TypeError, KeyError):
            self.drop_reason = "malformed"
            return None
        if node == self.host_id:
            return OWN  # (a forger claiming to be us only gets its message ignored)
        if not (isinstance(ts, float) and isinstance(mid, str) and isinstance(node, str)
                and isinstance(body, str) and isinstance(sig, str)):
            self.drop_reason = "malformed"
            return None
        if not hmac.compare_digest(sig, self._sign(body, ts, mid, node)):
            self.drop_reason = "bad_signature"
            return None
        if abs(time.time() - ts) > MAX_MESSAGE_AGE:
            self.drop_reason = "stale"
            return None
        if not self._replays.first_time(mid):
            self.drop_reason = "replayed"
            return None
        return body

    async def _publish(self, data: Any) -> None:
        message = self.seal(data)
        for attempt in (1, 2):
            try:
                await self.link.client.publish(self.channel, message)
                return
            except (RedisError, OSError) as exc:
                if attempt == 2:
                    self.metrics.redis_errors.labels("publish").inc()
                    log_event(self._log, "redis_publish_failed", logging.WARNING,
                              channel=self.channel, error_type=type(exc).__name__)
                    raise ClusterUnavailable("cannot publish to Redis") from None

    async def _listen(self) -> AsyncIterator[str]:
        async for raw in super()._listen():
            body = self.open(raw)
            if body is OWN:
                flush = self._flush
                if flush is not None and flush[0] in (
                        raw if isinstance(raw, bytes) else str(raw).encode()):
                    flush[1].set()  # (everything published before it was handled)
                continue
            if body is None:
                self.dropped += 1
                self.metrics.cluster_dropped.labels(self.drop_reason).inc()
                if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                    log_event(self._log, "cluster_message_dropped", logging.WARNING,
                              channel=self.channel, dropped=self.dropped)
                continue
            yield body


async def _aclose(closable: Any) -> None:
    """``closable.aclose()``: typed in some redis-py releases and not in others."""
    await closable.aclose()
