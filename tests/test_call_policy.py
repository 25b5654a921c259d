"""The call permission hook (issue 21, item 3): before an offer opens a call the service asks
the app's backend, a real local HTTP server (aiohttp) here that checks the signature as a
backend would and answers from a block list."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from service.config import Secret, Settings
from service.errors import ConfigError
from tests.support import (
    SECRET,
    Peer,
    RunningService,
    answered_call,
    candidate_to,
    eventually,
    free_socket,
    offer_to,
    serving,
)

HOOK_SECRET = "policy-secret-that-is-long-enough-0123456789"


@dataclass
class Backend:
    """Answers ``{"allow": false}`` for pairs in ``blocked``, ``allow: true`` otherwise;
    ``hang`` holds requests until released; ``nonsense`` answers 200 with other JSON."""

    blocked: set[tuple[str, str]] = field(default_factory=set)
    hang: bool = False
    nonsense: bool = False
    url: str = ""
    asked: list[dict[str, Any]] = field(default_factory=list)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        timestamp = request.headers["X-Signal-Timestamp"]
        mac = hmac.new(HOOK_SECRET.encode(), timestamp.encode() + b"." + raw, hashlib.sha256)
        assert hmac.compare_digest(request.headers["X-Signal-Signature"],
                                   "sha256=" + mac.hexdigest())
        body = json.loads(raw)
        self.asked.append(body)
        if self.hang:
            await self.released.wait()
        if self.nonsense:
            return web.json_response({"allowed": "yes"})
        return web.json_response({"allow": (body["from"], body["to"]) not in self.blocked})


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    hook = Backend()
    app = web.Application()
    app.router.add_post("/may-call", hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = free_socket()
    site = web.SockSite(runner, sock)
    await site.start()
    hook.url = f"http://127.0.0.1:{sock.getsockname()[1]}/may-call"
    try:
        yield hook
    finally:
        hook.released.set()
        await runner.cleanup()


def policy_settings(backend: Backend, **extra: Any) -> Settings:
    return Settings(jwt_secret=Secret(SECRET), call_policy_url=Secret(backend.url),
                    webhook_secret=Secret(HOOK_SECRET), **extra)


async def joined(service: RunningService, user: str) -> Peer:
    peer = Peer(service.url, "websocket")
    await peer.connect(service.token(user))
    assert await peer.call("JoinSocket", user) == {"ok": True}
    return peer


async def test_a_blocked_caller_is_forbidden_and_rings_nobody(backend: Backend) -> None:
    """mallory is on bob's block list: her offer is refused forbidden, bob's devices hear
    nothing, no call is open; alice may call bob. The backend was asked with a signed
    request naming both."""
    backend.blocked = {("mallory", "bob")}
    async with serving(policy_settings(backend)) as service:
        alice, bob, mallory = [await joined(service, u) for u in ("alice", "bob", "mallory")]
        try:
            ack = await mallory.call("offer", offer_to("bob"))
            assert ack["ok"] is False and ack["error"] == "forbidden"
            assert await bob.silent("offer")
            assert backend.asked[0]["type"] == "call.permission"
            assert (backend.asked[0]["from"], backend.asked[0]["to"]) == ("mallory", "bob")
            assert (await mallory.call("candidate", candidate_to("bob")))["error"] == (
                "not_in_call")
            assert (await alice.call("offer", offer_to("bob")))["delivered"] is True
            assert (await bob.next("offer"))["from"] == "alice"
        finally:
            for peer in (alice, bob, mallory):
                await peer.close()


async def test_answers_are_kept_per_pair_and_a_renegotiation_is_not_asked(
        backend: Backend) -> None:
    async with serving(policy_settings(backend, call_policy_cache=0)) as service:
        alice, bob = await joined(service, "alice"), await joined(service, "bob")
        try:
            await answered_call(alice, bob, "alice", "bob")
            await alice.call("hangup", {"to": "bob"})
            assert len(backend.asked) == 1
            # nothing kept: asked again for the next call
            call_id = await answered_call(alice, bob, "alice", "bob")
            assert len(backend.asked) == 2
            # in the call: a renegotiating offer, with or without callId, asks nothing
            assert (await alice.call("offer", offer_to("bob")))["callId"] == call_id
            assert (await alice.call("offer", offer_to("bob", callId=call_id)))["ok"]
            assert len(backend.asked) == 2
            await alice.call("hangup", {"to": "bob"})
        finally:
            for peer in (alice, bob):
                await peer.close()
    async with serving(policy_settings(backend, call_policy_cache=60)) as service:
        backend.asked.clear()
        alice, bob = await joined(service, "alice"), await joined(service, "bob")
        try:
            await answered_call(alice, bob, "alice", "bob")
            assert len(backend.asked) == 1
            await alice.call("hangup", {"to": "bob"})
            # a new call between them: the kept answer
            assert (await alice.call("offer", offer_to("bob")))["ok"] is True
            assert len(backend.asked) == 1
            # the other way round is another pair
            await alice.call("hangup", {"to": "bob"})
            assert (await bob.call("offer", offer_to("alice")))["ok"] is True
            assert len(backend.asked) == 2
        finally:
            for peer in (alice, bob):
                await peer.close()


async def test_a_backend_that_does_not_answer_in_time_refuses_and_stalls_nobody(
        backend: Backend) -> None:
    """The backend hangs: the offer is refused unavailable after the timeout (not
    forbidden: the caller may try again), while another pair's call carries on at once."""
    async with serving(policy_settings(backend, call_policy_timeout=1.5)) as service:
        alice, bob = await joined(service, "alice"), await joined(service, "bob")
        carol, dave = await joined(service, "carol"), await joined(service, "dave")
        try:
            await answered_call(carol, dave, "carol", "dave")  # asked while it answered
            backend.hang = True
            offer = asyncio.ensure_future(alice.call("offer", offer_to("bob")))
            await eventually(lambda: len(backend.asked) == 2)
            started = time.monotonic()
            for n in range(5):
                ack = await carol.call("candidate", candidate_to("dave", n))
                assert ack["delivered"] is True
            assert time.monotonic() - started < 1.0
            assert not offer.done()
            ack = await offer
            assert ack["ok"] is False and ack["error"] == "unavailable"
            assert await bob.silent("offer", 0.1)
            # no answer is not kept: the next offer asks again
            backend.hang = False
            backend.released.set()
            assert (await alice.call("offer", offer_to("bob")))["ok"] is True
        finally:
            for peer in (alice, bob, carol, dave):
                await peer.close()


async def test_fail_open_lets_the_call_ring_without_an_answer(backend: Backend) -> None:
    backend.nonsense = True
    async with serving(policy_settings(backend, call_policy_fail_open=True)) as service:
        alice, bob = await joined(service, "alice"), await joined(service, "bob")
        try:
            assert (await alice.call("offer", offer_to("bob")))["delivered"] is True
        finally:
            for peer in (alice, bob):
                await peer.close()
    backend.nonsense = True
    async with serving(policy_settings(backend)) as service:
        alice, bob = await joined(service, "alice"), await joined(service, "bob")
        try:
            assert (await alice.call("offer", offer_to("bob")))["error"] == "unavailable"
        finally:
            for peer in (alice, bob):
                await peer.close()


def test_the_hook_needs_the_secret_it_signs_with() -> None:
    with pytest.raises(ConfigError, match="WEBHOOK_SECRET is missing"):
        Settings(jwt_secret=Secret(SECRET), call_policy_url=Secret("http://127.0.0.1/x"))
    with pytest.raises(ConfigError, match="CALL_POLICY_URL must be an http"):
        Settings(jwt_secret=Secret(SECRET), call_policy_url=Secret("ftp://x"),
                 webhook_secret=Secret(HOOK_SECRET))


async def test_a_call_that_ends_is_no_way_around_the_hook(backend: Backend) -> None:
    """bob blocks mallory during their call: once it ends, her next offer is asked about
    and refused (the hook is asked in the same step that would open the call)."""
    async with serving(policy_settings(backend, call_policy_cache=0)) as service:
        mallory, bob = await joined(service, "mallory"), await joined(service, "bob")
        try:
            await answered_call(mallory, bob, "mallory", "bob")
            backend.blocked = {("mallory", "bob")}
            assert (await mallory.call("offer", offer_to("bob")))["ok"] is True  # in the call
            assert (await bob.call("hangup", {"to": "mallory"}))["ok"] is True
            ack = await mallory.call("offer", offer_to("bob"))
            assert ack["ok"] is False and ack["error"] == "forbidden"
        finally:
            for peer in (mallory, bob):
                await peer.close()


async def test_one_caller_offering_to_many_does_not_take_every_slot(backend: Backend) -> None:
    """While the backend is slow, a caller with two asks under way (from two of its sockets:
    one socket's events are handled one after the other) has a third offer refused
    rate_limited at once; another caller is still asked (and allowed) meanwhile."""
    async with serving(policy_settings(backend, call_policy_timeout=5)) as service:
        sockets = [await joined(service, "spammer") for _ in range(3)]
        alice, bob = await joined(service, "alice"), await joined(service, "bob")
        try:
            backend.hang = True
            pending = [asyncio.ensure_future(sockets[n].call("offer", offer_to(f"u{n}")))
                       for n in range(2)]
            await eventually(lambda: len(backend.asked) == 2)
            ack = await sockets[2].call("offer", offer_to("u2"))
            assert ack["ok"] is False and ack["error"] == "rate_limited"
            offer = asyncio.ensure_future(alice.call("offer", offer_to("bob")))
            await eventually(lambda: len(backend.asked) == 3)
            backend.hang = False
            backend.released.set()
            assert (await offer)["ok"] is True
            for answer in pending:
                assert (await answer)["ok"] is True
        finally:
            for peer in (*sockets, alice, bob):
                await peer.close()
