"""Per-connection token timers: warn shortly before the token expires, close when it has.

Timers are plain ``loop.call_later`` handles that start a task only when they fire, so a
connection that goes away first leaves nothing behind but a cancelled handle.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from service.auth.verifier import Identity

Action = Callable[[str, Identity], Awaitable[None]]


class ExpiryTimers:
    """``arm(sid, identity)`` schedules ``warn`` at ``exp - warning`` and ``expire`` at
    ``exp + leeway``; arming again (after a refresh) replaces both."""

    def __init__(self, *, warning: int, leeway: int, warn: Action, expire: Action,
                 clock: Callable[[], float] = time.time) -> None:
        self._warning = warning
        self._leeway = leeway
        self._warn = warn
        self._expire = expire
        self._clock = clock
        self._handles: dict[str, list[asyncio.TimerHandle]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def arm(self, sid: str, identity: Identity) -> None:
        self.disarm(sid)
        loop = asyncio.get_running_loop()
        now = self._clock()
        handles = [loop.call_later(max(0.0, identity.expires_at + self._leeway - now),
                                   self._fire, self._expire, sid, identity)]
        if self._warning > 0:
            handles.append(loop.call_later(max(0.0, identity.expires_at - self._warning - now),
                                           self._fire, self._warn, sid, identity))
        self._handles[sid] = handles

    def disarm(self, sid: str) -> None:
        for handle in self._handles.pop(sid, []):
            handle.cancel()

    def close(self) -> None:
        """Cancel every timer and every action still running."""
        for sid in list(self._handles):
            self.disarm(sid)
        for task in self._tasks:
            task.cancel()

    def _fire(self, action: Action, sid: str, identity: Identity) -> None:
        task = asyncio.ensure_future(action(sid, identity))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
