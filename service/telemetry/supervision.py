"""Background loops that survive their own bugs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final

#: how long a loop waits after an unexpected exception before it runs again
RETRY_SECONDS: Final = 1.0


async def forever(step: Callable[[], Awaitable[float]], *, name: str,
                  log: logging.Logger) -> None:
    """Run ``step()`` again and again, waiting the seconds it returns in between. An
    unexpected exception is logged once per run with its traceback (``<name>_failed``) and
    the loop goes on: one bad moment must not end presence heartbeats or revocations for
    the life of the process."""
    while True:
        try:
            delay = await step()
        except Exception:
            log.exception(f"{name}_failed")
            delay = RETRY_SECONDS
        await asyncio.sleep(delay)
