"""Outbound HTTP: requests of one purpose (JWKS fetches, webhooks), bounded apart.

Each purpose has its own bound on requests under way, so a receiver that hangs holds only
its own purpose's share: webhooks to a dead backend never delay a token check (before, both
ran in asyncio's default thread pool, six threads here). Requests are asynchronous (aiohttp),
each has a time limit, redirects are never followed (a 3xx is the answer, for the caller to
judge), and credentials in a URL (``https://user:pass@host/``) are sent as Basic
authentication, never logged. Each request has a session of its own: both purposes are rare
(a JWKS at most once per refresh interval, a webhook per offline callee), and nothing is left
open between them.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Final

import aiohttp

from service import __version__

USER_AGENT: Final = f"signaling-service/{__version__}"
#: the largest answer read (a JWKS); more is an error
MAX_ANSWER_BYTES: Final = 1024 * 1024


class OutboundError(Exception):
    """No usable answer: no connection, a timeout, or an answer that could not be read."""


class Outbound:
    """HTTP requests of one purpose, at most ``concurrency`` under way at a time (the others
    wait their turn, within their own time limit)."""

    def __init__(self, purpose: str, *, concurrency: int) -> None:
        self.purpose = purpose
        self._slots = asyncio.Semaphore(concurrency)

    async def post(self, url: str, body: bytes, headers: dict[str, str], *,
                   within: float) -> int:
        """POST ``body``; the answer's status (a redirect is returned, not followed)."""
        try:
            async with asyncio.timeout(within), self._slots, _session() as http, http.post(
                    url, data=body, headers=headers, allow_redirects=False) as response:
                return response.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise OutboundError(type(exc).__name__) from None

    async def get_json(self, url: str, *, within: float) -> Any:
        """GET a JSON document; a status other than 200 is an :class:`OutboundError`."""
        try:
            async with asyncio.timeout(within), self._slots, _session() as http, http.get(
                    url, allow_redirects=False) as response:
                if response.status != 200:
                    raise OutboundError(f"status {response.status}")
                data = await response.content.read(MAX_ANSWER_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise OutboundError(type(exc).__name__) from None
        if len(data) > MAX_ANSWER_BYTES:
            raise OutboundError("answer too large")
        try:
            return json.loads(data)
        except ValueError:
            raise OutboundError("not JSON") from None


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(headers={"User-Agent": USER_AGENT}, trust_env=False)
