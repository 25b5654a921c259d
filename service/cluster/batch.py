""":class:`ScriptBatch`: calls of one Lua script, sent together.

Every relay through Redis is one call of the publish-if-present script. Sent one by one, each
call paid for redis-py's whole command path (a pooled connection, a write, a timeout, a read)
and that, not Redis, capped a node's relays. Here the calls made during one turn of the event
loop go out as one pipeline (not a transaction: each call is atomic on its own, as before),
one round trip for all of them; each caller gets its own result or error.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript


class ScriptBatch:
    """Calls of ``script`` on ``redis``, batched per turn of the event loop."""

    def __init__(self, redis: Redis, script: AsyncScript) -> None:
        self._redis = redis
        self._script = script
        self._calls: list[tuple[list[str], list[str], asyncio.Future[Any]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def call(self, keys: list[str], args: list[str]) -> Any:
        """The script's result for ``keys`` and ``args``; raises what Redis or the connection
        raised for this call."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._calls:
            loop.call_soon(self._flush)
        self._calls.append((keys, args, future))
        return await future

    def _flush(self) -> None:
        calls, self._calls = self._calls, []
        task = asyncio.ensure_future(self._send(calls))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, calls: list[tuple[list[str], list[str], asyncio.Future[Any]]]
                    ) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for keys, args, _ in calls:
                    await self._script(keys=keys, args=args, client=pipe)
                results = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # the connection, or cancelled at shutdown
            for _, _, future in calls:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception)
                                         else asyncio.CancelledError())
            if not isinstance(exc, Exception):
                raise
            return
        for (_, _, future), result in zip(calls, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
