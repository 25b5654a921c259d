"""Fixtures: the real service on a free port, and factories of real clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from service.config import Secret, Settings
from tests.support import SECRET, TRANSPORTS, Peer, RunningService, start_service


@pytest.fixture
def settings() -> Settings:
    return Settings(jwt_secret=Secret(SECRET))


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[RunningService]:
    running, stop = await start_service(settings)
    yield running
    await stop()


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def peers_of() -> AsyncIterator[Callable[..., Any]]:
    """A factory of peers of any service: ``await peers_of(service, "alice", "polling")``
    (connected and joined to its own room; ``join=False``: connected only; no user: not
    connected). Closed after the test."""
    made: list[Peer] = []

    async def make(service: RunningService, user: str | None, transport: str, *,
                   join: bool = True) -> Peer:
        peer = Peer(service.url, transport)
        made.append(peer)
        if user is not None:
            await peer.connect(service.token(user))
            if join:
                assert await peer.call("JoinSocket", user) == {"ok": True}
        return peer

    yield make
    await asyncio.gather(*(p.close() for p in made))


@pytest.fixture
def peers(service: RunningService, transport: str,
          peers_of: Callable[..., Any]) -> Callable[..., Any]:
    """A factory of connected peers of the test's service: ``await peers("alice")``."""

    async def make(user: str | None = None, *, join: bool = True,
                   via: str | None = None) -> Peer:
        return await peers_of(service, user, via or transport, join=join)  # type: ignore[no-any-return]

    return make


@pytest.fixture
def capture_logs() -> Iterator[list[dict[str, Any]]]:
    """The service's log records as the dicts it would print."""
    import json
    import logging

    from service.telemetry import LOGGER_NAME, JsonFormatter

    records: list[dict[str, Any]] = []
    formatter = JsonFormatter()

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(json.loads(formatter.format(record)))

    handler = Collect()
    logger = logging.getLogger(LOGGER_NAME)
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)
