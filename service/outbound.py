"""Outbound HTTP: requests of one purpose (JWKS fetches, webhooks), bounded apart.

Each purpose has its own bound on requests under way and its own threads for name lookups
(``getaddrinfo`` blocks; aiohttp's default resolver runs it in asyncio's default pool), so a
receiver, or a receiver's DNS, that hangs holds only its own purpose: webhooks to a dead
backend never delay a token check (before, both ran in asyncio's default thread pool, six
threads here). Requests are asynchronous (aiohttp), each has a time limit, and the usual proxy
variables (``HTTPS_PROXY``, ``NO_PROXY``) are honoured. Webhooks follow no redirect (a 3xx is
the answer, for the caller to judge); a JWKS may be redirected a few times, never from https
to http. Credentials in a URL (``https://user:pass@host/``) are sent as Basic
authentication, never logged. Each request has a session of its own: both purposes are rare
(a JWKS at most once per refresh interval, a webhook per offline callee).
"""

from __future__ import annotations

import asyncio
import json
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from service import __version__

USER_AGENT: Final = f"signaling-service/{__version__}"
#: the largest answer read (a JWKS); more is an error
MAX_ANSWER_BYTES: Final = 1024 * 1024
#: redirects a GET may follow
MAX_REDIRECTS: Final = 3
#: threads for one purpose's name lookups
LOOKUP_THREADS: Final = 2


class OutboundError(Exception):
    """No usable answer: no connection, a timeout, or an answer that could not be read."""


class Outbound:
    """HTTP requests of one purpose, at most ``concurrency`` under way at a time (the others
    wait their turn, within their own time limit)."""

    def __init__(self, purpose: str, *, concurrency: int) -> None:
        self.purpose = purpose
        self._slots = asyncio.Semaphore(concurrency)
        self._resolver = _Resolver(ThreadPoolExecutor(
            LOOKUP_THREADS, thread_name_prefix=f"lookup-{purpose}"))

    def _session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(resolver=self._resolver),
            headers={"User-Agent": USER_AGENT}, trust_env=True)

    async def post(self, url: str, body: bytes, headers: dict[str, str], *,
                   within: float) -> int:
        """POST ``body``; the answer's status (a redirect is returned, not followed)."""
        try:
            async with asyncio.timeout(within), self._slots, self._session() as http, \
                    http.post(url, data=body, headers=headers,
                              allow_redirects=False) as response:
                return response.status
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            raise OutboundError(type(exc).__name__) from None

    async def post_for_json(self, url: str, body: bytes, headers: dict[str, str], *,
                            within: float, limit: int = 4096) -> tuple[int, Any]:
        """POST ``body``; the answer's status and its JSON (None when it is not JSON, or
        longer than ``limit`` bytes). A redirect is returned, not followed."""
        try:
            async with asyncio.timeout(within), self._slots, self._session() as http, \
                    http.post(url, data=body, headers=headers,
                              allow_redirects=False) as response:
                data = await response.content.read(limit + 1)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            raise OutboundError(type(exc).__name__) from None
        if len(data) > limit:
            return status, None
        try:
            return status, json.loads(data)
        except ValueError:
            return status, None

    async def get_json(self, url: str, *, within: float) -> Any:
        """GET a JSON document (through at most :data:`MAX_REDIRECTS` redirects, none from
        https to http); a status other than 200 is an :class:`OutboundError`."""
        data = bytearray()
        try:
            async with asyncio.timeout(within), self._slots, self._session() as http, \
                    http.get(url, max_redirects=MAX_REDIRECTS) as response:
                if url.startswith("https:") and response.url.scheme != "https":
                    raise OutboundError("redirected away from https")
                if response.status != 200:
                    raise OutboundError(f"status {response.status}")
                async for chunk in response.content.iter_chunked(65536):
                    data += chunk
                    if len(data) > MAX_ANSWER_BYTES:
                        raise OutboundError("answer too large")
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            raise OutboundError(type(exc).__name__) from None
        try:
            return json.loads(data)
        except ValueError:
            raise OutboundError("not JSON") from None


class _Resolver(AbstractResolver):
    """Name lookups in threads of one purpose's own."""

    def __init__(self, executor: ThreadPoolExecutor) -> None:
        self._executor = executor

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        infos = await asyncio.get_running_loop().run_in_executor(
            self._executor, socket.getaddrinfo, host, port, family, socket.SOCK_STREAM)
        return [ResolveResult(hostname=host, host=str(address[0]), port=int(address[1]),
                              family=found, proto=proto,
                              flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV)
                for found, _, proto, _, address in infos]

    async def close(self) -> None:
        return None
