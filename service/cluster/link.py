"""The process's Redis connections: one bounded pool for commands, and a connection of its
own for the cluster subscription.

The stock manager builds a new client, and a new pool, every time a publish or the
subscription fails, and leaves the old ones to the garbage collector. Here publishing and
presence share one bounded pool whose reads time out (a Redis that stops answering must not
hang a relay), while the subscription has its own connection with no read timeout: a channel
may be quiet for as long as nobody calls, and some redis-py versions end ``listen()`` with a
timeout error on a quiet channel read through a pool that has one.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis import asyncio as aioredis
from redis.exceptions import ConnectionError


class FairConnectionPool(aioredis.BlockingConnectionPool):
    """redis-py's blocking pool, handing its connections out first come, first served.

    The stock pool lets a caller that arrives just as a connection is released take it ahead
    of those already waiting; under load (every worker's relays take a connection for a round
    trip) a waiter could starve past the pool's ``timeout`` and its relay be refused
    ``unavailable`` while Redis was fine. Here callers queue on a FIFO semaphore of
    ``max_connections`` first, for at most ``timeout``; the pool itself then never waits."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._turns = asyncio.Semaphore(self.max_connections)
        self._granted: set[Any] = set()

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            async with asyncio.timeout(self.timeout):
                await self._turns.acquire()
        except TimeoutError:
            raise ConnectionError("No connection available.") from None
        try:
            connection = await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except BaseException:
            self._turns.release()
            raise
        self._granted.add(connection)
        return connection

    async def release(self, connection: Any) -> None:
        try:
            await super().release(connection)
        finally:
            if connection in self._granted:
                self._granted.discard(connection)
                self._turns.release()


class RedisLink:
    """The process's Redis clients."""

    def __init__(self, url: str, *, max_connections: int, timeout: float = 1.0) -> None:
        self.url = url
        pool = FairConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout,
            socket_timeout=timeout, socket_connect_timeout=timeout,
            health_check_interval=30)
        self.client: aioredis.Redis = aioredis.Redis(connection_pool=pool)
        #: for the subscription only: no read timeout; a dead peer is found by keepalive
        #: and by the health check's PING
        self.subscriber: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_timeout=None, socket_connect_timeout=timeout,
            socket_keepalive=True, health_check_interval=10, max_connections=2)

    async def close(self) -> None:
        await self.client.aclose(close_connection_pool=True)
        await self.subscriber.aclose(close_connection_pool=True)
