"""The call permission hook: before an offer opens a call, the app's backend is asked whether
this caller may ring this callee (block lists, contacts-only apps).

``POST SIGNAL_CALL_POLICY_URL`` with ``{"type": "call.permission", "from", "to", "ts"}``,
signed as the webhook is (:func:`service.calls.webhook.signature`, ``SIGNAL_WEBHOOK_SECRET``).
The call may ring when the answer is ``200 {"allow": true}``; ``{"allow": false}`` refuses the
offer (``forbidden``). Both answers are kept per (caller, callee) for
``SIGNAL_CALL_POLICY_CACHE`` seconds on this node. Anything else (no answer within
``SIGNAL_CALL_POLICY_TIMEOUT``, another status, not that JSON) is no answer: the offer is
refused ``unavailable`` (the caller may try again), or rings when
``SIGNAL_CALL_POLICY_FAIL_OPEN`` says so; no answer is not kept. Requests are bounded apart
from other outbound requests (:mod:`service.outbound`), at most :data:`PER_CALLER` of one
caller at a time (more are refused ``rate_limited``: one caller offering to many cannot take
the slots of everyone's new calls), and awaited only by the offer that asked: the relays of
other users never wait for them.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit

from service.calls.webhook import signature
from service.errors import RateLimited
from service.outbound import Outbound, OutboundError
from service.telemetry import log_event

PERMISSION: Final = "call.permission"
#: requests under way at once ...
CONNECTIONS: Final = 20
#: ... and for one caller (a caller who offers to many at once does not take every slot)
PER_CALLER: Final = 2
#: answers kept at most (the oldest are forgotten first)
CACHED: Final = 10_000
#: the outcomes, as counted: allowed, denied (asked now or kept), no_answer
ALLOWED: Final = "allowed"
DENIED: Final = "denied"
NO_ANSWER: Final = "no_answer"
BUSY: Final = "caller_busy"


class CallPolicy:
    """Asks the backend (see the module docstring); :meth:`allows` is None on no answer."""

    def __init__(self, url: str, secret: str, logger: logging.Logger, *, cache: float,
                 timeout: float, on_result: Callable[[str], None] = lambda result: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.outbound = Outbound("call_policy", concurrency=CONNECTIONS)
        self._url, self._secret, self._log = url, secret, logger
        self._cache_seconds, self._timeout = cache, timeout
        self._clock = clock
        self.on_result = on_result
        self._host = urlsplit(url).netloc.rpartition("@")[2]
        #: (caller, callee) -> (allowed, kept until)
        self._answers: OrderedDict[tuple[str, str], tuple[bool, float]] = OrderedDict()
        #: asks under way, per caller
        self._asking: dict[str, int] = {}

    async def allows(self, caller: str, callee: str) -> bool | None:
        """Whether ``caller`` may ring ``callee``; None when the backend gave no answer.
        Raises :class:`RateLimited` when ``caller`` already waits for :data:`PER_CALLER`
        answers."""
        key, now = (caller, callee), self._clock()
        kept = self._answers.get(key)
        if kept is not None and kept[1] > now:
            self.on_result(ALLOWED if kept[0] else DENIED)
            return kept[0]
        if self._asking.get(caller, 0) >= PER_CALLER:
            self.on_result(BUSY)
            raise RateLimited("wait for your other calls to be allowed")
        self._asking[caller] = self._asking.get(caller, 0) + 1
        try:
            answer = await self._ask(caller, callee)
        finally:
            left = self._asking.pop(caller) - 1
            if left:
                self._asking[caller] = left
        if answer is None:
            self.on_result(NO_ANSWER)
            return None
        self.on_result(ALLOWED if answer else DENIED)
        if self._cache_seconds > 0:
            self._answers[key] = (answer, self._clock() + self._cache_seconds)
            self._answers.move_to_end(key)
            while len(self._answers) > CACHED:
                self._answers.popitem(last=False)
        return answer

    async def _ask(self, caller: str, callee: str) -> bool | None:
        body = json.dumps({"type": PERMISSION, "from": caller, "to": callee,
                           "ts": int(time.time())}, separators=(",", ":")).encode()
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", "X-Signal-Timestamp": timestamp,
                   "X-Signal-Signature": signature(self._secret, timestamp, body)}
        try:
            status, data = await self.outbound.post_for_json(self._url, body, headers,
                                                             within=self._timeout)
        except OutboundError as exc:
            log_event(self._log, "call_policy_no_answer", logging.WARNING, host=self._host,
                      error=str(exc))
            return None
        if status == 200 and isinstance(data, dict) and isinstance(data.get("allow"), bool):
            return bool(data["allow"])
        log_event(self._log, "call_policy_no_answer", logging.WARNING, host=self._host,
                  status=status, error="unexpected_answer")
        return None
