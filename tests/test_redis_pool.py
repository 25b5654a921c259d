"""The Redis command pool hands out connections first come, first served (real Redis)."""

from __future__ import annotations

import asyncio
import contextlib

from redis import asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from service.cluster.link import FairConnectionPool
from tests.test_cluster import redis_url  # noqa: F401  (the fixture)


async def _starved(pool: aioredis.BlockingConnectionPool) -> bool:
    """One connection; a busy caller pings in a loop (taking the connection again as soon
    as it gives it back) while another waits for a single ping. True when the waiter was
    refused ``No connection available``."""
    client = aioredis.Redis(connection_pool=pool)
    stop = asyncio.Event()

    async def busy() -> None:
        while not stop.is_set():
            await client.ping()

    hog = asyncio.ensure_future(busy())
    await asyncio.sleep(0.05)
    try:
        await client.ping()
        return False
    except RedisConnectionError:
        return True
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await hog
        await client.aclose(close_connection_pool=True)


async def test_a_waiting_command_is_not_overtaken(redis_url: str) -> None:  # noqa: F811
    """With the stock blocking pool the waiter loses every race to the busy caller and is
    refused after the pool's timeout (so a relay was answered ``unavailable`` under load
    while Redis was fine); the fair pool serves it in turn."""
    stock = aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=1,
                                                     timeout=0.3)
    assert await _starved(stock)  # what the fair pool fixes
    fair = FairConnectionPool.from_url(redis_url, max_connections=1, timeout=0.3)
    assert not await _starved(fair)
