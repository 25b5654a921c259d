"""The incoming-call webhook: tells the app's backend that an offline user is being called,
so it can wake the app with a (VoIP) push.

``POST SIGNAL_WEBHOOK_URL`` with ``{"type": "call.incoming", "callId", "from", "to", "ts"}``
(never SDP or candidates), signed: ``X-Signal-Timestamp: <unix seconds>`` and
``X-Signal-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>``; the
receiver recomputes it over the raw body and refuses stale timestamps. ``Idempotency-Key`` is
the call id: a retried delivery is the same event. A 2xx ends it; a 4xx is final (the
receiver refused it); anything else (5xx, timeout, no connection) is retried with backoff
until the call stops ringing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit

from service import __version__
from service.telemetry import log_event

INCOMING: Final = "call.incoming"
#: first wait between attempts; doubled after each failure, at most MAX_BACKOFF
FIRST_BACKOFF: Final = 0.5
MAX_BACKOFF: Final = 8.0
#: one attempt's time limit
REQUEST_TIMEOUT: Final = 5.0


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of ``timestamp + "." + body`` with ``secret``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
    """One POST; its HTTP status (raises OSError when there is no answer)."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


class Webhook:
    """Sends incoming-call events in the background (see the module docstring)."""

    def __init__(self, url: str, secret: str, logger: logging.Logger,
                 on_result: Callable[[str], None] = lambda result: None) -> None:
        #: told each attempt's result: delivered, refused, failed (given up), retry
        self.on_result = on_result
        self._url = url
        self._secret = secret
        self._log = logger
        #: for logs: where, without a path or query that may hold a secret
        self._host = urlsplit(url).netloc.rpartition("@")[2]
        self._tasks: set[asyncio.Task[None]] = set()

    def incoming(self, call_id: str, caller: str, callee: str, within: float) -> None:
        """Queue ``call.incoming``; it is tried for at most ``within`` seconds."""
        task = asyncio.ensure_future(self._deliver(call_id, caller, callee, within))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, call_id: str, caller: str, callee: str, within: float) -> None:
        deadline = time.monotonic() + within
        body = json.dumps({"type": INCOMING, "callId": call_id, "from": caller, "to": callee,
                           "ts": int(time.time())}, separators=(",", ":")).encode()
        backoff = FIRST_BACKOFF
        attempt = 0
        while True:
            attempt += 1
            timestamp = str(int(time.time()))
            headers = {"Content-Type": "application/json",
                       "User-Agent": f"signaling-service/{__version__}",
                       "X-Signal-Timestamp": timestamp,
                       "X-Signal-Signature": signature(self._secret, timestamp, body),
                       "Idempotency-Key": call_id}
            left = deadline - time.monotonic()
            try:
                status = await asyncio.to_thread(_post, self._url, body, headers,
                                                 max(0.1, min(REQUEST_TIMEOUT, left)))
            except (OSError, ValueError) as exc:
                status, error = 0, type(exc).__name__
            else:
                error = ""
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

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
