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

from redis import asyncio as aioredis


class RedisLink:
    """The process's Redis clients."""

    def __init__(self, url: str, *, max_connections: int, timeout: float = 1.0) -> None:
        self.url = url
        pool = aioredis.BlockingConnectionPool.from_url(
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
