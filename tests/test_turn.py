"""TURN credentials of coturn's REST scheme, checked on a real coturn (Debian's turnserver
with use-auth-secret on loopback): allocations with served credentials succeed, expired or
tampered ones are refused, and two Chromium pages forced to relay talk through it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from typing import Any

import aiohttp
import pytest
from aioice.stun import TransactionFailed
from aioice.turn import create_turn_endpoint

from service.config import Rate, Secret, Settings
from service.errors import ConfigError
from tests.browser import chromium, open_demo, wait_state
from tests.support import SECRET, Peer, RunningService, serving
from tests.turn import TURN_SECRET, Coturn, coturn

STUN = {"urls": "stun:stun.example.com:3478"}


def turn_settings(url: str, **extra: Any) -> Settings:
    extra.setdefault("ice_servers", (STUN,))
    return Settings(jwt_secret=Secret(SECRET), turn_urls=(url,),
                    turn_secret=Secret(TURN_SECRET), **extra)


async def served(service: RunningService, token: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(
            f"{service.url}/ice-servers",
            headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status == 200
        assert response.headers["Cache-Control"] == "no-store"
        servers: list[dict[str, Any]] = (await response.json())["iceServers"]
        return servers


async def allocate(turn: Coturn, username: str, credential: str) -> None:
    """One TURN allocation (aioice's client: Allocate with the long-term credentials)."""
    transport, _ = await asyncio.wait_for(create_turn_endpoint(
        asyncio.DatagramProtocol, ("127.0.0.1", turn.port), username, credential), 10)
    transport.close()


def expected_credential(username: str) -> str:
    digest = hmac.new(TURN_SECRET.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


async def test_served_list_and_socket_event(transport: str) -> None:
    """``GET /ice-servers`` and ``GetIceServers`` give the static entries and a TURN entry
    whose username is ``<expiry>:<user>`` (expiry: the token's own when it ends before the
    TTL) and whose credential is base64(HMAC-SHA1(secret, username))."""
    settings = turn_settings("turn:turn.example.com:3478", turn_ttl=3600)
    async with serving(settings) as service:
        token = service.token("alice", ttl=600)
        servers = await served(service, token)
        assert servers[0] == STUN
        entry = servers[1]
        expiry, user = entry["username"].split(":", 1)
        assert user == "alice" and entry["urls"] == ["turn:turn.example.com:3478"]
        assert int(expiry) <= time.time() + 600 + 1  # not past the token
        assert entry["credential"] == expected_credential(entry["username"])
        peer = Peer(service.url, transport)
        try:
            await peer.connect(service.token("bob", ttl=7200))
            ack = await peer.call("GetIceServers")
            assert ack["ok"] is True and ack["iceServers"][0] == STUN
            entry = ack["iceServers"][1]
            expiry, user = entry["username"].split(":", 1)
            assert user == "bob"
            assert time.time() + 3590 <= int(expiry) <= time.time() + 3601  # the TTL
            assert entry["credential"] == expected_credential(entry["username"])
            bad = await peer.call("GetIceServers", {"x": 1})
            assert (bad["ok"], bad["error"]) == (False, "invalid_payload")
        finally:
            await peer.close()


async def test_no_turn_configured_gives_the_static_list() -> None:
    settings = Settings(jwt_secret=Secret(SECRET), ice_servers=(STUN,))
    async with serving(settings) as service:
        assert await served(service, service.token("alice")) == [STUN]


async def test_served_credentials_allocate_and_others_are_refused() -> None:
    """Fresh credentials from the service allocate on coturn; the same with a tampered
    credential, and credentials whose expiry has passed (a token that ended), are refused."""
    async with coturn() as turn:
        settings = turn_settings(turn.url)
        async with serving(settings) as service:
            entry = (await served(service, service.token("alice")))[1]
            await allocate(turn, entry["username"], entry["credential"])
            tampered = entry["credential"][:-4] + ("AAA=" if entry["credential"][-4:] != "AAA="
                                                   else "BBB=")
            with pytest.raises(TransactionFailed, match="401"):
                await allocate(turn, entry["username"], tampered)
            with pytest.raises(TransactionFailed, match="401"):
                await allocate(turn, "9" + entry["username"], entry["credential"])
            short = (await served(service, service.token("carol", ttl=2)))[1]
            assert int(short["username"].split(":")[0]) <= time.time() + 2
            await asyncio.sleep(3)  # past the token, so past the credentials
            with pytest.raises(TransactionFailed, match="401"):
                await allocate(turn, short["username"], short["credential"])
        assert any("alice" in line for line in turn.lines())


def test_turn_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="TURN_URLS and SIGNAL_TURN_SECRET go together"):
        Settings(jwt_secret=Secret(SECRET), turn_urls=("turn:x.example.com",))
    with pytest.raises(ConfigError, match="turn: or turns: URLs"):
        Settings(jwt_secret=Secret(SECRET), turn_urls=("stun:x.example.com",),
                 turn_secret=Secret(TURN_SECRET))
    with pytest.raises(ConfigError, match="TURN_TTL"):  # (10 s is the least since issue 20)
        Settings(jwt_secret=Secret(SECRET), turn_urls=("turn:x.example.com",),
                 turn_secret=Secret(TURN_SECRET), turn_ttl=5)
    with pytest.raises(ConfigError, match="TURN_SECRET is too short"):
        Settings(jwt_secret=Secret(SECRET), turn_urls=("turn:x.example.com",),
                 turn_secret=Secret("short"))


async def test_chromium_call_forced_through_coturn() -> None:
    """Two demo pages with "relay only" (iceTransportPolicy relay) call each other: the
    call connects, its selected candidate pair is relay on both ends (the only ICE server
    the pages know is this coturn), and video flows."""
    async with coturn() as turn:
        settings = turn_settings(turn.url, demo=True, demo_tokens=True,
                                 limit_ip_connects=Rate(0, 0), ice_servers=())
        async with serving(settings) as service, chromium() as browser:
            alice = await open_demo(browser, service.url, "alice")
            bob = await open_demo(browser, service.url, "bob", auto_answer=True)
            for page in (alice, bob):
                await page.check("#relay-only")
                await wait_state(page, "signaling", "connected")
            await alice.fill("#peer", "bob")
            await alice.click("#call")
            await wait_state(alice, "pc", "connected", timeout_ms=30000)
            await wait_state(bob, "pc", "connected", timeout_ms=30000)
            for page in (alice, bob):
                types = await page.evaluate("window.demo.selectedCandidateTypes()")
                assert types == ["relay", "relay"], types
            frames = 0
            for _ in range(50):
                frames = await bob.evaluate("window.demo.inboundVideoFrames()")
                if frames >= 5:
                    break
                await asyncio.sleep(0.2)
            assert frames >= 5


async def test_a_long_call_keeps_its_relay() -> None:
    """Before a connection's TURN credentials expire it gets fresh ones: pushed
    (``ice_servers``) when their TTL runs out first, in the RefreshToken ack when the token
    does. After the old ones have expired, coturn refuses them and allocates with the fresh
    ones (before: nothing fresh was ever handed out on the socket)."""
    async with coturn() as turn, serving(turn_settings(turn.url, turn_ttl=10)) as service:
        ttl_bound, token_bound = Peer(service.url, "websocket"), Peer(service.url, "websocket")
        await ttl_bound.connect(service.token("alice"))
        await token_bound.connect(service.token("bob", ttl=6))
        try:
            old_a = (await ttl_bound.call("GetIceServers"))["iceServers"][1]
            old_b = (await token_bound.call("GetIceServers"))["iceServers"][1]
            pushed = (await ttl_bound.next("ice_servers", within=15))["iceServers"][1]
            assert int(pushed["username"].split(":")[0]) > int(
                old_a["username"].split(":")[0])
            refreshed = await token_bound.call("RefreshToken", service.token("bob"))
            fresh_b = refreshed["iceServers"][1]
            assert int(fresh_b["username"].split(":")[0]) > int(
                old_b["username"].split(":")[0])
            expiry = max(int(old_a["username"].split(":")[0]),
                         int(old_b["username"].split(":")[0]))
            await asyncio.sleep(max(0.0, expiry + 1.5 - time.time()))  # past both
            for old, fresh in ((old_a, pushed), (old_b, fresh_b)):
                with pytest.raises(TransactionFailed, match="401"):
                    await allocate(turn, old["username"], old["credential"])
                await allocate(turn, fresh["username"], fresh["credential"])
        finally:
            await ttl_bound.close()
            await token_bound.close()
