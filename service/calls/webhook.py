"""The incoming-call webhook: tells the app's backend that an offline user is being called,
so it can wake the app with a (VoIP) push.

``POST SIGNAL_WEBHOOK_URL`` with ``{"type": "call.incoming", "callId", "from", "to", "ts"}``
(never SDP or candidates), signed: ``X-Signal-Timestamp: <unix seconds>`` and
``X-Signal-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>``; the
receiver recomputes it over the raw body and refuses stale timestamps. ``Idempotency-Key`` is
the call id: a retried delivery is the same event. A 2xx ends it; a 4xx is final (the
receiver refused it), and so is a 3xx (redirects are not followed: a POST turned into a GET
elsewhere, with the signature, is not a delivery); anything else (5xx, timeout, no
connection) is retried with backoff while the call rings, and stops as soon as it does not
(answered, declined, hung up): a late success must not push a call that is over.

Requests are bounded apart from the service's other outbound requests (:mod:`service.outbound`,
at most :data:`CONNECTIONS` at a time), asynchronous: a receiver that hangs delays only
webhooks.
Credentials in the URL (``https://user:pass@host/hook``) are sent as Basic authentication.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final
from urllib.parse import urlsplit

from service.outbound import Outbound, OutboundError
from service.telemetry import log_event

INCOMING: Final = "call.incoming"
#: first wait between attempts; doubled after each failure, at most MAX_BACKOFF
FIRST_BACKOFF: Final = 0.5
MAX_BACKOFF: Final = 8.0
#: one attempt's time limit
REQUEST_TIMEOUT: Final = 5.0
#: webhook requests under way at once
CONNECTIONS: Final = 10
Ringing = Callable[[], Awaitable[bool]]


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of ``timestamp + "." + body`` with ``secret``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class Webhook:
    """Sends incoming-call events in the background (see the module docstring)."""

    def __init__(self, url: str, secret: str, logger: logging.Logger,
                 on_result: Callable[[str], None] = lambda result: None) -> None:
        #: told each delivery's result: delivered, refused, failed (given up), retry, and
        #: stopped (the call left ringing before it was delivered)
        self.on_result = on_result
        self.outbound = Outbound("webhook", concurrency=CONNECTIONS)
        self._url = url
        self._secret = secret
        self._log = logger
        #: for logs: where, without a path or query that may hold a secret
        self._host = urlsplit(url).netloc.rpartition("@")[2]
        self._tasks: set[asyncio.Task[None]] = set()

    def incoming(self, call_id: str, caller: str, callee: str, within: float,
                 ringing: Ringing | None = None) -> None:
        """Queue ``call.incoming``; it is tried for at most ``within`` seconds, and no more
        once ``ringing()`` says the call does not ring any longer."""
        task = asyncio.ensure_future(self._deliver(call_id, caller, callee, within, ringing))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, call_id: str, caller: str, callee: str, within: float,
                       ringing: Ringing | None) -> None:
        deadline = time.monotonic() + within
        body = json.dumps({"type": INCOMING, "callId": call_id, "from": caller, "to": callee,
                           "ts": int(time.time())}, separators=(",", ":")).encode()
        backoff = FIRST_BACKOFF
        attempt = 0
        while True:
            attempt += 1
            left = deadline - time.monotonic()
            status, error = await self.post(body, call_id,
                                            within=max(0.1, min(REQUEST_TIMEOUT, left)))
            if 200 <= status < 300:
                self.on_result("delivered")
                log_event(self._log, "webhook_delivered", call=call_id, host=self._host,
                          attempts=attempt)
                return
            if 400 <= status < 500:
                self.on_result("refused")
                log_event(self._log, "webhook_refused", logging.WARNING, call=call_id,
                          host=self._host, status=status, attempts=attempt)
                return
            if 300 <= status < 400:
                self.on_result("failed")
                log_event(self._log, "webhook_failed", logging.WARNING, call=call_id,
                          host=self._host, status=status, error="redirect_not_followed",
                          attempts=attempt)
                return
            left = deadline - time.monotonic()
            if left <= backoff:
                self.on_result("failed")
                log_event(self._log, "webhook_failed", logging.WARNING, call=call_id,
                          host=self._host, status=status, error=error, attempts=attempt)
                return
            self.on_result("retry")
            log_event(self._log, "webhook_retry", logging.INFO, call=call_id, host=self._host,
                      status=status, error=error, attempt=attempt)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
            if ringing is not None and not await ringing():
                self.on_result("stopped")
                log_event(self._log, "webhook_stopped", call=call_id, host=self._host,
                          attempts=attempt)
                return

    async def post(self, body: bytes, idempotency_key: str, *,
                   within: float = REQUEST_TIMEOUT, event: str = INCOMING,
                   outbound: Outbound | None = None) -> tuple[int, str]:
        """One signed attempt (through ``outbound``, by default this webhook's own
        requests): (HTTP status, or 0 with the error when there was none)."""
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json",
                   "X-Signal-Timestamp": timestamp,
                   "X-Signal-Signature": signature(self._secret, timestamp, body),
                   "X-Signal-Event": event,
                   "Idempotency-Key": idempotency_key}
        try:
            return await (outbound or self.outbound).post(self._url, body, headers,
                                                           within=within), ""
        except OutboundError as exc:
            return 0, str(exc)

    @property
    def host(self) -> str:
        """Where it goes, for logs (no path or query: they may hold a secret)."""
        return self._host

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
