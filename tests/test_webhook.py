"""The incoming-call webhook, received by a real local HTTP server (aiohttp) that checks the
signature the way an app's backend would."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from service.config import Secret, Settings
from service.errors import ConfigError
from tests.support import (
    SECRET,
    Peer,
    answer_to,
    candidate_to,
    eventually,
    free_socket,
    offer_to,
    serving,
)

HOOK_SECRET = "webhook-secret-that-is-long-enough-0123456789"


@dataclass
class Receiver:
    """A backend that answers each request with the next of ``statuses`` (then 200); 302
    points elsewhere on the receiver; ``hang`` never answers."""

    statuses: list[int]
    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    hang: bool = False
    #: what a hanging request waits for (set when the receiver stops)
    released: asyncio.Event = field(default_factory=asyncio.Event)
    #: requests that followed a redirect
    redirected: list[str] = field(default_factory=list)

    async def elsewhere(self, request: web.Request) -> web.Response:
        self.redirected.append(request.method)
        return web.Response(status=200, text="{}")

    async def handle(self, request: web.Request) -> web.Response:
        if self.hang:
            self.requests.append({})
            self.arrived.set()
            await self.released.wait()
            return web.Response(status=503)
        raw = await request.read()
        timestamp = request.headers["X-Signal-Timestamp"]
        mac = hmac.new(HOOK_SECRET.encode(), timestamp.encode() + b"." + raw, hashlib.sha256)
        self.requests.append({
            "body": json.loads(raw), "raw": raw, "headers": dict(request.headers),
            "signed": hmac.compare_digest(request.headers["X-Signal-Signature"],
                                          "sha256=" + mac.hexdigest()),
            "fresh": abs(time.time() - int(timestamp)) < 60})
        self.arrived.set()
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 302:
            return web.Response(status=302, headers={"Location": "/elsewhere"})
        return web.Response(status=status, text="{}")


@pytest.fixture
async def receiver() -> AsyncIterator[Callable[[list[int]], Any]]:
    runners: list[web.AppRunner] = []
    hooks: list[Receiver] = []

    async def start(statuses: list[int]) -> Receiver:
        hook = Receiver(statuses)
        hooks.append(hook)
        app = web.Application()
        app.router.add_post("/hooks/call", hook.handle)
        app.router.add_route("*", "/elsewhere", hook.elsewhere)
        runner = web.AppRunner(app)
        await runner.setup()
        sock = free_socket()
        await web.SockSite(runner, sock).start()
        runners.append(runner)
        hook.url = f"http://127.0.0.1:{sock.getsockname()[1]}/hooks/call"
        return hook

    yield start
    for hook in hooks:
        hook.released.set()
    for runner in runners:
        await runner.cleanup()


def hooked(url: str, **extra: Any) -> Settings:
    return Settings(jwt_secret=Secret(SECRET), webhook_url=Secret(url),
                    webhook_secret=Secret(HOOK_SECRET), **extra)


async def test_offline_callee_is_woken_and_the_call_connects(receiver: Any,
                                                             transport: str) -> None:
    """The backend fails once (503) and gets it on the retry, signed, with the same
    Idempotency-Key and no SDP; the callee then connects, joins, gets the held offer and
    candidate, answers, and the call goes on."""
    hook = await receiver([503])
    async with serving(hooked(hook.url)) as service:
        alice, bob = Peer(service.url, transport), Peer(service.url, transport)
        try:
            await alice.connect(service.token("alice"))
            await alice.call("JoinSocket", "alice")
            ack = await alice.call("offer", offer_to("bob"))
            call_id = ack["callId"]
            assert ack == {"ok": True, "delivered": False, "callId": call_id, "notified": True}
            assert (await alice.call("candidate", candidate_to("bob")))["held"] is True
            async with asyncio.timeout(20):
                while len(hook.requests) < 2:
                    hook.arrived.clear()
                    await hook.arrived.wait()
            first, second = hook.requests
            for request in (first, second):
                assert request["signed"] and request["fresh"]
                assert request["headers"]["Idempotency-Key"] == call_id
                assert request["headers"]["Content-Type"] == "application/json"
                assert request["body"]["callId"] == call_id
                assert b"sdp" not in request["raw"] and b"candidate" not in request["raw"]
            assert set(first["body"]) == {"type", "callId", "from", "to", "ts"}
            assert first["body"] == second["body"]
            assert first["body"]["type"] == "call.incoming"
            assert (first["body"]["from"], first["body"]["to"]) == ("alice", "bob")
            # the app's backend pushes; the app wakes and connects
            await bob.connect(service.token("bob"))
            await bob.call("JoinSocket", "bob")
            assert (await bob.next("offer"))["callId"] == call_id
            assert (await bob.next("candidate"))["callId"] == call_id
            assert (await bob.call("answer", answer_to("alice")))["delivered"] is True
            assert (await alice.next("answer"))["callId"] == call_id
            await asyncio.sleep(0)
            assert len(hook.requests) == 2  # delivered: no more attempts
        finally:
            await alice.close()
            await bob.close()


async def test_refused_webhook_is_not_retried(receiver: Any,
                                              capture_logs: list[dict[str, Any]]) -> None:
    """A 4xx is the backend's final word. The log names the receiver's host, never the
    URL's path or query (which may hold a credential)."""
    hook = await receiver([410, 200])
    async with serving(hooked(hook.url + "?key=url-credential-42")) as service:
        alice = Peer(service.url, "websocket")
        try:
            await alice.connect(service.token("alice"))
            assert (await alice.call("offer", offer_to("bob")))["notified"] is True
            await asyncio.wait_for(hook.arrived.wait(), 10)
            await asyncio.sleep(1.5)  # longer than the first backoff: a retry would be here
            assert len(hook.requests) == 1
            refused = [r for r in capture_logs if r["event"] == "webhook_refused"]
            assert [(r["status"], r["host"]) for r in refused] == [
                (410, hook.url.split("/")[2])]
            assert "url-credential-42" not in str(capture_logs)
            assert "/hooks/call" not in str(capture_logs)
        finally:
            await alice.close()


async def test_no_webhook_when_the_callee_is_online(receiver: Any) -> None:
    hook = await receiver([])
    async with serving(hooked(hook.url)) as service:
        alice, bob = Peer(service.url, "websocket"), Peer(service.url, "websocket")
        try:
            for peer, user in ((alice, "alice"), (bob, "bob")):
                await peer.connect(service.token(user))
                await peer.call("JoinSocket", user)
            ack = await alice.call("offer", offer_to("bob"))
            assert "notified" not in ack and ack["delivered"] is True
            await asyncio.sleep(1.0)
            assert hook.requests == []
        finally:
            await alice.close()
            await bob.close()


def test_webhook_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="WEBHOOK_SECRET is missing"):
        Settings(jwt_secret=Secret(SECRET), webhook_url=Secret("https://x.example/h"))
    with pytest.raises(ConfigError, match="WEBHOOK_SECRET is too short"):
        Settings(jwt_secret=Secret(SECRET), webhook_url=Secret("https://x.example/h"),
                 webhook_secret=Secret("short"))
    with pytest.raises(ConfigError, match="WEBHOOK_URL must be"):
        Settings(jwt_secret=Secret(SECRET), webhook_url=Secret("ftp://x.example/h"),
                 webhook_secret=Secret(HOOK_SECRET))
    with pytest.raises(ConfigError, match="BUSY_POLICY"):
        Settings(jwt_secret=Secret(SECRET), busy_policy="queue")
    with pytest.raises(ConfigError, match="RING_TIMEOUT"):
        Settings(jwt_secret=Secret(SECRET), ring_timeout=0)


async def test_a_redirect_is_a_failed_delivery(receiver: Any,
                                               capture_logs: list[dict[str, Any]]) -> None:
    """A 302 is not followed (before: the POST became a GET elsewhere, with the signature
    headers, and its 200 counted as delivered) and not retried: it is a failed delivery,
    logged as one."""
    hook = await receiver([302, 200])
    async with serving(hooked(hook.url)) as service:
        alice = Peer(service.url, "websocket")
        try:
            await alice.connect(service.token("alice"))
            assert (await alice.call("offer", offer_to("bob")))["notified"] is True
            await eventually(lambda: any(r["event"] == "webhook_failed" for r in capture_logs),
                             10)
            failed = [r for r in capture_logs if r["event"] == "webhook_failed"]
            assert [(r["status"], r["error"]) for r in failed] == [
                (302, "redirect_not_followed")]
            assert hook.redirected == [] and len(hook.requests) == 1
            assert not any(r["event"] == "webhook_delivered" for r in capture_logs)
        finally:
            await alice.close()


async def test_credentials_in_the_url_are_sent_and_never_logged(
        receiver: Any, capture_logs: list[dict[str, Any]]) -> None:
    """``http://user:pass@host/hook`` is delivered with Basic authentication (before: every
    attempt failed), and the credentials appear in no log line."""
    hook = await receiver([])
    host_and_path = hook.url.split("://", 1)[1]
    async with serving(hooked(f"http://hooks:s3cret-pass-77@{host_and_path}")) as service:
        alice = Peer(service.url, "websocket")
        try:
            await alice.connect(service.token("alice"))
            assert (await alice.call("offer", offer_to("bob")))["notified"] is True
            await asyncio.wait_for(hook.arrived.wait(), 10)
            expected = "Basic " + base64.b64encode(b"hooks:s3cret-pass-77").decode()
            assert hook.requests[0]["headers"]["Authorization"] == expected
            assert hook.requests[0]["signed"]
            await eventually(lambda: any(r["event"] == "webhook_delivered"
                                         for r in capture_logs), 5)
            assert "s3cret-pass-77" not in str(capture_logs)
        finally:
            await alice.close()


async def test_retries_stop_when_the_call_stops_ringing(
        receiver: Any, capture_logs: list[dict[str, Any]]) -> None:
    """The backend keeps failing (503); alice hangs up: the next retry finds the call no
    longer ringing and stops, so a late success cannot push a call that is over (before:
    retried until the ring timeout)."""
    hook = await receiver([503] * 50)
    async with serving(hooked(hook.url)) as service:
        alice = Peer(service.url, "websocket")
        try:
            await alice.connect(service.token("alice"))
            assert (await alice.call("offer", offer_to("bob")))["notified"] is True
            await asyncio.wait_for(hook.arrived.wait(), 10)
            assert (await alice.call("hangup", {"to": "bob"}))["ok"] is True
            await eventually(lambda: any(r["event"] == "webhook_stopped"
                                         for r in capture_logs), 10)
            tasks = service.app.ctx.signaling.calls.webhook._tasks
            await eventually(lambda: not tasks)
            attempts = len(hook.requests)
            assert attempts <= 2  # the first, and at most one retry before the hangup
        finally:
            await alice.close()


async def test_a_hung_receiver_never_delays_authentication(receiver: Any) -> None:
    """30 webhooks hang at a receiver that never answers; meanwhile the IdP rotates its key
    and a client with a token of the new key connects at once (before: webhooks and JWKS
    fetches shared asyncio's six default threads, and the connect was dropped at the auth
    timeout)."""
    from service.config import JwksEndpoint, Rate
    from tests.idp import IdpKey, JwksServer

    hook = await receiver([])
    hook.hang = True
    idp, old, new = JwksServer(), IdpKey.new("ES256", "k-1"), IdpKey.new("ES256", "k-2")
    await idp.start()
    try:
        issuer = "https://idp.test/"
        settings = hooked(hook.url, jwt_jwks=(JwksEndpoint(issuer, idp.publish("k", old)),),
                          jwt_issuers=(issuer, "local"), jwt_shared_user_ids=True,
                          jwks_refresh_interval=1, limit_relays=Rate(0, 0),
                          limit_user_relays=Rate(0, 0))
        async with serving(settings) as service:
            source = service.app.ctx.signaling.verifier.jwks[issuer]
            await eventually(lambda: source.loaded, 5)
            alice = Peer(service.url, "websocket")
            await alice.connect(service.token("alice", iss="local"))
            for n in range(30):
                assert (await alice.call("offer", offer_to(f"offline{n}")))["notified"]
            await eventually(lambda: len(hook.requests) >= 10, 10)  # its pool is full
            idp.publish("k", old, new)
            await eventually(lambda: source.retry_in() == 0, 5)
            started = time.monotonic()
            client = Peer(service.url, "websocket")
            await client.connect(new.token("carol", iss=issuer))
            assert time.monotonic() - started < 2  # a ceiling far below the auth timeout
            await client.close()
            await alice.close()
    finally:
        await idp.stop()


async def test_a_hung_webhook_dns_never_delays_authentication(
        receiver: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The webhook receiver's name lookups hang (``getaddrinfo`` is made to block for its
    host: a DNS server that hangs cannot be run here, so this one call is stood in for);
    a JWKS fetch from a named host (``localhost``) still resolves at once and a token of a
    rotated key connects (before: lookups ran in asyncio's default pool, which the webhooks'
    lookups filled)."""
    import socket
    import threading

    from service.config import JwksEndpoint, Rate
    from tests.idp import IdpKey, JwksServer

    released = threading.Event()
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "hooks.hang.test":
            released.wait(30)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    idp, old, new = JwksServer(), IdpKey.new("ES256", "k-1"), IdpKey.new("ES256", "k-2")
    await idp.start()
    try:
        issuer = "https://idp.test/"
        jwks = idp.publish("k", old).replace("127.0.0.1", "localhost")
        settings = hooked("http://hooks.hang.test:9/hooks/call",
                          jwt_jwks=(JwksEndpoint(issuer, jwks),),
                          jwt_issuers=(issuer, "local"), jwt_shared_user_ids=True,
                          jwks_refresh_interval=1, limit_relays=Rate(0, 0),
                          limit_user_relays=Rate(0, 0))
        async with serving(settings) as service:
            source = service.app.ctx.signaling.verifier.jwks[issuer]
            await eventually(lambda: source.loaded, 5)
            alice = Peer(service.url, "websocket")
            await alice.connect(service.token("alice", iss="local"))
            for n in range(12):
                assert (await alice.call("offer", offer_to(f"offline{n}")))["notified"]
            idp.publish("k", old, new)
            await eventually(lambda: source.retry_in() == 0, 5)
            started = time.monotonic()
            client = Peer(service.url, "websocket")
            await client.connect(new.token("carol", iss=issuer))
            assert time.monotonic() - started < 2  # a ceiling far below the auth timeout
            await client.close()
            await alice.close()
    finally:
        released.set()
        await idp.stop()
