"""A reconnect storm from one address (issue 20, item 5): mobile carriers put thousands of
phones behind one IPv4 address. Clients with valid tokens earn their users' connect budgets,
not a share of their address's; clients without one stay bounded by the address's. Default
settings, real clients; the storm at full size (2,000 clients) is the harness's
(``benchmarks/resilience.py``)."""

from __future__ import annotations

import asyncio
import random
import time

import aiohttp
import socketio

from service.config import Secret, Settings
from tests.support import SECRET, Peer, RunningService, serving

CLIENTS = 200


async def reconnect(service: RunningService, user: str, deadline: float) -> Peer | None:
    """Connect as ``user``, retrying after a refusal as socket.io-client would (a random
    wait of 0.2-1 s), until ``deadline``."""
    while time.monotonic() < deadline:
        peer = Peer(service.url, "websocket")
        try:
            await peer.connect(service.token(user))
            return peer
        except socketio.exceptions.ConnectionError:
            await asyncio.sleep(random.uniform(0.2, 1.0))
    return None


async def test_a_reconnect_storm_from_one_address_is_back_within_30s() -> None:
    """200 users behind one address connect at once with default settings: every one is
    back within 30 s (before: the address's 5 connects/s, burst 30, took 34 s for 200 and
    would take 400 s for 2,000), while handshakes without a token from that address are
    still refused past the address's burst."""
    async with serving(Settings(jwt_secret=Secret(SECRET))) as service:
        started = time.monotonic()
        peers = await asyncio.gather(*(reconnect(service, f"phone{n}", started + 30)
                                       for n in range(CLIENTS)))
        took = time.monotonic() - started
        try:
            assert all(p is not None for p in peers)
            assert took < 30
            refused = 0
            async with aiohttp.ClientSession() as http:
                for _ in range(40):  # no token: the address's own budget, untouched
                    async with http.get(f"{service.url}/socket.io/?EIO=4&transport=polling"
                                        ) as response:
                        refused += response.status == 401
            assert refused >= 5
        finally:
            await asyncio.gather(*(p.close() for p in peers if p is not None))


async def test_one_user_churning_connects_spends_its_own_budget() -> None:
    """A valid token does not make an address's budget endless: the same user connecting
    over and over is refused (rate_limited) past its own burst."""
    async with serving(Settings(jwt_secret=Secret(SECRET),
                                max_connections_per_user=0)) as service:
        outcomes = []
        for _ in range(36):
            peer = Peer(service.url, "websocket")
            try:
                await peer.connect(service.token("churner"))
                outcomes.append("ok")
            except socketio.exceptions.ConnectionError:
                outcomes.append(str(peer.refusals[-1]["data"]["reason"])
                                if peer.refusals else "refused")
            await peer.close()
        assert outcomes[:30] == ["ok"] * 30
        assert "rate_limited" in outcomes[30:]
